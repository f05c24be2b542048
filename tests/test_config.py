"""WingsConfig validation and clear errors."""

import pytest
import torch
from transformers import GPT2Config, Qwen2Config, SiglipVisionConfig

from tiny import IMAGE_TOKEN_ID, image_prompt, tiny_vision, tiny_wings
from wings import WingsConfig, WingsForConditionalGeneration


def _text(**kw):
    return Qwen2Config(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2,
                       intermediate_size=96, vocab_size=50, **kw)


def _vision():
    return SiglipVisionConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=4,
                              image_size=32, patch_size=16)


def test_defaults_and_image_seq_length():
    config = WingsConfig(text_config=_text(), vision_config=_vision(), image_token_id=3)
    assert config.learner_rank == 64 and config.router == "segment" and config.vision_feature_layer == -2
    assert config.image_seq_length == 4 and config.layers_with_learners == [0, 1]
    assert config.learner_mode == "routed"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(router="nope"), "router must be one of"),
        (dict(learner_layers=[5]), "outside the LLM's 2 layers"),
        (dict(learner_rank=0), "learner_rank"),
        (dict(image_seq_length=10), "yields 4 patch tokens"),
        (dict(learner_mode="x"), "learner_mode"),
    ],
)
def test_bad_settings_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        WingsConfig(text_config=_text(), vision_config=_vision(), image_token_id=3, **kwargs)


def test_unsupported_llm_is_refused():
    gpt2 = GPT2Config(n_embd=64, n_head=4, n_layer=2, vocab_size=50)
    with pytest.raises(ValueError, match="not supported"):
        WingsConfig(text_config=gpt2, vision_config=_vision(), image_token_id=3)


def test_marker_feature_mismatch_is_a_clear_error():
    model = tiny_wings()
    ids = torch.tensor([image_prompt([10], [11], n_images=2)])
    with pytest.raises(ValueError, match="8 image tokens .* 1 image"):
        model(ids, pixel_values=torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="image tokens"):
        model(torch.tensor([[10, IMAGE_TOKEN_ID, 11]]), pixel_values=torch.randn(1, 3, 32, 32))
    # The totals match (8 tokens, 2 images) but row 0 holds an image and a half: refused, naming the row.
    rows = torch.tensor([[IMAGE_TOKEN_ID] * 6 + [10, 11], [IMAGE_TOKEN_ID] * 2 + [12] * 6])
    with pytest.raises(ValueError, match=r"row\(s\) \[0, 1\]"):
        model(rows, pixel_values=torch.randn(2, 3, 32, 32))


def test_from_llm_and_vision_adds_image_token_to_tokenizer():
    from wings.data.tokenizer import train_chat_tokenizer
    from tiny import tiny_llm

    tok = train_chat_tokenizer(["hello world"] * 5, vocab_size=270)
    tok.add_special_tokens({"additional_special_tokens": []})
    llm = tiny_llm()
    # A tokenizer that lacks "<vision>" gets it added and the embeddings grow.
    model = WingsForConditionalGeneration.from_llm_and_vision(llm, tiny_vision(), tokenizer=tok, image_token="<vision>")
    assert model.config.image_token_id == tok.convert_tokens_to_ids("<vision>")
    assert model.get_input_embeddings().num_embeddings >= len(tok)


def test_wrapper_refuses_a_layer_without_llama_parts():
    from torch import nn

    from wings.modeling.decoder_layer import WingsDecoderLayer

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.Linear(4, 4)

    with pytest.raises(TypeError, match="lacks input_layernorm, self_attn"):
        WingsDecoderLayer(Block(), hidden_size=4, num_heads=2, rank=2, router="segment", router_max_positions=8)
