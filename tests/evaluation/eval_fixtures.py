"""Tiny models, processors and a rigged "oracle" LM for the evaluation tests.

(A helper module rather than a conftest.py: a second `conftest` module would shadow `tests/conftest.py`.)

The oracle is a language model whose answers we choose: ``answer_fn(prompt_text, row_pixels)``
says what it "wants" to reply to a prompt, and its logits put a large margin on the next token of
that reply (then on EOS) and are flat everywhere else. A scorer that routes prompts, choices,
padding and images correctly gets every item right with it; one that mixes up rows or images
does not.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import torch
from PIL import Image
from torch import nn

from wings.data.tokenizer import train_chat_tokenizer
from tiny import IMAGE_SIZE, PATCH, save_tiny_wings, tiny_processor
from tiny import tiny_saved_llm as make_llm  # noqa: F401 (the evaluation tests' names)
from tiny import wings_for_processor as make_wings  # noqa: F401
from wings.processing import WingsProcessor

IMAGE_SEQ_LENGTH = (IMAGE_SIZE // PATCH) ** 2  # 4 image tokens per image
COLORS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 230, 20)}
WORDS = (
    "planet orbit telescope galaxy comet recipe oven flour butter garlic goalkeeper referee penalty "
    "stadium striker which what colour is the shape answer option letter text of following true"
).split()
CORPUS = [
    "What colour is the shape? red green blue yellow. Answer with the option's letter. A B C D",
    "Which statement is true? The answer is B. Option C. hello how are you? fine thanks.",
    " ".join(WORDS),
] * 10


def make_tokenizer():
    return train_chat_tokenizer(CORPUS, vocab_size=400)


def make_processor(tokenizer=None) -> WingsProcessor:
    return tiny_processor(CORPUS, IMAGE_SIZE, IMAGE_SEQ_LENGTH, tokenizer if tokenizer is not None else make_tokenizer())


def save_wings_dir(path, seed: int = 0):
    """A saved WINGS directory (model + processor + tokenizer together) over this module's corpus."""
    return save_tiny_wings(path, seed, processor=make_processor())


def color_image(name: str, size: tuple[int, int] = (40, 24)) -> Image.Image:
    return Image.fromarray(np.full((size[1], size[0], 3), COLORS[name], dtype=np.uint8))


def pixels_to_color(pixels: torch.Tensor) -> str:
    """Which of COLORS a pixel_values [3, H, W] image is (nearest mean colour of the centre)."""
    _, h, w = pixels.shape
    centre = pixels[:, h // 2 - 2 : h // 2 + 2, w // 2 - 2 : w // 2 + 2].mean((1, 2))
    rgb = ((centre * 0.5 + 0.5) * 255).tolist()  # SigLIP normalises with mean = std = 0.5
    return min(COLORS, key=lambda c: sum((a - b) ** 2 for a, b in zip(COLORS[c], rgb, strict=True)))


class OracleLM(nn.Module):
    """A rigged causal LM: it wants to answer each prompt with ``answer_fn(prompt_text, row_pixels)``.

    The reply region starts after the last ``<|im_start|>assistant\\n`` of a row. While the tokens
    generated so far are a prefix of the wanted reply (+ EOS), the next one gets logit ``margin``;
    otherwise logits are flat. Images are split across rows the WINGS way: ``image_seq_length``
    image tokens per image, in order of ``pixel_values`` over the batch.
    """

    def __init__(self, processor: WingsProcessor, answer_fn: Callable[[str, list[torch.Tensor]], str], margin=20.0):
        super().__init__()
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.answer_fn = answer_fn
        self.margin = margin
        self.marker = self.tokenizer("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
        self.vocab = len(self.tokenizer)
        self.calls = 0
        self.dummy = nn.Parameter(torch.zeros(1))  # gives the module a device and dtype
        self.config = SimpleNamespace(image_token_id=processor.image_token_id, image_seq_length=IMAGE_SEQ_LENGTH)

    @property
    def device(self) -> torch.device:
        return self.dummy.device

    def _row_images(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None) -> list[list[torch.Tensor]]:
        counts = ((input_ids == self.processor.image_token_id).sum(1) // IMAGE_SEQ_LENGTH).tolist()
        if pixel_values is None:
            assert sum(counts) == 0, "image tokens without pixel_values"
            return [[] for _ in counts]
        assert sum(counts) == pixel_values.shape[0], f"{sum(counts)} images in ids, {pixel_values.shape[0]} given"
        blocks = torch.split(pixel_values, counts)
        return [list(block) for block in blocks]

    def _wanted(self, row: list[int], images: list[torch.Tensor]) -> tuple[int, list[int]]:
        n = len(self.marker)
        starts = [i + n for i in range(len(row) - n + 1) if row[i : i + n] == self.marker]
        assert starts, "prompt has no assistant marker"
        start = starts[-1]
        prompt = self.tokenizer.decode([t for t in row[:start] if t != self.processor.image_token_id])
        reply = self.tokenizer(self.answer_fn(prompt, images), add_special_tokens=False)["input_ids"]
        return start, reply + [self.tokenizer.eos_token_id]

    def forward(self, input_ids, attention_mask=None, pixel_values=None, logits_to_keep=0, **kwargs):
        self.calls += 1
        batch, length = input_ids.shape
        logits = torch.zeros(batch, length, self.vocab)
        images = self._row_images(input_ids, pixel_values)
        for b in range(batch):
            keep = attention_mask[b].bool() if attention_mask is not None else torch.ones(length, dtype=torch.bool)
            positions = keep.nonzero().flatten().tolist()
            row = input_ids[b, positions].tolist()
            start, wanted = self._wanted(row, images[b])
            for k in range(start - 1, len(row)):
                said = row[start : k + 1]
                if said == wanted[: len(said)] and len(said) < len(wanted):
                    logits[b, positions[k], wanted[len(said)]] = self.margin
        if logits_to_keep:
            logits = logits[:, -logits_to_keep:]
        return SimpleNamespace(logits=logits)

    def generate(self, input_ids, attention_mask=None, pixel_values=None, max_new_tokens=8, **kwargs):
        """Greedy decoding without a cache; finished rows are padded."""
        pad = self.tokenizer.pad_token_id
        eos = self.tokenizer.eos_token_id
        ids = input_ids
        mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
        done = torch.zeros(ids.shape[0], dtype=torch.bool)
        for _ in range(max_new_tokens):
            nxt = self.forward(ids, mask, pixel_values).logits[:, -1].argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
            ids = torch.cat([ids, nxt[:, None]], 1)
            mask = torch.cat([mask, (~done).long()[:, None]], 1)
            done |= nxt == eos
            if done.all():
                break
        return ids


def chat(processor: WingsProcessor, content: str) -> str:
    """A one-turn chat prompt ending with the assistant marker."""
    return processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)


def last_user_message(prompt: str) -> str:
    """The content of the last user turn of a ChatML prompt (as the oracle sees it decoded)."""
    content = prompt.rsplit("<|im_start|>user\n", 1)[-1]
    return content.split("<|im_end|>", 1)[0].strip()
