"""MLLM-LAWS results: the span curves of a set of samples and the attention shift they give.

LAWS(S) = [a^1(S), ..., a^L(S)], the attention mass a span S of a sample receives in each decoder
layer (measured by :mod:`wings.evaluation.laws`). Per sample, the Pearson correlation of the
``before`` and ``after`` curves over layers is taken, and

    attention_shift = 1 - mean over samples of pearson(LAWS(before), LAWS(after))      (0..2)

A sample whose before or after curve is constant (an empty span, or a one-layer model) has no
correlation: it is left out of the mean and counted in ``n_skipped``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["SPANS", "LawsResult", "SpanMasses", "attention_shift", "pearson_per_sample"]

SPANS = ("before", "image", "after")


@dataclass(frozen=True)
class SpanMasses:
    """LAWS of one sample: a^l(S) for l = 1..L per span, and each span's size in tokens."""

    before: np.ndarray  # [L]
    image: np.ndarray  # [L]
    after: np.ndarray  # [L]
    n_tokens: tuple[int, int, int] = (0, 0, 0)  # (before, image, after)

    @classmethod
    def from_array(cls, curves: np.ndarray, n_tokens: Sequence[int] = (0, 0, 0)) -> SpanMasses:
        """curves [L, 3] in SPANS order."""
        return cls(curves[:, 0].copy(), curves[:, 1].copy(), curves[:, 2].copy(), tuple(int(n) for n in n_tokens))

    def as_array(self) -> np.ndarray:
        """[L, 3] in SPANS order."""
        return np.stack([self.before, self.image, self.after], axis=1)

    @property
    def pearson(self) -> float:
        """Pearson correlation of the before and after curves (NaN when one of them is constant)."""
        return float(pearson_per_sample(self.as_array()[None])[0])


def pearson_per_sample(curves: np.ndarray) -> np.ndarray:
    """curves [N, L, 3] -> [N] Pearson correlation of before vs after over layers; NaN where undefined."""
    before, after = curves[:, :, 0].astype(np.float64), curves[:, :, 2].astype(np.float64)
    before = before - before.mean(axis=1, keepdims=True)
    after = after - after.mean(axis=1, keepdims=True)
    norm = np.sqrt((before**2).sum(axis=1) * (after**2).sum(axis=1))
    out = np.full(curves.shape[0], np.nan)
    # A curve that is constant up to rounding has no direction to correlate.
    scale = np.maximum(np.abs(curves[:, :, [0, 2]]).max(axis=(1, 2)), 1e-30)
    defined = (norm > (1e-12 * scale) ** 2) & (curves.shape[1] >= 2)
    out[defined] = np.clip((before * after).sum(axis=1)[defined] / norm[defined], -1.0, 1.0)
    return out


def attention_shift(pearsons: Iterable[float]) -> float:
    """1 - mean of the finite Pearson correlations, in [0, 2]; NaN when none is finite."""
    values = np.asarray(list(pearsons), dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return math.nan
    return float(np.clip(1.0 - np.clip(values, -1.0, 1.0).mean(), 0.0, 2.0))


@dataclass
class LawsResult:
    """LAWS over a set of samples.

    Attributes:
        curves: [N, L, 3] a^l(S) per sample, layer and span (SPANS order).
        sample_ids: one name per sample.
        span_tokens: [N, 3] span sizes in tokens.
    """

    curves: np.ndarray
    sample_ids: list[str]
    span_tokens: np.ndarray

    @property
    def n_samples(self) -> int:
        return int(self.curves.shape[0])

    @property
    def num_layers(self) -> int:
        return int(self.curves.shape[1])

    @property
    def layers(self) -> list[int]:
        """Layer numbers 1..L (a^1 .. a^L), the x axis of the plots."""
        return list(range(1, self.num_layers + 1))

    @property
    def mean(self) -> np.ndarray:
        """[L, 3] mean over samples."""
        return self.curves.mean(axis=0)

    @property
    def std(self) -> np.ndarray:
        """[L, 3] standard deviation over samples (population, ddof 0)."""
        return self.curves.std(axis=0)

    @property
    def pearson(self) -> np.ndarray:
        """[N] per-sample Pearson(before, after); NaN for skipped samples."""
        return pearson_per_sample(self.curves)

    @property
    def n_skipped(self) -> int:
        return int(np.isnan(self.pearson).sum())

    @property
    def attention_shift(self) -> float:
        return attention_shift(self.pearson)

    def sample(self, index: int) -> SpanMasses:
        return SpanMasses.from_array(self.curves[index], self.span_tokens[index])

    def to_json(self) -> dict[str, Any]:
        """JSON-ready summary; NaN values become null."""
        mean, std = self.mean, self.std
        shift = self.attention_shift
        return {
            "layers": self.layers,
            "spans": list(SPANS),
            "mean": {span: mean[:, k].tolist() for k, span in enumerate(SPANS)},
            "std": {span: std[:, k].tolist() for k, span in enumerate(SPANS)},
            "pearson": [None if math.isnan(p) else float(p) for p in self.pearson],
            "attention_shift": None if math.isnan(shift) else shift,
            "n_samples": self.n_samples,
            "n_skipped": self.n_skipped,
        }
