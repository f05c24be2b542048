"""The forgetting report: how much text-only skill each model kept, next to its multimodal skill.

Text-only *retention* is a model's text-only accuracy divided by the base LLM's (the LLM the
MLLM was built from): 1.0 means nothing was forgotten. The WINGS paper's claim is that WINGS
keeps retention near 1 while matching LLaVA-style models on multimodal tasks, and that text-only
forgetting goes with a larger attention shift (the paper's MLLM-LAWS analysis).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .plots import labelled_scatter, new_figure, save_figure

__all__ = [
    "ModelEvaluation",
    "forgetting_report",
    "plot_retention_vs_vqa",
    "retention",
    "unique_names",
    "write_metrics_json",
]

logger = logging.getLogger(__name__)


@dataclass
class ModelEvaluation:
    """Everything measured for one model; None (or empty) where it was not measured.

    Attributes:
        name: how the model appears in tables and plots.
        text_acc: text-only accuracy (0..1), e.g. the mean over text benchmarks.
        per_skill: accuracy per text skill / benchmark, e.g. ``{"mmlu": 0.52, "hellaswag": 0.61}``.
        vqa_acc: multimodal accuracy (0..1).
        iit: per-setting IIT summary ``{setting: {"acc", "low", "high", "n"}}``
            (``evaluate_iit(...)["settings"]``).
        attention_shift: 1 - mean Pearson(LAWS before image, LAWS after image), 0..2.
    """

    name: str
    text_acc: float | None = None
    per_skill: dict[str, float] = field(default_factory=dict)
    vqa_acc: float | None = None
    iit: dict[str, dict[str, float | int]] = field(default_factory=dict)
    attention_shift: float | None = None


def unique_names(model_dirs: Sequence[str | os.PathLike]) -> list[str]:
    """One name per model for tables, plots and output folders: its folder name, with ``-2``,
    ``-3``... added where it would repeat a name already given (``a/x, b/x-2, c/x`` ->
    ``x, x-2, x-3``)."""
    names: list[str] = []
    for model_dir in model_dirs:
        base = Path(model_dir).name or os.fspath(model_dir)
        name, k = base, 2
        while name in names:
            name, k = f"{base}-{k}", k + 1
        names.append(name)
    return names


def retention(text_acc: float | None, base_text_acc: float | None) -> float | None:
    """``text_acc / base_text_acc``; None when either is missing, NaN or the base is 0."""
    if not _is_number(text_acc) or not _is_number(base_text_acc) or base_text_acc == 0:
        return None
    return text_acc / base_text_acc


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def _fmt(value: float | None, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if _is_number(value) else "-"


def _union(keys_per_entry: Sequence[Sequence[str]]) -> list[str]:
    seen: dict[str, None] = {}
    for keys in keys_per_entry:
        for key in keys:
            seen.setdefault(key, None)
    return list(seen)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _iit_acc(entry: ModelEvaluation, setting: str) -> float | None:
    stats = entry.iit.get(setting)
    return None if stats is None else stats.get("acc")


def forgetting_report(entries: Sequence[ModelEvaluation], base_text_acc: float | None) -> str:
    """Markdown: one row per model with text-only accuracy, retention (text_acc / base_text_acc),
    multimodal accuracy, IIT accuracy per setting and attention shift; then, when any model has
    them, a table of per-skill text accuracies.

    Missing values show as ``-``. Settings and skills are the union over models, first-seen order.
    """
    if not entries:
        raise ValueError("forgetting_report: no models")
    names = [e.name for e in entries]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"forgetting_report: model names repeat: {repeated}")
    settings = _union([list(e.iit) for e in entries])
    header = ["model", "text-only acc", "retention", "multimodal acc", *(f"IIT ({s})" for s in settings), "attention shift"]
    rows = [
        [
            e.name,
            _fmt(e.text_acc),
            _fmt(retention(e.text_acc, base_text_acc)),
            _fmt(e.vqa_acc),
            *(_fmt(_iit_acc(e, s)) for s in settings),
            _fmt(e.attention_shift),
        ]
        for e in entries
    ]
    base = f"base LLM text-only accuracy: {_fmt(base_text_acc)}" if _is_number(base_text_acc) else (
        "base LLM text-only accuracy not given: retention is not computed"
    )
    parts = ["## Text-only forgetting", "", base, "", _table(header, rows)]
    skills = _union([list(e.per_skill) for e in entries])
    if skills:
        skill_rows = [[e.name, *(_fmt(e.per_skill.get(s)) for s in skills)] for e in entries]
        parts += ["", "### Text-only accuracy per skill", "", _table(["model", *skills], skill_rows)]
    return "\n".join(parts) + "\n"


def _jsonable(value: Any) -> Any:
    """NaN/inf -> None (JSON has no NaN), recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def write_metrics_json(
    entries: Sequence[ModelEvaluation],
    path: str | os.PathLike,
    base_text_acc: float | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``{"base_text_acc", "models": [{...ModelEvaluation fields, "retention"}], **extra}``
    as JSON (NaN written as null). Returns the path."""
    payload: dict[str, Any] = {
        "base_text_acc": base_text_acc,
        "models": [{**asdict(e), "retention": retention(e.text_acc, base_text_acc)} for e in entries],
    }
    if extra:
        clash = set(extra) & set(payload)
        if clash:
            raise ValueError(f"write_metrics_json: extra keys {sorted(clash)} would overwrite the metrics")
        payload.update(extra)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_jsonable(payload), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (x, y) points no other point beats on both coordinates, in increasing x."""
    front, best_y = [], float("-inf")
    for x, y in sorted(points, key=lambda p: (-p[0], -p[1])):
        if y > best_y:
            front.append((x, y))
            best_y = y
    return front[::-1]


def plot_retention_vs_vqa(
    entries: Sequence[ModelEvaluation],
    path: str | os.PathLike,
    base_text_acc: float | None = None,
    title: str | None = "Text-only retention vs multimodal accuracy",
    line_models: Sequence[str] = (),
    min_span: float = 0.1,
) -> Path:
    """Scatter, one labelled point per model: x = multimodal (VQA) accuracy, y = text-only
    retention (text_acc / base_text_acc; a dashed line marks 1.0, no forgetting).

    `line_models` (e.g. the LLaVA baselines): their Pareto front (no other of them has both more
    multimodal accuracy and more retention) is drawn as a line; a model above it keeps more text at
    the same multimodal accuracy. Each axis spans at least `min_span`, so that
    differences within noise do not fill the whole plot.

    Without ``base_text_acc`` the y axis is the text-only accuracy itself. Models missing either
    value are left out (logged); at least one must remain.
    """
    use_retention = _is_number(base_text_acc)
    points = []
    for e in entries:
        y = retention(e.text_acc, base_text_acc) if use_retention else e.text_acc
        if _is_number(e.vqa_acc) and _is_number(y):
            points.append((e.vqa_acc, y, e.name))
        else:
            logger.info("plot_retention_vs_vqa: '%s' has no multimodal accuracy or text score; not plotted", e.name)
    if not points:
        raise ValueError("plot_retention_vs_vqa: no model has both a multimodal accuracy and a text-only score")
    fig, ax = new_figure(6.0, 4.5)
    xs, ys, labels = zip(*points, strict=True)
    line = pareto_front([(x, y) for x, y, name in points if name in line_models])
    if len(line) >= 2:
        ax.plot(*zip(*line, strict=True), color="grey", linewidth=1, linestyle=":", label="baseline front",
                zorder=2)
    labelled_scatter(ax, xs, ys, labels)
    for values, setter in ((xs, ax.set_xlim), (ys, ax.set_ylim)):
        low, high = min(values), max(values)
        pad = max(0.0, min_span - (high - low)) / 2 + 0.02
        setter(low - pad, high + pad)
    if use_retention:
        ax.axhline(1.0, color="grey", linestyle="--", linewidth=1)
        ax.set_ylabel("text-only retention (acc / base LLM acc)")
    else:
        ax.set_ylabel("text-only accuracy")
    ax.set_xlabel("multimodal accuracy")
    if title:
        ax.set_title(title)
    return save_figure(fig, path)
