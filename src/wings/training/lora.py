"""The LoRA baseline: `peft` adapters injected into the LLM's linear layers, merged back before saving."""

from __future__ import annotations

from torch import nn

from ..modeling.model import WingsForConditionalGeneration
from .recipe import LoraSettings


def add_lora(model: WingsForConditionalGeneration, settings: LoraSettings) -> int:
    """Inject LoRA adapters into `model.language_model` in place; returns the adapter parameter count."""
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules),
        bias="none",
    )
    before = sum(p.numel() for p in model.parameters())
    inject_adapter_in_model(config, model.language_model)
    return sum(p.numel() for p in model.parameters()) - before


def merge_lora(model: WingsForConditionalGeneration) -> int:
    """Fold every adapter into its base weight and put the plain layer back; returns how many were merged.

    After this the model has exactly the keys of a model without LoRA, so it saves and loads as usual.
    """
    from peft.tuners.lora import LoraLayer

    merged = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, LoraLayer):
                child.merge()
                setattr(parent, name, child.get_base_layer())
                merged += 1
    return merged


def has_lora(model: nn.Module) -> bool:
    from peft.tuners.lora import LoraLayer

    return any(isinstance(m, LoraLayer) for m in model.modules())
