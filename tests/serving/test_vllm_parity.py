"""vLLM serves a WINGS model with the Hugging Face model's greedy tokens (and log-probabilities).

The tiny model's learners are random and non-zero, so equal tokens need the learners computed
exactly: modality-restricted visibility, zero visual output before the first image, the segment
router's image mass, paged learner caches across KV blocks and prefill chunks.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("vllm")

from tiny_serving import sample_image  # noqa: E402

N_TOKENS = 10
USER, END = "<|im_start|>user\n", "<|im_end|>\n<|im_start|>assistant\n"
LONG_TEXT = " ".join(["what colour is the circle? it is red. hello, how are you? fine thanks."] * 4)

PROMPTS = {
    "text": (USER + "hello, how are you?" + END, []),
    "one_image": (USER + "<image>\nwhat colour is the square?" + END, [sample_image(0)]),
    "two_images": (USER + "<image>\nand <image>\nwhat colour is the circle? it is" + END,
                   [sample_image(1), sample_image(2, (20, 50))]),
    "text_then_image": (USER + "fine thanks, and you? <image>\nit is" + END, [sample_image(3, (32, 32))]),
    # 100+ tokens: spans several 32-token KV blocks and two 64-token prefill chunks.
    "long_text": (USER + LONG_TEXT + END, []),
    # The image starts at token ~50, so with a 64-token chunk budget its 16 tokens straddle two chunks.
    "image_split_by_chunk": (USER + LONG_TEXT[:150] + " <image>\nwhat colour?" + END, [sample_image(4)]),
}


def vllm_request(prompt: str, images: list) -> dict:
    request = {"prompt": prompt}
    if images:
        request["multi_modal_data"] = {"image": images}
    return request


def run(llm, names: list[str]):
    from vllm import SamplingParams

    params = SamplingParams(temperature=0, max_tokens=N_TOKENS, min_tokens=N_TOKENS, logprobs=0)
    outputs = llm.generate([vllm_request(*PROMPTS[n]) for n in names], params, use_tqdm=False)
    return [out.outputs[0] for out in outputs]


def check_against_hf(hf_generate, name: str, output) -> None:
    ids, logprobs = hf_generate(*PROMPTS[name], n_tokens=N_TOKENS)
    assert list(output.token_ids) == ids, f"{name}: vLLM {list(output.token_ids)} != HF {ids}"
    got = torch.tensor([step[token].logprob for step, token in zip(output.logprobs, ids)])
    want = torch.stack([row[token] for row, token in zip(logprobs, ids)])
    torch.testing.assert_close(got, want, rtol=0, atol=2e-4, msg=f"{name}: log-probabilities differ")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["text", "one_image", "two_images", "long_text", "image_split_by_chunk"])
def test_single_prompt_matches_hf_generate(llm, hf_generate, name):
    (output,) = run(llm, [name])
    check_against_hf(hf_generate, name, output)


@pytest.mark.slow
def test_eight_mixed_prompts_at_once_match_hf_generate(llm, hf_generate):
    names = ["text", "one_image", "two_images", "text_then_image", "long_text", "image_split_by_chunk",
             "one_image", "text"]
    for name, output in zip(names, run(llm, names)):
        check_against_hf(hf_generate, name, output)


@pytest.mark.slow
def test_learners_matter_for_these_prompts(hf_generate):
    """Parity means something: with the learners switched off the HF model answers differently."""
    model, processor = hf_generate.model, hf_generate.processor
    changed = 0
    for name in ("one_image", "two_images", "text"):
        prompt, images = PROMPTS[name]
        inputs = processor(prompt, images=images or None)
        saved = {}
        with torch.no_grad():
            for i, layer in enumerate(model.wings_layers):
                for kind in ("visual_learner", "textual_learner"):
                    up = getattr(layer, kind).o_up.weight
                    saved[i, kind] = up.clone()
                    up.zero_()
            model.eval()  # repacks the inference weights after the in-place edit (wings.modeling.packing)
            try:
                plain = model.generate(**inputs, max_new_tokens=N_TOKENS, min_new_tokens=N_TOKENS, do_sample=False)
            finally:
                for (i, kind), weight in saved.items():
                    getattr(model.wings_layers[i], kind).o_up.weight.copy_(weight)
                model.eval()
        plain = plain[0, inputs["input_ids"].shape[1]:].tolist()
        changed += plain != hf_generate(prompt, images, n_tokens=N_TOKENS)[0]
    assert changed >= 2
