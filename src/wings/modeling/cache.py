"""The generation caches (`WingsCache`, `WingsStaticCache`): the main attention's cache plus the learners' state.

During generation the cache (a `DynamicCache` or `StaticCache` for the main attention) also keeps, per
learner, the K/V of every layer and the keys' positions/validity, and per cached main-attention key whether
it is an image token (the segment router's input). Image K/V are stored once, when the image tokens arrive;
text K/V grow by one key per generated token. What one forward pass derives from its inputs is in
`wings.modeling.plan`.

A chunk without image features (every decode step) holds no image tokens, so its textual keys are simply
its tokens, in order: nothing is selected, counted or synchronised with the host, which is what lets a
decode step run under `torch.compile(fullgraph=True)` and CUDA graphs with the static cache.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache, StaticCache


class LearnerCacheMixin:
    """The learner side state of a WINGS cache; `WingsCache` and `WingsStaticCache` store it differently.

    learner_kv: (kind, layer_idx) -> cached K, V [B, H, N, d_h]. learner_key_meta: kind -> key positions
    [B, N] (long) and validity [B, N] (bool), shared by all layers. key_is_image: [B, S] image flags of the
    main attention's cached keys.
    """

    def _init_learner_state(self) -> None:
        self.learner_kv: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]] = {}
        self.learner_key_meta: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.key_is_image: torch.Tensor | None = None
        # layer_idx -> (K, V [B, H, capacity, d_h] holding the visual keys then the textual ones, visual count),
        # while both learners' cached K/V are views of them: both learners attend in one call at decode. Any write
        # that moves either learner's K/V elsewhere drops the entry.
        self._joint: dict[int, tuple] = {}

    def _reset_layout(self) -> None:
        """Drop what the subclass stores beside `_init_learner_state` (its storage layout)."""

    def reset(self) -> None:
        super().reset()
        self._init_learner_state()
        self._reset_layout()

    def crop(self, max_length: int) -> None:
        raise NotImplementedError(
            f"{type(self).__name__} cannot be cropped (assisted/speculative decoding is not supported); "
            "use greedy, sampling or beam search."
        )

    def joint_learner_kv(self, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor, int] | None:
        """Both learners' K/V of a layer as one [B, H, N_vis + N_text, d_h] pair of views (visual keys first) and
        N_vis, where the cache stores them side by side; else None."""
        joint = self._joint.get(layer_idx)
        if joint is None:
            return None
        keys, values, n_visual = joint
        n_keys = n_visual + self.learner_kv[("textual", layer_idx)][0].shape[2]
        return keys[:, :, :n_keys], values[:, :, :n_keys], n_visual

    def cached_learner_kv(self, kind: str, layer_idx: int, learner, like: torch.Tensor):
        """K/V of `kind` in layer `layer_idx` when the chunk adds none; [B, H, 0, d_h] if there are none."""
        if (kind, layer_idx) in self.learner_kv:
            return self.learner_kv[(kind, layer_idx)]
        none = like.new_zeros(like.shape[0], learner.num_heads, 0, learner.head_dim)
        return none, none

    def key_meta(self, kind: str, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cached key positions/validity of `kind`, or empty [B, 0] ones."""
        if kind in self.learner_key_meta:
            return self.learner_key_meta[kind]
        batch = like.shape[0]
        return (torch.zeros(batch, 0, dtype=torch.long, device=like.device),
                torch.zeros(batch, 0, dtype=torch.bool, device=like.device))


