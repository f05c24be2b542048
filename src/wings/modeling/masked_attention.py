"""The learners' masked cross-attention: softmax(q k^T * scale + M) v under a per-forward visibility mask.

A learner's keys are in position order, so what the queries of one chunk may see is a staircase; long
chunks attend block by block, each block reading only the keys its queries may see.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Queries are attended in blocks of this many tokens; each block reads only the keys up to the last
# one any of its queries may see (learner keys are in position order, so visibility is a staircase).
QUERY_BLOCK = 256
# Chunks of at most this many queries (decode steps) attend by two batched matmuls and a softmax: fewer
# kernels than the fused attention call for a single query, and no host sync. The learners' decode path
# (`wings.modeling.decode`) and their key projection use the same bound.
SHORT_QUERIES = 8


class PerForward:
    """Tensors derived from per-forward inputs, built on first use and kept as long as this object: the one
    rule for every memo of a forward pass (the plan owns these objects and drops them with the pass)."""

    def __init__(self):
        self._derived: dict[tuple, object] = {}

    def derive(self, key: tuple, build):
        """`build()`, computed once per `key` for the lifetime of this object."""
        if key not in self._derived:
            self._derived[key] = build()
        return self._derived[key]


class CrossAttentionMask(PerForward):
    """A learner's visibility visible [B, T, N] bool, prepared once per forward and shared by every layer.

    Hidden keys get the dtype's most negative finite value (not -inf), so a query that sees no key gets a
    finite, uniform softmax row instead of NaN; `sees_any` [B, T, 1] zeroes such rows' output afterwards.
    Its derived tensors are built on first use and live as long as the mask (one forward pass).
    """

    def __init__(self, visible: torch.Tensor):
        super().__init__()
        self.visible = visible
        self.sees_any = visible.any(-1, keepdim=True)

    def sees_any_flat(self, dtype: torch.dtype) -> torch.Tensor:
        """`sees_any` as [B * T, 1] of `dtype` (what zeroes the rank-r output of rows that see nothing)."""
        return self.derive(("sees", dtype), lambda: self.sees_any.reshape(-1, 1).to(dtype))

    def additive(self, dtype: torch.dtype) -> torch.Tensor:
        """[B, 1, T, N] of `dtype`: 0 where visible, the most negative finite value elsewhere."""
        def build():
            return torch.where(self.visible, 0.0, torch.finfo(dtype).min).to(dtype).unsqueeze(1)

        return self.derive(("additive", dtype), build)

    def batched(self, dtype: torch.dtype, heads: int) -> torch.Tensor:
        """The additive mask repeated over heads, [B * heads, T, N] (what `baddbmm` adds to the scores)."""
        def build():
            batch, length, n_keys = self.visible.shape
            return self.additive(dtype).expand(batch, heads, length, n_keys).reshape(batch * heads, length, n_keys)

        return self.derive(("batched", dtype, heads), build)

    def query_blocks(self) -> list[tuple[int, int, int]]:
        """Spans (start, end, n_keys) of queries that need only keys [0, n_keys).

        A chunk of at most `QUERY_BLOCK` queries is one span over all keys (no host sync). Longer chunks
        read, per block of queries, the keys up to the last one they may see (one host sync); adjacent blocks
        needing the same keys are merged, so a learner whose queries all see every key runs one call.
        """
        return self.derive(("blocks",), self._query_blocks)

    def _query_blocks(self) -> list[tuple[int, int, int]]:
        _, length, n_keys = self.visible.shape
        if n_keys == 0 or length <= QUERY_BLOCK:
            return [(0, length, n_keys)]
        index = torch.arange(1, n_keys + 1, device=self.visible.device, dtype=torch.int32)
        reach = (self.visible * index).amax(-1).amax(0).clamp(min=1)  # [T]: 1 + last key any row's query sees
        pad = -length % QUERY_BLOCK
        per_block = F.pad(reach, (0, pad), value=1).view(-1, QUERY_BLOCK).amax(-1).tolist()
        blocks: list[tuple[int, int, int]] = []
        for i, n in enumerate(per_block):
            start, end = i * QUERY_BLOCK, min((i + 1) * QUERY_BLOCK, length)
            if blocks and blocks[-1][2] == n:
                blocks[-1] = (blocks[-1][0], end, n)
            else:
                blocks.append((start, end, n))
        return blocks


class PairMask(PerForward):
    """Both learners' masks (visual, textual) and what the decode path derives from the pair."""

    def __init__(self, visual: CrossAttentionMask, textual: CrossAttentionMask):
        super().__init__()
        self.visual, self.textual = visual, textual

    def sees_any(self, dtype: torch.dtype) -> torch.Tensor:
        """[B * T, 2] of `dtype`: 1 where a query sees any key of the visual (column 0) / textual (1) learner."""
        def build():
            return torch.cat((self.visual.sees_any, self.textual.sees_any), dim=-1).view(-1, 2).to(dtype)

        return self.derive(("sees", dtype), build)

    def joint(self, dtype: torch.dtype, heads: int) -> torch.Tensor:
        """The additive mask of both learners' queries over their keys side by side, [B * heads or 1, 2T, N_vis +
        N_text]: rows 0..T-1 (visual queries) see only visual keys, rows T..2T-1 only textual ones."""
        def build():
            vis, txt = self.visual.visible, self.textual.visible  # [B, T, N_vis], [B, T, N_text]
            visible = torch.cat((F.pad(vis, (0, txt.shape[2])), F.pad(txt, (vis.shape[2], 0))), dim=1)  # [B, 2T, N]
            additive = torch.where(visible, 0.0, torch.finfo(dtype).min)
            additive = additive if additive.dtype == dtype else additive.to(dtype)
            batch, rows, n_keys = additive.shape
            if batch > 1:
                additive = additive.unsqueeze(1).expand(batch, heads, rows, n_keys).reshape(batch * heads, rows, n_keys)
            return additive

        return self.derive(("joint", dtype, heads), build)


