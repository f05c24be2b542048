"""Vision side: patch-token selection from the tower and the `mlp2x_gelu` projector."""

from __future__ import annotations

import torch
from torch import nn
from transformers.activations import ACT2FN

from ..families import VISION_ENCODERS


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
    config = vision_tower.config
    if config.model_type == "siglip2_vision_model":
        outputs = vision_tower(**siglip2_inputs(pixel_values.to(dtype), config), output_hidden_states=True)
    else:
        outputs = vision_tower(pixel_values.to(dtype), output_hidden_states=True)
    features = outputs.hidden_states[feature_layer]
    return features[:, VISION_ENCODERS.get(config.model_type, 0) :]


def siglip2_inputs(pixel_values: torch.Tensor, config) -> dict[str, torch.Tensor]:
    """What `Siglip2VisionModel` takes for square images at its native grid of `num_patches` patches.

    pixel_values [n, C, H, W] -> pixel_values [n, N, p * p * C] (patches row by row, each flattened as
    (row, column, channel), as SigLIP 2's image processor lays them out), an all-ones
    pixel_attention_mask [n, N] and spatial_shapes [n, 2].
    """
    n, channels, height, width = pixel_values.shape
    p = config.patch_size
    rows, cols = height // p, width // p
    if rows * cols != config.num_patches or height % p or width % p:
        side = int(config.num_patches**0.5) * p
        raise ValueError(
            f"SigLIP 2 tower: images of {height}x{width} pixels give {rows * cols} patches of {p}; WINGS feeds it "
            f"square images of {side}x{side} (its {config.num_patches} position embeddings). Resize to that size."
        )
    patches = pixel_values.reshape(n, channels, rows, p, cols, p).permute(0, 2, 4, 3, 5, 1)
    return {
        "pixel_values": patches.reshape(n, rows * cols, p * p * channels),
        "pixel_attention_mask": torch.ones(n, rows * cols, dtype=torch.long, device=pixel_values.device),
        "spatial_shapes": torch.tensor([[rows, cols]] * n, dtype=torch.long, device=pixel_values.device),
    }
