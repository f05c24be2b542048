"""generate(): the KV cache (main attention + both learners) gives the same tokens as full recompute."""

import pytest
import torch

from tiny import image_prompt, randomize_learners, tiny_wings
from wings import WingsCache

NEW = 8


def _model(llm_family="qwen2", **settings):
    model = tiny_wings(llm_family, **settings)
    randomize_learners(model, std=0.3)
    return model


def _generate(model, ids, pixels, use_cache, **kwargs):
    with torch.no_grad():
        return model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            pixel_values=pixels,
            max_new_tokens=NEW,
            min_new_tokens=NEW,
            do_sample=False,
            use_cache=use_cache,
            pad_token_id=0,
            **kwargs,
        )


@pytest.mark.parametrize("num_beams", [1, 3])
def test_cached_equals_uncached(llm_family, num_beams):
    model = _model(llm_family)
    ids = torch.tensor([image_prompt([10, 11, 12], [20, 21, 22])])
    pixels = torch.randn(1, 3, 32, 32)
    cached = _generate(model, ids, pixels, True, num_beams=num_beams)
    uncached = _generate(model, ids, pixels, False, num_beams=num_beams)
    assert cached.shape[1] == ids.shape[1] + NEW
    assert torch.equal(cached, uncached)


def test_multi_turn_two_images_cached_equals_uncached():
    model = _model("llama")
    turn1 = image_prompt([1, 30, 31], [32, 2, 1, 40, 41])  # user: image + text, assistant...
    turn2 = [42, 2, 1, 30] + image_prompt([33], [34, 2, 1, 40])  # ...then a second user turn with an image
    ids = torch.tensor([turn1 + turn2])
    pixels = torch.randn(2, 3, 32, 32)
    cached = _generate(model, ids, pixels, True)
    assert torch.equal(cached, _generate(model, ids, pixels, False))
    assert torch.equal(_generate(model, ids, pixels, True, num_beams=2), _generate(model, ids, pixels, False, num_beams=2))


def test_cache_holds_learner_state_and_continues_a_prompt():
    """Prefill a prefix into a WingsCache, then feed the rest: same logits as one full forward."""
    model = _model("qwen2")
    ids = torch.tensor([image_prompt([10, 11], [12, 13, 14, 15], n_images=2)])
    pixels = torch.randn(2, 3, 32, 32)
    split = 6  # inside the second half: the first image lies in the prefix
    with torch.no_grad():
        full = model(ids, pixel_values=pixels, use_cache=False).logits
        cache = WingsCache(config=model.config.text_config)
        first = model(ids[:, :split], pixel_values=pixels[:1], cache=cache, use_cache=True).logits
        assert ("visual", 0) in cache.learner_kv and cache.key_is_image.shape == (1, split)
        rest = model(ids[:, split:], pixel_values=pixels[1:], cache=cache, use_cache=True).logits
    torch.testing.assert_close(torch.cat([first, rest], 1), full, rtol=1e-5, atol=1e-5)


def test_left_padded_batch_matches_single_samples(llm_family):
    model = _model(llm_family)
    a = image_prompt([10, 11, 12, 13, 14], [20, 21, 22])
    b = [15, 16] + image_prompt([], [23])
    pix = torch.randn(2, 3, 32, 32)
    width = max(len(a), len(b))
    ids = torch.tensor([[0] * (width - len(s)) + s for s in (a, b)])
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in (a, b)])
    with torch.no_grad():
        batch = model.generate(
            input_ids=ids, attention_mask=mask, pixel_values=pix, max_new_tokens=NEW, min_new_tokens=NEW,
            do_sample=False, pad_token_id=0,
        )
        logits = model(ids, attention_mask=mask, pixel_values=pix).logits
        for row, sample in enumerate((a, b)):
            alone = _generate(model, torch.tensor([sample]), pix[row : row + 1], True)
            assert torch.equal(batch[row, width - len(sample) :], alone[0])
            single = model(torch.tensor([sample]), pixel_values=pix[row : row + 1]).logits
            torch.testing.assert_close(logits[row, width - len(sample) :], single[0], rtol=1e-4, atol=1e-5)


def test_mixed_batch_generates_what_each_sample_does_alone():
    """One image, text only, two images: a left-padded batch gives each sample's own greedy tokens."""
    model = _model("qwen2")
    samples = [
        (image_prompt([10, 11], [20, 21, 22]), 1),
        ([12, 13, 14, 15, 16, 17, 18], 0),
        (image_prompt([30], [31, 32], n_images=2), 2),
    ]
    pixels = torch.randn(3, 3, 32, 32)
    owned = torch.split(pixels, [n for _, n in samples])
    width = max(len(s) for s, _ in samples)
    ids = torch.tensor([[0] * (width - len(s)) + s for s, _ in samples])
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s, _ in samples])
    with torch.no_grad():
        batch = model.generate(input_ids=ids, attention_mask=mask, pixel_values=pixels, max_new_tokens=NEW,
                               min_new_tokens=NEW, do_sample=False, pad_token_id=0)
    for row, ((sample, n_images), images) in enumerate(zip(samples, owned)):
        alone = _generate(model, torch.tensor([sample]), images if n_images else None, True)
        assert torch.equal(batch[row, width - len(sample):], alone[0]), row


def test_positional_router_cached_equals_uncached():
    model = _model("qwen2", router="positional", router_max_positions=64)
    ids = torch.tensor([image_prompt([10, 11, 12], [20, 21, 22])])
    pixels = torch.randn(1, 3, 32, 32)
    assert torch.equal(_generate(model, ids, pixels, True), _generate(model, ids, pixels, False))
