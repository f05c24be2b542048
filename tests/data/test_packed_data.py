"""Sequence packing on the data side: the packer keeps every sample and never exceeds max_length; packed rows of
prepared data hold each sample's tokens, labels (first one -100), restarting positions and images in order."""

from __future__ import annotations

import random

import pytest
import torch

from llava_fixtures import image_folder, processor, valid_samples, write_json  # noqa: F401  (fixtures)
from wings.data.collate import PreparedDataset
from wings.data.conversation import IGNORE_INDEX
from wings.data.packing import PackedCollator, PackedDataset, pack_samples
from wings.data.prepared import prepare_data


@pytest.mark.parametrize("seed", range(5))
def test_packer_keeps_every_sample_and_never_exceeds_max_length(seed):
    rng = random.Random(seed)
    max_length = rng.choice([16, 64, 300])
    lengths = [rng.randint(1, max_length) for _ in range(rng.randint(1, 400))]
    rows = pack_samples(lengths, max_length)
    placed = sorted(i for row in rows for i in row)
    assert placed == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= max_length for row in rows)
    # Greedy: a row is opened only when no earlier row had room for the sample that opens it.
    for r, row in enumerate(rows):
        opened_by = row[0]
        for earlier in range(r):
            filled_before = sum(lengths[i] for i in rows[earlier] if i < opened_by)
            assert max_length - filled_before < lengths[opened_by]


def test_packer_fills_best_fitting_row():
    assert pack_samples([6, 5, 4, 1, 3], 10) == [[0, 2], [1, 3, 4]]  # 4 into the 6-row (room 4), 1 into room 5
    assert pack_samples([], 8) == []
    with pytest.raises(ValueError, match="sample 1 has 9 tokens"):
        pack_samples([3, 9], 8)


def test_packed_rows_of_prepared_data(tmp_path, image_folder, processor):  # noqa: F811
    path = write_json(tmp_path / "data.json", valid_samples())
    prepared = prepare_data(path, processor, 256, image_folder, cache_dir=tmp_path / "cache")
    samples = PreparedDataset(prepared.good(), processor)
    lengths = samples.lengths.tolist()
    packed = PackedDataset(samples, max_length=sum(lengths))  # all in one row
    assert len(packed) == 1 and packed.num_samples == 3 and packed.lengths.tolist() == [sum(lengths)]
    row = packed[0]
    start = 0
    for k in packed.rows[0]:
        item, end = samples[k], start + lengths[k]
        assert torch.equal(row["input_ids"][start:end], item["input_ids"])
        assert row["labels"][start] == IGNORE_INDEX
        assert torch.equal(row["labels"][start + 1 : end], item["labels"][1:])
        assert torch.equal(row["position_ids"][start:end], torch.arange(lengths[k]))
        start = end
    images = torch.cat([samples[k]["pixel_values"] for k in packed.rows[0] if samples[k]["pixel_values"] is not None])
    assert torch.equal(row["pixel_values"], images)

    one_each = PackedDataset(samples, max_length=max(lengths))
    assert sum(len(r) for r in one_each.rows) == 3 and all(n <= max(lengths) for n in one_each.lengths)


def test_packed_collator_pads_with_a_sample_of_its_own():
    rows = [
        {"input_ids": torch.tensor([3, 4, 5, 6]), "labels": torch.tensor([-100, 4, -100, 6]),
         "position_ids": torch.tensor([0, 1, 0, 1]), "pixel_values": None},
        {"input_ids": torch.tensor([7, 8]), "labels": torch.tensor([-100, 8]),
         "position_ids": torch.tensor([0, 1]), "pixel_values": torch.ones(1, 3, 2, 2)},
    ]
    batch = PackedCollator(pad_token_id=0)(rows)
    assert "attention_mask" not in batch
    assert batch["input_ids"].tolist() == [[3, 4, 5, 6], [7, 8, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 4, -100, 6], [-100, 8, -100, -100]]
    assert batch["position_ids"].tolist() == [[0, 1, 0, 1], [0, 1, 0, 1]]
    assert batch["pixel_values"].shape == (1, 3, 2, 2)


class _Items(torch.utils.data.Dataset):
    def __init__(self, items):
        self.items, self.lengths = items, [len(item["input_ids"]) for item in items]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def test_packed_rows_keep_every_image_input_in_sample_order():
    """Any-resolution samples carry image_sizes beside their tiles; a packed row concatenates both in order."""
    items = [
        {"input_ids": torch.arange(4), "labels": torch.arange(4), "pixel_values": torch.zeros(2, 3, 2, 2),
         "image_sizes": torch.tensor([[10, 20]])},
        {"input_ids": torch.arange(3), "labels": torch.arange(3), "pixel_values": None},
        {"input_ids": torch.arange(5), "labels": torch.arange(5), "pixel_values": torch.ones(3, 3, 2, 2),
         "image_sizes": torch.tensor([[30, 40]])},
    ]
    row = PackedDataset(_Items(items), max_length=12)[0]
    assert row["image_sizes"].tolist() == [[10, 20], [30, 40]]
    assert row["pixel_values"][:, 0, 0, 0].tolist() == [0, 0, 1, 1, 1]
    batch = PackedCollator(pad_token_id=0)([row])
    assert batch["image_sizes"].tolist() == [[10, 20], [30, 40]] and batch["pixel_values"].shape[0] == 5
