"""Every LLM family the plugin serves: vLLM's greedy tokens and log-probabilities equal Hugging Face `generate`'s.

Each family has what distinguishes it switched on (`tiny_serving.FAMILY_LLMS`): Llama with grouped-query
attention at 8 / 2 heads of 32 channels; Qwen3's per-head q/k norms at a head size of 128 and Mistral's sliding
window at 64, both other than the learners' d/H (the main attention and the learners rotate with tables of
different widths); Ministral's sliding and full layers; Phi-3's fused qkv_proj and gate_up_proj; Granite's
embedding, attention, residual and logits multipliers; OLMo 2's post-norms and q/k norms over the projection;
SmolLM3's NoPE layers (layer 0 with RoPE, 1 and 2 without); Gemma 3's sandwich norms (Gemma's 1 + w RMSNorm),
sqrt(d) embedding scale, query_pre_attn_scalar, per-head q/k norms and local/global layers with their own
windows and RoPE bases (the learners rotate with their layer's); Gemma 2's attention and final logit softcaps; Qwen3-MoE's experts through vLLM's fused MoE (layers 0 and 2
sparse, layer 1 dense). Layer 1 has no learners, so vLLM's own decoder layer
of the family runs there (WINGS' own layer, without learners, for OLMo 2 and SmolLM3, which vLLM serves only
through its Transformers backend). Qwen2 is the model of the other tests. The engines run one after the
other in one subprocess, each on a text-only prompt, one image and two images submitted together (a batch).
"""

from __future__ import annotations

import pytest

pytest.importorskip("vllm")

from tiny_serving import ENGINE_PROMPTS, engines_greedy, hf_greedy, save_tiny_wings  # noqa: E402

N_TOKENS = 6
FAMILIES = ("llama", "qwen3", "mistral", "ministral", "phi3", "granite", "olmo2", "smollm3", "gemma3_text", "gemma2", "qwen3_moe")


@pytest.mark.slow
def test_every_family_matches_hf_generate(tmp_path):
    folders = [save_tiny_wings(tmp_path / family, family=family) for family in FAMILIES]
    served = engines_greedy(folders, ENGINE_PROMPTS, N_TOKENS, tmp_path)
    failures = []
    for family, folder, got in zip(FAMILIES, folders, served):
        want = hf_greedy(folder, ENGINE_PROMPTS, N_TOKENS, with_logprobs=True)
        if [ids for ids, _ in got] != [ids for ids, _ in want]:
            failures.append(f"{family}: tokens {[ids for ids, _ in got]} != HF {[ids for ids, _ in want]}")
            continue
        worst = max(abs(a - b) for (_, g), (_, w) in zip(got, want) for a, b in zip(g, w))
        if worst > 2e-4:
            failures.append(f"{family}: log-probabilities differ by {worst:.2e}")
    assert not failures, "\n".join(failures)
