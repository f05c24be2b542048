"""Which families vLLM serves, read off `wings.families`: the table is the one description of every family.

A family is served when its table entry names vLLM's parts (`TextFamily.vllm`) and every feature the entry
describes is one the plugin's layers with learners compute; `missing_parts` names the others, so adding a
family to the table either makes it servable or fails `tests/serving/test_served_families.py` with the reason.
"""

from __future__ import annotations

import importlib

from ..families import POST_NORM, PRE_NORM, PRE_NORM_DROPOUT, PRE_NORM_MULTIPLIER, SANDWICH, TEXT_FAMILIES, TextFamily

# Features of the table the layers with learners (`wings.serving.layers`) compute. Residual dropout is the
# identity at inference; vLLM's QKVParallelLinear and MergedColumnParallelLinear load fused q/k/v and gate/up.
SERVED_LAYOUTS = (PRE_NORM, PRE_NORM_DROPOUT, PRE_NORM_MULTIPLIER, POST_NORM, SANDWICH)
SERVED_QK_NORMS = (None, "head", "projection")


def missing_parts(family: TextFamily) -> list[str]:
    """What the vLLM plugin lacks to serve `family` (empty when it is served)."""
    missing = []
    if family.vllm is None:
        missing.append("no vLLM parts in wings.families (TextFamily.vllm: vLLM's decoder layer, biases)")
    if family.layout not in SERVED_LAYOUTS:
        missing.append(f"the '{family.layout.name}' block layout")
    if family.attention.qk_norm not in SERVED_QK_NORMS:
        missing.append(f"q/k norms over the '{family.attention.qk_norm}'")
    if family.attention.rope_switch and (family.vllm is None or family.vllm.rope_layers is None):
        missing.append("which layers apply no RoPE (VllmParts.rope_layers)")
    return missing


def served_model_types() -> tuple[str, ...]:
    """The text model types vLLM serves."""
    return tuple(name for name, family in TEXT_FAMILIES.items() if not missing_parts(family))


def served_family(text_config) -> TextFamily:
    """The table entry of the LLM, or a `ValueError` naming what the plugin lacks for it."""
    model_type = text_config.model_type
    family = TEXT_FAMILIES.get(model_type)
    missing = ["no entry in wings.families.TEXT_FAMILIES"] if family is None else missing_parts(family)
    if missing:
        raise ValueError(
            f"WINGS in vLLM: LLMs of type '{model_type}' are not served yet ({'; '.join(missing)}). Served: "
            f"{', '.join(served_model_types())}. Such models answer through Hugging Face generate "
            "(`wings chat`, `model.generate`)."
        )
    return family


def config_flag(text_config, value: bool | str) -> bool:
    """A table entry's bool, or the value of the config attribute it names (False where the config lacks it)."""
    return value if isinstance(value, bool) else bool(getattr(text_config, value, False))


def load_class(path: str) -> type:
    """The class a table entry names as "module:Class"."""
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def plain_decoder_layer(vllm_config, text_config, prefix: str):
    """vLLM's own decoder layer of the LLM's family, for a layer without learners."""
    parts = served_family(text_config).vllm
    cls = load_class(parts.decoder_layer)
    if parts.layer_args == "configs":
        return cls(text_config, vllm_config.cache_config, vllm_config.quant_config, prefix=prefix)
    if parts.layer_args == "vllm_config_only":
        return cls(vllm_config, prefix=prefix)
    if parts.layer_args == "vllm_config":
        return cls(vllm_config, prefix=prefix, config=text_config)
    raise ValueError(f"wings.families: unknown layer_args '{parts.layer_args}' for {text_config.model_type}")
