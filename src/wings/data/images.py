"""Image loading and the LLaVA image preprocessing choices ("pad" to a square, or the processor's "resize")."""

from __future__ import annotations

import os
from typing import Literal

import torch
from PIL import Image

from .llava import DataError

ImageMode = Literal["pad", "resize"]


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open an image file as RGB; raises `DataError` naming the file when it cannot be decoded."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")  # convert() loads the pixels, so the file can be closed
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read image '{os.fspath(path)}': {err}") from err


def pad_to_square(img: Image.Image, background_rgb: tuple[int, int, int]) -> Image.Image:
    """Centre `img` on a square canvas of its longer side filled with `background_rgb`.

    This is `expand2square` from the released LLaVA-1.5 recipe: padding with the processor's mean
    colour keeps the whole image (no crop) and normalises the padding to ~0.
    """
    width, height = img.size
    if width == height:
        return img
    side = max(width, height)
    canvas = Image.new(img.mode, (side, side), background_rgb)
    canvas.paste(img, ((side - width) // 2, (side - height) // 2))
    return canvas


def mean_color(image_processor) -> tuple[int, int, int]:
    """The processor's `image_mean` as 0-255 RGB, truncated as LLaVA does (`int(x * 255)`)."""
    return tuple(int(x * 255) for x in image_processor.image_mean)


class ImageTransform:
    """Turn one image into pixel_values [3, H, W] for the vision tower.

    Args:
        processor: a `WingsProcessor` (its `image_processor` is used) or an image processor.
        mode: "pad" pads to a square with the mean colour first (LLaVA-1.5); "resize" leaves the
            image to the image processor's own resizing (and crop, for CLIP).
    """

    def __init__(self, processor, mode: ImageMode = "pad"):
        if mode not in ("pad", "resize"):
            raise ValueError(f"image mode must be 'pad' or 'resize', got {mode!r}")
        self.image_processor = getattr(processor, "image_processor", processor)
        self.mode = mode
        self.background = mean_color(self.image_processor)

    def __call__(self, image: Image.Image | str | os.PathLike) -> torch.Tensor:
        """An image or a path -> pixel_values [3, H, W]."""
        if not isinstance(image, Image.Image):
            image = load_image(image)
        if self.mode == "pad":
            image = pad_to_square(image.convert("RGB"), self.background)
        return self.image_processor(image, return_tensors="pt")["pixel_values"][0]
