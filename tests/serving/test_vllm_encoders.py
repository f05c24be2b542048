"""Every vision encoder WINGS trains with is served: vLLM's greedy tokens and log-probabilities equal Hugging Face
`generate`'s for SigLIP, CLIP (its CLS token dropped) and SigLIP 2 NaFlex (patches packed with their grid).

SigLIP 2 at a fixed resolution ships in SigLIP's format (`siglip_vision_model`), so the SigLIP model covers it.
The engines run one after the other in one subprocess; each gets a text-only prompt, one image and two images,
submitted together (a batch).
"""

from __future__ import annotations

import pytest

pytest.importorskip("vllm")

from tiny_serving import ENGINE_PROMPTS, engines_greedy, hf_greedy, save_tiny_wings  # noqa: E402

N_TOKENS = 6
ENCODERS = ("clip", "siglip2")


@pytest.mark.slow
def test_every_encoder_matches_hf_generate(tmp_path):
    folders = [save_tiny_wings(tmp_path / encoder, encoder=encoder) for encoder in ENCODERS]
    served = engines_greedy(folders, ENGINE_PROMPTS, N_TOKENS, tmp_path)
    for encoder, folder, got in zip(ENCODERS, folders, served):
        want = hf_greedy(folder, ENGINE_PROMPTS, N_TOKENS, with_logprobs=True)
        assert [ids for ids, _ in got] == [ids for ids, _ in want], encoder
        for (_, got_logprobs), (_, want_logprobs) in zip(got, want):
            assert got_logprobs == pytest.approx(want_logprobs, abs=2e-4), encoder
