"""The fast path (SDPA with the image-flag channel, query blocks, shared masks, cached decoding) computes what
the slow, explicit paths compute."""

import copy
import math

import pytest
import torch

from tiny import IMAGE_TOKEN_ID, image_prompt, randomize_learners, tiny_wings
from wings import WingsCache
from wings.modeling import masked_attention
from wings.modeling.attention import eager_attention, single_query_attention
from wings.modeling.lorra import LoRRA
from wings.modeling.masked_attention import CrossAttentionMask
from wings.modeling.rope import apply_rope, rope_tables, rotate_half


def _padded_batch():
    """Two left-padded rows, three images in all (two in the first row), images in the middle of the text."""
    a = image_prompt([10, 11, 12], [20, 21, 22], n_images=2)
    b = [13, 14] + image_prompt([15], [23, 24, 25, 26])
    width = max(len(a), len(b))
    ids = torch.tensor([[0] * (width - len(s)) + s for s in (a, b)])
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in (a, b)])
    return ids, mask, torch.randn(3, 3, 32, 32)


def _capture_router_io(model):
    seen = []
    for layer in model.wings_layers:
        layer.router.register_forward_hook(lambda m, inp, out: seen.append((inp[0].detach(), out.detach())))
    return seen


@pytest.mark.parametrize("block", [4, 10_000])
def test_fast_path_equals_eager_with_padding_and_several_images(llm_family, block, monkeypatch):
    """block=4 splits every learner's queries into blocks that read only the keys they can see."""
    monkeypatch.setattr(masked_attention, "QUERY_BLOCK", block)
    torch.manual_seed(0)
    fast = tiny_wings(llm_family)
    randomize_learners(fast)
    eager = copy.deepcopy(fast)
    eager.set_attn_implementation("eager")
    ids, mask, pixels = _padded_batch()
    seen_fast, seen_eager = _capture_router_io(fast), _capture_router_io(eager)
    with torch.no_grad():
        out_fast = fast(ids, attention_mask=mask, pixel_values=pixels).logits
        out_eager = eager(ids, attention_mask=mask, pixel_values=pixels).logits
    real = mask.bool()
    torch.testing.assert_close(out_fast[real], out_eager[real], rtol=1e-4, atol=1e-5)
    assert len(seen_fast) == len(seen_eager) == len(fast.wings_layers)
    for (mass_f, w_f), (mass_e, w_e) in zip(seen_fast, seen_eager):
        torch.testing.assert_close(mass_f[real], mass_e[real], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(w_f[real], w_e[real], rtol=1e-4, atol=1e-5)


def _dense_reference(m: LoRRA, hidden, cos, sin, keys, values, visible):
    """Explicit softmax over all keys (no blocks, no kernels); rows that see nothing give zero."""
    q = m.q(hidden)
    q = apply_rope(m._heads(q), cos, sin)
    scores = q @ keys.transpose(-1, -2) / math.sqrt(m.head_dim)
    scores = scores.masked_fill(~visible[:, None], float("-inf"))
    weights = torch.nan_to_num(torch.softmax(scores, -1))
    out = (weights @ values).transpose(1, 2).reshape(hidden.shape)
    return m.o_up(m.o_down(out))


def test_query_blocks_equal_dense_attention(monkeypatch):
    monkeypatch.setattr(masked_attention, "QUERY_BLOCK", 3)
    torch.manual_seed(0)
    m = LoRRA(16, 2, 4)
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.3)
    B, T, N = 2, 11, 7
    hidden, feats = torch.randn(B, T, 16), torch.randn(B, N, 16)
    q_pos = torch.stack([torch.arange(T), torch.arange(T) + 2])
    k_pos = torch.tensor([[0, 1, 4, 5, 6, 9, 10], [3, 4, 5, 0, 0, 0, 0]])
    k_valid = torch.tensor([[True] * 7, [True, True, True, False, False, False, False]])
    visible = (k_pos[:, None, :] <= q_pos[:, :, None]) & k_valid[:, None, :]
    angles = q_pos[..., None].float() * torch.linspace(0.1, 1.0, 4)
    cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)
    k_angles = k_pos[..., None].float() * torch.linspace(0.1, 1.0, 4)
    with torch.no_grad():
        keys, values = m.keys_values(feats, torch.cat([k_angles.cos()] * 2, -1), torch.cat([k_angles.sin()] * 2, -1))
        prepared = CrossAttentionMask(visible)
        assert len(prepared.query_blocks()) > 1 and prepared.query_blocks()[0][2] < N  # blocks skip keys
        ours = m(hidden, rope_tables(cos, sin), keys, values, prepared)
        ref = _dense_reference(m, hidden, cos, sin, keys, values, visible)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    assert ours[1, 0].abs().max() == 0  # row 1's first query (position 2) sees no key


def test_apply_rope_equals_rotate_half_formula():
    torch.manual_seed(0)
    x, cos, sin = torch.randn(2, 3, 5, 8), torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    expected = x * cos[:, None] + rotate_half(x) * sin[:, None]
    torch.testing.assert_close(apply_rope(x, cos, sin), expected)
    padded = apply_rope(x, cos, sin, pad=3)
    assert padded.shape == (2, 3, 5, 11) and padded[..., 8:].abs().max() == 0
    torch.testing.assert_close(padded[..., :8], expected)


