"""How many tokens an image becomes: the geometry of `WingsConfig.image_layout`, in one place.

Three layouts (`IMAGE_LAYOUTS`):

    fixed    every image is one square of the encoder's size (padded or resized, `image_mode`):
             `image_seq_length` tokens, whatever the image.
    anyres   LLaVA-NeXT / OneVision tiling for fixed-resolution encoders: the grid of tiles from
             `image_grid_pinpoints` that best fits the image's aspect ratio (transformers'
             `select_best_resolution`), each tile encoded by the tower, plus the whole image as an
             overview square. Tokens: the overview's `image_seq_length`, then the tiles' feature map
             (optionally average-pooled by `image_pooling` per side), cut back to the image's aspect
             ratio (LLaVA-NeXT's `unpad_image`), with one learned `image_newline` token after each row.
    native   SigLIP 2 NaFlex at the image's own aspect ratio: the image is scaled so that its patch
             grid holds at most `max_num_patches` patches (transformers'
             `get_image_size_for_max_num_patches`); one token per patch.

`image_token_count(height, width, layout)` is what the processor expands `<image>` to and what the
model produces for that image; data pipelines call it for lengths and packing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

IMAGE_LAYOUTS = ("fixed", "anyres", "native")
# LLaVA-NeXT's grids, in tiles (rows, columns): 1x2, 2x1, 2x2, 3x1, 1x3.
DEFAULT_TILE_GRIDS = ((1, 2), (2, 1), (2, 2), (3, 1), (1, 3))


@dataclass(frozen=True)
class ImageLayout:
    """What decides an image's token count (built from a `WingsConfig` by `image_layout_of`).

    Args:
        kind: one of `IMAGE_LAYOUTS`.
        tile_size: side in pixels of the encoder's square input (the fixed image, the overview, a tile).
        patch_size: the encoder's patch side in pixels.
        grid_pinpoints: anyres: candidate tiled resolutions, (height, width) in pixels, multiples of tile_size.
        pooling: anyres: tile features are average-pooled over `pooling` x `pooling` patches (1: none).
        newline: anyres: a learned separator token after each row of tile features.
        max_num_patches: native: the most patches an image may have.
    """

    kind: str = "fixed"
    tile_size: int = 384
    patch_size: int = 16
    grid_pinpoints: tuple[tuple[int, int], ...] = ()
    pooling: int = 1
    newline: bool = True
    max_num_patches: int = 256

    @property
    def tile_grid(self) -> int:
        """Patches per side of one tile (and of the fixed image, and of the overview)."""
        return self.tile_size // self.patch_size

    @property
    def base_tokens(self) -> int:
        """Tokens of one square image at the encoder's size: `image_seq_length`."""
        return self.tile_grid**2


def image_layout_of(config) -> ImageLayout:
    """The `ImageLayout` of a `WingsConfig` (or anything holding the same fields and a `vision_config`)."""
    vision = config.vision_config
    patch = vision.patch_size
    if vision.model_type == "siglip2_vision_model":
        tile = math.isqrt(vision.num_patches) * patch
    else:
        tile = vision.image_size
    return ImageLayout(
        kind=getattr(config, "image_layout", "fixed"),
        tile_size=tile,
        patch_size=patch,
        grid_pinpoints=tuple(tuple(p) for p in (getattr(config, "image_grid_pinpoints", None) or ())),
        pooling=getattr(config, "image_pooling", 1),
        newline=getattr(config, "image_newline", True),
        max_num_patches=getattr(config, "max_num_patches", None) or getattr(vision, "num_patches", 0),
    )


def default_grid_pinpoints(tile_size: int) -> list[list[int]]:
    """LLaVA-NeXT's pinpoints for tiles of `tile_size` pixels: [height, width] of 1x2, 2x1, 2x2, 3x1, 1x3 tiles."""
    return [[rows * tile_size, cols * tile_size] for rows, cols in DEFAULT_TILE_GRIDS]


def anyres_tile_grid(height: int, width: int, layout: ImageLayout) -> tuple[int, int]:
    """(rows, columns) of tiles for an image of `height` x `width` pixels: the best-fitting pinpoint."""
    from transformers.image_processing_utils import select_best_resolution

    best_height, best_width = select_best_resolution((height, width), [list(p) for p in layout.grid_pinpoints])
    return best_height // layout.tile_size, best_width // layout.tile_size


