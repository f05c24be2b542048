"""Vision side: patch-token selection from the tower, the `mlp2x_gelu` projector, and the packing of tiled
(anyres) and native-resolution (SigLIP 2 NaFlex) images into their image tokens."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN
from transformers.models.llava_next.modeling_llava_next import unpad_image

from ..families import VISION_ENCODERS
from ..image_layout import ImageLayout, anyres_tile_grid


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


def pack_anyres_features(
    features: torch.Tensor, image_size: tuple[int, int], layout: ImageLayout, newline: torch.Tensor | None
) -> torch.Tensor:
    """One tiled image's projected features -> its image tokens, as LLaVA-NeXT's `pack_image_features` lays them out.

    features [1 + rows * cols, g * g, d]: the overview first, then the tiles row by row (g = patches per tile
    side); image_size: the image's (height, width) in pixels; newline [d] or None.
    Returns [image_token_count(height, width, layout), d]: the overview's g * g tokens, then the tiles' feature
    map (average-pooled by `layout.pooling`, cut back to the image's aspect ratio by `unpad_image`), row by row,
    each row followed by `newline`.
    """
    height, width = image_size
    rows, cols = anyres_tile_grid(height, width, layout)
    g, d = layout.tile_grid, features.shape[-1]
    if features.shape[0] != 1 + rows * cols:
        raise ValueError(
            f"anyres image of {height}x{width} pixels: expected 1 + {rows}x{cols} tiles, got {features.shape[0]}"
        )
    tiles = features[1:].reshape(rows, cols, g, g, d).permute(4, 0, 2, 1, 3).reshape(d, rows * g, cols * g)
    if layout.pooling > 1:
        tiles = F.avg_pool2d(tiles, layout.pooling, ceil_mode=True)
    tiles = unpad_image(tiles, (height, width))
    if newline is not None:
        tiles = torch.cat([tiles, newline.to(tiles.dtype)[:, None, None].expand(d, tiles.shape[1], 1)], dim=2)
    return torch.cat([features[0], tiles.flatten(1).transpose(0, 1)])


def native_patch_features(
    vision_tower: nn.Module, pixel_values: torch.Tensor, spatial_shapes: torch.Tensor, feature_layer: int
) -> list[torch.Tensor]:
    """SigLIP 2 NaFlex at each image's own patch grid.

    pixel_values [n, max_num_patches, p * p * C] (SigLIP 2's image processor layout, padding patches last);
    spatial_shapes [n, 2] (rows, columns of patches). Returns one [rows_i * cols_i, d_vis] tensor per image.
    """
    dtype = next(vision_tower.parameters()).dtype
    counts = (spatial_shapes[:, 0] * spatial_shapes[:, 1]).tolist()
    # The attention mask follows from the grid: the processor puts each image's patches first.
    mask = torch.arange(pixel_values.shape[1], device=pixel_values.device)[None] < spatial_shapes.prod(-1)[:, None]
    outputs = vision_tower(
        pixel_values=pixel_values.to(dtype), pixel_attention_mask=mask.long(), spatial_shapes=spatial_shapes,
        output_hidden_states=True,
    )
    features = outputs.hidden_states[feature_layer]
    return [features[i, :n] for i, n in enumerate(counts)]
