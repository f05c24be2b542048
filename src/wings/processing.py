"""`WingsProcessor`: tokenizer + image processor; expands each `<image>` into that image's tokens.

How many tokens an image has follows the model's `image_layout` (`image_token_count`, re-exported here for
data pipelines): `image_seq_length` for "fixed"; for "anyres" and "native" it depends on the image's size.
"""

from __future__ import annotations

import math
import os
import urllib.parse
from typing import Any

import torch
from PIL import Image
from transformers import BatchFeature, ProcessorMixin
from transformers.image_processing_utils import get_patch_output_size, select_best_resolution
from transformers.image_transforms import divide_to_patches, to_pil_image
from transformers.image_utils import ChannelDimension, to_numpy_array

from .chat_content import content_format, template_content
from .image_layout import IMAGE_LAYOUTS, ImageLayout, image_layout_of, image_token_count
from .modeling.model import ensure_image_token

__all__ = ["WingsProcessor", "image_token_count", "image_layout_of", "processor_image_settings"]


# Options of the tokenizer call that `apply_chat_template(..., tokenize=True)` hands to the processor.
PROCESSOR_CALL_KWARGS = ("padding", "truncation", "max_length", "padding_side", "images")


def flatten_content(content: str | list[dict]) -> str:
    """HF content parts -> one string; each image part becomes an `<image>` marker on its own line."""
    if isinstance(content, str):
        return content
    pieces = []
    for part in content:
        kind = part.get("type")
        if kind == "image":
            pieces.append("<image>\n")
        elif kind == "text":
            pieces.append(part["text"])
        else:
            raise ValueError(f"unsupported content part type {kind!r} (expected 'image' or 'text')")
    return "".join(pieces)


def images_in_conversation(messages: list[dict]) -> list[Image.Image]:
    """The images of a conversation's image parts, in order, loaded as RGB PIL images.

    A part holds its image under "image" (PIL image or path), "path" or "url" (a local path, a
    `file://` URL or an http(s) URL). Raises `ValueError` naming the message and part otherwise.
    """
    images = []
    for m, message in enumerate(messages):
        content = message["content"]
        if isinstance(content, str):
            continue
        for p, part in enumerate(content):
            if part.get("type") != "image":
                continue
            source = next((part[k] for k in ("image", "path", "url") if part.get(k) is not None), None)
            if source is None:
                raise ValueError(
                    f"message {m}, content part {p}: an image part without its image; give "
                    "{'type': 'image', 'image': <PIL image or path>} (or pass the images in processor_kwargs)"
                )
            images.append(load_image_source(source, where=f"message {m}, content part {p}"))
    return images


def flatten_images(images: Any | None) -> list[Image.Image]:
    """One image, a list, or a list of per-sample lists (as HF pipelines pass them) -> a flat list of images.

    Paths are opened as RGB images; PIL images and arrays are passed through.
    """
    if images is None:
        return []
    if not isinstance(images, (list, tuple)):
        images = [images]
    flat = []
    for i, item in enumerate(images):
        for image in item if isinstance(item, (list, tuple)) else [item]:
            if isinstance(image, (str, os.PathLike)):
                image = load_image_source(image, where=f"image {i}")
            flat.append(image)
    return flat


def load_image_source(source: Image.Image | str | os.PathLike, where: str) -> Image.Image:
    """A PIL image, a local path, a `file://` URL or an http(s) URL -> an RGB PIL image."""
    if isinstance(source, Image.Image):
        return source.convert("RGB")
    source = os.fspath(source)
    if source.startswith("file://"):
        source = urllib.parse.unquote(urllib.parse.urlparse(source).path)
    if source.startswith(("http://", "https://")):
        from transformers.image_utils import load_image

        return load_image(source)
    try:
        with Image.open(source) as img:
            return img.convert("RGB")
    except (OSError, ValueError) as err:
        raise ValueError(f"{where}: cannot read image '{source}': {err}") from err


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


def processor_image_settings(config) -> dict[str, Any]:
    """The `WingsProcessor` arguments that make it expand and prepare images as the model `config` expects."""
    return {
        "image_seq_length": config.image_seq_length,
        "image_layout": config.image_layout,
        "image_grid_pinpoints": config.image_grid_pinpoints,
        "image_pooling": config.image_pooling,
        "image_newline": config.image_newline,
        "max_num_patches": config.max_num_patches,
        "patch_size": config.vision_config.patch_size,
        "tile_size": image_layout_of(config).tile_size,
    }


