"""Image loading and the LLaVA image preprocessing choices ("pad" to a square, or the processor's "resize")."""

from __future__ import annotations

import os
from typing import Literal

import torch
from PIL import Image

from ..processing import mean_color, pad_to_square
from .llava import DataError

ImageMode = Literal["pad", "resize"]


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open an image file as RGB; raises `DataError` naming the file when it cannot be decoded."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")  # convert() loads the pixels, so the file can be closed
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read image '{os.fspath(path)}': {err}") from err


def image_size(path: str | os.PathLike | Image.Image) -> tuple[int, int]:
    """(height, width) of an image file, from its header (the pixels are not decoded)."""
    if isinstance(path, Image.Image):
        return path.height, path.width
    try:
        with Image.open(path) as img:
            return img.height, img.width
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read image '{os.fspath(path)}': {err}") from err


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

    def prepare(self, image: Image.Image | str | os.PathLike) -> Image.Image:
        """An image or a path -> the image the image processor gets (padded to a square in "pad" mode)."""
        if not isinstance(image, Image.Image):
            image = load_image(image)
        if self.mode == "pad":
            image = pad_to_square(image.convert("RGB"), self.background)
        return image

    def __call__(self, image: Image.Image | str | os.PathLike) -> torch.Tensor:
        """An image or a path -> pixel_values [3, H, W]."""
        return self.image_processor(self.prepare(image), return_tensors="pt")["pixel_values"][0]
