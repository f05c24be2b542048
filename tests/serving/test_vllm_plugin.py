"""The plugin's registration, settings it refuses, both checkpoint key layouts, padded head sizes."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("vllm")

from safetensors import safe_open  # noqa: E402
from transformers import AutoConfig  # noqa: E402

from tiny_serving import rename_to_decoder_layer_keys, rename_to_llm_keys  # noqa: E402
from wings import WingsConfig  # noqa: E402


def test_register_is_reentrant_and_registers_config_and_architecture():
    from vllm import ModelRegistry

    from wings.serving import ARCHITECTURE, register

    register()
    register()
    assert ARCHITECTURE in ModelRegistry.get_supported_archs()
    assert isinstance(AutoConfig.for_model("wings"), WingsConfig)


def test_entry_point_points_at_register():
    from importlib.metadata import entry_points

    (point,) = [p for p in entry_points(group="vllm.general_plugins") if p.name == "wings"]
    from wings.serving import register

    assert point.load() is register


def test_positional_router_is_refused_with_a_clear_error(wings_dir):
    from wings.serving.model import check_servable

    config = AutoConfig.from_pretrained(wings_dir)
    check_servable(config)
    config.router = "positional"
    with pytest.raises(ValueError, match="router='positional'.*router='segment'"):
        check_servable(config)
    config.learner_mode = "visual_only"  # stage-1 models never run the router
    check_servable(config)


def test_families_the_plugin_does_not_build_are_refused(wings_dir):
    from dataclasses import replace

    from wings.serving.families import missing_parts
    from wings.families import TEXT_FAMILIES
    from wings.serving.model import check_servable

    config = AutoConfig.from_pretrained(wings_dir)
    # A family described for training but not for vLLM is refused naming what is missing.
    unserved = replace(TEXT_FAMILIES["qwen3"], vllm=None)
    assert missing_parts(unserved) == ["no vLLM parts in wings.families (TextFamily.vllm: vLLM's decoder layer, biases)"]
    assert missing_parts(replace(TEXT_FAMILIES["smollm3"], vllm=replace(TEXT_FAMILIES["smollm3"].vllm, rope_layers=None))) \
        == ["which layers apply no RoPE (VllmParts.rope_layers)"]
    config.text_config.model_type = "gpt2"
    with pytest.raises(ValueError, match="no entry in wings.families.TEXT_FAMILIES"):
        check_servable(config)


def test_unknown_vision_encoders_are_refused(wings_dir):
    from wings.serving.model import check_servable

    config = AutoConfig.from_pretrained(wings_dir)
    config.vision_config.model_type = "dinov2"
    with pytest.raises(ValueError, match="vision encoders of type 'dinov2' are not served"):
        check_servable(config)


def test_old_and_new_checkpoint_layouts_load_the_same_parameters(wings_dir, tmp_path):
    import shutil

    from wings.serving.model import CHECKPOINT_NAMES

    old_dir, new_dir = tmp_path / "old", tmp_path / "new"
    for folder in (old_dir, new_dir):
        folder.mkdir()
        shutil.copy(wings_dir / "model.safetensors", folder / "model.safetensors")
    rename_to_decoder_layer_keys(old_dir)
    rename_to_llm_keys(new_dir)
    names = {}
    for folder in (old_dir, new_dir):
        with safe_open(folder / "model.safetensors", "pt") as f:
            names[folder] = {key: CHECKPOINT_NAMES.map_name(key) for key in f.keys()}
    # The tower's pooling head is dropped (never built); everything else keeps a name.
    assert all((value is None) == (".head." in key) for key, value in names[new_dir].items())
    names = {folder: {k: v for k, v in mapped.items() if v is not None} for folder, mapped in names.items()}
    old, new = names[old_dir], names[new_dir]
    assert any(".decoder_layer." in key for key in old) and not any(".decoder_layer." in key for key in new)
    assert sorted(old.values()) == sorted(new.values())
    assert "language_model.model.layers.0.self_attn.q_proj.weight" in new.values()
    assert all(v.startswith("vision_tower.vision_model.") for v in new.values() if v.startswith("vision_tower."))


def test_padded_head_sizes_and_learner_channels():
    from wings.serving.attention import MASK_BIAS, learner_channels, supported_head_size

    assert supported_head_size(33) == 64 and supported_head_size(129) == 160 and supported_head_size(64) == 64
    is_image = torch.tensor([True, False, True])
    both = learner_channels(is_image, 2, torch.float32)
    assert both.shape == (2, 3, 1, 2)
    # Visual learner (0) sees image keys, textual learner (1) text keys; value channel j flags learner j's keys.
    assert both[0, :, 0].tolist() == [[0.0, -MASK_BIAS], [-MASK_BIAS, 0.0], [0.0, -MASK_BIAS]]
    assert both[1, :, 0].tolist() == [[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]
    visual = learner_channels(is_image, 1, torch.float32)
    assert visual[:, :, 0, 0].tolist() == [[0.0, -MASK_BIAS, 0.0], [1.0, 0.0, 1.0]]
