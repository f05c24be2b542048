"""Mixtures of data sources (proportions, reproducibility) and the modality-length grouped sampler."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from datasets import Dataset

from wings.data.mixture import DataSource, mix_sources, mixture_counts
from wings.data.sampler import ModalityLengthGroupedSampler, modality_length_order
from wings.errors import ConfigError


def test_source_specs():
    assert DataSource.parse("a.json") == DataSource("a.json")
    assert DataSource.parse("dir/text.jsonl:0.1") == DataSource("dir/text.jsonl", 0.1)
    assert DataSource.parse("C:/data/a.json") == DataSource("C:/data/a.json")  # a colon in the path
    with pytest.raises(ConfigError, match="weight must be in"):
        DataSource.parse("a.json:1.5")


def _source(name, n):
    return Dataset.from_dict({"id": [f"{name}{k}" for k in range(n)]})


def test_mixture_proportions_and_reproducibility():
    image, text = _source("img", 900), _source("txt", 50)
    mixed, counts = mix_sources([image, text], [None, 0.1], seed=3)
    assert len(mixed) == 950 and counts == [855, 95]
    drawn = Counter(i[:3] for i in mixed["id"][:])
    assert abs(drawn["txt"] / len(mixed) - 0.1) < 0.005  # the share asked for, within rounding
    ids = mixed["id"][:]
    # 95 text samples from 50: every one once, then 45 of a second pass without repeats in that pass.
    assert set(Counter(i for i in ids if i.startswith("txt")).values()) == {1, 2}
    assert len({i for i in ids if i.startswith("img")}) == 855  # a subset of the image source, no repeats
    assert mix_sources([image, text], [None, 0.1], seed=3)[0]["id"][:] == ids
    assert mix_sources([image, text], [None, 0.1], seed=4)[0]["id"][:] != ids
    concatenated, counts = mix_sources([image, text], [None, None], seed=3)
    assert counts == [900, 50] and concatenated["id"][:] == image["id"][:] + text["id"][:]


def test_mixture_counts_rules():
    assert mixture_counts([100, 300, 600], [0.5, None, None]) == [500, 167, 333]  # the rest by size
    assert mixture_counts([100, 300], [0.2, 0.6]) == [100, 300]  # all weighted: normalised
    with pytest.raises(ConfigError, match="sum to 1"):
        mixture_counts([10, 10, 10], [0.5, 0.5, None])


def test_modality_length_order_keeps_modalities_apart_and_sorts_lengths():
    rng = np.random.default_rng(0)
    has_images = rng.random(103) < 0.75
    lengths = np.where(has_images, 600, 0) + rng.integers(10, 300, 103)
    megabatch = 8
    order = modality_length_order(lengths, has_images, megabatch, seed=1)
    assert sorted(order) == list(range(103))
    n_full = (has_images.sum() // megabatch) + ((~has_images).sum() // megabatch)
    for b in range(n_full):
        chunk = order[b * megabatch : (b + 1) * megabatch]
        assert len(set(has_images[chunk])) == 1  # one modality per step
        assert list(lengths[chunk]) == sorted(lengths[chunk], reverse=True)
    sampler = ModalityLengthGroupedSampler(lengths, has_images, megabatch, seed=1)
    assert list(sampler) == order and list(sampler) == order  # the same order for the same epoch
    sampler.set_epoch(1)
    assert list(sampler) != order and len(sampler) == 103
