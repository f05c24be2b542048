"""Both learners are strictly causal by original position (our fix to the released code)."""

import torch

from tiny import IMAGE_TOKEN_ID, image_prompt, randomize_learners, tiny_wings


def _model(llm_family):
    model = tiny_wings(llm_family)
    randomize_learners(model)
    return model


def test_learners_change_the_output(llm_family):
    model = tiny_wings(llm_family)
    ids = torch.tensor([image_prompt([10, 11], [12, 13, 14])])
    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        before = model(ids, pixel_values=pixels).logits
        randomize_learners(model)
        after = model(ids, pixel_values=pixels).logits
    assert (before - after).abs().max() > 1e-3


def test_later_token_does_not_change_earlier_logits(llm_family):
    model = _model(llm_family)
    ids = torch.tensor([image_prompt([10, 11, 12], [20, 21, 22, 23, 24])])
    pixels = torch.randn(1, 3, 32, 32)
    changed = ids.clone()
    changed[0, -2] = 99
    with torch.no_grad():
        a = model(ids, pixel_values=pixels).logits
        b = model(changed, pixel_values=pixels).logits
    torch.testing.assert_close(a[:, :-2], b[:, :-2], rtol=0, atol=1e-6)
    assert (a[:, -2:] - b[:, -2:]).abs().max() > 1e-4


def test_later_image_does_not_change_earlier_logits(llm_family):
    model = _model(llm_family)
    ids = torch.tensor([image_prompt([10, 11, 12], [20, 21, 22], n_images=2)])
    second_image_start = int((ids[0] == IMAGE_TOKEN_ID).nonzero()[4])
    pixels = torch.randn(2, 3, 32, 32)
    other = pixels.clone()
    other[1] = torch.randn(3, 32, 32)
    with torch.no_grad():
        a = model(ids, pixel_values=pixels).logits
        b = model(ids, pixel_values=other).logits
    torch.testing.assert_close(a[:, :second_image_start], b[:, :second_image_start], rtol=0, atol=1e-6)
    assert (a[:, second_image_start:] - b[:, second_image_start:]).abs().max() > 1e-4


def test_text_before_image_sees_no_image():
    """A query with no visible image token gets a zero visual output, not NaN."""
    model = _model("qwen2")
    layer = model.wings_layers[0]
    captured = {}
    layer.visual_learner.register_forward_hook(lambda m, i, o: captured.setdefault("out", o))
    ids = torch.tensor([image_prompt([10, 11, 12], [20, 21])])
    with torch.no_grad():
        model(ids, pixel_values=torch.randn(1, 3, 32, 32))
    out = captured["out"]
    assert torch.isfinite(out).all()
    assert out[0, :3].abs().max() == 0  # three text tokens precede the image
    assert out[0, 3:].abs().max() > 0
