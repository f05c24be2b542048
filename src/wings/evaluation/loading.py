"""Loading a saved model with its processor, for every command that evaluates one.

One loader for `wings eval`, `wings iit eval`, `wings laws` and `wings chat`: a WINGS directory
(``wings train`` output), a Hugging Face LLaVA directory (the baseline), or a plain causal LM
directory (the base LLM; its processor is its tokenizer, for text-only scoring).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoProcessor, AutoTokenizer, LlavaForConditionalGeneration

from ..modeling.model import WingsForConditionalGeneration
from ..image_layout import image_layout_of
from ..processing import WingsProcessor

__all__ = ["default_device", "load_model_and_processor", "model_type_of"]


def default_device() -> str:
    """"cuda" when a GPU is visible, else "cpu"."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def model_type_of(path: str | os.PathLike) -> str:
    """The ``model_type`` in a saved model directory's config.json ("wings", "llava", "qwen2", ...)."""
    config_path = Path(path) / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(
            f"'{path}' is not a saved model directory: no config.json in it "
            "(expected `wings train` output, a LLaVA model or a causal LM)"
        )
    try:
        model_type = json.loads(config_path.read_text(encoding="utf-8")).get("model_type")
    except (json.JSONDecodeError, AttributeError) as err:
        raise ValueError(f"'{config_path}': not a JSON object with a model_type") from err
    if not isinstance(model_type, str):
        raise ValueError(f"'{config_path}': no model_type")
    return model_type


def _has_processor_files(path: Path) -> bool:
    return any((path / name).is_file() for name in ("processor_config.json", "tokenizer_config.json"))


def load_model_and_processor(
    path: str | os.PathLike,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
) -> tuple[Any, Any]:
    """A saved model in eval mode on ``device``, and its processor.

    Args:
        path: a directory with ``config.json`` + weights and the processor/tokenizer files saved
            beside them: WINGS (``model_type`` "wings": a `WingsProcessor`), Hugging Face LLaVA
            ("llava": its `LlavaProcessor`) or any causal LM (its tokenizer).
        device: where to put the model; None: cuda when available, else cpu.
        dtype: e.g. ``"bfloat16"`` or ``torch.float32``; None keeps the checkpoint's dtype.

    Raises:
        FileNotFoundError: no config.json, or no processor/tokenizer files beside the model.
        ValueError: a WINGS processor whose image expansion does not match the model.
    """
    path = Path(path)
    model_type = model_type_of(path)
    if not _has_processor_files(path):
        raise FileNotFoundError(
            f"'{path}' holds a model but no processor/tokenizer files; save them beside the model with "
            "processor.save_pretrained(path)"
        )
    kwargs: dict[str, Any] = {}
    if dtype is not None:
        kwargs["dtype"] = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    if model_type == "wings":
        model = WingsForConditionalGeneration.from_pretrained(path, **kwargs)
        processor = WingsProcessor.from_pretrained(path)
        if processor.image_seq_length != model.config.image_seq_length:
            raise ValueError(
                f"'{path}': the processor expands <image> into {processor.image_seq_length} tokens but the "
                f"model expects image_seq_length={model.config.image_seq_length}"
            )
        layout = image_layout_of(model.config)
        if processor.image_layout != layout.kind or (layout.kind != "fixed" and processor.layout != layout):
            raise ValueError(
                f"'{path}': the processor prepares images as {processor.layout} but the model config says "
                f"{layout}; save the processor built with processor_image_settings(config)"
            )
    elif model_type == "llava":
        model = LlavaForConditionalGeneration.from_pretrained(path, **kwargs)
        processor = AutoProcessor.from_pretrained(path)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        processor = AutoTokenizer.from_pretrained(path)
    return model.to(device or default_device()).eval(), processor
