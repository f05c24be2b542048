"""The plugin's registration, settings it refuses, both checkpoint key layouts, padded head sizes."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("vllm")

from safetensors import safe_open  # noqa: E402
from transformers import AutoConfig  # noqa: E402

from tiny_serving import rename_to_llm_keys  # noqa: E402
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


def test_old_and_new_checkpoint_layouts_load_the_same_parameters(wings_dir, tmp_path):
    import shutil

    from wings.serving.model import CHECKPOINT_NAMES

    shutil.copy(wings_dir / "model.safetensors", tmp_path / "model.safetensors")
    rename_to_llm_keys(tmp_path)
    names = {}
    for folder in (wings_dir, tmp_path):
        with safe_open(folder / "model.safetensors", "pt") as f:
            names[folder] = {key: CHECKPOINT_NAMES.map_name(key) for key in f.keys()}
    old, new = names[wings_dir], names[tmp_path]
    assert any(".decoder_layer." in key for key in old) and not any(".decoder_layer." in key for key in new)
    assert sorted(old.values()) == sorted(new.values())
    assert "language_model.model.layers.0.self_attn.q_proj.weight" in new.values()
    assert all(v.startswith("vision_tower.vision_model.") for v in new.values() if v.startswith("vision_tower."))


def test_padded_head_sizes_and_channels():
    from wings.serving.attention import pad_heads, supported_head_size

    assert supported_head_size(33) == 64 and supported_head_size(129) == 160 and supported_head_size(64) == 64
    x = torch.randn(3, 2, 4)
    flags = torch.tensor([1.0, 0.0, 1.0])
    out = pad_heads(x, 8, flags)
    assert out.shape == (3, 2, 8)
    assert torch.equal(out[..., :4], x) and torch.equal(out[..., 4], flags[:, None].expand(3, 2))
    assert not out[..., 5:].any()
    assert torch.equal(pad_heads(x, 8, 2.5)[..., 4], torch.full((3, 2), 2.5))
