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


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE in the Llama (rotate-half) convention. x: [B, H, N, d_h]; cos, sin: [B, N, d_h]."""
    return x * cos.unsqueeze(1) + rotate_half(x) * sin.unsqueeze(1)


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
        """A_* truncated normal(std), B_* zero (WINGS.md section 2)."""
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
        k = apply_rope(self._heads(self.k(features)), cos, sin)
        return k, self._heads(self.v(features))

    def forward(
        self,
        hidden: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        visible: torch.Tensor,
    ) -> torch.Tensor:
        """Attend from hidden [B, T, d] (RoPE tables cos, sin [B, T, d_h]) to keys/values [B, H, N, d_h].

        visible: [B, T, N] bool, which keys each query may see. A query that sees no key gets a zero
        output (not NaN). Returns [B, T, d].
        """
        batch, length, _ = hidden.shape
        if keys.shape[2] == 0:
            return hidden.new_zeros(hidden.shape)
        q = apply_rope(self._heads(self.q(hidden)), cos, sin)
        sees_any = visible.any(-1)  # [B, T]
        # A fully masked softmax row is NaN (and so are its gradients): let such rows see key 0, then zero them.
        mask = visible.clone()
        mask[..., 0] |= ~sees_any
        out = F.scaled_dot_product_attention(q, keys, values.to(q.dtype), attn_mask=mask.unsqueeze(1))
        out = out.transpose(1, 2).reshape(batch, length, self.hidden_size)
        out = out * sees_any.unsqueeze(-1).to(out.dtype)
        return self.o_up(self.o_down(out))
