"""Training recipes: which parameter groups train at which learning rate, as data (YAML).

A recipe file looks like::

    name: wings_stage1
    method: wings            # wings | llava | lora
    stage: 1
    model: {learner_mode: visual_only, learner_rank: 64}   # WingsConfig settings
    train: {projector: 2.0e-5, visual_learners: 2.0e-5}    # group -> learning rate; absent = frozen
    optim: {epochs: 1, batch_size: 16, gradient_accumulation_steps: 16, ...}
    data: {max_length: 2048, image_mode: pad}

`key=value` overrides use dotted paths (`optim.batch_size=4`, `train.llm=1e-5`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError
from ..modeling.model import PARAMETER_GROUPS as MODEL_PARAMETER_GROUPS

# The model's components, plus LoRA adapters (the LoRA baseline's trainable part, carved out of the LLM).
PARAMETER_GROUPS = (*MODEL_PARAMETER_GROUPS, "lora")
METHODS = ("wings", "llava", "lora")


class RecipeError(ConfigError):
    """A recipe file or override is malformed; the message names the file and the key."""


@dataclass
class OptimSettings:
    epochs: float = 1.0
    batch_size: int = 16  # per device
    gradient_accumulation_steps: int = 1
    lr_scheduler: str = "cosine"
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    bf16: bool = False
    gradient_checkpointing: bool = False
    seed: int = 42
    save_steps: int = 500
    save_total_limit: int | None = 2
    logging_steps: int = 10
    report_to: list[str] = field(default_factory=lambda: ["none"])
    dataloader_num_workers: int = 0


@dataclass
class DataSettings:
    max_length: int = 2048
    image_mode: str = "pad"  # pad to square with the processor's mean colour (released recipe) or resize
    # The most image tokens per sample (None: no limit); anyres/native images are shrunk to fit it.
    max_image_tokens: int | None = None


@dataclass
class LoraSettings:
    r: int = 128
    alpha: int = 256
    dropout: float = 0.05
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )


@dataclass
class Recipe:
    name: str
    method: str = "wings"
    stage: int = 1
    model: dict[str, Any] = field(default_factory=dict)
    train: dict[str, float] = field(default_factory=dict)
    optim: OptimSettings = field(default_factory=OptimSettings)
    data: DataSettings = field(default_factory=DataSettings)
    lora: LoraSettings | None = None

    def check(self, source: str = "recipe") -> None:
        if self.method not in METHODS:
            raise RecipeError(f"{source}: method '{self.method}' is not one of {METHODS}")
        if self.stage not in (1, 2):
            raise RecipeError(f"{source}: stage must be 1 or 2, got {self.stage}")
        unknown = sorted(set(self.train) - set(PARAMETER_GROUPS))
        if unknown:
            raise RecipeError(f"{source}: unknown parameter group(s) {unknown} in 'train' (known: {PARAMETER_GROUPS})")
        if not self.train:
            raise RecipeError(f"{source}: 'train' names no parameter group, nothing would train")
        for group, lr in self.train.items():
            if not isinstance(lr, (int, float)) or lr <= 0:
                raise RecipeError(f"{source}: train.{group} must be a positive learning rate, got {lr!r}")
        if self.method != "wings" and ({"visual_learners", "textual_learners", "router"} & set(self.train)):
            raise RecipeError(f"{source}: method '{self.method}' has no learners or router to train")
        if ("lora" in self.train) != (self.method == "lora"):
            raise RecipeError(f"{source}: the 'lora' group trains exactly when method is 'lora'")
        if self.data.image_mode not in ("pad", "resize"):
            raise RecipeError(f"{source}: data.image_mode must be 'pad' or 'resize', got '{self.data.image_mode}'")
        budget = self.data.max_image_tokens
        if budget is not None and (not isinstance(budget, int) or budget < 1):
            raise RecipeError(f"{source}: data.max_image_tokens must be a positive number of tokens, got {budget!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


def recipe_from_dict(raw: dict[str, Any], source: str = "recipe") -> Recipe:
    if not isinstance(raw, dict) or "name" not in raw:
        raise RecipeError(f"{source}: a recipe is a mapping with at least a 'name'")
    known = {f.name for f in dataclasses.fields(Recipe)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise RecipeError(f"{source}: unknown key(s) {unknown} (known: {sorted(known)})")
    sections = {"optim": OptimSettings, "data": DataSettings, "lora": LoraSettings}
    values = dict(raw)
    for key, cls in sections.items():
        if values.get(key) is None:
            if key != "lora":
                values[key] = cls()
            continue
        allowed = {f.name for f in dataclasses.fields(cls)}
        bad = sorted(set(values[key]) - allowed)
        if bad:
            raise RecipeError(f"{source}: unknown key(s) {bad} in '{key}' (known: {sorted(allowed)})")
        values[key] = cls(**values[key])
    if values.get("method") == "lora" and values.get("lora") is None:
        values["lora"] = LoraSettings()
    values["train"] = {k: float(v) for k, v in (values.get("train") or {}).items()}
    recipe = Recipe(**values)
    recipe.check(source)
    return recipe


def apply_overrides(raw: dict[str, Any], overrides: list[str], source: str = "recipe") -> dict[str, Any]:
    """Apply `a.b=value` overrides (values parsed as YAML) to a raw recipe mapping; returns a new mapping."""
    result = yaml.safe_load(yaml.safe_dump(raw))
    for item in overrides:
        if "=" not in item:
            raise RecipeError(f"{source}: override '{item}' is not of the form key=value")
        key, value = item.split("=", 1)
        node = result
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise RecipeError(f"{source}: override '{item}': '{part}' is not a section")
        node[parts[-1]] = yaml.safe_load(value)
    return result


def load_recipe(path_or_name: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Load a recipe from a YAML path, or by name from the shipped `recipes/` folder."""
    path = resolve_recipe_path(path_or_name)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise RecipeError(f"{path}: not valid YAML: {err}") from err
    return recipe_from_dict(apply_overrides(raw or {}, overrides or [], str(path)), str(path))


def shipped_recipes_dir() -> Path:
    """The shipped recipes: `wings/recipes` in the package (a link to the repo's `recipes/` folder)."""
    return Path(__file__).resolve().parent.parent / "recipes"


def resolve_recipe_path(path_or_name: str | Path) -> Path:
    path = Path(path_or_name)
    if path.exists():
        return path
    shipped = shipped_recipes_dir() / f"{Path(path_or_name).stem}.yaml"
    if shipped.exists():
        return shipped
    raise RecipeError(f"recipe '{path_or_name}' not found (neither a file nor a recipe in {shipped_recipes_dir()})")
