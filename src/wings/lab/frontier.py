"""Retention-vs-multimodal frontiers of a method and the gap between two of them.

A method (LLaVA, WINGS) trained at several LLM learning rates gives one point per rate:
``(text_retention, mm_acc)``. Its frontier is the upper envelope of those points: the best
multimodal accuracy the method reached at a given retention or more (Pareto points joined by
straight lines). The frontier gap compares two methods at matched retention: the mean over the
retention range both frontiers cover of ``F_a(r) - F_b(r)``, which is the area between the
frontiers divided by the width of that range. Positive: method `a` gets more multimodal accuracy
for the same text retention, which is the paper's claim for WINGS over LLaVA.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

Point = tuple[float, float]  # (text_retention, mm_acc)


def pareto_frontier(points: Sequence[Point]) -> list[Point]:
    """The points no other point beats on both axes, sorted by retention (ascending).

    A point is kept when every point of higher (or equal) retention has lower multimodal accuracy.
    """
    if not points:
        raise ValueError("pareto_frontier: no points")
    kept: list[Point] = []
    best = -math.inf
    for r, m in sorted(points, key=lambda p: (-p[0], -p[1])):
        if m > best:
            kept.append((float(r), float(m)))
            best = m
    return kept[::-1]


def frontier_at(frontier: Sequence[Point], retention: np.ndarray) -> np.ndarray:
    """Multimodal accuracy of a frontier (`pareto_frontier`'s output) at `retention` [k], by linear
    interpolation; outside the frontier's retention range the end points' values."""
    xs = np.array([p[0] for p in frontier])
    ys = np.array([p[1] for p in frontier])
    return np.interp(retention, xs, ys)


def overlap(a: Sequence[Point], b: Sequence[Point]) -> tuple[float, float] | None:
    """The retention interval both point sets cover, or None if they do not meet."""
    lo = max(min(p[0] for p in a), min(p[0] for p in b))
    hi = min(max(p[0] for p in a), max(p[0] for p in b))
    return (lo, hi) if hi >= lo else None


def frontier_gap(a: Sequence[Point], b: Sequence[Point], grid: int = 101) -> float:
    """Mean of ``F_a(r) - F_b(r)`` over the retention range both frontiers cover (NaN if none).

    With a range narrower than 1e-3 (e.g. both methods keep every text skill) the gap is taken at
    that single matched retention. NaN too when either method has no point.
    """
    if not a or not b:
        return math.nan
    fa, fb = pareto_frontier(a), pareto_frontier(b)
    span = overlap(fa, fb)
    if span is None:
        return math.nan
    lo, hi = span
    r = np.array([(lo + hi) / 2]) if hi - lo < 1e-3 else np.linspace(lo, hi, grid)
    return float(np.mean(frontier_at(fa, r) - frontier_at(fb, r)))


def gap_verdict(gap: float, low: float, high: float, a: str = "WINGS", b: str = "LLaVA") -> str:
    """`a` is "above" `b` only when the whole interval is above zero, "below" when below."""
    if any(math.isnan(v) for v in (gap, low, high)):
        return "undecided"
    if low > 0:
        return "above"
    if high < 0:
        return "below"
    return "level"
