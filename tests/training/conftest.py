"""A tiny 'hub': an LLM directory (with tokenizer), a vision directory (with image processor), LLaVA data."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import Qwen2Config, Qwen2ForCausalLM, SiglipImageProcessorPil, SiglipVisionConfig, SiglipVisionModel

from wings.data.tokenizer import train_chat_tokenizer

COLORS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 230, 20)}


@pytest.fixture(scope="session")
def tiny_hub(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    corpus = [f"what colour is the image? {c}. hello how are you? fine thanks." for c in COLORS] * 10
    tokenizer = train_chat_tokenizer(corpus, vocab_size=300)
    torch.manual_seed(0)
    llm = Qwen2ForCausalLM(
        Qwen2Config(
            hidden_size=32, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2,
            intermediate_size=64, vocab_size=len(tokenizer), max_position_embeddings=128,
            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        )
    )
    llm.save_pretrained(root / "llm")
    tokenizer.save_pretrained(root / "llm")
    vision = SiglipVisionModel(
        SiglipVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=16)
    )
    vision.save_pretrained(root / "vision")
    SiglipImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(root / "vision")
    return root


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
