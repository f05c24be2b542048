"""Sequence packing: several prepared samples per row up to `max_length` (`data.packing: true` in a recipe).

A packed row is its samples' tokens one after another, with `position_ids` restarting at 0 at each sample and
no attention mask: transformers reads the samples off the restarting positions and confines the main attention
to each (its packed-sequence masks), and `WingsForConditionalGeneration` confines both learners' keys likewise.
Each sample's first label is -100, so the previous sample's last token predicts nothing across the boundary
(unpacked, that label is never predicted either). A packed batch thus gives each sample the loss and gradients
it gets unpacked.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .collate import LlavaCollator, concat_image_inputs
from .conversation import IGNORE_INDEX


def pack_samples(lengths: Sequence[int], max_length: int) -> list[list[int]]:
    """Group sample indices into rows of at most `max_length` tokens (greedy best fit, in the given order).

    Each sample goes to the open row with the least room that still fits it, or starts a new row. Returns the rows,
    each a list of indices in the order they were placed; every index appears exactly once.
    """
    rows: list[list[int]] = []
    # Open rows by free room: room -> rows with that room, and the sorted distinct rooms (at most max_length + 1).
    by_room: dict[int, list[int]] = {}
    rooms: list[int] = []
    for index, length in enumerate(int(n) for n in lengths):
        if length > max_length:
            raise ValueError(f"pack_samples: sample {index} has {length} tokens, more than max_length={max_length}")
        at = bisect.bisect_left(rooms, length)
        if at < len(rooms):
            room = rooms[at]
            row = by_room[room].pop()
            if not by_room[room]:
                del by_room[room]
                rooms.pop(at)
        else:
            room, row = max_length, len(rows)
            rows.append([])
        rows[row].append(index)
        left = room - length
        if left not in by_room:
            by_room[left] = []
            bisect.insort(rooms, left)
        by_room[left].append(row)
    return rows


class PackedDataset(Dataset):
    """A data set of samples (`collate.PreparedDataset`) as packed rows of at most `max_length` tokens.

    Args:
        samples: its items hold input_ids [T], labels [T] and pixel_values [n_images, 3, H, W] or None, and it
            has `lengths` (token counts, image tokens included).
        max_length: the longest row.

    Each item: input_ids [L], labels [L] (-100 at each sample's first token), position_ids [L] (restarting at 0
    per sample), pixel_values [sum n_images, 3, H, W] in sample order or None (other image layouts: their image
    inputs, `collate.IMAGE_INPUT_KEYS`, concatenated likewise); L <= max_length.
    """

    def __init__(self, samples: Dataset, max_length: int):
        self.samples = samples
        self.max_length = max_length
        self.rows = pack_samples(samples.lengths, max_length)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        items = [self.samples[i] for i in self.rows[index]]
        labels = [torch.as_tensor(item["labels"], dtype=torch.long).clone() for item in items]
        for row_labels in labels:
            row_labels[0] = IGNORE_INDEX
        return {
            "input_ids": torch.cat([torch.as_tensor(item["input_ids"], dtype=torch.long) for item in items]),
            "labels": torch.cat(labels),
            "position_ids": torch.cat([torch.arange(len(row_labels)) for row_labels in labels]),
            "pixel_values": None,
            **concat_image_inputs(items),
        }

    @property
    def num_samples(self) -> int:
        return len(self.samples)

    @property
    def lengths(self) -> np.ndarray:
        """Token counts of the rows [N_rows]."""
        sample_lengths = np.asarray(self.samples.lengths)
        return np.array([int(sample_lengths[row].sum()) for row in self.rows])


class PackedCollator(LlavaCollator):
    """Batch packed rows (`PackedDataset` items), right-padded to the longest row.

    The padding is one more sample of its own (positions restarting at 0, labels -100), so no real token sees it
    and it needs no attention mask. Returns input_ids, labels, position_ids [B, L] and, when any row has images,
    pixel_values [sum n_i, 3, H, W] in row order; no attention_mask (packed rows are read off the positions).
    """

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None):
        super().__init__(pad_token_id, padding_side="right", pad_to_multiple_of=pad_to_multiple_of)

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = super().__call__(features)
        real = batch.pop("attention_mask").bool()
        # Padding positions count from 0 again after each row's last sample.
        padding = (~real).long().cumsum(-1) - 1
        positions = self._pad([torch.as_tensor(f["position_ids"], dtype=torch.long) for f in features],
                              real.shape[1], 0)
        batch["position_ids"] = torch.where(real, positions, padding)
        return batch
