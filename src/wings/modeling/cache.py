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

from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from .lorra import CrossAttentionMask

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
    Derived tensors that every layer needs (the SDPA mask, the keys' RoPE tables) are built on first
    use and shared by all layers of the forward pass.
    """

    index: torch.Tensor
    visible: torch.Tensor
    _mask: CrossAttentionMask | None = field(default=None, init=False, repr=False)
    _rope: tuple | None = field(default=None, init=False, repr=False)
    _features: tuple | None = field(default=None, init=False, repr=False)

    @property
    def mask(self) -> CrossAttentionMask:
        """`visible` prepared for SDPA (built on first use, then shared by all layers)."""
        if self._mask is None:
            self._mask = CrossAttentionMask(self.visible)
        return self._mask

    def features(self, source: torch.Tensor) -> torch.Tensor:
        """The new keys' rows of the chunk's layer-0 inputs source [B, T, d] -> [B, n, d].

        Shared by all layers when no gradient flows to `source`; gathered per layer otherwise, so that
        recomputation under gradient checkpointing rebuilds the path to the projector.
        """
        if torch.is_grad_enabled() and source.requires_grad:
            return gather_tokens(source, self.index)
        if self._features is None or self._features[0] is not source:
            self._features = (source, gather_tokens(source, self.index))
        return self._features[1]

    def rope_tables(self, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The new keys' rows of the chunk's RoPE tables cos, sin [B or 1, T, d_h] -> [B, n, d_h]."""
        if self._rope is None or self._rope[0] is not cos or self._rope[1] is not sin:
            batch = self.index.shape[0]
            tables = tuple(gather_tokens(t.expand(batch, -1, -1), self.index) for t in (cos, sin))
            self._rope = (cos, sin, tables)
        return self._rope[2]


@dataclass
class LearnerInputs:
    """What every wrapped decoder layer needs for its learners in one forward pass.

    source: [B, T, d] layer-0 inputs of the chunk (text embeddings and projected image features).
    keys: per learner kind ("visual", "textual"), its `LearnerKeys`.
    key_is_image: [B, S] float, 1.0 where a main-attention key (cached + chunk) is an image token.
    mode: "routed" or "visual_only" (stage 1).
    cache: the `WingsCache` to read/extend, or None.
    attentions: when the caller asked for attention weights, each wrapped layer stores its main
        attention's weights [B, H, T, S] here under its layer index (eager attention for that call).
    """

    source: torch.Tensor
    keys: dict[str, LearnerKeys]
    key_is_image: torch.Tensor
    mode: str
    cache: WingsCache | None = None
    attentions: dict[int, torch.Tensor] | None = None


class WingsCache(DynamicCache):
    """A `DynamicCache` (main attention) that also holds the WINGS learners' keys and values."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.learner_kv: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]] = {}
        # Preallocated storage behind learner_kv (grown geometrically, so appending one text key per
        # decode step is amortised O(1) instead of copying all cached keys every step).
        self._learner_storage: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]] = {}
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
        if slot not in self.learner_kv:
            self.learner_kv[slot] = (keys, values)
            return keys, values
        old_k, old_v = self.learner_kv[slot]
        new = keys.shape[2]
        if new == 0:  # e.g. the visual learner during text decoding: nothing to copy
            return old_k, old_v
        if torch.is_grad_enabled() and (keys.requires_grad or old_k.requires_grad):
            # Writing into storage that autograd saved for an earlier step would invalidate it.
            keys, values = torch.cat([old_k, keys], dim=2), torch.cat([old_v, values], dim=2)
            self.learner_kv[slot] = (keys, values)
            return keys, values
        length = old_k.shape[2]
        storage = self._learner_storage.get(slot)
        if storage is None or storage[0].data_ptr() != old_k.data_ptr() or storage[0].shape[2] < length + new:
            capacity = max(length + new, length + length // 2 + 64)
            shape = (*old_k.shape[:2], capacity, old_k.shape[3])
            storage = (old_k.new_empty(shape), old_v.new_empty((*shape[:3], old_v.shape[3])))
            storage[0][:, :, :length] = old_k
            storage[1][:, :, :length] = old_v
            self._learner_storage[slot] = storage
        storage[0][:, :, length : length + new] = keys
        storage[1][:, :, length : length + new] = values
        self.learner_kv[slot] = (storage[0][:, :, : length + new], storage[1][:, :, : length + new])
        return self.learner_kv[slot]

    def _map_batch(self, fn) -> None:
        self._learner_storage = {}
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
        self._learner_storage = {}