def short_attention(
    q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, scale: float
) -> torch.Tensor:
    """softmax(q k^T * scale + mask) v by two batched matmuls over [B * H, ...] views of the cache (no copy: the
    cache's head and batch strides merge). q [B * H, T, d_h]; keys/values [B, H, N, d_h]; mask [B * H or 1, T, N]
    additive. Returns [B * H, T, d_h]."""
    batch_heads, _, head_dim = q.shape
    n_keys = keys.shape[2]
    scores = torch.baddbmm(mask, q, keys.reshape(batch_heads, n_keys, head_dim).transpose(1, 2), alpha=scale)
    values = values if values.dtype == q.dtype else values.to(q.dtype)
    return torch.bmm(torch.softmax(scores, dim=-1), values.reshape(batch_heads, n_keys, head_dim))


def cross_attention(
    q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: CrossAttentionMask, scale: float
) -> torch.Tensor:
    """softmax(q k^T * scale + mask) v for q [B, H, T, d_h], keys/values [B, H, N, d_h]; returns [B * T, H * d_h].

    Rows that see no key come out finite (not zeroed here; see `CrossAttentionMask`).
    """
    batch, heads, length, head_dim = q.shape
    if length <= SHORT_QUERIES:
        flat_q = q.reshape(batch * heads, length, head_dim)
        out = short_attention(flat_q, keys, values, mask.batched(q.dtype, heads), scale)
        out = out.view(batch, heads, length, head_dim)
    else:
        values = values.to(q.dtype)
        additive = mask.additive(q.dtype)
        # Each block of queries reads only the keys its queries may see (keys are in position order).
        blocks = [
            F.scaled_dot_product_attention(
                q[:, :, start:end], keys[:, :, :n], values[:, :, :n], attn_mask=additive[:, :, start:end, :n],
                scale=scale,
            )
            for start, end, n in mask.query_blocks()
        ]
        out = blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=2)
    # [B, H, T, d_h] -> [B * T, H * d_h] in one copy.
    return out.transpose(1, 2).reshape(batch * length, heads * head_dim)
