"""`ModalityLengthGroupedSampler`: batches of one modality and similar lengths (LLaVA's
`group_by_modality_length`).

Image and text-only samples differ in length by hundreds of image tokens; a batch that mixes them
is mostly padding. The sampler shuffles each modality, cuts it into megabatches of one optimizer
step's samples (per-device batch x processes x accumulation steps), sorts each megabatch by length
(longest first, so an out-of-memory shows at once), and shuffles the order of the megabatches. A
megabatch is consecutive in the order, so every process's batch of a step holds one modality. The
leftover, incomplete megabatches of both modalities come last. The order depends on the seed and
the epoch only, so `--resume` skips to the same place in the same order.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler


def modality_length_order(
    lengths: Sequence[int], has_images: Sequence[bool], megabatch: int, seed: int
) -> list[int]:
    """Sample indices in grouped order (see the module docstring); lengths [N], has_images [N]."""
    lengths = np.asarray(lengths)
    has_images = np.asarray(has_images, dtype=bool)
    if megabatch < 1:
        raise ValueError(f"megabatch must be positive, got {megabatch}")
    rng = np.random.default_rng(seed)
    full, partial = [], []
    for mask in (has_images, ~has_images):
        indices = np.flatnonzero(mask)
        indices = indices[rng.permutation(len(indices))]
        for start in range(0, len(indices), megabatch):
            chunk = indices[start : start + megabatch]
            chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
            (full if len(chunk) == megabatch else partial).append(chunk)
    order = [full[k] for k in rng.permutation(len(full))] + partial
    return np.concatenate(order).tolist() if order else []


class ModalityLengthGroupedSampler(Sampler[int]):
    """Yields indices of a data set in `modality_length_order`, a new order each epoch.

    Args:
        lengths: token count per sample [N].
        has_images: whether each sample has an image [N].
        megabatch: samples per optimizer step, over all processes.
        seed: base seed; epoch e uses seed + e.
    """

    def __init__(self, lengths: Sequence[int], has_images: Sequence[bool], megabatch: int, seed: int = 0):
        self.lengths = np.asarray(lengths)
        self.has_images = np.asarray(has_images, dtype=bool)
        self.megabatch = megabatch
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        return iter(modality_length_order(self.lengths, self.has_images, self.megabatch, self.seed + self.epoch))
