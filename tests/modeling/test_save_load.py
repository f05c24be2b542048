"""save_pretrained / from_pretrained round-trip, Auto classes, gradients and frozen parts."""

import json

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

from tiny import image_prompt, randomize_learners, tiny_wings
from wings import WingsConfig, WingsForConditionalGeneration


def test_save_load_exact(tmp_path, llm_family):
    model = tiny_wings(llm_family, router="segment", learner_layers=[0, 2])
    randomize_learners(model)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "wings" and saved["learner_layers"] == [0, 2]
    loaded = WingsForConditionalGeneration.from_pretrained(tmp_path).eval()
    original = model.state_dict()
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, original[key]), key
    ids = torch.tensor([image_prompt([10, 11], [12, 13])])
    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(ids, pixel_values=pixels).logits, loaded(ids, pixel_values=pixels).logits)


def test_auto_classes_load_a_saved_model(tmp_path):
    model = tiny_wings()
    model.save_pretrained(tmp_path)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), WingsConfig)
    assert isinstance(AutoModelForImageTextToText.from_pretrained(tmp_path), WingsForConditionalGeneration)
    assert isinstance(AutoModelForCausalLM.from_pretrained(tmp_path), WingsForConditionalGeneration)


def test_gradients_reach_learners_router_projector_and_frozen_parts_stay_frozen():
    model = tiny_wings("llama").train()
    randomize_learners(model, std=0.05)
    model.vision_tower.requires_grad_(False)
    model.language_model.requires_grad_(False)
    for layer in model.wings_layers:
        for part in (layer.visual_learner, layer.textual_learner, layer.router):
            part.requires_grad_(True)
    frozen_before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    ids = torch.tensor([image_prompt([10, 11, 12], [13, 14, 15, 16]), image_prompt([17], [18, 19, 20, 21, 22, 23])])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    loss = model(ids, pixel_values=torch.randn(2, 3, 32, 32), labels=ids).loss
    loss.backward()
    for layer in model.wings_layers:
        for part in (layer.visual_learner, layer.textual_learner, layer.router):
            grads = [p.grad for p in part.parameters()]
            assert all(g is not None and g.abs().sum() > 0 for g in grads)
    assert model.multi_modal_projector.linear_1.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)
    optimizer.step()
    for name, p in model.named_parameters():
        if name in frozen_before:
            assert torch.equal(p, frozen_before[name]), name


def test_gradient_checkpointing_gives_the_same_gradients():
    model = tiny_wings("qwen2").train()
    randomize_learners(model, std=0.05)
    ids = torch.tensor([image_prompt([10, 11, 12], [13, 14, 15, 16])])
    pixels = torch.randn(1, 3, 32, 32)

    def grads():
        model.zero_grad()
        model(ids, pixel_values=pixels, labels=ids, use_cache=False).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain = grads()
    model.activation_checkpointing_enable()
    assert all(layer.gradient_checkpointing for layer in model.wings_layers)
    checkpointed = grads()
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        torch.testing.assert_close(plain[name], checkpointed[name], rtol=1e-4, atol=1e-6)
