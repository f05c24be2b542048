"""Every place wings leans on a transformers version or a private transformers attribute, in one module.

wings supports transformers 5.19 (what vLLM 0.32 pins) to the latest 5.x. Each shim says which release lets
it go: when the oldest supported release reaches it, delete the shim and call the plain API. Private
attributes are touched only here, each with why; a transformers release that renames one breaks one
function, named in its error.
"""

from __future__ import annotations

import inspect

from torch import nn

try:
    from transformers.configuration_utils import SubConfigSpec
except ImportError:  # transformers < 5.20 resolves sub-configs in each composite config itself; goes with 5.19
    SubConfigSpec = None

# The model/generate keyword of the cache: `cache` from transformers 5.20 on, `past_key_values` before.
# Goes with 5.19 (then only "cache").
CACHE_KWARGS = ("cache", "past_key_values")


def cache_kwarg(model: nn.Module) -> str:
    """The keyword `model.forward` takes its cache under: `cache` from transformers 5.20 on, `past_key_values`
    before. Goes with 5.19."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def layer_cache(cache, kwargs: dict):
    """The cache a decoder layer receives: transformers < 5.20 passes it as `past_key_values` (popped from
    `kwargs`, so that it is not passed on twice). Goes with 5.19."""
    return kwargs.pop("past_key_values", None) if cache is None else cache


def set_attn_implementation(config, implementation: str | None) -> None:
    """Set a sub-config's attention kernel without the public setter, which validates it against a model class
    and (for composite configs) recurses: a `WingsConfig`'s sub-configs are built with None, and the model
    resolves one kernel for all. Private (`_attn_implementation_internal`) in every 5.x release; no release
    lets it go yet."""
    config._attn_implementation_internal = implementation


def set_experts_implementation(config, implementation: str | None) -> None:
    """`set_attn_implementation` for MoE LLMs' experts kernel (Qwen3-MoE); private
    (`_experts_implementation_internal`) in every 5.x release."""
    config._experts_implementation_internal = implementation


def drop_weight_conversions(model: nn.Module, patterns: set[str]) -> None:
    """Forget the load-time key renamings whose source patterns are in `patterns`: transformers re-applies the
    renamings used at load (reversed) when saving, and a model loaded from legacy keys must save today's.
    `_weight_conversions` is private (5.x); no public way to choose the saved keys exists yet."""
    conversions = getattr(model, "_weight_conversions", None)
    if conversions:
        model._weight_conversions = [c for c in conversions if not set(getattr(c, "source_patterns", ())) & patterns]


def generation_max_cache_len(model: nn.Module, cache) -> int:
    """The cache length `generate` sized a static cache for. It records it privately
    (`_previous_max_cache_length`, 5.x); without it (a release that drops the attribute), the longest layer's
    length, which is right unless every layer slides."""
    return getattr(model, "_previous_max_cache_length", None) or max(layer.max_cache_len for layer in cache.layers)


def is_activation_checkpointing(model) -> bool:
    """Whether activation (gradient) checkpointing is on: `is_activation_checkpointing` on newer releases,
    `is_gradient_checkpointing` (deprecated there) on 5.19. Goes with 5.19."""
    flag = getattr(model, "is_activation_checkpointing", None)
    return bool(model.is_gradient_checkpointing if flag is None else flag)


def checkpointing_arguments(training_arguments: type, enabled: bool) -> dict:
    """Activation checkpointing for `TrainingArguments`, under the name this transformers version uses:
    `activation_checkpointing` replaced `gradient_checkpointing` after 5.19. Goes with 5.19."""
    name = "activation_checkpointing"
    if name not in training_arguments.__dataclass_fields__:
        name = "gradient_checkpointing"
    return {name: enabled, f"{name}_kwargs": {"use_reentrant": False} if enabled else None}


def compiled_chat_template(template: str):
    """transformers' compiled, sandboxed jinja chat template (cached by transformers), or None where this
    transformers has no such private helper (the data path then renders through `apply_chat_template`).

    Private (`chat_template_utils._compile_jinja_template`, present 5.19-5.25): data preparation renders plain
    messages with it directly, skipping `apply_chat_template`'s per-call message normalisation (a third of the
    preparation time). Goes when transformers offers a public render of a compiled template.
    """
    try:
        from transformers.utils.chat_template_utils import _compile_jinja_template
    except ImportError:
        return None
    return _compile_jinja_template(template)
