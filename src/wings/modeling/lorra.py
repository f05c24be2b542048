"""LoRRA: Low-Rank Residual Attention, the block behind each WINGS learner.

    Q = h + B_q A_q h      K = f + B_k A_k f      V = f + B_v A_v f
    Q, K <- RoPE at each token's original position
    out  = B_o A_o [ softmax(Q K^T / sqrt(d_h) + M) V ]

A_* (d -> r) start truncated-normal, B_* (r -> d) start at zero, so a fresh learner outputs exactly
zero and a fresh WINGS model computes what its LLM computes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, pad: int = 0) -> torch.Tensor:
    """RoPE in the Llama (rotate-half) convention. x: [B, H, N, d_h]; cos, sin: [B, N, d_h].

    x * cos + rotate_half(x) * sin, computed as x * cos followed by two in-place multiply-adds on its
    halves (one full-size temporary instead of five). `pad` > 0 returns [B, H, N, d_h + pad] with zero
    channels at the end (what the main attention feeds the kernel when it widens the values).
    """
    half = x.shape[-1] // 2
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    out = x * cos
    if pad:
        out = F.pad(out, (0, pad))
    out[..., :half].addcmul_(x[..., half:], sin[..., :half], value=-1)
    out[..., half : 2 * half].addcmul_(x[..., :half], sin[..., half:])
    return out


def rope_tables(cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE tables cos, sin [B or 1, T, d_h] -> ([B or 1, 1, T, d_h] cos, the same sin with rotate-half's sign
    folded in), for `rotate`. Prepared once per forward and shared by every layer's learners."""
    half = cos.shape[-1] // 2
    return cos.unsqueeze(1), torch.cat((-sin[..., :half], sin[..., half:]), dim=-1).unsqueeze(1)


