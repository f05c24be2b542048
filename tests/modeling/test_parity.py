"""Zero-init parity: a fresh WINGS model computes exactly what its LLM computes."""

import pytest
import torch

from tiny import IMAGE_TOKEN_ID, image_prompt, tiny_llm, tiny_vision
from wings import WingsForConditionalGeneration


@pytest.mark.parametrize("vision_family", ["siglip", "clip"])
def test_zero_init_matches_plain_llm(llm_family, vision_family):
    llm = tiny_llm(llm_family)
    reference = tiny_llm(llm_family)  # same seed: identical weights, untouched by WINGS
    model = WingsForConditionalGeneration.from_llm_and_vision(
        llm, tiny_vision(vision_family), image_token_id=IMAGE_TOKEN_ID, learner_rank=8
    ).eval()
    torch.manual_seed(0)
    text = torch.randint(10, 120, (2, 15))
    with torch.no_grad():
        torch.testing.assert_close(model(text).logits, reference(text).logits, rtol=0, atol=1e-5)

        ids = torch.tensor([image_prompt([10, 11, 12], [20, 21, 22, 23], n_images=2)] * 2)
        pixels = torch.randn(4, 3, 32, 32)
        features = model.get_image_features(pixels)
        assert features.shape == (4, 4, 64)
        embeds = reference.get_input_embeddings()(ids.masked_fill(ids == IMAGE_TOKEN_ID, 0))
        embeds[ids == IMAGE_TOKEN_ID] = features.reshape(-1, 64)
        expected = reference(inputs_embeds=embeds).logits
        torch.testing.assert_close(model(ids, pixel_values=pixels).logits, expected, rtol=0, atol=1e-5)


def test_learners_start_at_zero_and_in_every_layer():
    llm = tiny_llm("qwen2")
    model = WingsForConditionalGeneration.from_llm_and_vision(llm, tiny_vision(), image_token_id=IMAGE_TOKEN_ID)
    assert len(model.wings_layers) == 3
    for layer in model.wings_layers:
        for learner in (layer.visual_learner, layer.textual_learner):
            assert torch.count_nonzero(learner.o_up.weight) == 0
            assert torch.count_nonzero(learner.q.up.weight) == 0
            assert torch.count_nonzero(learner.o_down.weight) > 0
            assert learner.o_down.weight.abs().max() <= 2 * model.config.learner_init_std + 1e-6


def test_learner_layers_subset():
    model = WingsForConditionalGeneration.from_llm_and_vision(
        tiny_llm(), tiny_vision(), image_token_id=IMAGE_TOKEN_ID, learner_layers=[0, 2]
    )
    assert [layer.layer_idx for layer in model.wings_layers] == [0, 2]
    assert not hasattr(model.decoder_layers[1], "visual_learner")


def test_output_hidden_states_match_the_plain_llm(llm_family):
    llm, reference = tiny_llm(llm_family), tiny_llm(llm_family)
    model = WingsForConditionalGeneration.from_llm_and_vision(
        llm, tiny_vision(), image_token_id=IMAGE_TOKEN_ID, learner_layers=[0, 2]
    ).eval()
    ids = torch.randint(10, 120, (2, 9))
    with torch.no_grad():
        ours = model(ids, output_hidden_states=True).hidden_states
        theirs = reference(ids, output_hidden_states=True).hidden_states
    assert len(ours) == len(theirs) == 4
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_output_attentions_match_the_plain_llm_eager(llm_family):
    """Attention weights are returned on request (eager for that call); fresh WINGS = its LLM."""
    llm, reference = tiny_llm(llm_family), tiny_llm(llm_family)
    model = WingsForConditionalGeneration.from_llm_and_vision(
        llm, tiny_vision(), image_token_id=IMAGE_TOKEN_ID, learner_layers=[0, 2]
    ).eval()
    model.set_attn_implementation("eager")
    reference.set_attn_implementation("eager")
    ids = torch.randint(10, 120, (2, 9))
    with torch.no_grad():
        ours = model(ids, output_attentions=True).attentions
        theirs = reference(ids, output_attentions=True).attentions
    assert len(ours) == len(theirs) == 3
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    sdpa = WingsForConditionalGeneration.from_llm_and_vision(
        tiny_llm(llm_family), tiny_vision(), image_token_id=IMAGE_TOKEN_ID, learner_layers=[0, 2]
    ).eval()
    with pytest.raises(ValueError, match="attn_implementation='eager'"):
        sdpa(ids, output_attentions=True)
