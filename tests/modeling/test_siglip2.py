"""SigLIP 2 (NaFlex `Siglip2VisionModel`) as a fixed-resolution tower: patches laid out as its processor does."""

import pytest
import torch

from tiny import IMAGE_SIZE, IMAGE_TOKEN_ID, PATCH, image_prompt, tiny_llm, tiny_siglip2
from wings import WingsForConditionalGeneration
from wings.modeling.vision import patch_features, siglip2_inputs
from wings.presets import count_parameters, expected_parameter_counts


def test_patches_follow_the_siglip2_processor_layout():
    from transformers.models.siglip2.image_processing_pil_siglip2 import convert_image_to_patches

    torch.manual_seed(0)
    pixels = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    inputs = siglip2_inputs(pixels, tiny_siglip2().config)
    for i in range(2):
        expected = torch.from_numpy(convert_image_to_patches(pixels[i].numpy(), PATCH))
        torch.testing.assert_close(inputs["pixel_values"][i], expected, rtol=0, atol=0)
    assert inputs["spatial_shapes"].tolist() == [[2, 2], [2, 2]] and bool(inputs["pixel_attention_mask"].all())


def test_features_are_the_towers_hidden_states_at_the_feature_layer():
    tower = tiny_siglip2()
    pixels = torch.randn(3, 3, IMAGE_SIZE, IMAGE_SIZE)
    with torch.no_grad():
        ours = patch_features(tower, pixels, -2)
        direct = tower(**siglip2_inputs(pixels, tower.config), output_hidden_states=True).hidden_states[-2]
    assert ours.shape == (3, 4, 32)
    torch.testing.assert_close(ours, direct, rtol=0, atol=0)


def test_wings_with_siglip2_is_at_parity_and_counts_its_parameters():
    model = WingsForConditionalGeneration.from_llm_and_vision(
        tiny_llm("qwen2"), tiny_siglip2(), image_token_id=IMAGE_TOKEN_ID, learner_rank=8
    ).eval()
    reference = tiny_llm("qwen2")
    assert model.config.image_seq_length == 4
    ids = torch.tensor([image_prompt([10, 11], [12, 13, 14])])
    pixels = torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE)
    with torch.no_grad():
        features = model.get_image_features(pixels)
        embeds = reference.get_input_embeddings()(ids.masked_fill(ids == IMAGE_TOKEN_ID, 0))
        embeds[ids == IMAGE_TOKEN_ID] = features.reshape(-1, 64)
        torch.testing.assert_close(model(ids, pixel_values=pixels).logits, reference(inputs_embeds=embeds).logits,
                                   rtol=0, atol=1e-5)
    assert count_parameters(model) == expected_parameter_counts(model.config)


def test_wrong_image_size_is_named():
    with pytest.raises(ValueError, match="square images of 32x32"):
        siglip2_inputs(torch.randn(1, 3, 48, 48), tiny_siglip2().config)
