"""generate(cache_implementation="static"): the same tokens as the dynamic cache, and a decode step that
torch.compile traces as one graph (no graph breaks, no host syncs)."""

import pytest
import torch
from transformers import CompileConfig

from tiny import FAMILIES, image_prompt, randomize_learners, tiny_family_wings, tiny_wings
from wings import WingsCache, WingsStaticCache

NEW = 6


def _model(llm_family="qwen2", **settings):
    build = tiny_family_wings if llm_family in FAMILIES else tiny_wings
    model = build(llm_family, **settings)
    randomize_learners(model, std=0.3)
    return model


def _generate(model, ids, pixels, mask=None, **kwargs):
    with torch.no_grad():
        return model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids) if mask is None else mask,
            pixel_values=pixels,
            max_new_tokens=NEW,
            min_new_tokens=NEW,
            do_sample=False,
            pad_token_id=0,
            **kwargs,
        )


@pytest.mark.parametrize("num_beams", [1, 3])
def test_static_equals_dynamic(llm_family, num_beams):
    model = _model(llm_family)
    ids = torch.tensor([image_prompt([10, 11, 12], [20, 21, 22])])
    pixels = torch.randn(1, 3, 32, 32)
    dynamic = _generate(model, ids, pixels, num_beams=num_beams)
    static = _generate(model, ids, pixels, num_beams=num_beams, cache_implementation="static")
    assert torch.equal(static, dynamic)


@pytest.mark.parametrize("family", FAMILIES)
def test_static_equals_dynamic_every_family(family):
    """Every family's own attention (q/k norms, softcap, NoPE, multipliers) and learner RoPE through the static
    cache; the 11-token prompt is longer than the sliding windows (6), so sliding layers roll their keys."""
    model = _model(family)
    ids = torch.tensor([image_prompt([10, 11, 12], [20, 21, 22])])
    pixels = torch.randn(1, 3, 32, 32)
    assert torch.equal(_generate(model, ids, pixels, cache_implementation="static"), _generate(model, ids, pixels))


@pytest.mark.parametrize("family", ["qwen3", "gemma3_text"])
def test_static_equals_dynamic_beams_other_families(family):
    model = _model(family)
    ids = torch.tensor([image_prompt([10, 11, 12], [20, 21, 22])])
    pixels = torch.randn(1, 3, 32, 32)
    dynamic = _generate(model, ids, pixels, num_beams=3)
    assert torch.equal(_generate(model, ids, pixels, num_beams=3, cache_implementation="static"), dynamic)


@pytest.mark.parametrize("family", ["llama", "gemma3_text"])
def test_static_equals_dynamic_left_padded_batch_with_two_images(family):
    model = _model(family)
    a = image_prompt([10, 11, 12], [20, 21], n_images=2)  # two images in row 0
    b = [15, 16, 17, 18, 19] + image_prompt([], [23])
    c = [30, 31, 32]  # a text-only row
    rows = (a, b, c)
    width = max(map(len, rows))
    ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    pixels = torch.randn(3, 3, 32, 32)
    dynamic = _generate(model, ids, pixels, mask)
    static = _generate(model, ids, pixels, mask, cache_implementation="static")
    assert torch.equal(static, dynamic)


def test_static_cache_logits_equal_dynamic_step_by_step():
    model = _model("qwen2")
    ids = torch.tensor([image_prompt([10, 11], [12, 13, 14], n_images=2)])
    pixels = torch.randn(2, 3, 32, 32)
    tokens = torch.tensor([[40], [41], [42]])
    with torch.no_grad():
        dynamic, static = WingsCache(config=model.config.text_config), WingsStaticCache(
            config=model.config.text_config, max_cache_len=32)
        out_d = model(ids, pixel_values=pixels, cache=dynamic, use_cache=True).logits
        out_s = model(ids, pixel_values=pixels, cache=static, use_cache=True).logits
        torch.testing.assert_close(out_s, out_d, rtol=1e-5, atol=1e-5)
        for token in tokens:
            step_d = model(token[None], cache=dynamic, use_cache=True).logits
            step_s = model(token[None], cache=static, use_cache=True).logits
            torch.testing.assert_close(step_s, step_d, rtol=1e-5, atol=1e-5)
    # Learner state is preallocated: image K/V exactly, text K/V with room for every later token.
    k_visual = static.learner_kv[("visual", 0)][0]
    k_text = static.learner_kv[("textual", 0)][0]
    n_image = int((ids == 5).sum())
    assert k_visual.shape[2] == n_image and k_text.shape[2] == 32 - n_image


# Qwen3-MoE is left out: its eager experts (transformers' own code) select tokens with a data-dependent
# nonzero, which breaks the graph of the plain LLM alike.
@pytest.mark.parametrize("family", ["qwen2", "qwen3", "gemma2", "gemma3_text", "smollm3", "olmo2", "phi3", "granite"])
def test_decode_step_traces_as_one_graph(family):
    """torch._dynamo.explain of a static-cache decode step: one graph, no breaks (learners with their own RoPE
    tables, NoPE layers, sliding-window layers included)."""
    model = _model(family)
    ids = torch.tensor([image_prompt([10, 11], [12, 13])])
    with torch.no_grad():
        cache = WingsStaticCache(config=model.config.text_config, max_cache_len=24)
        model(ids, pixel_values=torch.randn(1, 3, 32, 32), cache=cache, use_cache=True)
        mask = torch.ones(1, ids.shape[1] + 1, dtype=torch.long)
        positions = torch.tensor([[ids.shape[1]]])
        token = torch.tensor([[40]])
        torch._dynamo.reset()
        explanation = torch._dynamo.explain(model)(
            token, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True
        )
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


@pytest.mark.parametrize("family", ["qwen2", "gemma3_text"])
def test_generate_compiles_the_static_decode_step_fullgraph(family):
    model = _model(family)
    ids = torch.tensor([image_prompt([10, 11, 12], [20, 21, 22])])
    pixels = torch.randn(1, 3, 32, 32)
    expected = _generate(model, ids, pixels)
    config = CompileConfig(fullgraph=True, backend="eager")
    config._compile_all_devices = True  # compile on CPU too
    torch._dynamo.reset()
    compiled = _generate(model, ids, pixels, cache_implementation="static", compile_config=config)
    assert hasattr(model, "_compiled_call")  # generate() really took the compiled path
    assert torch.equal(compiled, expected)


def test_static_equals_dynamic_under_bf16_autocast():
    """Mixed precision (as training and the CUDA benchmark run): prefill's element-wise RoPE and a decode step's
    matmul RoPE must hand the preallocated cache the same dtype."""
    model = _model()
    ids = torch.tensor([image_prompt([10, 11, 12], [20, 21, 22])])
    pixels = torch.randn(1, 3, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        static = _generate(model, ids, pixels, cache_implementation="static")
        dynamic = _generate(model, ids, pixels)
    assert torch.equal(static, dynamic)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("head_dim", [64, 128])
def test_image_mass_channel_width_runs_the_flash_kernel_on_cuda(head_dim):
    """The main attention widens q/k/v by the image-flag channel; the width must keep the flash kernel."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from wings.modeling.attention import mass_channel_width

    width = mass_channel_width(head_dim, torch.device("cuda"))
    assert width % 8 == 0 and width > head_dim
    q, k, v = (torch.randn(1, 4, 256, width, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):  # raises when flash cannot run this shape
        torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=head_dim**-0.5)