def test_single_query_attention_equals_eager_with_gqa():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 4, 1, 8), torch.randn(2, 2, 9, 8), torch.randn(2, 2, 9, 8)
    flags = (torch.rand(2, 9) > 0.5).float()
    mask = torch.ones(2, 1, 1, 9, dtype=torch.bool)
    mask[1, ..., :3] = False  # left padding of row 1
    module = torch.nn.Module().eval()
    out, mass = single_query_attention(q, k, v, mask, flags, 0.3)
    ref_out, weights = eager_attention(module, q, k, v, mask, scaling=0.3)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(mass, torch.einsum("bhts,bs->bth", weights, flags))


def test_cached_decode_equals_uncached_segment_router():
    """Prefill + one token at a time through the cache gives the logits of full recomputation, step by step."""
    model = tiny_wings("qwen2")
    randomize_learners(model, std=0.3)
    ids, mask, pixels = _padded_batch()
    steps = 5
    torch.manual_seed(1)
    new_tokens = torch.randint(10, 100, (ids.shape[0], steps))
    with torch.no_grad():
        cache = WingsCache(config=model.config.text_config)
        out = model(ids, attention_mask=mask, pixel_values=pixels, cache=cache, use_cache=True)
        cached = [out.logits[:, -1]]
        full_ids, full_mask = ids, mask
        for i in range(steps):
            full_ids = torch.cat([full_ids, new_tokens[:, i : i + 1]], 1)
            full_mask = torch.cat([full_mask, torch.ones_like(new_tokens[:, :1])], 1)
            step = model(new_tokens[:, i : i + 1], attention_mask=full_mask, cache=cache, use_cache=True)
            cached.append(step.logits[:, -1])
        full = model(full_ids, attention_mask=full_mask, pixel_values=pixels, use_cache=False).logits
    uncached = [full[:, ids.shape[1] - 1 + i] for i in range(steps + 1)]
    torch.testing.assert_close(torch.stack(cached), torch.stack(uncached), rtol=1e-4, atol=1e-5)


def test_decode_steps_do_not_recompute_image_keys(monkeypatch):
    model = tiny_wings("llama")
    randomize_learners(model)
    calls = {"visual": [], "textual": []}
    for layer in model.wings_layers:
        for kind, learner in (("visual", layer.visual_learner), ("textual", layer.textual_learner)):
            original = learner.project_keys

            def counting(features, rope, kind=kind, original=original):
                calls[kind].append(features.shape[1])
                return original(features, rope)

            monkeypatch.setattr(learner, "project_keys", counting)
    ids = torch.tensor([image_prompt([10, 11], [12, 13], n_images=2)])
    n_image = int((ids == IMAGE_TOKEN_ID).sum())
    n_layers = len(model.wings_layers)
    with torch.no_grad():
        cache = WingsCache(config=model.config.text_config)
        out = model(ids, pixel_values=torch.randn(2, 3, 32, 32), cache=cache, use_cache=True)
        assert calls["visual"] == [n_image] * n_layers
        assert calls["textual"] == [ids.shape[1] - n_image] * n_layers
        lengths = {slot: kv[0].shape[2] for slot, kv in cache.learner_kv.items()}
        token = out.logits[:, -1:].argmax(-1)
        for step in range(1, 7):
            calls["visual"].clear()
            calls["textual"].clear()
            token = model(token, cache=cache, use_cache=True).logits[:, -1:].argmax(-1)
            assert calls["visual"] == []  # image K/V are never recomputed
            assert calls["textual"] == [1] * n_layers  # one new text key per layer
            for (kind, layer_idx), (k, v) in cache.learner_kv.items():
                grown = step if kind == "textual" else 0
                assert k.shape[2] == v.shape[2] == lengths[(kind, layer_idx)] + grown


def test_learner_cache_appends_in_place_and_matches_concatenation():
    cache = WingsCache()
    torch.manual_seed(0)
    first = (torch.randn(2, 2, 5, 4), torch.randn(2, 2, 5, 4))
    cache.update_learner("textual", 0, *first)
    reference_k, reference_v = first
    storages = set()
    for _ in range(100):
        new = (torch.randn(2, 2, 1, 4), torch.randn(2, 2, 1, 4))
        k, v = cache.update_learner("textual", 0, *new)
        reference_k, reference_v = torch.cat([reference_k, new[0]], 2), torch.cat([reference_v, new[1]], 2)
        assert torch.equal(k, reference_k) and torch.equal(v, reference_v)
        storages.add(k.data_ptr())
    assert len(storages) <= 8  # geometric growth: a handful of reallocations, not one copy per step
    empty = torch.zeros(2, 2, 0, 4)
    k, v = cache.update_learner("textual", 0, empty, empty)
    assert k.shape[2] == 105
    cache.reorder_cache(torch.tensor([1, 0]))
    torch.testing.assert_close(cache.learner_kv[("textual", 0)][0], reference_k[[1, 0]])
