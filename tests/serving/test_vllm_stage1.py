"""A stage-1 model (`learner_mode="visual_only"`: visual learners only, no router) served by vLLM gives the
Hugging Face model's greedy tokens; its checkpoint also holds untrained textual learners and routers.

Its engine runs in a subprocess of its own, since the session's engine already lives in this process.
"""

from __future__ import annotations

import pytest

pytest.importorskip("vllm")

from tiny_serving import engine_greedy, hf_greedy, save_tiny_wings  # noqa: E402

USER, END = "<|im_start|>user\n", "<|im_end|>\n<|im_start|>assistant\n"
PROMPTS = [(USER + "hello, how are you?" + END, 0), (USER + "fine <image>\nwhat colour?" + END, 1),
           (USER + "<image>\nand <image>\nit is" + END, 2)]
N_TOKENS = 10


def test_visual_only_model_matches_hf_generate(tmp_path):
    folder = save_tiny_wings(tmp_path / "stage1", learner_mode="visual_only")
    assert engine_greedy(folder, PROMPTS, N_TOKENS, tmp_path) == hf_greedy(folder, PROMPTS, N_TOKENS)