def rotate(x: torch.Tensor, tables: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """RoPE of x [B, H, T, d_h] with tables from `rope_tables`: x * cos + swap_halves(x) * signed_sin.

    Equal to `apply_rope`; three kernels (the half swap is one flip of a [..., 2, d_h / 2] view).
    """
    cos, signed_sin = tables
    swapped = x.unflatten(-1, (2, -1)).flip(-2).flatten(-2)
    return torch.addcmul(x * cos, swapped, signed_sin)


def low_rank_residual(x: torch.Tensor, down: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """x + (x A^T) B^T for x [..., d], with the residual add fused into the up-projection (one addmm).

    `down` may be x's down-projection already computed (x A^T, [..., r]); `up` is B [d, r].
    """
    flat = x.reshape(-1, x.shape[-1])
    return torch.addmm(flat, down.reshape(-1, down.shape[-1]), up.t()).view(x.shape)


# Queries are attended in blocks of this many tokens; each block reads only the keys up to the last
# one any of its queries may see (learner keys are in position order, so visibility is a staircase).
QUERY_BLOCK = 256
# Chunks of at most this many queries (decode steps) attend by two batched matmuls and a softmax: fewer
# kernels than the fused attention call for a single query, and no host sync.
SHORT_QUERIES = 8


class CrossAttentionMask:
    """A learner's visibility visible [B, T, N] bool, prepared once and shared by every layer.

    Hidden keys get the dtype's most negative finite value (not -inf), so a query that sees no key gets a
    finite, uniform softmax row instead of NaN; `sees_any` [B, T, 1] zeroes such rows' output afterwards.
    """

    def __init__(self, visible: torch.Tensor):
        self.visible = visible
        self.sees_any = visible.any(-1, keepdim=True)
        self._additive: dict[torch.dtype, torch.Tensor] = {}
        self._batched: dict[tuple, torch.Tensor] = {}
        self._sees: dict[torch.dtype, torch.Tensor] = {}
        self._blocks: list[tuple[int, int, int]] | None = None

    def sees_any_flat(self, dtype: torch.dtype) -> torch.Tensor:
        """`sees_any` as [B * T, 1] of `dtype` (what zeroes the rank-r output of rows that see nothing)."""
        if dtype not in self._sees:
            self._sees[dtype] = self.sees_any.reshape(-1, 1).to(dtype)
        return self._sees[dtype]

    def additive(self, dtype: torch.dtype) -> torch.Tensor:
        """[B, 1, T, N] of `dtype`: 0 where visible, the most negative finite value elsewhere."""
        if dtype not in self._additive:
            hidden = torch.finfo(dtype).min
            self._additive[dtype] = torch.where(self.visible, 0.0, hidden).to(dtype).unsqueeze(1)
        return self._additive[dtype]

    def batched(self, dtype: torch.dtype, heads: int) -> torch.Tensor:
        """The additive mask repeated over heads, [B * heads, T, N] (what `baddbmm` adds to the scores)."""
        key = (dtype, heads)
        if key not in self._batched:
            batch, length, n_keys = self.visible.shape
            mask = self.additive(dtype).expand(batch, heads, length, n_keys)
            self._batched[key] = mask.reshape(batch * heads, length, n_keys)
        return self._batched[key]

    def query_blocks(self) -> list[tuple[int, int, int]]:
        """Spans (start, end, n_keys) of queries that need only keys [0, n_keys); built once.

        A chunk of at most `QUERY_BLOCK` queries is one span over all keys (no host sync). Longer chunks
        read, per block of queries, the keys up to the last one they may see (one host sync); adjacent blocks
        needing the same keys are merged, so a learner whose queries all see every key runs one call.
        """
        if self._blocks is None:
            _, length, n_keys = self.visible.shape
            if n_keys == 0 or length <= QUERY_BLOCK:
                self._blocks = [(0, length, n_keys)]
                return self._blocks
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
            self._blocks = blocks
        return self._blocks


def cross_attention(
    q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: CrossAttentionMask, scale: float
) -> torch.Tensor:
    """softmax(q k^T * scale + mask) v for q [B, H, T, d_h], keys/values [B, H, N, d_h]; returns [B * T, H * d_h].

    Rows that see no key come out finite (not zeroed here; see `CrossAttentionMask`).
    """
    batch, heads, length, head_dim = q.shape
    n_keys = keys.shape[2]
    values = values.to(q.dtype)
    if length <= SHORT_QUERIES:
        # [B * H, ...] views of the cache (no copy: the cache's head and batch strides merge).
        scores = torch.baddbmm(
            mask.batched(q.dtype, heads),
            q.reshape(batch * heads, length, head_dim),
            keys.reshape(batch * heads, n_keys, head_dim).transpose(1, 2),
            alpha=scale,
        )
        out = torch.bmm(torch.softmax(scores, dim=-1), values.reshape(batch * heads, n_keys, head_dim))
        out = out.view(batch, heads, length, head_dim)
    else:
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


def mix_learners(
    visual: LoRRA,
    textual: LoRRA,
    hidden: torch.Tensor,
    rope: tuple[torch.Tensor, torch.Tensor],
    kv: tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    masks: tuple[CrossAttentionMask, CrossAttentionMask],
    weights: torch.Tensor,
) -> torch.Tensor:
    """hidden + w_v * visual(hidden) + w_t * textual(hidden), the routed learners of one layer.

    hidden [B, T, d]; rope: the queries' tables from `rope_tables`; kv: each learner's K, V [B, H, N, d_h];
    masks: each learner's `CrossAttentionMask`; weights: the router's [B, T, 2] (w_v, w_t). Both learners'
    queries are rotated by one RoPE call; each learner still runs as its module (hooks see its output), and
    the mixing adds the products in place (no full-size temporaries). Returns [B, T, d].
    """
    batch, length, width = hidden.shape
    heads, head_dim = visual.num_heads, visual.head_dim
    flat = hidden.reshape(batch * length, width)
    q = torch.cat([visual.queries(flat), textual.queries(flat)], dim=-1)  # [B * T, 2 d]
    q = rotate(q.view(batch, length, 2 * heads, head_dim).transpose(1, 2), rope)  # [B, 2 H, T, d_h]
    out = hidden
    for i, (learner, (keys, values), mask) in enumerate(zip((visual, textual), kv, masks)):
        if keys.shape[2] == 0:  # no key anywhere (e.g. a text-only prompt for the visual learner): output 0
            continue
        learned = learner(hidden, None, None, keys, values, mask, queries=q[:, i * heads : (i + 1) * heads])
        out = torch.addcmul(out, weights[..., i : i + 1], learned) if out is hidden else out.addcmul_(
            weights[..., i : i + 1], learned)
    return out


class LowRankResidual(nn.Module):
    """x + B A x, with A: d -> r and B: r -> d (no bias)."""

    def __init__(self, hidden_size: int, rank: int):
        super().__init__()
        self.down = nn.Linear(hidden_size, rank, bias=False)
        self.up = nn.Linear(rank, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(self.down(x))


class LoRRA(nn.Module):
    """One WINGS learner: multi-head cross-attention from hidden states to layer-0 features.

    Args:
        hidden_size: d, the LLM's hidden size (queries and features both have width d).
        num_heads: H; each head has d_h = d / H channels.
        rank: r of the low-rank projections.
    """

    def __init__(self, hidden_size: int, num_heads: int, rank: int):
        super().__init__()
        self.hidden_size, self.num_heads, self.rank = hidden_size, num_heads, rank
        self.head_dim = hidden_size // num_heads
        self.q = LowRankResidual(hidden_size, rank)
        self.k = LowRankResidual(hidden_size, rank)
        self.v = LowRankResidual(hidden_size, rank)
        # The output has no identity path: out = B_o A_o attn. B_o = 0 makes the learner a no-op at init.
        self.o_down = nn.Linear(hidden_size, rank, bias=False)
        self.o_up = nn.Linear(rank, hidden_size, bias=False)

    def reset_parameters(self, std: float = 0.02) -> None:
        """A_* truncated normal(std), B_* zero (docs/method.md, "LoRRA")."""
        for block in (self.q, self.k, self.v):
            nn.init.trunc_normal_(block.down.weight, std=std, a=-2 * std, b=2 * std)
            nn.init.zeros_(block.up.weight)
        nn.init.trunc_normal_(self.o_down.weight, std=std, a=-2 * std, b=2 * std)
        nn.init.zeros_(self.o_up.weight)

    @property
    def scaling(self) -> float:
        return self.head_dim**-0.5

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """[B, N, d] -> [B, H, N, d_h]."""
        return x.view(*x.shape[:2], self.num_heads, self.head_dim).transpose(1, 2)

    def queries(self, flat: torch.Tensor) -> torch.Tensor:
        """h + B_q A_q h for flat hidden states [B * T, d] (before RoPE) -> [B * T, d]."""
        return torch.addmm(flat, torch.mm(flat, self.q.down.weight.t()), self.q.up.weight.t())

    def keys_values(
        self, features: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Project features [B, N, d] at positions with RoPE tables cos, sin [B, N, d_h] to K, V [B, H, N, d_h]."""
        return self.project_keys(features, rope_tables(cos, sin))

    def project_keys(
        self, features: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`keys_values` with the keys' RoPE tables already prepared by `rope_tables`."""
        batch, n_keys, width = features.shape
        r = self.rank
        flat = features.reshape(batch * n_keys, width)
        if flat.shape[0] > 4 * r:
            # Many keys (a prefill): one down-projection for K and V reads the features once: [B * N, 2r].
            down = torch.mm(flat, torch.cat((self.k.down.weight, self.v.down.weight)).t())
            k_down, v_down = down[:, :r], down[:, r:]
        else:
            # A few keys (a decode step): concatenating the weights would cost more than reading x twice.
            k_down, v_down = torch.mm(flat, self.k.down.weight.t()), torch.mm(flat, self.v.down.weight.t())
        k = torch.addmm(flat, k_down, self.k.up.weight.t()).view(batch, n_keys, width)
        v = torch.addmm(flat, v_down, self.v.up.weight.t()).view(batch, n_keys, width)
        return rotate(self._heads(k), rope), self._heads(v)

    def forward(
        self,
        hidden: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        visible: torch.Tensor | CrossAttentionMask,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        queries: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attend from hidden [B, T, d] (RoPE tables cos, sin [B or 1, T, d_h]) to keys/values [B, H, N, d_h].

        visible: [B, T, N] bool, which keys each query may see, or the same prepared once as a
        `CrossAttentionMask` (what the decoder layers pass: shared by every layer). `rope` may hold the
        tables already prepared by `rope_tables`; `queries` [B, H, T, d_h] the rotated queries already
        computed (then cos, sin and rope are unused). A query that sees no key gets a zero output (not NaN).
        Returns [B, T, d].
        """
        batch, length, width = hidden.shape
        if keys.shape[2] == 0:
            return hidden.new_zeros(hidden.shape)
        if not isinstance(visible, CrossAttentionMask):
            visible = CrossAttentionMask(visible)
        if queries is None:
            rope = rope_tables(cos, sin) if rope is None else rope
            q = self.queries(hidden.reshape(batch * length, width)).view(batch, length, width)
            queries = rotate(self._heads(q), rope)
        attended = cross_attention(queries, keys, values, visible, self.scaling)
        # Zeroing rows that see nothing commutes with the bias-free down-projection: do it at width r.
        down = torch.mm(attended, self.o_down.weight.t()).mul_(visible.sees_any_flat(attended.dtype))
        return torch.mm(down, self.o_up.weight.t()).view(batch, length, width)
