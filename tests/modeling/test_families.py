"""Every supported LLM family: parity with the plain LLM, causality, caching, padding, save/load, training.

Each tiny decoder has its family's real differences switched on (q/k norms, sandwich or post norms,
softcapping, sliding windows shorter than the prompts, NoPE layers, multipliers, fused projections,
MoE MLPs), see `tiny.FAMILY_SETTINGS`.
"""

import pytest
import torch

from tiny import (
    FAMILIES,
    IMAGE_TOKEN_ID,
    SLIDING_WINDOW,
    image_prompt,
    randomize_learners,
    tiny_family_llm,
    tiny_family_wings,
    tiny_vision,
)
from wings import WingsForConditionalGeneration

NEW = 4
# Prompts longer than the tiny sliding window, with text before and after the image.
BEFORE, AFTER = [10, 11, 12, 13, 14], [20, 21, 22, 23, 24, 25]


@pytest.fixture(params=FAMILIES)
def family(request) -> str:
    return request.param


def _trained_looking(family: str) -> WingsForConditionalGeneration:
    model = tiny_family_wings(family)
    randomize_learners(model, std=0.3)
    return model


def test_zero_init_matches_plain_llm(family):
    model = tiny_family_wings(family)
    reference = tiny_family_llm(family)  # same seed: identical weights, untouched by WINGS
    torch.manual_seed(0)
    text = torch.randint(10, 120, (2, 15))
    ids = torch.tensor([image_prompt(BEFORE, AFTER, n_images=2)] * 2)
    pixels = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(text).logits, reference(text).logits, rtol=0, atol=1e-5)
        features = model.get_image_features(pixels)
        embeds = reference.get_input_embeddings()(ids.masked_fill(ids == IMAGE_TOKEN_ID, 0))
        embeds[ids == IMAGE_TOKEN_ID] = features.reshape(-1, features.shape[-1])
        expected = reference(inputs_embeds=embeds).logits
        torch.testing.assert_close(model(ids, pixel_values=pixels).logits, expected, rtol=0, atol=1e-5)


def test_learners_read_what_the_decoder_receives(family):
    """The learners' features are the first decoder layer's input (after any embedding scale or multiplier)."""
    model = _trained_looking(family)
    seen = {}
    first = model.decoder_layers[0]
    first.register_forward_pre_hook(
        lambda m, args, kwargs: seen.update(hidden=args[0] if args else kwargs["hidden_states"],
                                            source=kwargs["learner_inputs"].source),
        with_kwargs=True,
    )
    ids = torch.tensor([image_prompt(BEFORE, AFTER)])
    with torch.no_grad():
        model(ids, pixel_values=torch.randn(1, 3, 32, 32))
    torch.testing.assert_close(seen["source"], seen["hidden"], rtol=0, atol=0)


def test_later_tokens_and_images_do_not_change_earlier_logits(family):
    model = _trained_looking(family)
    ids = torch.tensor([image_prompt(BEFORE, AFTER, n_images=2)])
    pixels = torch.randn(2, 3, 32, 32)
    changed = ids.clone()
    changed[0, -2] = 99
    other = pixels.clone()
    other[1] = torch.randn(3, 32, 32)
    second_image = int((ids[0] == IMAGE_TOKEN_ID).nonzero()[4])
    with torch.no_grad():
        a = model(ids, pixel_values=pixels).logits
        b = model(changed, pixel_values=pixels).logits
        c = model(ids, pixel_values=other).logits
    torch.testing.assert_close(a[:, :-2], b[:, :-2], rtol=0, atol=1e-6)
    assert (a[:, -2:] - b[:, -2:]).abs().max() > 1e-4
    torch.testing.assert_close(a[:, :second_image], c[:, :second_image], rtol=0, atol=1e-6)
    assert (a[:, second_image:] - c[:, second_image:]).abs().max() > 1e-4


def _generate(model, ids, pixels, use_cache, **kwargs):
    with torch.no_grad():
        return model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pixels, max_new_tokens=NEW,
            min_new_tokens=NEW, do_sample=False, use_cache=use_cache, pad_token_id=0, **kwargs,
        )


@pytest.mark.parametrize("num_beams", [1, 2])
def test_cached_generation_equals_uncached(family, num_beams):
    model = _trained_looking(family)
    ids = torch.tensor([image_prompt(BEFORE, AFTER)])
    assert ids.shape[1] > SLIDING_WINDOW
    pixels = torch.randn(1, 3, 32, 32)
    cached = _generate(model, ids, pixels, True, num_beams=num_beams)
    assert cached.shape[1] == ids.shape[1] + NEW
    assert torch.equal(cached, _generate(model, ids, pixels, False, num_beams=num_beams))


def test_left_padded_batch_matches_single_samples(family):
    model = _trained_looking(family)
    a = image_prompt(BEFORE, AFTER)
    b = [15, 16] + image_prompt([], [23])
    pix = torch.randn(2, 3, 32, 32)
    width = max(len(a), len(b))
    ids = torch.tensor([[0] * (width - len(s)) + s for s in (a, b)])
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in (a, b)])
    with torch.no_grad():
        batch = model.generate(input_ids=ids, attention_mask=mask, pixel_values=pix, max_new_tokens=NEW,
                               min_new_tokens=NEW, do_sample=False, pad_token_id=0)
        logits = model(ids, attention_mask=mask, pixel_values=pix).logits
        for row, sample in enumerate((a, b)):
            single = model(torch.tensor([sample]), pixel_values=pix[row : row + 1]).logits
            torch.testing.assert_close(logits[row, width - len(sample) :], single[0], rtol=1e-4, atol=1e-5)
            alone = _generate(model, torch.tensor([sample]), pix[row : row + 1], True)
            assert torch.equal(batch[row, width - len(sample) :], alone[0])


