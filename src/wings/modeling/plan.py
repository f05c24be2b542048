"""`ForwardPlan`: everything the wrapped decoder layers derive from one forward pass's inputs, in one place.

The learners' keys come from layer-0 inputs, so which tokens are keys (image tokens for the visual learner,
text tokens for the textual one), at which positions, and what each query may see is the same for every
layer: the model builds one plan per forward and passes it to every layer (the `learner_inputs` keyword).
Only the projected K/V differ per layer.

One lifetime and one invalidation rule: every derived tensor (attention masks, prepared RoPE tables, gathered
key features) is built on first use by some layer, kept by the plan, shared by the later layers, and dropped
with the plan when the forward ends. Nothing is keyed by object identity or tensor version: a layer names the
RoPE tables it receives by its `rope_key` (the layer type and whose rotation it is), fixed when it is built.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .masked_attention import CrossAttentionMask, PairMask, PerForward
from .rope import rope_tables, scaled_tables

LEARNER_KINDS = ("visual", "textual")


def select_keys(selected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pack the selected tokens of each row to the front, in order (one host sync: the largest count).

    selected: [B, T] bool. Returns index [B, N] (into T) and valid [B, N] bool, N = max count per row.
    """
    counts = selected.sum(dim=1)
    n = int(counts.max()) if selected.numel() else 0
    # A stable sort of "not selected" puts selected tokens first, keeping their order.
    index = torch.argsort((~selected).to(torch.int8), dim=1, stable=True)[:, :n]
    valid = torch.arange(n, device=selected.device).unsqueeze(0) < counts.unsqueeze(1)
    return index, valid


def same_sample(segments: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
    """[B, T, N] bool: whether key n lies in the same packed sample as query t.

    segments: [B, T] the sample each token of a packed row belongs to (transformers'
    `find_packed_sequence_indices`); index: [B, N] the keys' positions in the row, or None when the keys are
    all T tokens in order.
    """
    keys = segments if index is None else torch.gather(segments, 1, index)
    return keys.unsqueeze(1) == segments.unsqueeze(2)


def gather_tokens(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x [B, T, ...], index [B, N] -> [B, N, ...]."""
    shape = (*index.shape, *x.shape[2:])
    flat = index.reshape(*index.shape, *([1] * (x.dim() - 2))).expand(shape)
    return torch.gather(x, 1, flat)


@dataclass
class LearnerKeys:
    """Which tokens of the current chunk are one learner's new keys, and what every query may see.

    index: [B, n] positions in the chunk of the new keys, or None when the new keys are all T tokens of
    the chunk in order (a chunk without images, for the textual learner), or when the chunk adds none and the
    keys are all cached (n_new = 0). visible: [B, T, N] bool over all keys (cached + new), True where key
    position <= query position, the key is real (not padding) and, in a packed row, of the query's own sample.
    """

    index: torch.Tensor | None
    visible: torch.Tensor
    n_new: int


@dataclass
class ForwardPlan(PerForward):
    """What every wrapped decoder layer needs for its learners in one forward pass.

    source: [B, T, d] layer-0 inputs of the chunk (text embeddings and projected image features).
    position_ids: [B or 1, T] the chunk's positions (what the learners' own RoPE tables are computed at).
    keys: per learner kind ("visual", "textual"), its `LearnerKeys`.
    key_is_image: [B, S] float, 1.0 where a main-attention key (cached + chunk) is an image token.
    mode: "routed" or "visual_only" (stage 1).
    cache: the `WingsCache` / `WingsStaticCache` to read/extend, or None.
    attentions: when the caller asked for attention weights, each wrapped layer stores its main
        attention's weights [B, H, T, S] here under its layer index (eager attention for that call).
    key_end: with a `WingsStaticCache`, the number of tokens seen after this chunk (past + T), where the keys a
        sliding-window layer returns end (see `attention.key_flags`); None otherwise.
    """

    source: torch.Tensor
    position_ids: torch.Tensor
    keys: dict[str, LearnerKeys]
    key_is_image: torch.Tensor
    mode: str
    cache: object | None = None
    attentions: dict[int, torch.Tensor] | None = None
    key_end: int | torch.Tensor | None = None
    _derived: dict = field(default_factory=dict, init=False, repr=False)

    @property
    def routed(self) -> bool:
        return self.mode == "routed"

    def mask(self, kind: str) -> CrossAttentionMask:
        """The `kind` learner's visibility prepared for attention."""
        return self.derive(("mask", kind), lambda: CrossAttentionMask(self.keys[kind].visible))

    def pair_mask(self) -> PairMask:
        return self.derive(("pair_mask",), lambda: PairMask(self.mask("visual"), self.mask("textual")))

    def query_rope(self, rope_key: tuple, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The chunk's RoPE tables cos, sin [B or 1, T, d_h] prepared by `rope.rope_tables` (for the learners'
        queries, and the main attention's where the learners' heads have the LLM's width)."""
        return self.derive(("query_rope", rope_key), lambda: rope_tables(cos, sin))

    def scaled_query_rope(self, rope_key: tuple, cos: torch.Tensor, sin: torch.Tensor, scale: float):
        """`query_rope` with the attention scale folded into a one-token chunk's rotation (`rope.scaled_tables`);
        None for longer chunks."""
        tables = self.query_rope(rope_key, cos, sin)
        return self.derive(("scaled_rope", rope_key, scale), lambda: scaled_tables(tables, scale))

    def key_rope(self, kind: str, rope_key: tuple, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The new keys' RoPE tables: the chunk's, gathered at the keys' tokens."""
        index = self.keys[kind].index
        if index is None:  # the keys are the chunk's tokens, in order: the queries' tables
            return self.query_rope(rope_key, cos, sin)

        def build():
            batch = index.shape[0]
            return rope_tables(*(gather_tokens(t.expand(batch, -1, -1), index) for t in (cos, sin)))

        return self.derive(("key_rope", kind, rope_key), build)

    def features(self, kind: str) -> torch.Tensor:
        """The new keys' rows of the chunk's layer-0 inputs [B, n, d].

        Shared by all layers when no gradient flows to `source`; gathered per layer otherwise, so that
        recomputation under gradient checkpointing rebuilds the path to the projector.
        """
        index = self.keys[kind].index
        if index is None:
            return self.source
        if torch.is_grad_enabled() and self.source.requires_grad:
            return gather_tokens(self.source, index)
        return self.derive(("features", kind), lambda: gather_tokens(self.source, index))

    def keys_values(self, kind: str, layer_idx: int, learner, rope_key: tuple, cos: torch.Tensor, sin: torch.Tensor):
        """One layer's K/V [B, H, N, d_h] for `kind`: the chunk's new keys projected (and cached), after the
        cached ones. Decode steps project only the new text token; image K/V come from the cache."""
        keys = self.keys[kind]
        if keys.n_new or self.cache is None:
            k, v = learner.project_keys(self.features(kind), self.key_rope(kind, rope_key, cos, sin))
            if self.cache is not None:
                k, v = self.cache.update_learner(kind, layer_idx, k, v)
            return k, v
        return self.cache.cached_learner_kv(kind, layer_idx, learner, self.source)
