"""Bootstrap intervals over seeds and test items, and Spearman's rank correlation.

The study's uncertainty has two sources: training runs differ by seed, and every accuracy is a mean
over a finite set of test items. One bootstrap replicate redraws both: the seeds (with replacement,
the same draw for every model, since the models of one seed share their stage 1), and the items of
every test (with replacement, the same draw for every model and seed, since every model answers the
same items). Any statistic computed from the per-model means of a replicate (a frontier gap, a
correlation over models) then gets its percentile interval from the replicates.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np


def rankdata(values: Sequence[float]) -> np.ndarray:
    """Ranks 1..n, ties sharing their mean rank."""
    x = np.asarray(values, dtype=float)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    sorted_x = x[order]
    start = 0
    for end in range(1, len(x) + 1):
        if end == len(x) or sorted_x[end] != sorted_x[start]:
            ranks[order[start:end]] = (start + end + 1) / 2  # mean of ranks start+1 .. end
            start = end
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rho (Pearson of the tie-averaged ranks); NaN if either side is constant or n < 3."""
    if len(x) != len(y):
        raise ValueError(f"spearman: {len(x)} x values but {len(y)} y values")
    if len(x) < 3:
        return math.nan
    rx, ry = rankdata(x), rankdata(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denominator = math.sqrt(float((rx * rx).sum() * (ry * ry).sum()))
    return float((rx * ry).sum() / denominator) if denominator > 0 else math.nan


def percentile_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """The central `confidence` interval of `values`, NaNs left out (NaN, NaN if all are NaN)."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    if not len(v):
        return math.nan, math.nan
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(v, [tail, 100 - tail])
    return float(low), float(high)


@dataclass
class ModelItems:
    """One model's per-item results, one row per seed (every row answers the same items).

    `text`, `mm`, `vqa`: correct (0/1) ``[seeds, items]``; `pearson`: per LAWS sample Pearson of the
    before/after curves ``[seeds, samples]`` (NaN where undefined); `iit`: per setting, correct
    ``[seeds, dialogues]``.
    """

    text: np.ndarray
    mm: np.ndarray
    vqa: np.ndarray
    pearson: np.ndarray
    iit: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        shapes = {k: np.asarray(getattr(self, k)).shape for k in ("text", "mm", "vqa", "pearson")}
        shapes.update({f"iit {s}": np.asarray(v).shape for s, v in self.iit.items()})
        seeds = {s[0] for s in shapes.values()}
        if any(len(s) != 2 for s in shapes.values()) or len(seeds) != 1:
            raise ValueError(f"ModelItems: every array must be [seeds, items] with the same seeds; got {shapes}")


def _seed_means(per_item: np.ndarray, items: np.ndarray, seeds: np.ndarray, nan: bool = False) -> np.ndarray:
    """``per_item [S, N]``, ``items [B, N]``, ``seeds [B, S]`` -> the replicate means ``[B]``."""
    picked = per_item[:, items]  # [S, B, N]
    per_seed = (np.nanmean(picked, -1) if nan else picked.mean(-1)).T  # [B, S]
    return np.take_along_axis(per_seed, seeds, axis=1).mean(1)


@dataclass
class Replicates:
    """Per-model statistics of every replicate (``[B]`` each) and of the data itself (`point`)."""

    retention: dict[str, np.ndarray]
    mm_acc: dict[str, np.ndarray]
    vqa_acc: dict[str, np.ndarray]
    attention_shift: dict[str, np.ndarray]
    iit: dict[str, dict[str, np.ndarray]]
    point: dict[str, dict[str, float]]

    def interval(self, statistic: Callable[[Mapping[str, Mapping[str, float]]], float],
                 confidence: float = 0.95) -> dict[str, float]:  # fmt: skip
        """``{"value", "ci_low", "ci_high", "undefined"}`` of a statistic of the per-model means.

        `statistic` gets ``{model: {"retention", "mm_acc", "vqa_acc", "attention_shift"}}`` and
        returns a float (NaN where undefined; `undefined` is the share of such replicates).
        """
        values = [statistic(self._means(b)) for b in range(self.n)]
        low, high = percentile_interval(values, confidence)
        return {"value": statistic(self.point), "ci_low": low, "ci_high": high,
                "undefined": float(np.mean(np.isnan(values)))}

    @property
    def n(self) -> int:
        return len(next(iter(self.retention.values())))

    def _means(self, b: int) -> dict[str, dict[str, float]]:
        return {m: {"retention": float(self.retention[m][b]), "mm_acc": float(self.mm_acc[m][b]),
                    "vqa_acc": float(self.vqa_acc[m][b]), "attention_shift": float(self.attention_shift[m][b])}
                for m in self.retention}


def bootstrap(models: Mapping[str, ModelItems], base_text: np.ndarray, n: int = 2000, seed: int = 0) -> Replicates:
    """Draw `n` replicates of seeds and items (see the module docstring).

    `base_text` ``[items]`` is the base LLM's per-item text correctness (one LLM, no seeds):
    retention = a model's text accuracy / the base's, on the same drawn items.
    """
    if not models:
        raise ValueError("bootstrap: no models")
    first = next(iter(models.values()))
    n_seeds = first.text.shape[0]
    if any(m.text.shape[0] != n_seeds for m in models.values()):
        raise ValueError("bootstrap: every model needs the same number of seeds")
    rng = np.random.default_rng(seed)
    seeds = rng.integers(0, n_seeds, size=(n, n_seeds))

    def draw(width: int) -> np.ndarray:
        return rng.integers(0, width, size=(n, width))

    text_items, mm_items = draw(first.text.shape[1]), draw(first.mm.shape[1])
    vqa_items, laws_items = draw(first.vqa.shape[1]), draw(first.pearson.shape[1])
    iit_items = {s: draw(v.shape[1]) for s, v in first.iit.items()}
    base = np.asarray(base_text, dtype=float)[text_items].mean(1)  # [B]
    base_point = float(np.mean(base_text))
    out = Replicates({}, {}, {}, {}, {}, {})
    for name, m in models.items():
        text = m.text.astype(float)
        out.retention[name] = _seed_means(text, text_items, seeds) / np.where(base > 0, base, np.nan)
        out.mm_acc[name] = _seed_means(m.mm.astype(float), mm_items, seeds)
        out.vqa_acc[name] = _seed_means(m.vqa.astype(float), vqa_items, seeds)
        out.attention_shift[name] = 1 - _seed_means(m.pearson.astype(float), laws_items, seeds, nan=True)
        out.iit[name] = {s: _seed_means(v.astype(float), iit_items[s], seeds) for s, v in m.iit.items()}
        out.point[name] = {
            "retention": float(text.mean()) / base_point if base_point > 0 else math.nan,
            "mm_acc": float(m.mm.mean()), "vqa_acc": float(m.vqa.mean()),
            "attention_shift": float(np.mean(1 - np.nanmean(m.pearson.astype(float), 1))),
        }
    return out
