"""Data mixtures: one training stage reads several sources, each with a sampling weight.

A source is written `path` or `path:weight` (`--data llava_mix.json --data text_only.jsonl:0.1`, or
the same strings in a recipe's `data.sources`). The mixture has as many samples as its sources
together; a source with a weight makes that share of them, and the sources without one share the
rest in proportion to their sizes (with no weight anywhere, the sources are simply concatenated). A
source asked for more samples than it holds is repeated, each pass in a new order; one asked for
fewer gives a random subset. The draw depends only on the seed, so a run and its `--resume` see the
same mixture (the trainer's sampler then orders it, reproducibly too).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from datasets import Dataset, concatenate_datasets

from ..errors import ConfigError


@dataclass(frozen=True)
class DataSource:
    """A data file and its share of the mixture (None: its natural share, see the module docstring)."""

    path: str
    weight: float | None = None

    @classmethod
    def parse(cls, spec: str) -> DataSource:
        """`"a.json"` -> (a.json, None); `"text.jsonl:0.1"` -> (text.jsonl, 0.1)."""
        path, sep, tail = spec.rpartition(":")
        if sep and path:
            try:
                weight = float(tail)
            except ValueError:
                return cls(spec)  # a colon that is part of the path
            if not math.isfinite(weight) or not 0 < weight <= 1:
                raise ConfigError(f"data source '{spec}': the weight must be in (0, 1], got {tail}")
            return cls(path, weight)
        return cls(spec)


def mixture_counts(sizes: Sequence[int], weights: Sequence[float | None]) -> list[int]:
    """How many samples each source gives to a mixture of sum(sizes) samples (see the module docstring)."""
    total = sum(sizes)
    given = sum(w for w in weights if w is not None)
    free = [s for s, w in zip(sizes, weights) if w is None]
    if all(w is None for w in weights):
        return list(sizes)
    if free and given >= 1:
        raise ConfigError(f"data sources: the weights sum to {given:g}, leaving nothing for the sources without one")
    if not free:
        shares = [w / given for w in weights]
    else:
        rest = (1 - given) / sum(free) if sum(free) else 0.0
        shares = [w if w is not None else s * rest for s, w in zip(sizes, weights)]
    return [max(1, round(share * total)) for share in shares]


def mixture_rows(size: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` row indices of a source of `size` rows: whole shuffled passes, then a random part of one."""
    passes = [rng.permutation(size) for _ in range(count // size)]
    passes.append(rng.permutation(size)[: count % size])
    return np.concatenate(passes)


def mix_sources(parts: Sequence[Dataset], weights: Sequence[float | None], seed: int) -> tuple[Dataset, list[int]]:
    """The mixture of `parts` (prepared rows of each source) and how many samples each gave to it."""
    if len(parts) != len(weights):
        raise ValueError(f"{len(parts)} sources but {len(weights)} weights")
    counts = mixture_counts([len(p) for p in parts], weights)
    if all(w is None for w in weights):
        return (parts[0] if len(parts) == 1 else concatenate_datasets(list(parts))), counts
    rng = np.random.default_rng(seed)
    chosen = [p.select(mixture_rows(len(p), n, rng)) for p, n in zip(parts, counts)]
    return concatenate_datasets(chosen), counts
