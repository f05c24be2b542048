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


def test_saved_llm_keys_are_the_plain_llms_and_learners_sit_beside_them(tmp_path):
    from safetensors.torch import load_file

    model = tiny_wings("qwen2", learner_layers=[1])
    model.save_pretrained(tmp_path)
    saved = load_file(str(tmp_path / "model.safetensors"))
    llm_keys = {f"language_model.{k}" for k in model.to_llm().state_dict()}
    assert llm_keys <= set(saved)
    assert not any("decoder_layer" in k for k in saved)
    learner_keys = {k for k in saved if k.startswith("language_model.") and k not in llm_keys}
    assert learner_keys and all(k.startswith("language_model.model.layers.1.") for k in learner_keys)
    assert {k.split(".")[4] for k in learner_keys} == {"visual_learner", "textual_learner", "router"}


def test_a_checkpoint_with_legacy_keys_loads_and_resaves_with_todays(tmp_path):
    import re

    from safetensors.torch import load_file, save_file

    model = tiny_wings("llama", learner_layers=[0, 2])
    randomize_learners(model)
    model.save_pretrained(tmp_path / "new")
    # The layout written before the wrapper kept the LLM's keys: wrapped layers under `decoder_layer.`.
    legacy_dir = tmp_path / "legacy"
    model.save_pretrained(legacy_dir)
    state = load_file(str(legacy_dir / "model.safetensors"))
    wrapped = re.compile(r"^(language_model\.model\.layers\.[02])\.(?!visual_learner|textual_learner|router)")
    legacy = {wrapped.sub(r"\1.decoder_layer.", k): v for k, v in state.items()}
    assert any(".decoder_layer." in k for k in legacy)
    save_file(legacy, str(legacy_dir / "model.safetensors"), metadata={"format": "pt"})

    loaded = WingsForConditionalGeneration.from_pretrained(legacy_dir)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    loaded.save_pretrained(tmp_path / "resaved")
    assert set(load_file(str(tmp_path / "resaved" / "model.safetensors"))) == set(state)


def test_to_llm_is_the_plain_llm_with_the_trained_weights(llm_family):
    model = tiny_wings(llm_family)
    randomize_learners(model)
    with torch.no_grad():  # a stage-2-like change to the LLM itself
        model.language_model.model.layers[0].mlp.up_proj.weight.mul_(1.5)
    llm = model.to_llm()
    assert type(llm) is type(model.language_model)
    assert not any("learner" in k or "router" in k for k in llm.state_dict())
    ids = torch.tensor([[1, 10, 11, 12, 13]])
    model.reset_learners()  # zero learners: WINGS computes exactly its LLM
    with torch.no_grad():
        torch.testing.assert_close(llm(ids).logits, model(ids).logits, rtol=0, atol=1e-6)
