"""Images at their own size in vLLM: each image is replaced by its own number of tokens, and the greedy tokens
equal Hugging Face `generate`'s for one batch with images of three shapes, tiled ("anyres", with chunked
prefill cutting through the tiled images) and SigLIP 2 NaFlex at native resolution ("native")."""

from __future__ import annotations

import pytest

pytest.importorskip("vllm")

from tiny_serving import END, USER, engines_greedy, greedy_with_logprobs, sample_image, save_tiny_wings  # noqa: E402
from wings import WingsForConditionalGeneration, WingsProcessor  # noqa: E402

N_TOKENS = 5
PROMPTS = [
    (USER + "<image>\nwhat colour is the circle?" + END, 1),
    (USER + "fine thanks <image>\nand <image>\nwhat colour is the square? it is" + END, 2),
    (USER + "<image>\nhello, how are you?" + END, 1),
]
SIZES = [[(40, 28)], [(20, 64), (50, 50)], [(64, 24)]]  # (width, height): wide, tall, square, wider
LAYOUTS = {"anyres": dict(encoder="siglip", image_layout="anyres"),
           "native": dict(encoder="siglip2", image_layout="native", max_num_patches=24)}


def hf_reference(folder, prompts, sizes, n_tokens):
    model = WingsForConditionalGeneration.from_pretrained(folder).eval()
    processor = WingsProcessor.from_pretrained(folder)
    results = []
    for (prompt, n), row in zip(prompts, sizes):
        images = [sample_image(i, tuple(row[i])) for i in range(n)]
        ids, rows = greedy_with_logprobs(model, processor, prompt, images, n_tokens)
        results.append((ids, [rows[k, t].item() for k, t in enumerate(ids)], [processor.image_token_count(i) for i in images]))
    return results


@pytest.mark.slow
def test_vllm_equals_hf_generate_for_images_of_three_shapes(tmp_path):
    folders = [save_tiny_wings(tmp_path / name, **settings) for name, settings in LAYOUTS.items()]
    # 48-token steps: the prompts (27-115 tokens, most of them image tokens) are prefilled in chunks that cut
    # through their images.
    served = engines_greedy(folders, PROMPTS, N_TOKENS, tmp_path, image_sizes=SIZES, max_num_batched_tokens=48,
                            enable_chunked_prefill=True)
    for name, folder, got in zip(LAYOUTS, folders, served):
        want = hf_reference(folder, PROMPTS, SIZES, N_TOKENS)
        counts = [c for *_, per_image in want for c in per_image]
        # The shapes give different token counts (NaFlex: 4x6 and 6x4 patch grids are both 24 tokens).
        assert len(set(counts)) >= (3 if name == "anyres" else 2), (name, counts)
        assert [ids for ids, _ in got] == [ids for ids, _, _ in want], name
        for (_, got_logprobs), (_, want_logprobs, _) in zip(got, want):
            assert got_logprobs == pytest.approx(want_logprobs, abs=2e-4), name
