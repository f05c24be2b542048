"""Stage 1, as `wings lab` runs it (the `wings train` CLI with the stage-1 recipe), on a Gemma 3 backbone."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import Gemma3ForCausalLM, Gemma3TextConfig

from tiny import FAST_TRAINING, HUB_COLOURS, SLIDING_WINDOW
from wings import WingsForConditionalGeneration
from wings.cli import main
from wings.data.tokenizer import train_chat_tokenizer


def _gemma3_hub(root):
    """A tiny Gemma 3 text LLM (local and global layers, window shorter than the samples) with a tokenizer."""
    corpus = [f"what colour is the image? {c}. hello how are you? fine thanks." for c in HUB_COLOURS] * 10
    tokenizer = train_chat_tokenizer(corpus, vocab_size=300)
    torch.manual_seed(0)
    llm = Gemma3ForCausalLM(Gemma3TextConfig(
        hidden_size=32, num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_hidden_layers=2,
        intermediate_size=64, vocab_size=len(tokenizer), max_position_embeddings=512, sliding_window=SLIDING_WINDOW,
        layer_types=["sliding_attention", "full_attention"], pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
    ))
    llm.save_pretrained(root / "gemma3")
    tokenizer.save_pretrained(root / "gemma3")
    return root / "gemma3"


@pytest.mark.slow
def test_stage1_on_gemma3_trains_projector_and_visual_learners_only(tiny_hub, dataset, tmp_path):
    data, images = dataset
    llm_dir = _gemma3_hub(tmp_path)
    out = tmp_path / "s1"
    main(["train", "wings_stage1", "--llm", str(llm_dir), "--vision", str(tiny_hub / "vision"), "--data", str(data),
          "--image-folder", str(images), "--output", str(out), "--max-steps", "4", *FAST_TRAINING,
          "model.learner_rank=4"])
    weights = load_file(str(out / "model.safetensors"))
    for key, value in load_file(str(llm_dir / "model.safetensors")).items():
        assert torch.equal(weights[f"language_model.{key}"], value), key  # the LLM is frozen
    trained = [k for k, v in weights.items() if "visual_learner" in k and k.endswith("o_up.weight") and v.any()]
    assert trained, "the visual learners did not train"
    assert all(not v.any() for k, v in weights.items() if "textual_learner" in k and k.endswith("o_up.weight"))
    assert json.loads((out / "config.json").read_text())["text_config"]["model_type"] == "gemma3_text"
    model = WingsForConditionalGeneration.from_pretrained(out)
    assert len(model.wings_layers) == 2 and model.config.learner_mode == "visual_only"
