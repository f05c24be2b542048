"""vLLM's default path (no `enforce_eager`): the WINGS decoder is traced once and compiled by inductor, as
vLLM does for its own Qwen2/Llama, and still gives the Hugging Face model's greedy tokens.

The compiled graph runs vLLM's native RoPE (which returns new tensors instead of rotating in place) and
functionalised tensor layouts, so this catches code that only holds in eager mode.
"""

from __future__ import annotations

import pytest

pytest.importorskip("vllm")

from tiny_serving import engine_greedy, hf_greedy, save_tiny_wings  # noqa: E402

USER, END = "<|im_start|>user\n", "<|im_end|>\n<|im_start|>assistant\n"
PROMPTS = [(USER + "hello, how are you?" + END, 0), (USER + "fine thanks <image>\nwhat colour is the circle?" + END, 1),
           (USER + "<image>\nand <image>\nwhat colour is the square? it is" + END, 2)]
N_TOKENS = 10


@pytest.mark.slow
def test_compiled_engine_matches_hf_generate(tmp_path):
    folder = save_tiny_wings(tmp_path / "routed")
    want = hf_greedy(folder, PROMPTS, N_TOKENS)
    assert engine_greedy(folder, PROMPTS, N_TOKENS, tmp_path, enforce_eager=False) == want
