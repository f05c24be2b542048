"""The vision tower in vLLM: vLLM's own tower for the encoder the config names (`wings.families.VLLM_VISION_TOWERS`).

Features are the hidden states of `vision_feature_layer` (the tower is built up to it, without its post-norm),
patch tokens only, exactly as `wings.modeling.vision.patch_features` takes them from the Hugging Face tower.
"""

from __future__ import annotations

import torch
from torch import nn
from vllm.forward_context import set_forward_context
from vllm.model_executor.models.utils import get_layer_index

from ..families import VISION_ENCODERS, VLLM_VISION_TOWERS
from ..modeling.vision import siglip2_inputs
from .families import load_class


def vision_tower_class(vision_config) -> type[nn.Module]:
    """vLLM's tower class for the encoder, or a `ValueError` naming the encoders served."""
    tower = VLLM_VISION_TOWERS.get(vision_config.model_type)
    if tower is None:
        raise ValueError(
            f"WINGS in vLLM: vision encoders of type '{vision_config.model_type}' are not served; served: "
            f"{', '.join(VLLM_VISION_TOWERS)}."
        )
    return load_class(tower.tower)


def build_vision_tower(vision_config, feature_layer: int, quant_config, prefix: str) -> nn.Module:
    """vLLM's tower for the encoder, built up to `feature_layer` (no post-norm, as `hidden_states[k]`)."""
    layers = get_layer_index(feature_layer, vision_config.num_hidden_layers)
    return vision_tower_class(vision_config)(
        vision_config, quant_config=quant_config, num_hidden_layers_override=layers, require_post_norm=False,
        prefix=prefix,
    )


def tower_features(tower: nn.Module, vision_config, pixel_values: torch.Tensor, vllm_config) -> torch.Tensor:
    """pixel_values [n, 3, H, W] -> patch features [n, n_patches, d_vis] (leading non-patch tokens dropped)."""
    pixel_values = pixel_values.to(next(tower.parameters()).dtype)
    if VLLM_VISION_TOWERS[vision_config.model_type].inputs == "patches":
        features = _siglip2_features(tower, vision_config, pixel_values, vllm_config)
    else:
        features = tower(pixel_values)
    return features[:, VISION_ENCODERS[vision_config.model_type]:]


def _siglip2_features(tower, vision_config, pixel_values, vllm_config) -> torch.Tensor:
    """SigLIP 2 NaFlex: the images' patches (laid out as `wings.modeling.vision.siglip2_inputs` lays them out for
    the Hugging Face tower) packed one image after another, with each image's grid and sequence bounds."""
    inputs = siglip2_inputs(pixel_values, vision_config)
    n, length, width = inputs["pixel_values"].shape
    cu_seqlens = torch.arange(0, (n + 1) * length, length, dtype=torch.int32, device=pixel_values.device)
    with set_forward_context(None, vllm_config):
        packed = tower(
            pixel_values_packed=inputs["pixel_values"].reshape(1, n * length, width),
            spatial_shapes=inputs["spatial_shapes"].cpu(),
            cu_seqlens=cu_seqlens,
            max_seqlen=torch.tensor([length], dtype=torch.int32),
        )
    return packed.reshape(n, length, -1)


def native_tower_features(tower: nn.Module, pixel_values: torch.Tensor, spatial_shapes: torch.Tensor,
                          vllm_config) -> list[torch.Tensor]:
    """SigLIP 2 NaFlex at each image's own grid (image_layout "native"): pixel_values [n, max_num_patches, p*p*C]
    (SigLIP 2's processor layout, padding patches last), spatial_shapes [n, 2] -> one [rows_i * cols_i, d_vis]
    per image. Only each image's own patches are packed, so no attention mask is needed."""
    counts = (spatial_shapes[:, 0] * spatial_shapes[:, 1]).tolist()
    packed = torch.cat([pixel_values[i, :n] for i, n in enumerate(counts)]).to(next(tower.parameters()).dtype)
    bounds = torch.tensor([0, *counts], dtype=torch.int32, device=pixel_values.device).cumsum(0, dtype=torch.int32)
    with set_forward_context(None, vllm_config):
        features = tower(
            pixel_values_packed=packed.unsqueeze(0),
            spatial_shapes=spatial_shapes.cpu(),
            cu_seqlens=bounds,
            max_seqlen=torch.tensor([max(counts)], dtype=torch.int32),
        )
    return list(torch.split(features.reshape(sum(counts), -1), counts))
