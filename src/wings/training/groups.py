"""Parameter groups of a WINGS (or LLaVA-style) model, and the one function that sets what trains.

Groups are found by module membership, never by parameter-name substrings:
projector, vision_tower, visual_learners, textual_learners, router, llm, and lora (adapters that
`peft` injected into the LLM; empty unless the LoRA baseline is used).
"""

from __future__ import annotations

from torch import nn

from ..modeling.model import WingsForConditionalGeneration
from .recipe import PARAMETER_GROUPS


def _lora_parameters(module: nn.Module) -> set[int]:
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:  # peft is optional outside the LoRA baseline
        return set()
    ids = set()
    for sub in module.modules():
        if isinstance(sub, LoraLayer):
            for name in ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B", "lora_magnitude_vector"):
                part = getattr(sub, name, None)
                if part is not None:
                    ids.update(id(p) for p in part.parameters())
    return ids


def parameter_groups(model: WingsForConditionalGeneration) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """Map each recipe group name to its (name, parameter) pairs; every parameter is in exactly one group.

    The model's own groups (`WingsForConditionalGeneration.parameter_groups`), with LoRA adapters that
    `peft` injected into the LLM carved out of "llm" as the group "lora".
    """
    lora = _lora_parameters(model.language_model)
    groups: dict[str, list[tuple[str, nn.Parameter]]] = {name: [] for name in PARAMETER_GROUPS}
    for group, params in model.parameter_groups().items():
        for name, param in params:
            groups["lora" if group == "llm" and id(param) in lora else group].append((name, param))
    return groups


def set_trainable(model: WingsForConditionalGeneration, trained_groups: list[str] | set[str]) -> dict[str, int]:
    """Freeze everything, then unfreeze the named groups. Returns the trainable parameter count per group."""
    groups = parameter_groups(model)
    unknown = set(trained_groups) - set(groups)
    if unknown:
        raise ValueError(f"unknown parameter group(s) {sorted(unknown)}; known: {list(groups)}")
    counts = {}
    for name, params in groups.items():
        train = name in trained_groups
        for _, p in params:
            p.requires_grad_(train)
        if train:
            counts[name] = sum(p.numel() for _, p in params)
            if counts[name] == 0:
                raise ValueError(f"parameter group '{name}' is empty in this model, so it cannot train")
    return counts
