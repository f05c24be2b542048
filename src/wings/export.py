"""`export_hub`: a saved WINGS directory -> a Hub-ready one that loads with transformers alone.

The exported directory holds the weights, the processor files, `config.json` with an `auto_map`,
the modeling and processing code as flat remote-code files, and a model card (README.md):

    AutoModelForImageTextToText.from_pretrained(HUB_DIR, trust_remote_code=True)
    AutoProcessor.from_pretrained(HUB_DIR, trust_remote_code=True)

The code files are generated at export time from this package's own modules (the modules the
config, the model and the processor need, found by following their imports), with the package's
relative imports rewritten into the flat `from .file import name` form that transformers' remote
code loader understands. Nothing is kept by hand in a second copy.
"""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import importlib.util
import json
import logging
import math
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from .errors import WingsError

logger = logging.getLogger(__name__)

PACKAGE = "wings"
# The modules the remote code starts from, and the file names transformers users expect for them.
ENTRY_MODULES = {
    "wings.config": "configuration_wings",
    "wings.modeling.model": "modeling_wings",
    "wings.processing": "processing_wings",
}
AUTO_MAP = {
    "AutoConfig": "configuration_wings.WingsConfig",
    "AutoModelForImageTextToText": "modeling_wings.WingsForConditionalGeneration",
    "AutoModelForCausalLM": "modeling_wings.WingsForConditionalGeneration",
    "AutoProcessor": "processing_wings.WingsProcessor",
}
# Files of the source directory that travel with the export as they are.
COPIED_FILES = ("recipe.yaml",)
# Metrics files looked for in the source directory when none is given.
METRICS_FILES = ("metrics.json", "eval_metrics.json")
MAX_METRIC_ROWS = 60


class ExportError(WingsError, ValueError):
    """The source directory or the output cannot be exported to; the message names the path."""


