"""Training recipes: which parameter groups train at which learning rate, as data (YAML).

A recipe file looks like::

    name: wings_stage1
    method: wings            # wings | llava | lora
    stage: 1
    model: {learner_mode: visual_only, learner_rank: 64}   # WingsConfig settings
    train: {projector: 2.0e-5, visual_learners: 2.0e-5}    # group -> learning rate; absent = frozen
    optim: {epochs: 1, batch_size: 16, gradient_accumulation_steps: 16, ...}
    data: {max_length: 2048, image_mode: pad, sources: [llava_mix.json, text_only.jsonl:0.1], packing: false}

`key=value` overrides use dotted paths (`optim.batch_size=4`, `train.llm=1e-5`).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml
from transformers.trainer_utils import SchedulerType

from ..config import LEARNER_MODES, ROUTERS
from ..image_layout import IMAGE_LAYOUTS
from ..errors import ConfigError
from ..modeling.model import PARAMETER_GROUPS as MODEL_PARAMETER_GROUPS

# The model's components, plus LoRA adapters (the LoRA baseline's trainable part, carved out of the LLM).
PARAMETER_GROUPS = (*MODEL_PARAMETER_GROUPS, "lora")
METHODS = ("wings", "llava", "lora")
LR_SCHEDULERS = tuple(s.value for s in SchedulerType)
# The `WingsConfig` settings a recipe's `model` section may set, with their types.
MODEL_SETTINGS: dict[str, Any] = {
    "learner_rank": int,
    "learner_layers": list[int] | None,
    "router": Literal[ROUTERS],
    "router_max_positions": int,
    "learner_mode": Literal[LEARNER_MODES],
    "learner_init_std": float,
    "vision_feature_layer": int,
    "projector_hidden_act": str,
    "image_layout": Literal[IMAGE_LAYOUTS],
    "image_grid_pinpoints": list[list[int]] | None,
    "image_pooling": int,
    "image_newline": bool,
    "max_num_patches": int | None,
}
# Lower bounds of numeric settings, (minimum, inclusive): checked when a recipe is built.
MINIMA: dict[str, tuple[float, bool]] = {
    "optim.epochs": (0, False),
    "optim.batch_size": (1, True),
    "optim.gradient_accumulation_steps": (1, True),
    "optim.warmup_ratio": (0, True),
    "optim.weight_decay": (0, True),
    "optim.max_grad_norm": (0, True),
    "optim.save_steps": (1, True),
    "optim.save_total_limit": (1, True),
    "optim.logging_steps": (1, True),
    "optim.dataloader_num_workers": (0, True),
    "data.max_length": (1, True),
    "data.num_proc": (1, True),
    "lora.r": (1, True),
    "lora.alpha": (0, False),
    "lora.dropout": (0, True),
    "model.learner_rank": (1, True),
    "model.router_max_positions": (1, True),
    "model.learner_init_std": (0, False),
    "model.image_pooling": (1, True),
    "model.max_num_patches": (1, True),
    "data.max_image_tokens": (1, True),
}


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
    # Image decoding and processing run in the loader's worker processes, beside the training step.
    dataloader_num_workers: int = 2


@dataclass
class DataSettings:
    max_length: int = 2048
    image_mode: str = "pad"  # pad to square with the processor's mean colour (released recipe) or resize
    # The most image tokens per sample (None: no limit); anyres/native images are shrunk to fit it.
    max_image_tokens: int | None = None
    # Data files, `path` or `path:weight` (a mixture, see wings.data.mixture); `--data` replaces them.
    sources: list[str] = field(default_factory=list)
    group_by_modality_length: bool = False  # batches of one modality and similar lengths (LLaVA's option)
    # Several samples per row up to max_length, each attending (main attention and learners) only to itself.
    packing: bool = False
    num_proc: int | None = None  # processes that prepare the data (default: the machine's cores)
    cache_dir: str | None = None  # prepared data (default: $WINGS_DATA_CACHE or ~/.cache/wings/data)


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
        if self.data.packing and self.data.group_by_modality_length:
            raise RecipeError(f"{source}: data.packing and data.group_by_modality_length exclude each other (packed "
                              "rows mix modalities and lengths)")
        if self.data.packing and self.model.get("router") == "positional":
            raise RecipeError(f"{source}: data.packing needs model.router 'segment' (the positional router reads "
                              "attention rows by key index, which packing shifts)")
        if self.optim.lr_scheduler not in LR_SCHEDULERS:
            raise RecipeError(f"{source}: optim.lr_scheduler '{self.optim.lr_scheduler}' is not one of {LR_SCHEDULERS}")
        if self.optim.warmup_ratio >= 1:
            raise RecipeError(f"{source}: optim.warmup_ratio is a fraction of the steps, below 1, got "
                              f"{self.optim.warmup_ratio}")
        if self.lora is not None and self.lora.dropout >= 1:
            raise RecipeError(f"{source}: lora.dropout must be below 1, got {self.lora.dropout}")
        sections = {"optim": self.optim, "data": self.data, "lora": self.lora, "model": self.model}
        for key, (minimum, inclusive) in MINIMA.items():
            section, name = key.split(".")
            values = sections[section]
            value = values.get(name) if isinstance(values, dict) else getattr(values, name, None)
            if value is not None and (value < minimum if inclusive else value <= minimum):
                bound = f">= {minimum}" if inclusive else f"> {minimum}"
                raise RecipeError(f"{source}: {key} must be {bound}, got {value}")

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
        if not isinstance(values[key], dict):
            raise RecipeError(f"{source}: '{key}' must be a mapping of settings, got {values[key]!r}")
        hints = typing.get_type_hints(cls)
        values[key] = cls(**_typed_section(values[key], {f.name: hints[f.name] for f in dataclasses.fields(cls)},
                                           key, source))
    values["model"] = _typed_section(values.get("model") or {}, MODEL_SETTINGS, "model", source)
    if values.get("method") == "lora" and values.get("lora") is None:
        values["lora"] = LoraSettings()
    train = values.get("train") or {}
    if not isinstance(train, dict):
        raise RecipeError(f"{source}: 'train' must map parameter groups to learning rates, got {train!r}")
    values["train"] = {k: _typed(v, float, f"train.{k}", source) for k, v in train.items()}
    recipe = Recipe(**values)
    recipe.check(source)
    return recipe


def _typed_section(values: dict[str, Any], types_: dict[str, Any], section: str, source: str) -> dict[str, Any]:
    """`values` with each setting checked against its type (ints widened to floats); unknown keys refused."""
    if not isinstance(values, dict):
        raise RecipeError(f"{source}: '{section}' must be a mapping of settings, got {values!r}")
    bad = sorted(set(values) - set(types_))
    if bad:
        raise RecipeError(f"{source}: unknown key(s) {bad} in '{section}' (known: {sorted(types_)})")
    return {name: _typed(value, types_[name], f"{section}.{name}", source) for name, value in values.items()}


def _typed(value: Any, hint: Any, key: str, source: str) -> Any:
    """`value` if it is of type `hint` (int, float, bool, str, Literal, list[X], X | None), else a RecipeError."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _typed(value, inner, key, source)
    if origin is Literal:
        if value in args:
            return value
        raise RecipeError(f"{source}: {key} must be one of {list(args)}, got {value!r}")
    if origin is list:
        (inner,) = args
        if isinstance(value, str) and inner is str:  # `report_to: wandb` means [wandb]
            value = [value]
        if not isinstance(value, list):
            raise RecipeError(f"{source}: {key} must be a list, got {value!r}")
        return [_typed(v, inner, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if hint is float and isinstance(value, str):  # YAML 1.1 reads `1e-4` (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            pass
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
    }
    if hint not in ok:
        raise TypeError(f"recipe setting {key}: no check for type {hint!r}")
    if not ok[hint]:
        names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
        raise RecipeError(f"{source}: {key} must be {names[hint]}, got {value!r}")
    return float(value) if hint is float else value


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
