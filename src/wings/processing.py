"""`WingsProcessor`: tokenizer + image processor; expands each `<image>` into `image_seq_length` image tokens."""

from __future__ import annotations

from typing import Any

from PIL import Image
from transformers import BatchFeature, ProcessorMixin

from .modeling.model import ensure_image_token


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


class WingsProcessor(ProcessorMixin):
    """Prepare text (with `<image>` markers) and images for `WingsForConditionalGeneration`.

    Args:
        image_processor: a SigLIP/CLIP image processor.
        tokenizer: the LLM tokenizer; it must know `image_token` (added if missing).
        image_seq_length: image tokens per image (the model config's value).
        image_token: the marker users write in text, one per image.
        image_mode: "pad" (to a square in the mean colour first, as the released recipe trains) or
            "resize" (the image processor's own resizing); training records the mode it used here.
        chat_template: optional template; by default the tokenizer's own is used.
    """

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        image_seq_length: int = 576,
        image_token: str = "<image>",
        image_mode: str = "pad",
        chat_template: str | None = None,
        **kwargs,
    ):
        if image_mode not in ("pad", "resize"):
            raise ValueError(f"image_mode must be 'pad' or 'resize', got {image_mode!r}")
        self.image_seq_length = image_seq_length
        self.image_token = image_token
        self.image_mode = image_mode
        self.image_token_id = ensure_image_token(tokenizer, image_token)
        if tokenizer.pad_token is None and tokenizer.eos_token is not None:
            # Llama 3 ships no pad token; padded positions are masked anyway, so eos can stand in.
            tokenizer.pad_token = tokenizer.eos_token
        super().__init__(image_processor, tokenizer, chat_template=chat_template)

    def expand_image_tokens(self, text: str) -> str:
        """Replace each `<image>` marker by `image_seq_length` copies of it."""
        return text.replace(self.image_token, self.image_token * self.image_seq_length)

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
        attention_mask [B, T] and, with images, pixel_values [n_images, 3, H, W].
        """
        if text is None:
            raise ValueError("WingsProcessor needs text (use '<image>' markers where images go)")
        texts = [text] if isinstance(text, str) else list(text)
        image_list = [] if images is None else (list(images) if isinstance(images, (list, tuple)) else [images])
        n_markers = sum(t.count(self.image_token) for t in texts)
        if n_markers != len(image_list):
            raise ValueError(
                f"the text has {n_markers} '{self.image_token}' marker(s) but {len(image_list)} image(s) were given; "
                "each image needs exactly one marker."
            )
        encoded = self.tokenizer(
            [self.expand_image_tokens(t) for t in texts],
            padding=padding,
            padding_side=padding_side,
            return_tensors=return_tensors,
            add_special_tokens=False,
            **kwargs,
        )
        data = dict(encoded)
        if image_list:
            if self.image_mode == "pad":
                background = mean_color(self.image_processor)
                image_list = [pad_to_square(img.convert("RGB"), background) if isinstance(img, Image.Image) else img
                              for img in image_list]
            data["pixel_values"] = self.image_processor(image_list, return_tensors=return_tensors)["pixel_values"]
        return BatchFeature(data=data, tensor_type=return_tensors)

    def apply_chat_template(self, conversation: list[dict], add_generation_prompt: bool = True, **kwargs) -> str:
        """Render HF chat messages (string or content-part lists) to a prompt string with `<image>` markers."""
        messages = [{**m, "content": flatten_content(m["content"])} for m in conversation]
        template = kwargs.pop("chat_template", None) or self.chat_template
        return self.tokenizer.apply_chat_template(
            messages,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            chat_template=template,
            **kwargs,
        )

    def batch_decode(self, *args, **kwargs) -> list[str]:
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs) -> str:
        return self.tokenizer.decode(*args, **kwargs)

