"""Tensor parallelism: the same saved model served with `tensor_parallel_size=2` (two CPU worker processes,
the LLM split by vLLM's parallel layers, each learner split by heads, the router gathering the heads' image
mass) gives the Hugging Face model's greedy tokens and log-probabilities.
"""

from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("vllm")

from tiny_serving import ENGINE_PROMPTS, engine_greedy, hf_greedy, save_tiny_wings  # noqa: E402

N_TOKENS = 8


@pytest.mark.slow
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="one CPU per tensor-parallel rank")
def test_two_ranks_match_hf_generate(tmp_path):
    folder = save_tiny_wings(tmp_path / "tp")  # 4 heads / 2 KV heads: each rank holds 2 / 1 and 2 learner heads
    want = hf_greedy(folder, ENGINE_PROMPTS, N_TOKENS, with_logprobs=True)
    got = engine_greedy(folder, ENGINE_PROMPTS, N_TOKENS, tmp_path, tensor_parallel_size=2, with_logprobs=True)
    for (ids, logprobs), (want_ids, want_logprobs) in zip(got, want):
        assert ids == want_ids
        torch.testing.assert_close(torch.tensor(logprobs), torch.tensor(want_logprobs), rtol=0, atol=2e-4)