def anyres_feature_grid(height: int, width: int, layout: ImageLayout) -> tuple[int, int]:
    """(rows, columns) of the tile features an image keeps: after pooling and cutting the padding away."""
    import torch
    from transformers.models.llava_next.modeling_llava_next import unpad_image

    rows, cols = anyres_tile_grid(height, width, layout)
    grid = pooled_size(rows * layout.tile_grid, layout.pooling), pooled_size(cols * layout.tile_grid, layout.pooling)
    # unpad_image only slices, so an empty tensor on the meta device gives its exact output shape for free.
    return tuple(unpad_image(torch.empty(0, *grid, device="meta"), (height, width)).shape[1:])


def pooled_size(n: int, pooling: int) -> int:
    """Side of a feature map of side `n` after `pooling` x `pooling` average pooling (partial windows kept)."""
    return -(-n // pooling)


def native_patch_grid(height: int, width: int, layout: ImageLayout) -> tuple[int, int]:
    """(rows, columns) of SigLIP 2 NaFlex patches for an image of `height` x `width` pixels."""
    from transformers.models.siglip2.image_processing_pil_siglip2 import get_image_size_for_max_num_patches

    h, w = get_image_size_for_max_num_patches(height, width, layout.patch_size, layout.max_num_patches)
    return h // layout.patch_size, w // layout.patch_size


def image_token_count(height: int, width: int, layout: ImageLayout) -> int:
    """Image tokens of one image of `height` x `width` pixels under `layout` (see the module docstring).

    The processor expands the image's `<image>` marker to this many tokens, and the model produces
    this many features for it. `layout` comes from `image_layout_of(config)` or `processor.image_layout`.
    """
    if height < 1 or width < 1:
        raise ValueError(f"image_token_count: an image of {height}x{width} pixels has no pixels")
    if layout.kind == "fixed":
        return layout.base_tokens
    if layout.kind == "anyres":
        rows, cols = anyres_feature_grid(height, width, layout)
        return layout.base_tokens + rows * cols + (rows if layout.newline else 0)
    if layout.kind == "native":
        rows, cols = native_patch_grid(height, width, layout)
        return rows * cols
    raise ValueError(f"image_token_count: image layout must be one of {IMAGE_LAYOUTS}, got {layout.kind!r}")


def fit_image_token_budget(
    sizes: list[tuple[int, int]], layout: ImageLayout, max_image_tokens: int | None, step: float = 0.9
) -> list[tuple[int, int]]:
    """Image sizes (height, width) whose tokens together fit `max_image_tokens`: the given sizes when they fit,
    else all images shrunk by the same factor (aspect ratios kept, in steps of `step`) until they do, which
    selects smaller tile grids (anyres) or fewer patches (native). Raises `ValueError` when even one pixel
    per image does not fit (e.g. fixed-layout images, whose count never shrinks, over the budget).
    """
    if max_image_tokens is None or not sizes:
        return list(sizes)
    scale = 1.0
    while True:
        scaled = [(max(1, round(h * scale)), max(1, round(w * scale))) for h, w in sizes]
        total = sum(image_token_count(h, w, layout) for h, w in scaled)
        if total <= max_image_tokens:
            return scaled
        if all(h == 1 and w == 1 for h, w in scaled):
            raise ValueError(
                f"{len(sizes)} image(s) need at least {total} image tokens ({layout.kind} layout), over the budget "
                f"max_image_tokens={max_image_tokens}"
            )
        scale *= step


def largest_image(layout: ImageLayout) -> tuple[tuple[int, int], int]:
    """((height, width), tokens) of an image with the most tokens `layout` gives any image (what a server
    reserves per image): the largest pinpoint for anyres (its aspect ratio leaves nothing to cut), a square of
    `max_num_patches` patches for native, the base square for fixed."""
    if layout.kind == "anyres":
        sizes = [tuple(p) for p in layout.grid_pinpoints]
    elif layout.kind == "native":
        side = math.isqrt(layout.max_num_patches) * layout.patch_size
        sizes = [(side, side)]
    else:
        sizes = [(layout.tile_size, layout.tile_size)]
    counts = [image_token_count(h, w, layout) for h, w in sizes]
    best = max(range(len(sizes)), key=counts.__getitem__)
    return sizes[best], counts[best]
