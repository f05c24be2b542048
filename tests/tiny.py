"""Tiny models shared by the tests. Everything is built from configs offline; seeds are fixed."""

from __future__ import annotations

import torch
from transformers import (
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    SiglipVisionConfig,
    SiglipVisionModel,
)

from wings import WingsForConditionalGeneration

IMAGE_TOKEN_ID = 5
VOCAB = 120
IMAGE_SIZE, PATCH = 32, 16  # 4 image tokens per image


def tiny_llm(family: str = "qwen2", seed: int = 0):
    torch.manual_seed(seed)
    common = dict(
        hidden_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_hidden_layers=3,
        intermediate_size=96,
        vocab_size=VOCAB,
        max_position_embeddings=256,
        pad_token_id=0,
        eos_token_id=2,
        bos_token_id=1,
    )
    if family == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(**common)).eval()
    if family == "llama":
        return LlamaForCausalLM(LlamaConfig(**common)).eval()
    raise ValueError(family)


def tiny_vision(family: str = "siglip", seed: int = 1):
    torch.manual_seed(seed)
    common = dict(
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=IMAGE_SIZE,
        patch_size=PATCH,
    )
    if family == "siglip":
        return SiglipVisionModel(SiglipVisionConfig(**common)).eval()
    return CLIPVisionModel(CLIPVisionConfig(**common)).eval()


def tiny_wings(llm_family="qwen2", vision_family="siglip", **settings) -> WingsForConditionalGeneration:
    llm, vision = tiny_llm(llm_family), tiny_vision(vision_family)
    settings.setdefault("learner_rank", 8)
    torch.manual_seed(2)
    return WingsForConditionalGeneration.from_llm_and_vision(llm, vision, image_token_id=IMAGE_TOKEN_ID, **settings).eval()


def randomize_learners(model: WingsForConditionalGeneration, std: float = 0.2, seed: int = 3) -> None:
    """Give every learner and router non-zero weights so that learner paths matter."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in model.wings_layers:
            for module in (layer.visual_learner, layer.textual_learner, layer.router):
                for p in module.parameters():
                    p.copy_(torch.randn(p.shape, generator=gen) * std)


def image_prompt(text_before: list[int], text_after: list[int], n_images: int = 1, seq: int = 4) -> list[int]:
    ids = list(text_before)
    for _ in range(n_images):
        ids += [IMAGE_TOKEN_ID] * seq + [7]
    return ids + list(text_after)