def tile_image(image: Image.Image, layout: ImageLayout, background_rgb: tuple[int, int, int]) -> list[Image.Image]:
    """LLaVA-NeXT's tiling: resize to fit the best pinpoint (aspect ratio kept), centre on a canvas of the
    pinpoint's size filled with `background_rgb`, cut into tiles of `layout.tile_size`, row by row."""
    width, height = image.size
    best = select_best_resolution((height, width), [list(p) for p in layout.grid_pinpoints])
    new_height, new_width = get_patch_output_size(to_numpy_array(image), best, ChannelDimension.LAST)
    canvas = Image.new("RGB", (best[1], best[0]), background_rgb)
    canvas.paste(image.resize((new_width, new_height), Image.BICUBIC),
                 ((best[1] - new_width) // 2, (best[0] - new_height) // 2))
    tiles = divide_to_patches(to_numpy_array(canvas).transpose(2, 0, 1), layout.tile_size)  # channels first
    return [to_pil_image(tile, input_data_format=ChannelDimension.FIRST) for tile in tiles]


class WingsProcessor(ProcessorMixin):
    """Prepare text (with `<image>` markers) and images for `WingsForConditionalGeneration`.

    Args:
        image_processor: a SigLIP/CLIP image processor.
        tokenizer: the LLM tokenizer; it must know `image_token` (added if missing).
        image_seq_length: image tokens of one square image at the encoder's size (the model config's value).
        image_token: the marker users write in text, one per image.
        image_mode: "pad" (to a square in the mean colour first, as the released recipe trains) or
            "resize" (the image processor's own resizing); training records the mode it used here. With
            "anyres" it prepares the overview image.
        chat_template: optional template; by default the tokenizer's own is used.
        image_layout, image_grid_pinpoints, image_pooling, image_newline, max_num_patches: the model config's
            values (`WingsConfig`; pass `**processor_image_settings(config)`).
        patch_size: the vision encoder's patch side in pixels (needed by "anyres" and "native").
        tile_size: the side in pixels of the encoder's square input (anyres tiles); default
            patch_size * sqrt(image_seq_length).
    """

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        image_seq_length: int = 576,
        image_token: str = "<image>",
        image_mode: str = "pad",
        chat_template: str | None = None,
        image_layout: str = "fixed",
        image_grid_pinpoints: list[list[int]] | None = None,
        image_pooling: int = 1,
        image_newline: bool = True,
        max_num_patches: int | None = None,
        patch_size: int | None = None,
        tile_size: int | None = None,
        **kwargs,
    ):
        if image_mode not in ("pad", "resize"):
            raise ValueError(f"image_mode must be 'pad' or 'resize', got {image_mode!r}")
        if image_layout not in IMAGE_LAYOUTS:
            raise ValueError(f"image_layout must be one of {IMAGE_LAYOUTS}, got {image_layout!r}")
        if image_layout != "fixed" and patch_size is None:
            raise ValueError(f"image_layout={image_layout!r} needs the encoder's patch_size (processor_image_settings)")
        self.image_seq_length = image_seq_length
        self.image_token = image_token
        self.image_mode = image_mode
        self.image_layout = image_layout
        self.image_grid_pinpoints = image_grid_pinpoints
        self.image_pooling = image_pooling
        self.image_newline = image_newline
        self.max_num_patches = max_num_patches
        self.patch_size = patch_size
        self.tile_size = tile_size
        self.image_token_id = ensure_image_token(tokenizer, image_token)
        if tokenizer.pad_token is None and tokenizer.eos_token is not None:
            # Llama 3 ships no pad token; padded positions are masked anyway, so eos can stand in.
            tokenizer.pad_token = tokenizer.eos_token
        super().__init__(image_processor, tokenizer, chat_template=chat_template)

    @property
    def layout(self) -> ImageLayout:
        """The geometry that decides each image's token count (`image_token_count(h, w, processor.layout)`)."""
        patch = self.patch_size or 1
        return ImageLayout(
            kind=self.image_layout,
            tile_size=self.tile_size or patch * math.isqrt(self.image_seq_length),
            patch_size=patch,
            grid_pinpoints=tuple(tuple(p) for p in self.image_grid_pinpoints or ()),
            pooling=self.image_pooling,
            newline=self.image_newline,
            max_num_patches=self.max_num_patches or 0,
        )

    def with_image_settings(self, config, image_mode: str | None = None) -> WingsProcessor:
        """A copy that prepares images as the model `config` expects (tokenizer and image processor shared)."""
        return WingsProcessor(
            image_processor=self.image_processor, tokenizer=self.tokenizer, image_token=self.image_token,
            image_mode=image_mode or self.image_mode, chat_template=self.chat_template,
            **processor_image_settings(config),
        )

    def image_token_count(self, image: Image.Image | tuple[int, int]) -> int:
        """Image tokens `image` (a PIL image or its (height, width)) becomes: its `<image>` marker's expansion."""
        height, width = (image.height, image.width) if isinstance(image, Image.Image) else image
        return image_token_count(height, width, self.layout)

    def expand_image_tokens(self, text: str, images: list[Image.Image | tuple[int, int]] | None = None) -> str:
        """Replace each `<image>` marker by its image's tokens: `image_seq_length` copies for the fixed layout;
        for the others, `image_token_count` of the matching image of `images` (PIL images or (height, width),
        in marker order; extra ones, past the text's markers, are ignored)."""
        if self.image_layout == "fixed":
            return text.replace(self.image_token, self.image_token * self.image_seq_length)
        pieces = text.split(self.image_token)
        if images is None or len(images) < len(pieces) - 1:
            raise ValueError(
                f"image_layout={self.image_layout!r}: expanding {len(pieces) - 1} '{self.image_token}' marker(s) needs "
                f"their images (got {0 if images is None else len(images)}): each image's token count depends on its size"
            )
        counts = [self.image_token_count(image) for image in images[: len(pieces) - 1]]
        return "".join(piece + self.image_token * n for piece, n in zip(pieces, counts + [0]))

    def prepare_images(self, images: list[Image.Image], return_tensors: str | None = "pt") -> dict[str, Any]:
        """Model image inputs for `images` (in order), per `image_layout`.

        fixed: pixel_values [n, 3, S, S]. anyres: pixel_values [n_tiles, 3, S, S] (each image's overview, then
        its tiles) and image_sizes [n, 2] (height, width). native: pixel_values [n, max_num_patches, p * p * 3],
        pixel_attention_mask [n, max_num_patches] and spatial_shapes [n, 2] (SigLIP 2's image processor).
        """
        images = [to_pil_image(i) if not isinstance(i, Image.Image) else i for i in images]
        images = [image.convert("RGB") for image in images]
        if self.image_layout == "native":
            from transformers.models.siglip2.image_processing_pil_siglip2 import Siglip2ImageProcessorPil

            naflex = Siglip2ImageProcessorPil(
                patch_size=self.patch_size, max_num_patches=self.max_num_patches,
                image_mean=self.image_processor.image_mean, image_std=self.image_processor.image_std,
            )
            return dict(naflex(images, return_tensors=return_tensors))
        background = mean_color(self.image_processor)
        squares = [pad_to_square(i, background) for i in images] if self.image_mode == "pad" else images
        if self.image_layout == "fixed":
            return {"pixel_values": self.image_processor(squares, return_tensors=return_tensors)["pixel_values"]}
        layout = self.layout
        tiles = [tile for image, square in zip(images, squares) for tile in [square, *tile_image(image, layout, background)]]
        sizes = [[image.height, image.width] for image in images]
        return {
            "pixel_values": self.image_processor(tiles, return_tensors=return_tensors)["pixel_values"],
            "image_sizes": torch.tensor(sizes) if return_tensors == "pt" else sizes,
        }

    def __call__(
        self,
        text: str | list[str] | None = None,
        images: Any | None = None,
        padding: bool | str = True,
        return_tensors: str | None = "pt",
        padding_side: str = "left",
        **kwargs,
    ) -> BatchFeature:
        """Tokenize `text` (one string or a batch) whose `<image>` markers match `images` in order.

        Batches are left-padded by default, as `generate()` needs. Returns input_ids [B, T],
        attention_mask [B, T] and, with images, what `prepare_images` gives (fixed: pixel_values [n_images, 3, H, W]).
        """
        if text is None:
            raise ValueError("WingsProcessor needs text (use '<image>' markers where images go)")
        texts = [text] if isinstance(text, str) else list(text)
        image_list = flatten_images(images)
        n_markers = sum(t.count(self.image_token) for t in texts)
        if n_markers != len(image_list):
            raise ValueError(
                f"the text has {n_markers} '{self.image_token}' marker(s) but {len(image_list)} image(s) were given; "
                "each image needs exactly one marker."
            )
        if self.image_layout != "fixed":
            image_list = [to_pil_image(i) if not isinstance(i, Image.Image) else i for i in image_list]
        per_text, start = [], 0
        for t in texts:
            n = t.count(self.image_token)
            per_text.append(image_list[start : start + n])
            start += n
        encoded = self.tokenizer(
            [self.expand_image_tokens(t, imgs) for t, imgs in zip(texts, per_text)],
            padding=padding,
            padding_side=padding_side,
            return_tensors=return_tensors,
            add_special_tokens=False,
            **kwargs,
        )
        data = dict(encoded)
        if image_list:
            if self.image_layout == "fixed":  # as before: arrays pass straight to the image processor
                if self.image_mode == "pad":
                    background = mean_color(self.image_processor)
                    image_list = [pad_to_square(img.convert("RGB"), background) if isinstance(img, Image.Image) else img
                                  for img in image_list]
                data["pixel_values"] = self.image_processor(image_list, return_tensors=return_tensors)["pixel_values"]
            else:
                data.update(self.prepare_images(image_list, return_tensors))
        return BatchFeature(data=data, tensor_type=return_tensors)

    def apply_chat_template(
        self,
        conversation: list[dict] | list[list[dict]],
        chat_template: str | None = None,
        add_generation_prompt: bool = False,
        continue_final_message: bool = False,
        tokenize: bool = False,
        return_tensors: str | None = "pt",
        return_dict: bool = False,
        processor_kwargs: dict | None = None,
        **kwargs,
    ) -> str | list[str] | Any:
        """Render HF chat messages (one conversation or a batch) to prompts, optionally model inputs.

        Content is a string or a list of parts: `{"type": "text", "text": ...}` and
        `{"type": "image"}`, each image part rendering as an `<image>` marker. With `tokenize=True`
        an image part must carry its image (`"image"`: a PIL image or a local path; `"path"`; or
        `"url"`: a local path, `file://` or http(s) URL), unless `processor_kwargs["images"]` gives
        them all in order.

        Returns the prompt string (a list for a batch); with `tokenize=True` the input_ids [B, T];
        with `return_dict=True` too, the processor's `BatchFeature` (input_ids, attention_mask and,
        with images, pixel_values [n_images, 3, H, W]), ready for `model.generate(**inputs)`.
        Keyword arguments that are tokenizer call options (padding, truncation, max_length,
        padding_side) go to the processor; the others reach the chat template.
        """
        is_batched = bool(conversation) and isinstance(conversation[0], (list, tuple))
        conversations = list(conversation) if is_batched else [conversation]
        template = chat_template or self.chat_template
        processor_kwargs = dict(processor_kwargs or {})
        for key in PROCESSOR_CALL_KWARGS:
            if key in kwargs:
                processor_kwargs[key] = kwargs.pop(key)
        # The template gets the content parts or one string, as vLLM's server hands them (`wings.chat_content`).
        fmt = content_format(template or self.tokenizer.chat_template)
        prompts = [
            self.tokenizer.apply_chat_template(
                [{**m, "content": template_content(m["content"], fmt)} for m in messages],
                tokenize=False,
                add_generation_prompt=add_generation_prompt,
                continue_final_message=continue_final_message,
                chat_template=template,
                **kwargs,
            )
            for messages in conversations
        ]
        if not tokenize:
            return prompts if is_batched else prompts[0]
        images = processor_kwargs.pop("images", None)
        if images is None:
            images = [image for messages_images in map(images_in_conversation, conversations) for image in messages_images]
        inputs = self(text=prompts, images=images or None, return_tensors=return_tensors, **processor_kwargs)
        return inputs if return_dict else inputs["input_ids"]

    def post_process_image_text_to_text(self, generated_outputs, skip_special_tokens: bool = True, **kwargs) -> list[str]:
        """Token ids [B, T] (or [T]) from `generate()` -> decoded texts (what the pipeline shows)."""
        if hasattr(generated_outputs, "dim") and generated_outputs.dim() == 1:
            generated_outputs = generated_outputs.unsqueeze(0)
        return self.tokenizer.batch_decode(generated_outputs, skip_special_tokens=skip_special_tokens, **kwargs)

    def batch_decode(self, *args, **kwargs) -> list[str]:
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs) -> str:
        return self.tokenizer.decode(*args, **kwargs)

