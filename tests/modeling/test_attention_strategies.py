"""Each way of running the main attention (`attention.Strategy`) against eager attention, and the selector."""

import pytest
import torch
import torch.nn.functional as F

from tiny import tiny_llm
from wings.modeling.attention import (
    EAGER,
    KERNEL,
    MASS_CHANNEL,
    SINGLE_QUERY,
    AttentionNeeds,
    eager_attention,
    main_attention,
    mass_channel_width,
    select_strategy,
)


def _inputs(length=6, past=3):
    """q [B, 4, T, 16], k/v [B, 2, S, 16] (grouped-query), a causal mask with row 1 left-padded, image flags."""
    torch.manual_seed(0)
    batch, keys = 2, past + length
    q, k, v = torch.randn(batch, 4, length, 16), torch.randn(batch, 2, keys, 16), torch.randn(batch, 2, keys, 16)
    allowed = torch.ones(length, keys, dtype=torch.bool).tril(diagonal=past).expand(batch, 1, length, keys).clone()
    allowed[1, ..., :2] = False
    mask = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)
    flags = (torch.rand(batch, keys) > 0.5).float()
    return q, k, v, mask, flags


@pytest.fixture(scope="module")
def self_attn():
    return tiny_llm("llama").model.layers[0].self_attn


def _reference(self_attn, q, k, v, mask, flags):
    out, weights = eager_attention(self_attn, q, k, v, mask, scaling=0.25)
    return out, torch.einsum("bhts,bs->bth", weights, flags), weights


@pytest.mark.parametrize("strategy", [EAGER, KERNEL, MASS_CHANNEL, SINGLE_QUERY], ids=lambda s: s.name)
def test_each_strategy_equals_eager_attention(self_attn, strategy):
    q, k, v, mask, flags = _inputs(length=1 if strategy is SINGLE_QUERY else 6)
    ref_out, ref_mass, ref_weights = _reference(self_attn, q, k, v, mask, flags)
    pad = mass_channel_width(16, q.device) - 16 if strategy.widens else 0
    if pad:  # the queries come with their zero channels (rotated into place in the layer)
        q = F.pad(q, (0, pad))
    common = dict(scaling=0.25, dropout=0.0, sliding_window=None)
    out, mass, weights = strategy.attend(self_attn, q, k, v, mask, flags, common, "sdpa", pad)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mass, ref_mass, rtol=1e-5, atol=1e-5)
    if strategy is EAGER:
        torch.testing.assert_close(weights, ref_weights)
    else:
        assert weights is None
    # Without flags no mass is asked for (the eager and kernel strategies; the others exist to give it).
    if strategy in (EAGER, KERNEL):
        out, mass, _ = strategy.attend(self_attn, q, k, v, mask, None, common, "sdpa", pad)
        assert mass is None
        torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)


def test_select_strategy():
    flags = torch.zeros(1, 3)
    mass, weights, plain = AttentionNeeds(key_is_image=flags), AttentionNeeds(need_weights=True), AttentionNeeds()
    assert select_strategy("sdpa", False, mass, 5) is MASS_CHANNEL
    assert select_strategy("sdpa", False, mass, 1) is SINGLE_QUERY
    assert select_strategy("sdpa", False, weights, 1) is EAGER
    assert select_strategy("sdpa", True, mass, 5) is EAGER  # SDPA cannot cap logits
    assert select_strategy("eager", False, plain, 5) is EAGER
    assert select_strategy("flash_attention_2", True, mass, 5) is KERNEL
    assert select_strategy("sdpa", False, plain, 5) is KERNEL


@pytest.mark.parametrize("length", [1, 5])
def test_main_attention_gives_the_eager_mass_and_output(self_attn, length):
    """Through the whole layer attention (projections, RoPE, o_proj): SDPA with the mass equals eager."""
    torch.manual_seed(1)
    x = torch.randn(1, length, 64)
    cos, sin = torch.randn(1, length, 16), torch.randn(1, length, 16)
    flags = (torch.rand(1, length) > 0.5).float()
    fast = main_attention(self_attn, x, (cos, sin), None, None, needs=AttentionNeeds(key_is_image=flags))
    slow = main_attention(self_attn, x, (cos, sin), None, None,
                          needs=AttentionNeeds(key_is_image=flags, need_weights=True))
    torch.testing.assert_close(fast[0], slow[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast[1], slow[1], rtol=1e-5, atol=1e-5)
    assert fast[2] is None and slow[2].shape == (1, 4, length, length)
