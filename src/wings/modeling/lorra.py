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


def low_rank_residual(x: torch.Tensor, down: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """x + (x A^T) B^T for x [..., d], with the residual add fused into the up-projection (one addmm).

    `down` may be x's down-projection already computed (x A^T, [..., r]); `up` is B [d, r].
    """
    flat = x.reshape(-1, x.shape[-1])
    return torch.addmm(flat, down.reshape(-1, down.shape[-1]), up.t()).view(x.shape)


# Queries are attended in blocks of this many tokens; each block reads only the keys up to the last
# one any of its queries may see (learner keys are in position order, so visibility is a staircase).
QUERY_BLOCK = 256


class CrossAttentionMask:
    """A learner's visibility visible [B, T, N] bool, prepared once and shared by every layer.

    A query that sees no key would give a NaN softmax row (and NaN gradients), so such rows see key 0
    in the SDPA mask and `sees_any` [B, T, 1] zeroes their output afterwards.
    """

    def __init__(self, visible: torch.Tensor):
        self.sees_any = visible.any(-1, keepdim=True)
        self.allowed = visible.clone()
        self.allowed[..., :1] |= ~self.sees_any
        self._additive: dict[torch.dtype, torch.Tensor] = {}
        self._blocks: list[tuple[int, int, int]] | None = None

    def additive(self, dtype: torch.dtype) -> torch.Tensor:
        """[B, 1, T, N] of `dtype`: 0 where allowed, -inf elsewhere (what SDPA makes of a bool mask)."""
        if dtype not in self._additive:
            mask = torch.zeros(self.allowed.shape, dtype=dtype, device=self.allowed.device)
            self._additive[dtype] = mask.masked_fill_(~self.allowed, float("-inf")).unsqueeze(1)
        return self._additive[dtype]

    def query_blocks(self) -> list[tuple[int, int, int]]:
        """Spans (start, end, n_keys) of queries that need only keys [0, n_keys); built once (one host sync).

        Adjacent blocks needing the same keys are merged, so a learner whose queries all see every key
        runs one attention call.
        """
        if self._blocks is None:
            _, length, n_keys = self.allowed.shape
            if n_keys == 0 or length == 0:
                self._blocks = [(0, length, n_keys)]
                return self._blocks
            index = torch.arange(1, n_keys + 1, device=self.allowed.device, dtype=torch.int32)
            reach = (self.allowed * index).amax(-1).amax(0)  # [T]: 1 + last key any row's query sees
            pad = -length % QUERY_BLOCK
            per_block = F.pad(reach, (0, pad)).view(-1, QUERY_BLOCK).amax(-1).tolist()
            blocks: list[tuple[int, int, int]] = []
            for i, n in enumerate(per_block):
                start, end = i * QUERY_BLOCK, min((i + 1) * QUERY_BLOCK, length)
                if blocks and blocks[-1][2] == n:
                    blocks[-1] = (blocks[-1][0], end, n)
                else:
                    blocks.append((start, end, n))
            self._blocks = blocks
        return self._blocks


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

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """[B, N, d] -> [B, H, N, d_h]."""
        return x.view(*x.shape[:2], self.num_heads, self.head_dim).transpose(1, 2)

    def keys_values(
        self, features: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Project features [B, N, d] at positions with RoPE tables cos, sin [B, N, d_h] to K, V [B, H, N, d_h]."""
        r = self.rank
        # One down-projection for K and V (features are read once): [B, N, 2r].
        down = F.linear(features, torch.cat((self.k.down.weight, self.v.down.weight)))
        k = low_rank_residual(features, down[..., :r], self.k.up.weight)
        v = low_rank_residual(features, down[..., r:], self.v.up.weight)
        return apply_rope(self._heads(k), cos, sin), self._heads(v)

    def forward(
        self,
        hidden: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        visible: torch.Tensor | CrossAttentionMask,
    ) -> torch.Tensor:
        """Attend from hidden [B, T, d] (RoPE tables cos, sin [B, T, d_h]) to keys/values [B, H, N, d_h].

        visible: [B, T, N] bool, which keys each query may see, or the same prepared once as a
        `CrossAttentionMask` (what the decoder layers pass: shared by every layer). A query that sees
        no key gets a zero output (not NaN). Returns [B, T, d].
        """
        batch, length, _ = hidden.shape
        if keys.shape[2] == 0:
            return hidden.new_zeros(hidden.shape)
        q = low_rank_residual(hidden, self.q.down(hidden), self.q.up.weight)
        q = apply_rope(self._heads(q), cos, sin)
        if not isinstance(visible, CrossAttentionMask):
            visible = CrossAttentionMask(visible)
        mask, values = visible.additive(q.dtype), values.to(q.dtype)
        # Each block of queries reads only the keys its queries may see (keys are in position order).
        blocks = [
            F.scaled_dot_product_attention(
                q[:, :, start:end], keys[:, :, :n], values[:, :, :n], attn_mask=mask[:, :, start:end, :n]
            )
            for start, end, n in visible.query_blocks()
        ]
        # [B, H, t, d_h] blocks -> [B, T, H, d_h] in one copy.
        blocks = [block.transpose(1, 2) for block in blocks]
        out = blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=1)
        out = out.reshape(batch, length, self.hidden_size)
        # Zeroing rows that see nothing commutes with the bias-free down-projection: do it at width r.
        return self.o_up(self.o_down(out) * visible.sees_any.to(out.dtype))
