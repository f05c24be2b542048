"""Shared fixtures of the vLLM tests: one tiny saved WINGS model, its Hugging Face reference, one engine.

An engine start costs ~30 s on CPU, so the offline engine is session-scoped and every parity test
submits to it. vLLM itself is imported inside the fixtures: without it these tests are skipped.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tiny_serving import greedy_with_logprobs, save_tiny_wings

# One engine serves every parity test; its scheduler budget is small so that prompts are prefilled in
# chunks (an image's 16 tokens can straddle two chunks) and its KV blocks hold 32 tokens.
ENGINE_SETTINGS = dict(
    dtype="float32",
    enforce_eager=True,
    max_model_len=512,
    block_size=32,
    max_num_batched_tokens=64,
    max_num_seqs=8,
    enable_chunked_prefill=True,
    disable_chunked_mm_input=False,
    limit_mm_per_prompt={"image": 2},
)


@pytest.fixture(scope="session")
def wings_dir(tmp_path_factory) -> Path:
    """A saved tiny WINGS model (Qwen2 LLM, learners on layers 0 and 2) in the layout saved today."""
    return save_tiny_wings(tmp_path_factory.mktemp("wings-qwen2"))


@pytest.fixture(scope="session")
def hf_generate(wings_dir):
    """Greedy ids from the Hugging Face model: fn(prompt, images, n_tokens) -> (ids, per-step log-softmax rows)."""
    from wings import WingsForConditionalGeneration, WingsProcessor

    model = WingsForConditionalGeneration.from_pretrained(wings_dir).eval()
    processor = WingsProcessor.from_pretrained(wings_dir)
    cache = {}

    def generate(prompt: str, images=(), n_tokens: int = 10):
        key = (prompt, tuple(id(i) for i in images), n_tokens)
        if key not in cache:
            cache[key] = greedy_with_logprobs(model, processor, prompt, list(images), n_tokens)
        return cache[key]

    generate.processor = processor
    generate.model = model
    return generate


@pytest.fixture(scope="session")
def llm(wings_dir):
    """One in-process vLLM engine over the saved directory (found through the plugin entry point)."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # engine core in this process: no spawn, faster start
    from vllm import LLM

    engine = LLM(model=str(wings_dir), **ENGINE_SETTINGS)
    yield engine
    del engine
