"""`PreparedDataset` (prepared rows -> token ids, labels, pixel values), `LlavaDataset` (the same from
records, tokenising on access) and `LlavaCollator` (padding + image batching).

Batches follow the HF LLaVA contract of `WingsForConditionalGeneration.forward`: `pixel_values` hold
every image of the batch, in sample order and, within a sample, in `<image>` marker order, which is
the order their image tokens appear in the flattened `input_ids`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from ..processing import WingsProcessor
from .conversation import IGNORE_INDEX, tokenize_conversation
from .images import ImageMode, ImageTransform, fed_image_sizes, load_at_sizes
from .llava import LlavaRecord, SampleTooLongError
from .prepared import labels_from_spans

logger = logging.getLogger(__name__)


class PreparedDataset(Dataset):
    """Prepared rows (`wings.data.prepared`) as training samples: the tokens come from the cache, so an
    item only decodes and transforms its images (in the data-loader workers when there are any).

    Args:
        rows: good prepared rows (`PreparedSource.good()`, or a mixture of several).
        processor: its image processor transforms the images.
        image_mode: "pad" (LLaVA-1.5) or "resize"; see `ImageTransform`.

    Each item: input_ids [T] (long), labels [T] (long), pixel_values [n_images, 3, H, W] or None (other image
    layouts: what `WingsProcessor.prepare_images` gives).
    """

    def __init__(self, rows, processor: WingsProcessor, image_mode: ImageMode = "pad"):
        self.rows = rows.select_columns(["input_ids", "label_spans", "images", "image_sizes", "length", "n_images"])
        self.processor = processor
        self.transform = ImageTransform(processor, image_mode)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.rows[index]
        input_ids = np.asarray(row["input_ids"], dtype=np.int64)
        images = row["images"]
        item = {
            "input_ids": torch.from_numpy(input_ids),
            "labels": torch.from_numpy(labels_from_spans(input_ids, row["label_spans"])),
            "pixel_values": None,
        }
        if images and self.processor.image_layout == "fixed":
            item["pixel_values"] = torch.stack([self.transform(p) for p in images])
        elif images:  # at the sizes the tokens were counted for (their own, or shrunk to the sample's budget)
            sizes = np.asarray(row["image_sizes"]).reshape(-1, 2).tolist()
            item.update(self.processor.prepare_images(load_at_sizes(images, sizes)))
        return item

    @property
    def lengths(self) -> np.ndarray:
        """Token counts [N] (image tokens included), for length-grouped sampling."""
        return self.rows.with_format("numpy")["length"][:]

    @property
    def has_images(self) -> np.ndarray:
        """[N] bool: whether each sample has an image (for modality grouping)."""
        return self.rows.with_format("numpy")["n_images"][:] > 0


class LlavaDataset(Dataset):
    """Validated LLaVA records as training samples.

    Args:
        records: from `load_llava_records`.
        processor: tokenizer, chat template, image processor and `image_seq_length`.
        max_length: longest sequence; see `tokenize_conversation` for what happens beyond it.
        image_mode: "pad" (LLaVA-1.5) or "resize"; see `ImageTransform`.
        drop_too_long: tokenise every record now and drop (with a warning each, and a total) those
            that do not fit `max_length`, instead of raising `SampleTooLongError` during training.
        max_image_tokens: the most image tokens a sample may have (None: no limit). With the "anyres" and
            "native" layouts a sample over it has its images shrunk (aspect ratios kept) until they fit
            (`fit_image_token_budget`: fewer tiles or patches); a sample that cannot fit is too long.

    Each item: input_ids [T] (long), labels [T] (long), pixel_values [n_images, 3, H, W] or None; with the
    "anyres" and "native" layouts, what `WingsProcessor.prepare_images` gives (pixel_values and image_sizes, or
    pixel_values, pixel_attention_mask and spatial_shapes).
    """

    def __init__(
        self,
        records: Sequence[LlavaRecord],
        processor: WingsProcessor,
        max_length: int | None,
        image_mode: ImageMode = "pad",
        drop_too_long: bool = False,
        max_image_tokens: int | None = None,
    ):
        self.processor = processor
        self.max_length = max_length
        self.max_image_tokens = max_image_tokens
        self.transform = ImageTransform(processor, image_mode)
        self.records = list(records)
        if drop_too_long:
            self.records = drop_too_long_records(self.records, processor, max_length, self.image_sizes)

    def __len__(self) -> int:
        return len(self.records)

    def image_sizes(self, record: LlavaRecord) -> list[tuple[int, int]] | None:
        """(height, width) each image of `record` is fed at (`fed_image_sizes`)."""
        return fed_image_sizes(record.images, self.processor, self.max_image_tokens, record.name)

    def tokenize(self, record: LlavaRecord):
        """`tokenize_conversation` of `record` with its images at the sizes they are fed at."""
        return tokenize_conversation(record, self.processor, self.max_length, self.image_sizes(record))

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        sizes = self.image_sizes(record)
        tokens = tokenize_conversation(record, self.processor, self.max_length, sizes)
        item = {
            "input_ids": torch.tensor(tokens["input_ids"], dtype=torch.long),
            "labels": torch.tensor(tokens["labels"], dtype=torch.long),
            "pixel_values": None,
        }
        if record.images and self.processor.image_layout == "fixed":
            item["pixel_values"] = torch.stack([self.transform(p) for p in record.images])
        elif record.images:
            item.update(self.processor.prepare_images(load_at_sizes(record.images, sizes)))
        return item

    @property
    def lengths(self) -> list[int]:
        """Estimated token counts (no tokenisation) for length-grouped sampling."""
        if self.processor.image_layout == "fixed":
            return [r.num_tokens_estimate(self.processor.image_seq_length) for r in self.records]
        lengths = []
        for record in self.records:
            sizes = self.image_sizes(record)
            text = record.num_tokens_estimate(0)
            lengths.append(text + sum(self.processor.image_token_count(size) for size in sizes))
        return lengths


def drop_too_long_records(
    records: Sequence[LlavaRecord], processor: WingsProcessor, max_length: int | None, image_sizes=None,
) -> list[LlavaRecord]:
    """Records that tokenise within `max_length`; each dropped one is logged, then the total.

    `image_sizes(record)` gives the sizes its images are fed at (layouts other than "fixed"; see `LlavaDataset`).
    """
    kept = []
    for record in records:
        try:
            tokenize_conversation(record, processor, max_length, image_sizes(record) if image_sizes else None)
        except SampleTooLongError as err:
            logger.warning("dropping sample: %s", err)
            continue
        kept.append(record)
    if len(kept) < len(records):
        dropped = len(records) - len(kept)
        logger.warning("dropped %d of %d samples longer than max_length %s", dropped, len(records), max_length)
    return kept


# Image inputs of every layout (pixel_values; image_sizes for anyres; the NaFlex mask and grid for native).
IMAGE_INPUT_KEYS = ("pixel_values", "image_sizes", "pixel_attention_mask", "spatial_shapes")


def concat_image_inputs(features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """The image inputs of several samples, in sample order: they are per image (or tile), so concatenated."""
    out = {}
    for key in IMAGE_INPUT_KEYS:
        values = [f[key] for f in features if f.get(key) is not None]
        if values:
            out[key] = torch.cat(values, dim=0)
    return out


class LlavaCollator:
    """Pad a list of `LlavaDataset` items into a batch.

    Args:
        pad_token_id: id written into padded input positions.
        padding_side: "right" (training) or "left".
        pad_to_multiple_of: round the padded length up to a multiple of this (None: no rounding).

    Returns from `__call__`: input_ids [B, T], attention_mask [B, T] (1 = real token), labels [B, T]
    (IGNORE_INDEX on padding) and, when any sample has images, pixel_values [sum n_i, 3, H, W] (other layouts:
    each image input of `WingsProcessor.prepare_images`, concatenated).
    """

    def __init__(
        self,
        pad_token_id: int,
        padding_side: Literal["right", "left"] = "right",
        pad_to_multiple_of: int | None = None,
    ):
        if padding_side not in ("right", "left"):
            raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
        self.pad_token_id = pad_token_id
        self.padding_side = padding_side
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        ids = [torch.as_tensor(f["input_ids"], dtype=torch.long) for f in features]
        labels = [torch.as_tensor(f["labels"], dtype=torch.long) for f in features]
        length = max(len(x) for x in ids)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch = {
            "input_ids": self._pad(ids, length, self.pad_token_id),
            "attention_mask": self._pad([torch.ones_like(x) for x in ids], length, 0),
            "labels": self._pad(labels, length, IGNORE_INDEX),
        }
        batch.update(concat_image_inputs(features))
        return batch

    def _pad(self, rows: list[torch.Tensor], length: int, value: int) -> torch.Tensor:
        out = torch.full((len(rows), length), value, dtype=torch.long)
        for i, row in enumerate(rows):
            if self.padding_side == "right":
                out[i, : len(row)] = row
            else:
                out[i, length - len(row) :] = row
        return out