def export_hub(
    model_dir: str | os.PathLike,
    output: str | os.PathLike,
    metrics: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a Hub-ready copy of the saved WINGS directory `model_dir` to `output`.

    Args:
        model_dir: a saved WINGS directory (`wings train` output: model + processor files).
        output: the directory to write; it must not exist or be empty, unless `overwrite`.
        metrics: a JSON file of results to show in the model card (e.g. `wings eval`'s or the
            lab's metrics.json); by default `metrics.json` in `model_dir` when present.
        overwrite: replace the contents of an existing `output`.

    Returns the output directory.
    """
    from .modeling.model import WingsForConditionalGeneration
    from .processing import WingsProcessor

    source, target = Path(model_dir), Path(output)
    if not (source / "config.json").is_file():
        raise ExportError(f"'{source}' is not a saved WINGS model: no config.json in it")
    if not (source / "processor_config.json").is_file():
        raise ExportError(f"'{source}' has no processor_config.json; save the processor beside the model "
                          "(processor.save_pretrained(dir)) before exporting")
    if target.resolve() == source.resolve():
        raise ExportError(f"export output '{target}' is the source directory itself; choose another")
    if target.exists() and any(target.iterdir()):
        if not overwrite:
            raise ExportError(f"export output '{target}' exists and is not empty (pass overwrite=True to replace it)")
        shutil.rmtree(target)
    metrics_file = Path(metrics) if metrics is not None else next(
        (source / name for name in METRICS_FILES if (source / name).is_file()), None)
    if metrics_file is not None and not metrics_file.is_file():
        raise ExportError(f"metrics file '{metrics_file}' not found")

    # Loading and saving with the package writes the weights in the layout of the code copied below.
    model = WingsForConditionalGeneration.from_pretrained(source)
    processor = WingsProcessor.from_pretrained(source)
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target)
    processor.save_pretrained(target)
    for file_name, code in remote_code_files().items():
        (target / file_name).write_text(code, encoding="utf-8")
    _add_auto_map(target / "config.json", AUTO_MAP)
    _add_auto_map(target / "processor_config.json", {"AutoProcessor": AUTO_MAP["AutoProcessor"]})
    for name in COPIED_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, target / name)
    recipe = yaml.safe_load((source / "recipe.yaml").read_text()) if (source / "recipe.yaml").is_file() else None
    metric_values = json.loads(metrics_file.read_text()) if metrics_file is not None else None
    (target / "README.md").write_text(model_card(model.config, recipe, metric_values, target.name), encoding="utf-8")
    logger.info("exported '%s' to '%s'", source, target)
    return target


def export_llm(model_dir: str | os.PathLike, output: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write the LLM of a saved WINGS model as a plain Hugging Face causal LM (no learners, no tower).

    The stage-2-trained LLM then loads with `AutoModelForCausalLM.from_pretrained(output)` and runs in
    any tool that takes the base LLM (its tokenizer is saved beside it). The learners and router are
    left out, so its outputs are those of the WINGS model on text-only input only while the learners
    are zero; a trained model's text-only behaviour includes its learners.

    Args:
        model_dir: a saved WINGS directory.
        output: the directory to write; it must not exist or be empty, unless `overwrite`.
        overwrite: replace the contents of an existing `output`.
    """
    from .modeling.model import WingsForConditionalGeneration

    source, target = Path(model_dir), Path(output)
    if not (source / "config.json").is_file():
        raise ExportError(f"'{source}' is not a saved WINGS model: no config.json in it")
    if target.exists() and any(target.iterdir()):
        if not overwrite:
            raise ExportError(f"export output '{target}' exists and is not empty (pass overwrite=True to replace it)")
        shutil.rmtree(target)
    llm = WingsForConditionalGeneration.from_pretrained(source).to_llm()
    target.mkdir(parents=True, exist_ok=True)
    llm.save_pretrained(target)
    if (source / "tokenizer_config.json").is_file():
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(source).save_pretrained(target)
    logger.info("exported the LLM of '%s' to '%s'", source, target)
    return target


# ------------------------------------------------------------------------------------------------
# remote code
def remote_code_files(entry_modules: dict[str, str] = ENTRY_MODULES) -> dict[str, str]:
    """File name -> source of every package module the entry modules need, as flat remote-code files."""
    modules = gather_modules(entry_modules)
    names = {module: entry_modules.get(module, flat_name(module)) for module in modules}
    version = _package_version()
    files = {}
    for module, path in modules.items():
        header = (f"# Generated by `wings export` from {module} (wings {version}); edit the package, not this file.\n"
                  "# The package's relative imports are rewritten into flat `from .file import ...` imports.\n")
        files[names[module] + ".py"] = header + rewrite_imports(path.read_text(encoding="utf-8"), module, names)
    return files


def flat_name(module: str) -> str:
    """`wings.modeling.cache` -> `wings_modeling_cache` (a file name that cannot clash with a library)."""
    return module.replace(".", "_")


def gather_modules(entry_modules: Iterable[str]) -> dict[str, Path]:
    """The package modules reachable from `entry_modules` through `from ... import` (module -> source file)."""
    found: dict[str, Path] = {}
    pending = list(entry_modules)
    while pending:
        module = pending.pop()
        if module in found:
            continue
        path = _source_file(module)
        found[module] = path
        for node in _package_imports(ast.parse(path.read_text(encoding="utf-8")), module):
            pending.extend(target for target, _ in _resolve(node, module))
    return found


def rewrite_imports(source: str, module: str, names: dict[str, str]) -> str:
    """Rewrite the package imports of `source` (module `module`) into `from .<flat file> import ...`."""
    lines = source.splitlines(keepends=True)
    nodes = sorted(_package_imports(ast.parse(source), module), key=lambda n: n.lineno, reverse=True)
    for node in nodes:
        indent = " " * node.col_offset
        new = [f"{indent}from .{names[target]} import {', '.join(aliases)}\n" for target, aliases in _resolve(node, module)]
        lines[node.lineno - 1 : node.end_lineno] = new
    return "".join(lines)


def _package_imports(tree: ast.Module, module: str) -> list[ast.ImportFrom]:
    """Every `from <this package> import ...` statement in the tree (relative, or absolute `wings.`)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(a.name == PACKAGE or a.name.startswith(PACKAGE + ".") for a in node.names):
            raise ExportError(f"{module}: line {node.lineno}: write `from ... import name` for package imports; "
                              "the export cannot flatten `import wings...`")
        if isinstance(node, ast.ImportFrom) and (
            node.level > 0 or node.module == PACKAGE or (node.module or "").startswith(PACKAGE + ".")
        ):
            found.append(node)
    return found


def _resolve(node: ast.ImportFrom, module: str) -> list[tuple[str, list[str]]]:
    """(defining module, ["name" or "name as alias", ...]) for each module an import statement reads from."""
    if node.level:
        package = module if _is_package(module) else module.rpartition(".")[0]
        target = importlib.util.resolve_name("." * node.level + (node.module or ""), package)
    else:
        target = node.module
    grouped: dict[str, list[str]] = {}
    for alias in node.names:
        written = alias.name if alias.asname is None else f"{alias.name} as {alias.asname}"
        defining = target
        if _is_package(target):
            if importlib.util.find_spec(f"{target}.{alias.name}") is not None:
                raise ExportError(f"{module}: line {node.lineno}: `from {target} import {alias.name}` imports a "
                                  "module; import the names it defines instead")
            defining = getattr(importlib.import_module(target), alias.name).__module__
        grouped.setdefault(defining, []).append(written)
    return list(grouped.items())


def _is_package(module: str) -> bool:
    spec = importlib.util.find_spec(module)
    return spec is not None and spec.submodule_search_locations is not None


def _source_file(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
        raise ExportError(f"cannot find the source of module '{module}' to export")
    return Path(spec.origin)


def _package_version() -> str:
    try:
        return importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _add_auto_map(path: Path, auto_map: dict[str, str]) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    data["auto_map"] = {**data.get("auto_map", {}), **auto_map}
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


# ------------------------------------------------------------------------------------------------
# model card
def model_card(config, recipe: dict | None, metrics: Any | None, name: str) -> str:
    """README.md of an exported model: components, WINGS settings, recipe and metrics when known."""
    text, vision = config.text_config, config.vision_config
    llm_name = getattr(text, "_name_or_path", "") or text.model_type
    vision_name = getattr(vision, "_name_or_path", "") or vision.model_type
    front = ["---", "library_name: transformers", "pipeline_tag: image-text-to-text", "tags:", "- wings",
             "- multimodal", "- custom_code"]
    if _looks_like_hub_id(llm_name):
        front += ["base_model:", f"- {llm_name}"]
    front.append("---")
    layers = config.learner_layers if config.learner_layers is not None else "all"
    lines = [
        *front, "", f"# {name}", "",
        "A multimodal LLM trained with WINGS (*Learning Multimodal LLMs without Text-only Forgetting*, "
        "NeurIPS 2024): a vision encoder and projector feed image tokens to an LLM whose decoder layers "
        "carry a visual and a textual low-rank residual-attention learner, mixed per token by a router, "
        "so that text-only abilities are kept.", "",
        "## Components", "",
        "| part | model | details |", "|---|---|---|",
        f"| LLM | `{llm_name}` | {text.model_type}, {text.num_hidden_layers} layers, hidden {text.hidden_size}, "
        f"{text.num_attention_heads} heads, vocabulary {text.vocab_size} |",
        f"| vision encoder | `{vision_name}` | {vision.model_type}, image {vision.image_size}px, patch "
        f"{vision.patch_size}, {config.image_seq_length} image tokens per image, features of hidden layer "
        f"{config.vision_feature_layer} |",
        f"| projector | mlp2x | activation {config.projector_hidden_act} |", "",
        "## WINGS settings", "",
        "| setting | value |", "|---|---|",
        f"| learner_rank | {config.learner_rank} |",
        f"| learner_layers | {layers} |",
        f"| router | {config.router} |",
        f"| router_max_positions | {config.router_max_positions} |",
        f"| learner_mode | {config.learner_mode} |",
        f"| image_token_id | {config.image_token_id} |", "",
    ]
    if recipe:
        lines += ["## Training recipe", "",
                  f"Recipe `{recipe.get('name', '?')}` (method {recipe.get('method', '?')}, stage "
                  f"{recipe.get('stage', '?')}); trained groups and learning rates: "
                  + (", ".join(f"{k} {v}" for k, v in (recipe.get("train") or {}).items()) or "none") + ".", "",
                  "```yaml", yaml.safe_dump(recipe, sort_keys=False).rstrip(), "```", ""]
    rows = list(flatten_metrics(metrics)) if metrics is not None else []
    if rows:
        lines += ["## Metrics", "", "| metric | value |", "|---|---|"]
        lines += [f"| {key} | {value} |" for key, value in rows[:MAX_METRIC_ROWS]]
        if len(rows) > MAX_METRIC_ROWS:
            lines.append(f"| ... | {len(rows) - MAX_METRIC_ROWS} more in the metrics file |")
        lines.append("")
    lines += [
        "## Use", "",
        "The modeling and processing code ships with the weights (`trust_remote_code=True`); only "
        "`transformers`, `torch` and `pillow` are needed.", "",
        "```python",
        "from transformers import AutoModelForImageTextToText, AutoProcessor",
        "",
        f'model = AutoModelForImageTextToText.from_pretrained("{name}", trust_remote_code=True)',
        f'processor = AutoProcessor.from_pretrained("{name}", trust_remote_code=True)',
        'messages = [{"role": "user", "content": [{"type": "image", "image": "photo.jpg"},',
        '                                         {"type": "text", "text": "What is in the picture?"}]}]',
        "inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)",
        "output = model.generate(**inputs, max_new_tokens=64)",
        'print(processor.batch_decode(output[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0])',
        "```", "",
        f"Exported with `wings export` (wings {_package_version()}).", "",
    ]
    return "\n".join(lines)


def flatten_metrics(value: Any, prefix: str = "") -> Iterable[tuple[str, str]]:
    """Scalar leaves of a JSON value as (dotted key, formatted value); list items use their "name"."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from flatten_metrics(item, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, list):
        if all(not isinstance(v, (dict, list)) for v in value):
            if value and len(value) <= 8:
                yield prefix, ", ".join(_format(v) for v in value)
            return
        for i, item in enumerate(value):
            label = item.get("name", i) if isinstance(item, dict) else i
            yield from flatten_metrics(item, f"{prefix}[{label}]")
    elif value is not None:
        yield prefix, _format(value)


def _format(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value).replace("|", "\\|")


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not os.path.isabs(name) and not name.startswith(".")
