"""MLLM-LAWS outputs: the per-layer plot of one model, the comparison plot, and ``laws.json``."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from matplotlib.ticker import MaxNLocator

from .laws_stats import SPANS, LawsResult
from .plots import new_figure, save_figure

__all__ = ["plot_laws", "plot_laws_compare", "write_laws"]

SPAN_COLORS = {"before": "tab:blue", "image": "tab:orange", "after": "tab:green"}


def _format_shift(result: LawsResult) -> str:
    shift = result.attention_shift
    text = "n/a" if math.isnan(shift) else f"{shift:.3f}"
    return f"attention shift {text} (n={result.n_samples - result.n_skipped}" + (
        f", {result.n_skipped} skipped)" if result.n_skipped else ")"
    )


def plot_laws(result: LawsResult, path: str | os.PathLike, title: str | None = None) -> Path:
    """Mean a^l(S) per layer for the three spans, shaded +-1 std over samples; the shift in the title."""
    fig, ax = new_figure(7.0, 4.2)
    x = np.asarray(result.layers)
    labels = {"before": "text before image", "image": "image", "after": "text after image"}
    for k, span in enumerate(SPANS):
        mean, std = result.mean[:, k], result.std[:, k]
        ax.plot(x, mean, marker="o", markersize=3, color=SPAN_COLORS[span], label=labels[span])
        ax.fill_between(x, mean - std, mean + std, color=SPAN_COLORS[span], alpha=0.2, linewidth=0)
    ax.set_xlabel("layer")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # layers are whole numbers, never 1.5
    ax.set_ylabel("attention mass received (sum over queries)")
    ax.set_title(f"{title or 'MLLM-LAWS'}: {_format_shift(result)}")
    if len(x) > 1:
        ax.set_xlim(x[0], x[-1])
    ax.grid(alpha=0.3)
    ax.legend(title="mean ± std", loc="best")
    return save_figure(fig, path)


def plot_laws_compare(results: Mapping[str, LawsResult], path: str | os.PathLike, title: str | None = None) -> Path:
    """Before (solid) and after (dashed) curves of several models, one colour per model, shifts in the legend.

    Models with different depths are drawn against relative depth (layer - 1) / (L - 1).
    """
    if not results:
        raise ValueError("plot_laws_compare: no results")
    fig, ax = new_figure(7.5, 4.5)
    depths = {r.num_layers for r in results.values()}
    relative = len(depths) > 1
    colors = [f"C{i % 10}" for i in range(len(results))]
    for color, (name, result) in zip(colors, results.items()):
        x = np.asarray(result.layers, dtype=float)
        if relative:
            x = (x - 1) / max(result.num_layers - 1, 1)
        shift = result.attention_shift
        shift_text = "n/a" if math.isnan(shift) else f"{shift:.3f}"
        for k, style in ((0, "-"), (2, "--")):
            mean, std = result.mean[:, k], result.std[:, k]
            label = f"{name} (shift {shift_text})" if k == 0 else None
            ax.plot(x, mean, linestyle=style, color=color, label=label)
            ax.fill_between(x, mean - std, mean + std, color=color, alpha=0.1, linewidth=0)
    # Style key: which line is which span, independent of the model colours.
    ax.plot([], [], "-", color="gray", label="text before image")
    ax.plot([], [], "--", color="gray", label="text after image")
    ax.set_xlabel("relative depth" if relative else "layer")
    ax.set_ylabel("attention mass received (sum over queries)")
    ax.set_title(title or "MLLM-LAWS: text before vs after the image")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    return save_figure(fig, path)


def write_laws(result: LawsResult, output_dir: str | os.PathLike, title: str | None = None) -> dict[str, Path]:
    """Write `laws.json` (`LawsResult.to_json`) and `laws.png` (`plot_laws`) into output_dir."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    json_path = output_dir / "laws.json"
    json_path.write_text(json.dumps(result.to_json(), indent=2))
    return {"json": json_path, "png": plot_laws(result, output_dir / "laws.png", title=title)}
