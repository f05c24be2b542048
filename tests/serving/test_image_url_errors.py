"""`wings serve`'s image-URL middleware on a stand-in app (no engine): what vLLM answers 500 becomes a 400.

The stand-in raises what vLLM's media connector raises (`aiohttp.ClientConnectorError` for a URL it
cannot fetch); the real server is covered by the slow `test_vllm_server.py`.
"""

from __future__ import annotations

import json

import pytest

aiohttp = pytest.importorskip("aiohttp")
pytest.importorskip("starlette")
from starlette.applications import Starlette  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import JSONResponse  # noqa: E402
from starlette.routing import Route  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

from wings.serving import image_url_middleware  # noqa: E402
from wings.serving.media import ImageURLErrors, ImageURLErrorsLocalFilesAllowed, image_urls  # noqa: E402


def message(*urls: str) -> dict:
    parts = [{"type": "image_url", "image_url": {"url": url}} for url in urls]
    return {"model": "m", "messages": [{"role": "user", "content": [*parts, {"type": "text", "text": "hi"}]}]}


async def chat(request: Request) -> JSONResponse:
    """Like vLLM: fetch every http image (here: always failing), refuse file:// as vLLM does (a 500)."""
    body = await request.json()
    for url in image_urls(body):
        if url.startswith("http://unreachable"):
            raise aiohttp.ClientConnectionError(f"Cannot connect to host {url}")
        if url.startswith("file:"):
            raise RuntimeError("Cannot load local files without `--allowed-local-media-path`.")
        if url.startswith("http://bug"):
            raise KeyError("a bug, not the client's mistake")
    return JSONResponse({"echo": body["messages"][0]["content"][-1]["text"]})


def client(middleware=ImageURLErrors) -> TestClient:
    app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])
    app.add_middleware(middleware)
    return TestClient(app, raise_server_exceptions=True)


def test_image_urls_are_found_in_every_message_part():
    body = message("http://a/1.png", "data:image/png;base64,AAAA")
    body["messages"].append({"role": "user", "content": [{"type": "image_url", "image_url": "file:///x.png"}]})
    body["messages"].append({"role": "assistant", "content": "plain text"})
    assert image_urls(body) == ["http://a/1.png", "data:image/png;base64,AAAA", "file:///x.png"]
    assert image_urls({"messages": "not a list"}) == [] and image_urls([1, 2]) == []


@pytest.mark.parametrize("url, words", [
    ("file:///etc/hostname", ["file:///etc/hostname", "file:// URLs are refused", "data: URL"]),
    ("FILE:///etc/hostname", ["FILE:///etc/hostname", "refused"]),
    ("http://unreachable.invalid/x.png", ["http://unreachable.invalid/x.png", "could not be fetched",
                                           "Cannot connect"]),
])
def test_unusable_image_urls_are_a_400_naming_the_url(url, words):
    with client() as http:
        answer = http.post("/v1/chat/completions", json=message(url))
        assert answer.status_code == 400
        error = answer.json()["error"]
        assert error["code"] == 400 and error["param"] == "image_url"
        assert all(word in error["message"] for word in words), error["message"]
        # the next request is answered as usual
        assert http.post("/v1/chat/completions", json=message()).json() == {"echo": "hi"}


def test_good_requests_and_other_errors_pass_through_unchanged():
    with client() as http:
        assert http.post("/v1/chat/completions", json=message("data:image/png;base64,AAAA")).json() == {"echo": "hi"}
        with pytest.raises(KeyError, match="a bug"):  # not a fetch error: vLLM's own 500 stays
            http.post("/v1/chat/completions", json=message("http://bug/x.png"))
        with pytest.raises(json.JSONDecodeError):  # a malformed body reaches the app as it came
            http.post("/v1/chat/completions", content=b"{not json")


def test_local_files_are_left_to_vllm_when_the_server_allows_them():
    assert image_url_middleware(["--port", "1"]).endswith("media.ImageURLErrors")
    assert image_url_middleware(["--allowed-local-media-path", "/data"]).endswith("LocalFilesAllowed")
    with client(ImageURLErrorsLocalFilesAllowed) as http, pytest.raises(RuntimeError, match="local files"):
        http.post("/v1/chat/completions", json=message("file:///etc/hostname"))


def test_a_streamed_body_is_replayed_whole():
    body = json.dumps(message("data:image/png;base64,AAAA")).encode()

    def chunks():
        for start in range(0, len(body), 7):
            yield body[start:start + 7]

    with client() as http:
        answer = http.post("/v1/chat/completions", content=chunks(), headers={"content-type": "application/json"})
        assert answer.json() == {"echo": "hi"}
