"""Learner side state: per-forward inputs (`LearnerInputs`) and the generation cache (`WingsCache`).

The learners' keys/values come from layer-0 inputs, so which tokens are keys (image tokens for the
visual learner, text tokens for the textual one) and at which positions is the same for every layer:
it is computed once per forward. Only the projected K/V differ per layer. During generation the
`WingsCache` (a `DynamicCache` for the main attention) also keeps, per learner, the K/V of every
layer and the keys' positions/validity, and per cached main-attention key whether it is an image
token (the segment router's input). Image K/V are stored once, when the image tokens arrive; text
K/V grow by one key per generated token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache

LEARNER_KINDS = ("visual", "textual")


def select_keys(selected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pack the selected tokens of each row to the front, in order.

    selected: [B, T] bool. Returns index [B, N] (into T) and valid [B, N] bool, N = max count per row.
    """
    counts = selected.sum(dim=1)
    n = int(counts.max()) if selected.numel() else 0
    # A stable sort of "not selected" puts selected tokens first, keeping their order.
    index = torch.argsort((~selected).to(torch.int8), dim=1, stable=True)[:, :n]
    valid = torch.arange(n, device=selected.device).unsqueeze(0) < counts.unsqueeze(1)
    return index, valid


def gather_tokens(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x [B, T, ...], index [B, N] -> [B, N, ...]."""
    shape = (*index.shape, *x.shape[2:])
    flat = index.reshape(*index.shape, *([1] * (x.dim() - 2))).expand(shape)
    return torch.gather(x, 1, flat)


@dataclass
class LearnerKeys:
    """Which tokens of the current chunk are one learner's new keys, and what every query may see.

    index: [B, n] positions in the chunk of the new keys; visible: [B, T, N] bool over all keys
    (cached + new), True where key position <= query position and the key is real (not padding).
    """

    index: torch.Tensor
    visible: torch.Tensor


@dataclass
class LearnerInputs:
    """What every wrapped decoder layer needs for its learners in one forward pass.

    source: [B, T, d] layer-0 inputs of the chunk (text embeddings and projected image features).
    keys: per learner kind ("visual", "textual"), its `LearnerKeys`.
    key_is_image: [B, S] float, 1.0 where a main-attention key (cached + chunk) is an image token.
    mode: "routed" or "visual_only" (stage 1).
    cache: the `WingsCache` to read/extend, or None.
    """

    source: torch.Tensor
    keys: dict[str, LearnerKeys]
    key_is_image: torch.Tensor
    mode: str
    cache: WingsCache | None = None


class WingsCache(DynamicCache):
    """A `DynamicCache` (main attention) that also holds the WINGS learners' keys and values."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.learner_kv: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]] = {}
        # Per learner kind: key positions [B, N] (long) and validity [B, N] (bool), shared by all layers.
        self.learner_key_meta: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.key_is_image: torch.Tensor | None = None

    def append_key_meta(
        self, kind: str, positions: torch.Tensor, valid: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append a chunk's key positions/validity [B, n] for `kind`; return all [B, N]."""
        if kind in self.learner_key_meta:
            old_pos, old_valid = self.learner_key_meta[kind]
            positions = torch.cat([old_pos, positions], dim=1)
            valid = torch.cat([old_valid, valid], dim=1)
        self.learner_key_meta[kind] = (positions, valid)
        return positions, valid

    def append_key_is_image(self, flags: torch.Tensor) -> torch.Tensor:
        """Append a chunk's image flags [B, T]; return the flags of every cached key [B, S]."""
        if self.key_is_image is not None:
            flags = torch.cat([self.key_is_image, flags], dim=1)
        self.key_is_image = flags
        return flags

    def update_learner(
        self, kind: str, layer_idx: int, keys: torch.Tensor, values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append new learner K/V [B, H, n, d_h] of one layer; return all cached [B, H, N, d_h]."""
        slot = (kind, layer_idx)
        if slot in self.learner_kv:
            old_k, old_v = self.learner_kv[slot]
            keys, values = torch.cat([old_k, keys], dim=2), torch.cat([old_v, values], dim=2)
        self.learner_kv[slot] = (keys, values)
        return keys, values

    def _map_batch(self, fn) -> None:
        self.learner_kv = {slot: (fn(k), fn(v)) for slot, (k, v) in self.learner_kv.items()}
        self.learner_key_meta = {kind: (fn(p), fn(m)) for kind, (p, m) in self.learner_key_meta.items()}
        if self.key_is_image is not None:
            self.key_is_image = fn(self.key_is_image)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        super().reorder_cache(beam_idx)
        self._map_batch(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        super().batch_repeat_interleave(repeats)
        self._map_batch(lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        super().batch_select_indices(indices)
        self._map_batch(lambda t: t[indices])

    def crop(self, max_length: int) -> None:
        raise NotImplementedError(
            "WingsCache cannot be cropped (assisted/speculative decoding is not supported); "
            "use greedy, sampling or beam search."
        )

    def reset(self) -> None:
        super().reset()
        self.learner_kv, self.learner_key_meta, self.key_is_image = {}, {}, None

