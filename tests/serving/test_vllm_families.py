"""LLM families beyond the Qwen2 of the other tests: vLLM's greedy tokens equal Hugging Face `generate`'s.

Llama (no q/k/v biases), Qwen3 (per-head q/k RMSNorm, no biases) and Mistral, the latter two with an explicit
head_dim twice the learners' d/H, so the main attention and the learners rotate with tables of different
widths. Layer 1 has no learners, so vLLM's own decoder layer of the family runs there.
"""

from __future__ import annotations

import pytest

pytest.importorskip("vllm")

from tiny_serving import ENGINE_PROMPTS, engine_greedy, hf_greedy, save_tiny_wings  # noqa: E402

N_TOKENS = 8


@pytest.mark.slow
@pytest.mark.parametrize("family", ["llama", "qwen3", "mistral"])
def test_family_matches_hf_generate(family, tmp_path):
    folder = save_tiny_wings(tmp_path / family, family=family)
    want = hf_greedy(folder, ENGINE_PROMPTS, N_TOKENS, with_logprobs=True)
    got = engine_greedy(folder, ENGINE_PROMPTS, N_TOKENS, tmp_path, with_logprobs=True)
    assert [ids for ids, _ in got] == [ids for ids, _ in want]
    for (_, got_logprobs), (_, want_logprobs) in zip(got, want):
        assert got_logprobs == pytest.approx(want_logprobs, abs=2e-4)
