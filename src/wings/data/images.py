"""Image loading and the LLaVA image preprocessing choices ("pad" to a square, or the processor's "resize")."""

from __future__ import annotations

import os
from typing import Literal

import torch
from PIL import Image

from ..image_layout import fit_image_token_budget
from ..processing import mean_color, pad_to_square
from .llava import DataError, SampleTooLongError

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


def fed_image_sizes(
    images, processor, max_image_tokens: int | None = None, name: str = "sample"
) -> list[tuple[int, int]] | None:
    """(height, width) at which each of `images` (paths or PIL images) is fed: its own size, or all shrunk alike
    to fit `max_image_tokens` (`fit_image_token_budget`); None for the fixed layout without a budget, where
    every image is `image_seq_length` tokens whatever its size. Raises `SampleTooLongError` naming `name`
    when the images cannot fit the budget."""
    if processor.image_layout == "fixed" and max_image_tokens is None:
        return None
    try:
        return fit_image_token_budget([image_size(i) for i in images], processor.layout, max_image_tokens)
    except ValueError as err:
        raise SampleTooLongError(f"{name}: {err}") from None


def load_at_sizes(images, sizes: list[tuple[int, int]]) -> list[Image.Image]:
    """`images` (paths or PIL images) decoded, each resized to its (height, width) in `sizes` where it differs."""
    loaded = [image if isinstance(image, Image.Image) else load_image(image) for image in images]
    return [image if (image.height, image.width) == tuple(size) else image.resize((size[1], size[0]), Image.BICUBIC)
            for image, size in zip(loaded, sizes)]


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
