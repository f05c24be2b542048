"""What a chat template receives as a message's content: the one rule both engines follow.

vLLM's OpenAI server looks at the chat template before rendering: a template that loops over a message's
content gets the content parts (`{"type": "image"}` and `{"type": "text", "text": ...}`, the image payloads
taken out), any other template gets one string: the image placeholders first, one per line, then the text
parts joined by newlines. `WingsProcessor.apply_chat_template` hands the template the same, so Hugging Face
chat and a served chat completion render the same prompt tokens whatever template a directory holds.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

import jinja2
from jinja2 import nodes

ContentFormat = Literal["parts", "string"]
IMAGE_MARKER = "<image>"


def _content_access(node: nodes.Node) -> bool:
    """Whether `node` reads a message's content: `x.content`, `x['content']` or a variable named `content`
    (through filters, tests and slices)."""
    while isinstance(node, (nodes.Filter, nodes.Test)) or (
        isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Slice)
    ):
        node = node.node
    if isinstance(node, nodes.Getattr):
        return node.attr == "content"
    if isinstance(node, nodes.Getitem):
        return isinstance(node.arg, nodes.Const) and node.arg.value == "content"
    return isinstance(node, nodes.Name) and node.name == "content"


@lru_cache(maxsize=32)
def content_format(chat_template: str | None) -> ContentFormat:
    """"parts" when the template loops over a message's content, else "string" (also for no template)."""
    if not chat_template:
        return "string"
    tree = jinja2.Environment(extensions=["jinja2.ext.loopcontrols"]).parse(chat_template)
    return "parts" if any(_content_access(loop.iter) for loop in tree.find_all(nodes.For)) else "string"


def template_content(content: str | list[dict], fmt: ContentFormat) -> str | list[dict]:
    """A message's content as the template receives it (see the module docstring).

    content: a string, or parts `{"type": "text", "text": ...}` / `{"type": "image", ...}` (`image_url` parts, as
    OpenAI clients send them, count as images).
    """
    if isinstance(content, str):
        # Training data (LLaVA's "<image>\nWhat is ...") is a string with markers: a template that loops over
        # parts gets them as parts, so that a reply is trained on the prompt HF chat and vLLM render.
        return split_markers(content) if fmt == "parts" and IMAGE_MARKER in content else content
    parts = []
    for i, part in enumerate(content):
        kind = part.get("type")
        if kind in ("image", "image_url"):
            parts.append({"type": "image"})
        elif kind == "text":
            parts.append({"type": "text", "text": part["text"]})
        else:
            raise ValueError(f"content part {i}: unsupported type {kind!r} (expected 'image' or 'text')")
    if fmt == "parts":
        return parts
    images = [IMAGE_MARKER for part in parts if part["type"] == "image"]
    return "\n".join(images + [part["text"] for part in parts if part["type"] == "text"])


def split_markers(text: str) -> list[dict]:
    """A string with `<image>` markers as content parts in order: each marker an image part, the text between
    them a text part without the line break that follows a marker ("<image>\nWhat?" -> image, "What?")."""
    parts: list[dict] = []
    for i, piece in enumerate(text.split(IMAGE_MARKER)):
        if i:
            parts.append({"type": "image"})
            piece = piece.removeprefix("\n")  # the separator the template writes after an image itself
        if piece:
            parts.append({"type": "text", "text": piece})
    return parts
