"""The decode fast path (`decode.mix_short`) computes what the learner modules and `mix_outputs` compute."""

import pytest
import torch

from wings.modeling.decode import mix_short, pair_weights
from wings.modeling.lorra import LoRRA, mix_outputs
from wings.modeling.masked_attention import CrossAttentionMask, PairMask
from wings.modeling.rope import rope_tables


def _learner(seed):
    torch.manual_seed(seed)
    learner = LoRRA(16, 2, 4)
    for p in learner.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return learner


def _tables(positions):
    angles = positions[..., None].float() * torch.linspace(0.1, 1.0, 4)
    return torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)


def _learner_inputs(learner, n_keys, length, batch=2, seed=0):
    """K/V of n_keys keys at positions 0.. and their visibility [B, T, N]: the last row sees one key fewer (with
    one key, none)."""
    torch.manual_seed(seed)
    k_pos = torch.arange(n_keys).expand(batch, -1)
    k, v = learner.keys_values(torch.randn(batch, n_keys, 16), *_tables(k_pos))
    visible = torch.ones(batch, length, n_keys, dtype=torch.bool)
    visible[batch - 1, :, n_keys - 1 :] = False
    return (k, v), visible


@pytest.mark.parametrize("joint", [False, True])
@pytest.mark.parametrize("length", [1, 3])
def test_mix_short_equals_the_modules(length, joint):
    visual, textual = _learner(0), _learner(1)
    hidden = torch.randn(2, length, 16)
    route = torch.softmax(torch.randn(2, length, 2), -1)
    rope = rope_tables(*_tables(torch.arange(10, 10 + length)[None]))
    visual_kv, visual_visible = _learner_inputs(visual, 4, length, seed=2)
    textual_kv, textual_visible = _learner_inputs(textual, 1, length, seed=3)
    masks = PairMask(CrossAttentionMask(visual_visible), CrossAttentionMask(textual_visible))
    both = None
    if joint:  # both learners' K/V side by side, as the cache keeps them
        both = (torch.cat((visual_kv[0], textual_kv[0]), 2), torch.cat((visual_kv[1], textual_kv[1]), 2), 4)
    with torch.no_grad():
        fast = mix_short(visual, pair_weights(visual, textual), hidden, rope, (visual_kv, textual_kv), masks, route, both)
        expected = mix_outputs(
            hidden, visual(hidden, rope, *visual_kv, masks.visual), textual(hidden, rope, *textual_kv, masks.textual), route
        )
    torch.testing.assert_close(fast, expected, rtol=1e-5, atol=1e-5)


def test_mix_short_with_one_learner_without_keys():
    visual, textual = _learner(0), _learner(1)
    hidden, route = torch.randn(1, 2, 16), torch.softmax(torch.randn(1, 2, 2), -1)
    rope = rope_tables(*_tables(torch.arange(5, 7)[None]))
    textual_kv, textual_visible = _learner_inputs(textual, 3, 2, batch=1)
    empty = torch.zeros(1, 2, 0, 8)
    masks = PairMask(CrossAttentionMask(torch.zeros(1, 2, 0, dtype=torch.bool)), CrossAttentionMask(textual_visible))
    with torch.no_grad():
        fast = mix_short(visual, pair_weights(visual, textual), hidden, rope, ((empty, empty), textual_kv), masks, route)
        expected = hidden + route[..., 1:] * textual(hidden, rope, *textual_kv, masks.textual)
    torch.testing.assert_close(fast, expected, rtol=1e-5, atol=1e-5)