class WingsCache(LearnerCacheMixin, DynamicCache):
    """A `DynamicCache` (main attention) that also holds the WINGS learners' keys and values."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_learner_state()
        self._reset_layout()

    def append_key_meta(
        self, kind: str, positions: torch.Tensor, valid: torch.Tensor, chunk_length: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append a chunk's key positions/validity [B, n] for `kind`; return all [B, N]."""
        if kind in self.learner_key_meta:
            if positions.shape[1] == 0:
                return self.learner_key_meta[kind]
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
            self._joint.pop(layer_idx, None)
            self.learner_kv[slot] = (keys, values)
            return keys, values
        old_k, old_v = self.learner_kv[slot]
        new = keys.shape[2]
        if new == 0:  # e.g. the visual learner during text decoding: nothing to copy
            return old_k, old_v
        if kind == "visual":
            self._joint.pop(layer_idx, None)
        if torch.is_grad_enabled() and (keys.requires_grad or old_k.requires_grad):
            # Writing into storage that autograd saved for an earlier step would invalidate it.
            self._joint.pop(layer_idx, None)
            keys, values = torch.cat([old_k, keys], dim=2), torch.cat([old_v, values], dim=2)
            self.learner_kv[slot] = (keys, values)
            return keys, values
        length = old_k.shape[2]
        storage = self._learner_storage.get(slot)
        if storage is None or storage[0].data_ptr() != old_k.data_ptr() or storage[0].shape[2] < length + new:
            capacity = max(length + new, length + length // 2 + 64)
            visual = self.learner_kv.get(("visual", layer_idx)) if kind == "textual" else None
            if visual is not None and (visual[0].requires_grad or visual[0].dtype != old_k.dtype):
                visual = None
            n_visual = 0 if visual is None else visual[0].shape[2]
            shape = (*old_k.shape[:2], n_visual + capacity, old_k.shape[3])
            joint = (old_k.new_empty(shape), old_v.new_empty((*shape[:3], old_v.shape[3])))
            storage = (joint[0][:, :, n_visual:], joint[1][:, :, n_visual:])
            storage[0][:, :, :length] = old_k
            storage[1][:, :, :length] = old_v
            self._learner_storage[slot] = storage
            self._joint.pop(layer_idx, None)
            if visual is not None:
                # The visual keys move in front of the textual ones: one attention call serves both learners.
                joint[0][:, :, :n_visual] = visual[0]
                joint[1][:, :, :n_visual] = visual[1]
                visual_kv = (joint[0][:, :, :n_visual], joint[1][:, :, :n_visual])
                self.learner_kv[("visual", layer_idx)] = visual_kv
                self._joint[layer_idx] = (*joint, n_visual)
        storage[0][:, :, length : length + new] = keys
        storage[1][:, :, length : length + new] = values
        self.learner_kv[slot] = (storage[0][:, :, : length + new], storage[1][:, :, : length + new])
        return self.learner_kv[slot]

    def _map_batch(self, fn) -> None:
        self._learner_storage = {}
        self._joint = {}
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

    def _reset_layout(self) -> None:
        # Preallocated storage behind learner_kv (grown geometrically, so appending one text key per
        # decode step is amortised O(1) instead of copying all cached keys every step).
        self._learner_storage: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]] = {}


