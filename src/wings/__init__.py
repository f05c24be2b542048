"""WINGS: multimodal LLMs without text-only forgetting (NeurIPS 2024), on Hugging Face transformers."""

from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor

from .config import WingsConfig
from .modeling import WingsCache, WingsForConditionalGeneration, WingsStaticCache
from .image_layout import ImageLayout, image_layout_of, image_token_count
from .processing import WingsProcessor, processor_image_settings


def register_auto_classes() -> None:
    """Make `AutoConfig` / `AutoModel...` resolve model_type "wings" (HF's documented extension hook)."""
    AutoConfig.register("wings", WingsConfig, exist_ok=True)
    AutoModelForImageTextToText.register(WingsConfig, WingsForConditionalGeneration, exist_ok=True)
    AutoModelForCausalLM.register(WingsConfig, WingsForConditionalGeneration, exist_ok=True)
    AutoProcessor.register(WingsConfig, WingsProcessor, exist_ok=True)


register_auto_classes()

__all__ = [
    "ImageLayout",
    "image_layout_of",
    "image_token_count",
    "processor_image_settings",
    "WingsCache",
    "WingsStaticCache",
    "WingsConfig",
    "WingsForConditionalGeneration",
    "WingsProcessor",
    "register_auto_classes",
]
