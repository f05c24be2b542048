"""Tiny LLaVA-format data for the data tests: PNGs, JSON/JSONL files, an offline tokenizer and processor.

(A helper module rather than a conftest.py: a second `conftest` module would shadow `tests/conftest.py`
for the tests that import from it.)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
from PIL import Image

from wings.data.tokenizer import train_chat_tokenizer
from tiny import tiny_processor
from wings.processing import WingsProcessor

IMAGE_SEQ_LENGTH = 4
IMAGE_SIZE = 32
COLORS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}
CORPUS = [
    "What is in the image? A red square on a grey background.",
    "Describe the picture. There is a green circle and a blue triangle.",
    "Compare the two images: the first is red, the second is green.",
    "You are a helpful assistant. Answer briefly and precisely.",
    "How many shapes are there? There are three shapes in total.",
] * 4


def make_tokenizer():
    return train_chat_tokenizer(CORPUS, vocab_size=400)


def make_processor(tokenizer=None) -> WingsProcessor:
    return tiny_processor(CORPUS, IMAGE_SIZE, IMAGE_SEQ_LENGTH, tokenizer if tokenizer is not None else make_tokenizer())


@pytest.fixture(scope="module")
def processor() -> WingsProcessor:
    return make_processor()


def write_png(path: Path, color: tuple[int, int, int], size: tuple[int, int] = (48, 32)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """imgs/{red,green,blue}.png (non-square, so padding shows) and imgs/sub/blue_tall.png."""
    folder = tmp_path / "imgs"
    for name, color in COLORS.items():
        write_png(folder / f"{name}.png", color)
    write_png(folder / "sub" / "blue_tall.png", COLORS["blue"], size=(20, 40))
    return folder


def turn(speaker: str, value) -> dict:
    return {"from": speaker, "value": value}


def valid_samples() -> list[dict]:
    """Single image, text-only, two images in two turns with a system turn, one image mid-text."""
    return [
        {
            "id": "one",
            "image": "red.png",
            "conversations": [turn("human", "<image>\nWhat is in the image?"), turn("gpt", "A red square.")],
        },
        {
            "id": "text",
            "conversations": [
                turn("human", "How many shapes are there?"),
                turn("gpt", "There are three shapes."),
                turn("human", "Answer briefly."),
                turn("gpt", "Three."),
            ],
        },
        {
            "id": "two",
            "image": ["green.png", "sub/blue_tall.png"],
            "conversations": [
                turn("system", "You are a helpful assistant."),
                turn("human", "Describe the picture <image> briefly."),
                turn("gpt", "A green circle."),
                turn("human", "And this one?\n<image>"),
                turn("gpt", "A blue triangle."),
            ],
        },
    ]


def write_json(path: Path, samples) -> Path:
    path.write_text(json.dumps(samples, indent=1))
    return path


def write_jsonl(path: Path, samples) -> Path:
    path.write_text("".join(json.dumps(s) + "\n" for s in samples))
    return path