class WingsStaticCache(LearnerCacheMixin, StaticCache):
    """A `StaticCache` (main attention preallocated to `max_cache_len`) with preallocated learner state.

    Storage is allocated by the first chunk that writes it (the prefill in `generate`) and written in place
    afterwards at offsets held in tensors, so a decode step has fixed shapes and no host syncs:

    - visual learner K/V [B, H, N_img, d_h] per layer, exactly the image keys of that chunk (a later chunk
      with new images reallocates them, outside any compiled step);
    - textual learner K/V [B, H, N_text + room, d_h] per layer, where room = max_cache_len minus the tokens
      seen so far: every later token is text, so the textual keys never outgrow it;
    - key positions/validity per kind (unwritten columns are invalid, so attention never sees them) and the
      image flags of the main attention's keys [B, max_cache_len].

    `generate(cache_implementation="static")` builds this cache for WINGS models.
    """

    def __init__(self, config, max_cache_len: int, *args, **kwargs):
        super().__init__(config, max_cache_len, *args, **kwargs)
        # The full length generate allocated (a sliding layer's own cache is only its window). Kept under
        # our own name: older transformers make StaticCache.max_cache_len a read-only property.
        self.total_cache_len = max_cache_len
        self._init_learner_state()
        self._reset_layout()

    def _reset_layout(self) -> None:
        # Per kind: the number of key columns written (a tensor, so compiled steps do not specialise on it)
        # and the columns the current chunk writes into, shared by every layer of the forward.
        self._key_length: dict[str, torch.Tensor] = {}
        self._write_index: dict[str, torch.Tensor] = {}
        self._capacity: dict[str, int] = {}

    def _seen_tokens(self) -> int:
        past = self.get_seq_length()
        return int(past)

    def append_key_meta(
        self, kind: str, positions: torch.Tensor, valid: torch.Tensor, chunk_length: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write a chunk's key positions/validity [B, n] for `kind` in place; return all columns [B, capacity]."""
        new = positions.shape[1]
        if new == 0:
            return self.key_meta(kind, positions)
        if kind not in self.learner_key_meta:
            room = self.total_cache_len - self._seen_tokens() - chunk_length if kind == "textual" else 0
            self._allocate_meta(kind, positions, new + max(room, 0))
        elif kind == "visual":
            # Images after the first chunk: grow the visual columns (eager only; decode steps carry no images).
            self._grow(kind, int(self._key_length[kind]) + new)
        index = self._key_length[kind] + torch.arange(new, device=positions.device)
        self._key_length[kind].add_(new)
        self._write_index[kind] = index
        all_pos, all_valid = self.learner_key_meta[kind]
        all_pos.index_copy_(1, index, positions)
        all_valid.index_copy_(1, index, valid)
        return all_pos, all_valid

    def _allocate_meta(self, kind: str, like: torch.Tensor, capacity: int) -> None:
        batch, device = like.shape[0], like.device
        self.learner_key_meta[kind] = (
            torch.zeros(batch, capacity, dtype=torch.long, device=device),
            torch.zeros(batch, capacity, dtype=torch.bool, device=device),
        )
        self._key_length[kind] = torch.zeros((), dtype=torch.long, device=device)
        self._capacity[kind] = capacity
        if not torch.compiler.is_compiling():
            for t in (*self.learner_key_meta[kind], self._key_length[kind]):
                torch._dynamo.mark_static_address(t)

    def _grow(self, kind: str, capacity: int) -> None:
        def widen(t: torch.Tensor, dim: int) -> torch.Tensor:
            shape = list(t.shape)
            shape[dim] = capacity - shape[dim]
            return torch.cat([t, t.new_zeros(shape)], dim=dim)

        self.learner_key_meta[kind] = tuple(widen(t, 1) for t in self.learner_key_meta[kind])
        self._joint = {}  # the widened visual K/V leave the joint buffers
        for slot in [s for s in self.learner_kv if s[0] == kind]:
            self.learner_kv[slot] = tuple(widen(t, 2) for t in self.learner_kv[slot])
        self._capacity[kind] = capacity

    def append_key_is_image(self, flags: torch.Tensor) -> torch.Tensor:
        """Write a chunk's image flags [B, T] at its cache slots; return the flags of all slots [B, max_cache_len]."""
        past = self.get_seq_length()
        if self.key_is_image is None:
            self.key_is_image = flags.new_zeros(flags.shape[0], self.total_cache_len)
            if not torch.compiler.is_compiling():
                torch._dynamo.mark_static_address(self.key_is_image)
        index = torch.arange(flags.shape[1], device=flags.device) + past
        self.key_is_image.index_copy_(1, index, flags)
        return self.key_is_image

    def update_learner(
        self, kind: str, layer_idx: int, keys: torch.Tensor, values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write new learner K/V [B, H, n, d_h] of one layer in place; return all columns [B, H, capacity, d_h]."""
        slot = (kind, layer_idx)
        if slot not in self.learner_kv:
            n_visual = self._capacity[kind]
            joint = kind == "visual" and "textual" in self._capacity and ("textual", layer_idx) not in self.learner_kv
            capacity = n_visual + (self._capacity["textual"] if joint else 0)
            shape = (*keys.shape[:2], capacity, keys.shape[3])
            buffers = (keys.new_zeros(shape), values.new_zeros((*shape[:3], values.shape[3])))
            if not torch.compiler.is_compiling():
                for t in buffers:
                    torch._dynamo.mark_static_address(t)
            self.learner_kv[slot] = buffers
            if joint:
                # The textual keys follow the visual ones in one buffer: one attention call serves both learners.
                visual_kv = (buffers[0][:, :, :n_visual], buffers[1][:, :, :n_visual])
                text_kv = (buffers[0][:, :, n_visual:], buffers[1][:, :, n_visual:])
                self.learner_kv[slot], self.learner_kv[("textual", layer_idx)] = visual_kv, text_kv
                self._joint[layer_idx] = (*buffers, n_visual)
        k, v = self.learner_kv[slot]
        index = self._write_index[kind]
        k.index_copy_(2, index, keys.to(k.dtype))
        v.index_copy_(2, index, values.to(v.dtype))
        return k, v

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        super().reorder_cache(beam_idx)
        # In place: compiled steps hold these tensors' addresses. Views of one buffer are reordered once, as a whole.
        tensors = {}
        for t in (*(t for kv in self.learner_kv.values() for t in kv), *(t for m in self.learner_key_meta.values() for t in m)):
            base = t if t._base is None else t._base
            tensors[id(base)] = base
        for t in tensors.values():
            t.copy_(t.index_select(0, beam_idx.to(t.device)))
        if self.key_is_image is not None:
            self.key_is_image.copy_(self.key_is_image.index_select(0, beam_idx.to(self.key_is_image.device)))


