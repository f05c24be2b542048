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
from .errors import UsageError, WingsError
from .evaluation.inputs import tokenizer_of
from .evaluation.loading import load_model_and_processor
from .validation import MULTIMODAL_MODEL_TYPES, check_model

HELP = "Type a message. /image PATH attaches an image to your next message, /reset clears the chat, /quit exits."


def chat_loop(
    model_dir: str,
    images: Iterable[str] = (),
    max_new_tokens: int = 256,
    lines: Iterable[str] | None = None,
    out: TextIO = sys.stdout,
) -> list[dict]:
    """Run the conversation; reads `lines` (default: stdin) and returns the message history.

    A plain causal LM chats in text (its tokenizer's chat template); `/image` is then refused. A bad
    `/image` (missing or unreadable file, or a model without images) is reported and the chat goes on.
    """
    pending = [load_image(p) for p in images]  # a bad image path fails before the model loads
    model_type = check_model(model_dir, "--model", "multimodal" if pending else "evaluable",
                             why="--image attaches an image" if pending else None)
    model, processor = load_model_and_processor(model_dir)
    reads_images = model_type in MULTIMODAL_MODEL_TYPES
    if not getattr(tokenizer_of(processor), "chat_template", None):
        raise UsageError(f"--model '{model_dir}': its tokenizer has no chat template to render a conversation")
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
        if text.startswith("/image"):
            try:
                if not reads_images:
                    raise UsageError(f"'{model_dir}' is a text-only '{model_type}' model; it reads no images")
                path = text[len("/image"):].strip()
                if not path:
                    raise UsageError("/image needs a path: /image PATH")
                pending.append(load_image(path))
            except WingsError as err:  # a mistake in one command must not end the conversation
                print(f"error: {err}", file=out, flush=True)
                continue
            print(f"(image attached: {len(pending)} pending)", file=out)
            continue
        if reads_images:
            content = [{"type": "image"} for _ in pending] + [{"type": "text", "text": text}]
        else:
            content = text
        history.append({"role": "user", "content": content})
        history_images += pending
        pending = []
        inputs = _inputs(processor, history, history_images, reads_images).to(model.device)
        with torch.no_grad():
            output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        reply = processor.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()
        history.append({"role": "assistant", "content": reply})
        print(f"wings> {reply}", file=out, flush=True)
    return history


def _inputs(processor, history: list[dict], images: list, reads_images: bool):
    """Model inputs for the conversation so far, ending with the assistant's turn to speak."""
    if reads_images:
        return processor(processor.apply_chat_template(history, add_generation_prompt=True), images=images or None)
    prompt = processor.apply_chat_template(history, add_generation_prompt=True, tokenize=False)
    return processor(prompt, return_tensors="pt", add_special_tokens=False)  # the template holds them
