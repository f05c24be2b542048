"""A tiny 'hub': an LLM directory (with tokenizer), a vision directory (with image processor), LLaVA data."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from PIL import Image

from tiny import make_tiny_hub

COLORS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 230, 20)}


@pytest.fixture(scope="session")
def tiny_hub(tmp_path_factory):
    return make_tiny_hub(tmp_path_factory.mktemp("hub"))


def write_dataset(folder, n_image=12, n_text=4, seed=0, name="data.json"):
    rng = random.Random(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    samples = []
    for i in range(n_image):
        color = rng.choice(list(COLORS))
        path = f"img{i}.png"
        Image.fromarray(np.full((24, 40, 3), COLORS[color], dtype=np.uint8)).save(folder / "images" / path)
        samples.append({"id": f"v{i}", "image": path, "conversations": [
            {"from": "human", "value": "<image>\nwhat colour is the image?"},
            {"from": "gpt", "value": color},
        ]})
    for i in range(n_text):
        samples.append({"id": f"t{i}", "conversations": [
            {"from": "human", "value": "hello how are you?"}, {"from": "gpt", "value": "fine thanks."},
        ]})
    (folder / name).write_text(json.dumps(samples))
    return folder / name, folder / "images"


@pytest.fixture
def dataset(tmp_path):
    return write_dataset(tmp_path)
