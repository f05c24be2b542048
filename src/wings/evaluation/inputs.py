"""Model inputs for evaluation: one way from a prompt string and its images to token ids and pixels.

``processor`` is a `WingsProcessor`, a Hugging Face LLaVA processor, or a plain tokenizer (text
only). Prompts are complete strings (a rendered chat); each image marker stands for the next image
of the prompt. Images are prepared as the model was trained: the image mode is the processor's own
(``WingsProcessor.image_mode``, recorded by training) unless one is given, and "pad" (LLaVA-1.5's
square padding) for processors that do not record one.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from PIL import Image

from ..data.images import ImageMode, ImageTransform

__all__ = [
    "ImageInput",
    "chat_prompt",
    "concat_image_inputs",
    "image_inputs",
    "image_mode_of",
    "image_token_of",
    "left_pad",
    "model_device",
    "pad_id_of",
    "pixel_values",
    "prompt_ids",
    "tokenizer_of",
]

ImageInput = Image.Image | str | os.PathLike
IMAGE_MODES: tuple[str, ...] = ("pad", "resize")


def tokenizer_of(processor):
    """The tokenizer of a processor (a tokenizer is its own)."""
    return getattr(processor, "tokenizer", processor)


def image_token_of(processor) -> str | None:
    """The image marker prompts use, or None for a plain tokenizer."""
    return getattr(processor, "image_token", None)


def pad_id_of(processor) -> int:
    """Padding id: the tokenizer's pad token, else its eos, else 0 (padding is masked anyway)."""
    tok = tokenizer_of(processor)
    for candidate in (tok.pad_token_id, tok.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


def model_device(model) -> torch.device:
    device = getattr(model, "device", None)
    if device is not None:
        return torch.device(device)
    return next(model.parameters()).device


def image_mode_of(processor, image_mode: ImageMode | None = None) -> ImageMode:
    """``image_mode`` when given, else the processor's recorded mode, else "pad"."""
    mode = image_mode if image_mode is not None else getattr(processor, "image_mode", None) or "pad"
    if mode not in IMAGE_MODES:
        raise ValueError(f"image_mode must be 'pad' or 'resize', got {mode!r}")
    return mode


def chat_prompt(processor, messages: list[dict[str, str]]) -> str:
    """Render messages with the processor's (or tokenizer's) chat template, ready for the reply."""
    render = getattr(processor, "apply_chat_template", None)
    if render is None:
        raise TypeError(f"{type(processor).__name__} has no apply_chat_template")
    if hasattr(processor, "image_processor"):
        return render(messages, add_generation_prompt=True)
    return render(messages, tokenize=False, add_generation_prompt=True)


def prompt_ids(processor, text: str, images: Sequence[ImageInput] = (), image_mode: ImageMode | None = None) -> list[int]:
    """Token ids of ``text`` with each image marker expanded into its image tokens.

    A `WingsProcessor` expands markers by itself (``expand_image_tokens``) and a tokenizer has
    none; both add no special tokens, as the processor does. A Hugging Face multimodal processor
    (LLaVA) counts an image's tokens from the image, so it is called with the prepared images and
    adds what its tokenizer adds (a Llama BOS).
    """
    expand = getattr(processor, "expand_image_tokens", None)
    if expand is not None or getattr(processor, "image_processor", None) is None:
        if expand is not None and _sized_layout(processor):  # each image's token count follows its size
            text = expand(text, [_load(image) for image in images])
        elif expand is not None:
            text = expand(text)
        return list(tokenizer_of(processor)(text, add_special_tokens=False)["input_ids"])
    transform = ImageTransform(processor, image_mode_of(processor, image_mode))
    encoded = processor(text=text, images=[transform.prepare(i) for i in images] or None, return_tensors="pt")
    return encoded["input_ids"][0].tolist()


def pixel_values(
    processor, images: Sequence[ImageInput], image_mode: ImageMode | None = None
) -> torch.Tensor | None:
    """pixel_values [n_images, 3, H, W] of ``images`` (paths or PIL images), None without images."""
    if not images:
        return None
    if getattr(processor, "image_processor", None) is None:
        raise ValueError(f"images were given but {type(processor).__name__} has no image_processor")
    transform = ImageTransform(processor, image_mode_of(processor, image_mode))
    return torch.stack([transform(image) for image in images])


def image_inputs(
    processor, images: Sequence[ImageInput], image_mode: ImageMode | None = None
) -> dict[str, torch.Tensor] | None:
    """The model's image inputs for ``images``: {"pixel_values": [n_images, 3, H, W]} for the fixed layout; with
    a `WingsProcessor` of the "anyres" or "native" layout, what its ``prepare_images`` gives (pixel_values
    with image_sizes, or with spatial_shapes). None without images."""
    if images and _sized_layout(processor):
        return dict(processor.prepare_images([_load(image) for image in images]))
    pixels = pixel_values(processor, images, image_mode)
    return None if pixels is None else {"pixel_values": pixels}


def concat_image_inputs(items: Sequence[dict[str, torch.Tensor] | None]) -> dict[str, torch.Tensor] | None:
    """Several samples' image inputs (of `image_inputs`) as one batch's: each input concatenated in order."""
    items = [item for item in items if item]
    if not items:
        return None
    return {key: torch.cat([item[key] for item in items]) for key in items[0]}


def _sized_layout(processor) -> bool:
    return getattr(processor, "image_layout", "fixed") != "fixed"


def _load(image: ImageInput) -> Image.Image:
    from ..data.images import load_image

    return image if isinstance(image, Image.Image) else load_image(image)


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of ids -> input_ids [B, T], attention_mask [B, T], padded on the left."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, row in enumerate(rows):
        if row:
            ids[b, width - len(row) :] = torch.tensor(row, dtype=torch.long)
            mask[b, width - len(row) :] = 1
    return ids, mask
