"""`wings serve`: image URLs the client can fix are answered 400, not with vLLM's 500.

vLLM refuses a `file://` image URL (unless started with `--allowed-local-media-path`) and fails on an
image URL it cannot fetch by raising out of its request handler: the client gets "500 Internal Server
Error" and a closed connection, for a mistake in its own request. `ImageURLErrors`, added to vLLM's
app with `--middleware` (`wings.serving.serve_main` does), answers both as a 400 JSON error in the
OpenAI format vLLM uses, naming the URL; the server goes on answering.

It is a plain ASGI middleware: it reads the request body (to find the image URLs), replays it to
vLLM unchanged, and only steps in before a response has started.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import urlsplit

CHAT_PATHS = ("/v1/chat/completions",)
FILE_URL_MESSAGE = (
    "image URL '{url}': file:// URLs are refused (this server reads no local files); send the image inline "
    "as a data: URL (base64) or over http(s)"
)


def image_urls(body: Any) -> list[str]:
    """The image URLs of an OpenAI chat request body (every `image_url` part of every message)."""
    urls: list[str] = []
    messages = body.get("messages") if isinstance(body, dict) else None
    for message in messages if isinstance(messages, list) else []:
        content = message.get("content") if isinstance(message, dict) else None
        for part in content if isinstance(content, list) else []:
            if isinstance(part, dict) and part.get("type") == "image_url":
                image = part.get("image_url")
                url = image.get("url") if isinstance(image, dict) else image
                if isinstance(url, str):
                    urls.append(url)
    return urls


def url_scheme(url: str) -> str:
    return urlsplit(url).scheme.lower()


def error_response(message: str, status: int = 400) -> bytes:
    """An error body as vLLM's OpenAI server writes them."""
    error = {"message": message, "type": "BadRequestError", "param": "image_url", "code": status}
    return json.dumps({"error": error}).encode()


def is_fetch_error(error: BaseException) -> bool:
    """An image download that failed (refused connection, unknown host, timeout, bad HTTP answer)."""
    try:
        import aiohttp  # vLLM's media client
    except ImportError:  # pragma: no cover - vLLM depends on aiohttp
        return isinstance(error, (asyncio.TimeoutError, TimeoutError, ConnectionError))
    return isinstance(error, (aiohttp.ClientError, asyncio.TimeoutError, TimeoutError, ConnectionError))


class ImageURLErrors:
    """ASGI middleware: `file://` image URLs and image URLs that cannot be fetched -> a 400 JSON error."""

    local_files_allowed = False  # the server was started with --allowed-local-media-path

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST" or scope.get("path") not in CHAT_PATHS:
            await self.app(scope, receive, send)
            return
        received = await _read_request(receive)
        body = b"".join(message.get("body", b"") for message in received if message["type"] == "http.request")
        try:
            urls = image_urls(json.loads(body))
        except (ValueError, UnicodeDecodeError):
            urls = []  # vLLM answers a malformed body itself
        local = [url for url in urls if url_scheme(url) == "file"]
        if local and not self.local_files_allowed:
            await _respond(send, FILE_URL_MESSAGE.format(url=local[0]))
            return
        remote = [url for url in urls if url_scheme(url) in ("http", "https")]
        replay = iter(received)
        started = False

        async def receive_again():
            try:
                return next(replay)
            except StopIteration:
                return await receive()

        async def send_watched(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive_again, send_watched)
        except Exception as error:
            if started or not remote or not is_fetch_error(error):
                raise
            shown = ", ".join(f"'{url[:200]}'" for url in remote)
            await _respond(send, f"image URL {shown} could not be fetched: {error}")


class ImageURLErrorsLocalFilesAllowed(ImageURLErrors):
    """`ImageURLErrors` for a server started with --allowed-local-media-path: vLLM checks `file://` URLs."""

    local_files_allowed = True


async def _read_request(receive) -> list[dict]:
    messages = []
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request" or not message.get("more_body", False):
            return messages


async def _respond(send, message: str, status: int = 400) -> None:
    body = error_response(message, status)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
