"""One loader for every evaluating command: WINGS, Hugging Face LLaVA and plain causal LM directories."""

from __future__ import annotations

import json

import pytest
import torch
from eval_fixtures import COLORS, chat, color_image, make_llm, make_processor, make_tokenizer, save_wings_dir
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
)

from wings import WingsForConditionalGeneration
from wings.evaluation.forgetting import EvalData, evaluate_models
from wings.evaluation.iit import build_iit, evaluate_iit
from wings.evaluation.loading import load_model_and_processor
from wings.evaluation.pools import MCItem, write_pool
from wings.evaluation.scoring import choice_loglikelihoods
from wings.processing import WingsProcessor, mean_color, pad_to_square


def save_llava_dir(path, seed: int = 0):
    """A tiny Hugging Face LLaVA directory (model + LlavaProcessor with a chat template): 4 tokens per image."""
    tokenizer = make_tokenizer()
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tokenizer, patch_size=16, vision_feature_select_strategy="default", num_additional_image_tokens=1,
        chat_template=tokenizer.chat_template,
    )  # fmt: skip
    torch.manual_seed(seed)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                       num_attention_heads=4, image_size=32, patch_size=16),
        text_config=LlamaConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2,
                                intermediate_size=96, vocab_size=len(tokenizer), max_position_embeddings=512,
                                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id),
        image_token_id=processor.image_token_id, image_seq_length=4, vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )  # fmt: skip
    LlavaForConditionalGeneration(config).save_pretrained(path)
    processor.save_pretrained(path)
    return path


def test_loads_a_wings_directory(tmp_path):
    save_wings_dir(tmp_path / "m")
    model, processor = load_model_and_processor(tmp_path / "m", device="cpu", dtype="float32")
    assert isinstance(model, WingsForConditionalGeneration) and not model.training
    assert isinstance(processor, WingsProcessor) and processor.image_seq_length == model.config.image_seq_length
    assert model.dtype == torch.float32
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_model_and_processor(tmp_path / "missing")
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "config.json").write_text(json.dumps({"model_type": "wings"}))
    with pytest.raises(FileNotFoundError, match="no processor/tokenizer files"):
        load_model_and_processor(tmp_path / "bare")


def test_loads_a_causal_lm_with_its_tokenizer(tmp_path):
    tokenizer = make_tokenizer()
    make_llm(tokenizer, seed=3).save_pretrained(tmp_path / "llm")
    tokenizer.save_pretrained(tmp_path / "llm")
    model, processor = load_model_and_processor(tmp_path / "llm", device="cpu")
    assert type(model).__name__ == "Qwen2ForCausalLM" and not model.training
    assert processor.get_vocab() == tokenizer.get_vocab()


def test_llava_directory_is_scored_like_its_own_processor(tmp_path):
    """Regression: `wings eval` / `wings iit eval` refused a LLaVA directory (only `wings laws` loaded one).
    A LLaVA model's choice scores match a naive forward on what its own processor makes of the padded image."""
    save_llava_dir(tmp_path / "llava")
    model, processor = load_model_and_processor(tmp_path / "llava", device="cpu")
    assert isinstance(model, LlavaForConditionalGeneration) and isinstance(processor, LlavaProcessor)
    image = color_image("red", (40, 24))
    prompt = chat(processor, "<image>\nWhat colour is the shape?")
    choices = ["red", "green blue"]
    got = choice_loglikelihoods(model, processor, [prompt], [choices], [[image]], normalize="sum")[0]
    padded = pad_to_square(image, mean_color(processor.image_processor))  # LLaVA-1.5 evaluates padded images
    context = processor(text=prompt, images=[padded], return_tensors="pt")
    for option, score in zip(choices, got, strict=True):
        continuation = processor.tokenizer(option, add_special_tokens=False)["input_ids"]
        ids = torch.cat([context["input_ids"], torch.tensor([continuation])], dim=1)
        with torch.no_grad():
            logits = model(input_ids=ids, pixel_values=context["pixel_values"]).logits[0].float()
        logprobs = torch.log_softmax(logits, -1)
        start = context["input_ids"].shape[1]
        expected = sum(float(logprobs[start - 1 + k, t]) for k, t in enumerate(continuation))
        assert score == pytest.approx(expected, abs=1e-4)


def test_wings_eval_and_iit_eval_accept_a_llava_directory(tmp_path):
    """What `wings eval` and `wings iit eval` call, on a LLaVA directory next to a WINGS one."""
    save_llava_dir(tmp_path / "llava")
    save_wings_dir(tmp_path / "wings")
    colors = list(COLORS)
    for k, color in enumerate(colors):
        color_image(color, (30 + 4 * k, 24)).save(tmp_path / f"img{k}.png")
    visual = [MCItem(id=f"v{k}", question="What colour is the shape?", choices=tuple(colors),
                     answer=k, image=f"img{k}.png") for k in range(len(colors))]  # fmt: skip
    text = [MCItem(id=f"t{k}", question=f"Which statement is true? {k}", choices=("planet orbit", "red"),
                   answer=k % 2) for k in range(4)]  # fmt: skip
    model, processor = load_model_and_processor(tmp_path / "llava", device="cpu")
    iit = evaluate_iit(model, processor, build_iit(text, visual, ("T,V", "V"), per_setting=2), tmp_path,
                       method="loglik")  # fmt: skip
    assert [stats["n"] for stats in iit["settings"].values()] == [2, 2]
    data = EvalData(text_pool=str(write_pool(text, tmp_path / "text.jsonl")),
                    visual_pool=str(write_pool(visual, tmp_path / "visual.jsonl")), image_folder=str(tmp_path))
    entries, _, report = evaluate_models([str(tmp_path / "llava"), str(tmp_path / "wings")], data, tmp_path / "out",
                                         device="cpu")  # fmt: skip
    assert [e.name for e in entries] == ["llava", "wings"]
    assert all(e.text_acc is not None and e.vqa_acc is not None for e in entries)
    assert "| llava |" in report and "| wings |" in report
