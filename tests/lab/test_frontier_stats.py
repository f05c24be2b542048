"""Frontier gap, Pareto points, Spearman and the seed x item bootstrap, against plain references."""

import itertools
import math

import numpy as np
import pytest
from scipy.stats import spearmanr

from wings.lab.bootstrap import ModelItems, bootstrap, percentile_interval, rankdata, spearman
from wings.lab.frontier import frontier_gap, gap_verdict, overlap, pareto_frontier


def test_spearman_matches_scipy_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        x = rng.integers(0, 4, size=9).astype(float)
        y = x + rng.integers(0, 3, size=9)
        expected = spearmanr(x, y).statistic
        assert spearman(x, y) == pytest.approx(expected) or (math.isnan(expected) and math.isnan(spearman(x, y)))
    assert rankdata([3, 1, 3, 2]).tolist() == [3.5, 1.0, 3.5, 2.0]
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3])) and math.isnan(spearman([1, 2], [2, 1]))
    with pytest.raises(ValueError, match="3 x values but 2"):
        spearman([1, 2, 3], [1, 2])


def test_pareto_frontier_equals_a_naive_dominance_check():
    rng = np.random.default_rng(1)
    for _ in range(30):
        points = [tuple(p) for p in rng.random((6, 2)).round(2)]
        naive = sorted({p for p in points if not any(q != p and q[0] >= p[0] and q[1] >= p[1] for q in points)})
        assert pareto_frontier(points) == naive


def test_frontier_gap_is_the_vertical_distance_at_matched_retention():
    llava = [(1.0, 0.2), (0.75, 0.5), (0.5, 0.8)]
    wings = [(r, m + 0.1) for r, m in llava]
    assert frontier_gap(wings, llava) == pytest.approx(0.1)
    assert frontier_gap(llava, wings) == pytest.approx(-0.1)
    # A dominated point changes nothing; WINGS covering only part of the range is compared there.
    assert frontier_gap(wings + [(0.6, 0.1)], llava) == pytest.approx(0.1)
    assert overlap([(0.9, 0.5), (0.8, 0.6)], llava) == (0.8, 0.9)
    assert frontier_gap([(0.9, 0.5), (0.8, 0.6)], llava) == pytest.approx(np.mean(
        [np.interp(r, [0.8, 0.9], [0.6, 0.5]) - np.interp(r, [0.5, 0.75, 1.0], [0.8, 0.5, 0.2])
         for r in np.linspace(0.8, 0.9, 101)]))
    # Both keep every skill: compared at that single retention.
    assert frontier_gap([(1.0, 0.6)], [(1.0, 0.4)]) == pytest.approx(0.2)
    assert math.isnan(frontier_gap([(0.3, 0.9)], [(1.0, 0.4), (0.8, 0.5)])) and math.isnan(frontier_gap([], [(1.0, 0.4)]))


def test_gap_verdict_needs_the_interval_to_exclude_zero():
    assert gap_verdict(0.05, 0.01, 0.09) == "above"
    assert gap_verdict(0.05, -0.01, 0.09) == "level"
    assert gap_verdict(-0.05, -0.09, -0.01) == "below"
    assert gap_verdict(math.nan, 0.1, 0.2) == "undecided"


def _model(rng, seeds, p_text, p_mm, n=200):
    def draw(p):
        return (rng.random((seeds, n)) < p).astype(int)

    return ModelItems(text=draw(p_text), mm=draw(p_mm), vqa=draw(0.8), pearson=rng.uniform(0, 1, (seeds, 30)),
                      iit={"T,V": draw(0.6)})


def test_bootstrap_point_values_are_plain_means_and_intervals_cover_them():
    rng = np.random.default_rng(2)
    base = np.ones(200, dtype=int)
    models = {"a": _model(rng, 3, 0.9, 0.5), "b": _model(rng, 3, 0.5, 0.7)}
    reps = bootstrap(models, base, n=500, seed=0)
    for name, m in models.items():
        assert reps.point[name]["retention"] == pytest.approx(m.text.mean())
        assert reps.point[name]["mm_acc"] == pytest.approx(m.mm.mean())
        assert reps.point[name]["attention_shift"] == pytest.approx(np.mean(1 - m.pearson.mean(1)))
        low, high = percentile_interval(reps.mm_acc[name])
        assert low < m.mm.mean() < high
    # Item noise alone: one seed, p = 0.5, n = 200 -> the interval is about +-1.96 * 0.035.
    one = bootstrap({"a": _model(rng, 1, 0.5, 0.5)}, base, n=2000, seed=1)
    low, high = percentile_interval(one.mm_acc["a"])
    assert 0.10 < high - low < 0.18
    again = bootstrap(models, base, n=500, seed=0)
    assert np.array_equal(again.retention["a"], reps.retention["a"])


def test_bootstrap_statistic_interval_and_paired_draws():
    rng = np.random.default_rng(3)
    base = (rng.random(200) < 0.9).astype(int)
    same = _model(rng, 3, 0.8, 0.6)
    reps = bootstrap({"x": same, "y": same}, base, n=300, seed=0)
    # The same items and seeds are drawn for every model: identical models never differ.
    diff = reps.interval(lambda means: means["x"]["mm_acc"] - means["y"]["mm_acc"])
    assert diff == {"value": 0.0, "ci_low": 0.0, "ci_high": 0.0, "undefined": 0.0}
    with pytest.raises(ValueError, match="same seeds"):
        ModelItems(text=np.ones((2, 5)), mm=np.ones((3, 5)), vqa=np.ones((2, 5)), pearson=np.ones((2, 5)))


def test_bootstrap_seed_draws_match_a_naive_loop():
    """One replicate recomputed by hand from the same draws."""
    rng = np.random.default_rng(4)
    base = (rng.random(50) < 0.95).astype(int)
    model = _model(rng, 3, 0.7, 0.4, n=50)
    reps = bootstrap({"m": model}, base, n=5, seed=7)
    draws = np.random.default_rng(7)
    seeds = draws.integers(0, 3, size=(5, 3))
    text_items, mm_items = draws.integers(0, 50, size=(5, 50)), draws.integers(0, 50, size=(5, 50))
    for b in range(5):
        text = np.mean([model.text[s, text_items[b]].mean() for s in seeds[b]]) / base[text_items[b]].mean()
        mm = np.mean([model.mm[s, mm_items[b]].mean() for s in seeds[b]])
        assert reps.retention["m"][b] == pytest.approx(text)
        assert reps.mm_acc["m"][b] == pytest.approx(mm)
    assert list(itertools.islice(reps.point, 1)) == ["m"]
