"""Vision side: patch-token selection from the tower and the `mlp2x_gelu` projector."""

from __future__ import annotations

import torch
from torch import nn
from transformers.activations import ACT2FN


class WingsMultiModalProjector(nn.Module):
    """`mlp2x_gelu`: Linear(d_vis, d) -> act -> Linear(d, d). Names follow HF LLaVA's projector."""

    def __init__(self, vision_hidden_size: int, text_hidden_size: int, act: str = "gelu"):
        super().__init__()
        self.linear_1 = nn.Linear(vision_hidden_size, text_hidden_size)
        self.act = ACT2FN[act]
        self.linear_2 = nn.Linear(text_hidden_size, text_hidden_size)

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        """[n_images, n_patches, d_vis] -> [n_images, n_patches, d]."""
        return self.linear_2(self.act(self.linear_1(image_features)))


def patch_features(vision_tower: nn.Module, pixel_values: torch.Tensor, feature_layer: int) -> torch.Tensor:
    """Hidden states of `feature_layer`, patch tokens only (CLIP's CLS token dropped).

    pixel_values [n_images, 3, H, W] -> [n_images, n_patches, d_vis].
    """
    dtype = next(vision_tower.parameters()).dtype
    outputs = vision_tower(pixel_values.to(dtype), output_hidden_states=True)
    features = outputs.hidden_states[feature_layer]
    if vision_tower.config.model_type == "clip_vision_model":
        features = features[:, 1:]
    return features