def test_save_load_exact(family, tmp_path):
    model = _trained_looking(family)
    model.save_pretrained(tmp_path)
    loaded = WingsForConditionalGeneration.from_pretrained(tmp_path).eval()
    original = model.state_dict()
    assert set(loaded.state_dict()) == set(original)
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, original[key]), key
    # The LLM part keeps the plain LLM's keys.
    plain = set(tiny_family_llm(family).state_dict())
    assert plain <= {k.removeprefix("language_model.") for k in original}
    ids = torch.tensor([image_prompt(BEFORE, AFTER)])
    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(ids, pixel_values=pixels).logits, loaded(ids, pixel_values=pixels).logits)


def test_stage2_step_changes_llm_and_learners(family):
    model = _trained_looking(family).train()
    model.vision_tower.requires_grad_(False)
    groups = model.parameter_groups()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    ids = torch.tensor([image_prompt(BEFORE, AFTER), image_prompt([17, 18], [19, 20, 21, 22, 23, 24, 25, 26, 27])])
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    loss = model(ids, pixel_values=torch.randn(2, 3, 32, 32), labels=ids).loss
    assert torch.isfinite(loss)
    loss.backward()
    optimizer.step()
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    for group in ("llm", "visual_learners", "textual_learners", "router", "projector"):
        names = {name for name, _ in groups[group]}
        assert names & changed, f"{group} did not change"
    assert not {name for name, _ in groups["vision_tower"]} & changed


def _rope_reference(positions: torch.Tensor, dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The rotate-half RoPE tables written out: angle_i(p) = p / base^(2i/dim), duplicated over both halves."""
    inv = 1.0 / base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    angles = positions[..., None].double() * inv
    angles = torch.cat([angles, angles], -1)
    return angles.cos().float(), angles.sin().float()


def _learner_tables(model, ids):
    """The RoPE tables every wrapped layer's learners use, by layer index."""
    seen = {}
    for layer in model.wings_layers:
        original = layer._learner_rope

        def capture(*args, layer=layer, original=original):
            seen[layer.layer_idx] = original(*args)
            return seen[layer.layer_idx]

        layer._learner_rope = capture
    with torch.no_grad():
        model(ids)
    return seen


@pytest.mark.parametrize(
    "family, bases",
    [
        ("qwen3", {0: 10000.0, 1: 10000.0, 2: 10000.0}),  # learner heads 16 wide, the LLM's 32
        ("gemma3_text", {0: 10000.0, 1: 1_000_000.0, 2: 10000.0}),  # local, global, local
        ("smollm3", {0: 2_000_000.0, 1: None, 2: 2_000_000.0}),  # layer 1 uses no RoPE
    ],
)
def test_learners_rotate_as_their_layer_does(family, bases):
    model = tiny_family_wings(family)
    ids = torch.tensor([[10, 11, 12, 13, 14, 15, 16]])
    tables = _learner_tables(model, ids)
    dim = 64 // 4
    positions = torch.arange(ids.shape[1])[None]
    for layer_idx, base in bases.items():
        cos, sin = tables[layer_idx]
        if base is None:
            expected = torch.ones(1, ids.shape[1], dim), torch.zeros(1, ids.shape[1], dim)
        else:
            expected = _rope_reference(positions, dim, base)
        torch.testing.assert_close(cos.expand(1, -1, -1), expected[0], rtol=0, atol=1e-5)
        torch.testing.assert_close(sin.expand(1, -1, -1), expected[1], rtol=0, atol=1e-5)


def test_a_layer_missing_its_family_parts_is_named():
    from wings.families import TEXT_FAMILIES
    from wings.modeling.decoder_layer import WingsDecoderLayer

    llama_layer = tiny_family_llm("qwen3").model.layers[0]
    with pytest.raises(TypeError, match="lacks pre_feedforward_layernorm, post_feedforward_layernorm.*sandwich"):
        WingsDecoderLayer(llama_layer, 64, 4, 2, "segment", 8, family=TEXT_FAMILIES["gemma3_text"])
    with pytest.raises(TypeError, match="q_norm/k_norm.*qk_norm"):
        WingsDecoderLayer(llama_layer, 64, 4, 2, "segment", 8, family=TEXT_FAMILIES["llama"])


def test_unknown_family_error_names_what_is_missing():
    from transformers import GPT2Config

    with pytest.raises(ValueError, match="'gpt2' is not supported: WINGS has no block layout.*TEXT_FAMILIES"):
        WingsForConditionalGeneration.from_llm_and_vision(
            __import__("transformers").GPT2LMHeadModel(GPT2Config(n_embd=64, n_head=4, n_layer=1, vocab_size=120)),
            tiny_vision(), image_token_id=IMAGE_TOKEN_ID,
        )


@pytest.mark.parametrize("family", ["gemma2", "smollm3", "qwen3", "olmo2"])
def test_code_that_recomputes_llama_attention_refuses_other_attentions(family):
    """Llama-named modules are not enough: softcaps, NoPE layers and q/k norms change the attention."""
    from wings.modeling.decoder_layer import check_llama_family_layer

    with pytest.raises(TypeError, match="decoder layer 0"):
        check_llama_family_layer(tiny_family_llm(family).model.layers[0], 0)
    check_llama_family_layer(tiny_family_llm("granite").model.layers[0], 0)  # multipliers do not matter there
