"""Routers: the fast SDPA path (image mass as an extra value channel) equals eager attention weights."""

import copy

import torch

from tiny import image_prompt, randomize_learners, tiny_wings
from wings.modeling.router import PositionalRouter, SegmentRouter


def _capture_router_io(model):
    seen = []
    for layer in model.wings_layers:
        layer.router.register_forward_hook(lambda m, inp, out: seen.append((inp[0].detach(), out.detach())))
    return seen


def _padded_two_image_batch():
    a = image_prompt([10, 11, 12], [20, 21], n_images=2)
    b = [13] + image_prompt([14], [22, 23, 24])
    width = max(len(a), len(b))
    ids = torch.tensor([[0] * (width - len(s)) + s for s in (a, b)])
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in (a, b)])
    return ids, mask, torch.randn(3, 3, 32, 32)


def test_sdpa_fast_path_equals_eager(llm_family):
    fast = tiny_wings(llm_family)
    randomize_learners(fast)
    eager = copy.deepcopy(fast)
    eager.set_attn_implementation("eager")
    assert fast.config.text_config._attn_implementation == "sdpa"
    assert eager.config.text_config._attn_implementation == "eager"
    ids, mask, pixels = _padded_two_image_batch()
    seen_fast, seen_eager = _capture_router_io(fast), _capture_router_io(eager)
    with torch.no_grad():
        out_fast = fast(ids, attention_mask=mask, pixel_values=pixels).logits
        out_eager = eager(ids, attention_mask=mask, pixel_values=pixels).logits
    real = mask.bool()
    torch.testing.assert_close(out_fast[real], out_eager[real], rtol=1e-4, atol=1e-5)
    assert len(seen_fast) == len(seen_eager) == 3
    for (mass_f, w_f), (mass_e, w_e) in zip(seen_fast, seen_eager):
        torch.testing.assert_close(mass_f[real], mass_e[real], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(w_f[real], w_e[real], rtol=1e-4, atol=1e-5)


def test_image_mass_is_a_probability_and_zero_before_the_image():
    model = tiny_wings("qwen2")
    randomize_learners(model)
    seen = _capture_router_io(model)
    ids = torch.tensor([image_prompt([10, 11, 12], [20, 21, 22])])
    with torch.no_grad():
        model(ids, pixel_values=torch.randn(1, 3, 32, 32))
    mass, weights = seen[0]
    assert mass.shape == (1, ids.shape[1], 4)
    assert (mass >= 0).all() and (mass <= 1 + 1e-6).all()
    assert mass[0, :3].abs().max() == 0 and mass[0, 3:].min() > 0
    torch.testing.assert_close(weights.sum(-1), torch.ones(1, ids.shape[1]))


def test_segment_router_reads_image_and_text_mass():
    router = SegmentRouter(num_heads=2)
    with torch.no_grad():
        router.linear.weight.zero_()
        router.linear.bias.zero_()
        router.linear.weight[0, :2] = 5.0  # favour the visual learner when the image mass is high
    with torch.no_grad():
        w = router(torch.tensor([[[1.0, 1.0], [0.0, 0.0]]]))
    assert w.shape == (1, 2, 2)
    assert w[0, 0, 0] > 0.99 and abs(float(w[0, 1, 0]) - 0.5) < 1e-6
    torch.testing.assert_close(w.sum(-1), torch.ones(1, 2))


def test_positional_router_shapes_and_limit():
    router = PositionalRouter(max_positions=8)
    weights = torch.softmax(torch.randn(1, 2, 3, 5), -1)
    out = router(weights)
    assert out.shape == (1, 3, 2)
    torch.testing.assert_close(out.sum(-1), torch.ones(1, 3))
    try:
        router(torch.softmax(torch.randn(1, 2, 3, 9), -1))
    except ValueError as err:
        assert "router_max_positions" in str(err)
    else:
        raise AssertionError("a sequence longer than max_positions must be refused")
