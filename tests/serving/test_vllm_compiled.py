"""vLLM's default path (no `enforce_eager`): the WINGS decoder is traced once and compiled by inductor, as
vLLM does for its own Qwen2/Llama, and still gives the Hugging Face model's greedy tokens.

The compiled graph runs vLLM's native RoPE (which returns new tensors instead of rotating in place) and
functionalised tensor layouts, so this catches code that only holds in eager mode.
"""

from __future__ import annotations

import pytest

pytest.importorskip("vllm")

from tiny_serving import ENGINE_PROMPTS, engine_greedy, hf_greedy, save_tiny_wings  # noqa: E402

N_TOKENS = 10


@pytest.mark.slow
def test_compiled_engine_matches_hf_generate(tmp_path):
    folder = save_tiny_wings(tmp_path / "routed")
    want = hf_greedy(folder, ENGINE_PROMPTS, N_TOKENS)
    assert engine_greedy(folder, ENGINE_PROMPTS, N_TOKENS, tmp_path, enforce_eager=False) == want
