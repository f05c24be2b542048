"""Shared matplotlib helpers for evaluation figures.

Figures are drawn on `matplotlib.figure.Figure` with the Agg canvas, never through pyplot: no
global backend switch (a notebook keeps its own), no display needed, nothing left open.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["bar_with_intervals", "labelled_scatter", "new_figure", "save_figure"]


def new_figure(width: float = 6.0, height: float = 4.0) -> tuple[Figure, Axes]:
    """A figure with one axes, on the Agg canvas."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 150) -> Path:
    """Write ``fig`` (format from the suffix, e.g. ``.png``/``.pdf``), creating parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path


def bar_with_intervals(
    ax: Axes,
    labels: Sequence[str],
    values: Sequence[float],
    lows: Sequence[float],
    highs: Sequence[float],
    annotations: Sequence[str] | None = None,
    color: str = "tab:blue",
) -> None:
    """Bars with asymmetric error bars ``[low, high]``; NaN values are left as gaps."""
    xs = list(range(len(labels)))
    heights = [0.0 if math.isnan(v) else v for v in values]
    below = [0.0 if math.isnan(v) else max(0.0, v - lo) for v, lo in zip(values, lows, strict=True)]
    above = [0.0 if math.isnan(v) else max(0.0, hi - v) for v, hi in zip(values, highs, strict=True)]
    ax.bar(xs, heights, color=color, yerr=[below, above], capsize=4, ecolor="black")
    ax.set_xticks(xs, labels)
    if annotations is not None:
        for x, text, v, hi in zip(xs, annotations, values, highs, strict=True):
            if not math.isnan(v):
                ax.annotate(text, (x, hi), textcoords="offset points", xytext=(0, 3), ha="center", fontsize=8)


def labelled_scatter(ax: Axes, xs: Sequence[float], ys: Sequence[float], labels: Sequence[str]) -> None:
    """One marker per point, named in the legend (points that coincide share one joined entry).

    A legend instead of text beside each point: models often cluster within noise of each other.
    """
    merged: dict[tuple[float, float], list[str]] = {}
    for x, y, label in zip(xs, ys, labels, strict=True):
        merged.setdefault((round(x, 4), round(y, 4)), []).append(label)
    markers = "osD^vP*Xh<>"
    for k, ((x, y), names) in enumerate(merged.items()):
        ax.scatter([x], [y], s=45, zorder=3, marker=markers[k % len(markers)], color=f"C{k % 10}",
                   label=" / ".join(names))
    ax.legend(loc="best", fontsize=8)
    ax.grid(True, alpha=0.3)
