"""`wings chat`: a terminal conversation with a saved model, images attached with `/image PATH`.

The whole history is re-rendered through the chat template each turn, so images stay where they
were said; `generate()` keeps the learners' state in its cache within a reply.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import TextIO

import torch

from .data.images import load_image
from .evaluation.loading import load_model_and_processor

HELP = "Type a message. /image PATH attaches an image to your next message, /reset clears the chat, /quit exits."


def chat_loop(
    model_dir: str,
    images: Iterable[str] = (),
    max_new_tokens: int = 256,
    lines: Iterable[str] | None = None,
    out: TextIO = sys.stdout,
) -> list[dict]:
    """Run the conversation; reads `lines` (default: stdin) and returns the message history."""
    pending = [load_image(p) for p in images]  # a bad image path fails before the model loads
    model, processor = load_model_and_processor(model_dir)
    history: list[dict] = []
    history_images: list = []
    print(HELP, file=out)
    for line in lines if lines is not None else sys.stdin:
        text = line.strip()
        if not text:
            continue
        if text in ("/quit", "/exit"):
            break
        if text == "/reset":
            history, history_images, pending = [], [], []
            print("(chat cleared)", file=out)
            continue
        if text.startswith("/image "):
            pending.append(load_image(text.split(" ", 1)[1].strip()))
            print(f"(image attached: {len(pending)} pending)", file=out)
            continue
        content = [{"type": "image"} for _ in pending] + [{"type": "text", "text": text}]
        history.append({"role": "user", "content": content})
        history_images += pending
        pending = []
        inputs = processor(processor.apply_chat_template(history, add_generation_prompt=True), images=history_images or None)
        with torch.no_grad():
            output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        reply = processor.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()
        history.append({"role": "assistant", "content": reply})
        print(f"wings> {reply}", file=out, flush=True)
    return history
