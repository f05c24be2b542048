"""Routers: token-wise weights (w_visual, w_textual), summing to one, read off the main self-attention."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SegmentRouter(nn.Module):
    """Reads, per head, the attention mass each query puts on image tokens and on text tokens.

    Length-independent and computable without materialising T x T weights (the main attention returns
    the image mass as one extra value channel). Input [B, T, H] image mass; output [B, T, 2].
    """

    needs_attention_weights = False

    def __init__(self, num_heads: int):
        super().__init__()
        self.linear = nn.Linear(2 * num_heads, 2)

    def reset_parameters(self, std: float = 0.02) -> None:
        nn.init.normal_(self.linear.weight, std=std)
        nn.init.zeros_(self.linear.bias)

    def forward(self, image_mass: torch.Tensor) -> torch.Tensor:
        shape = image_mass.shape
        image_mass = image_mass.reshape(-1, shape[-1]).to(self.linear.weight.dtype)
        features = torch.cat([image_mass, 1.0 - image_mass], dim=-1)
        logits = torch.addmm(self.linear.bias, features, self.linear.weight.t())
        return F.softmax(logits, dim=-1).view(*shape[:-1], 2)


class PositionalRouter(nn.Module):
    """The released code's router: Linear(max_positions, 2) + SiLU + softmax over the head-summed attention row.

    Input: eager attention weights [B, H, T, S] (S <= max_positions, keys by cache index); output [B, T, 2].
    """

    needs_attention_weights = True

    def __init__(self, max_positions: int):
        super().__init__()
        self.max_positions = max_positions
        self.linear = nn.Linear(max_positions, 2)

    def reset_parameters(self, std: float = 0.02) -> None:
        nn.init.normal_(self.linear.weight, std=std)
        nn.init.zeros_(self.linear.bias)

    def forward(self, attn_weights: torch.Tensor) -> torch.Tensor:
        row = attn_weights.sum(dim=1).to(self.linear.weight.dtype)  # [B, T, S]
        length = row.shape[-1]
        if length > self.max_positions:
            raise ValueError(
                f"PositionalRouter: the sequence has {length} keys but router_max_positions is "
                f"{self.max_positions}; use router='segment' or a larger router_max_positions."
            )
        row = F.pad(row, (0, self.max_positions - length))
        return F.softmax(F.silu(self.linear(row)), dim=-1)


def make_router(kind: str, num_heads: int, max_positions: int) -> nn.Module:
    if kind == "segment":
        return SegmentRouter(num_heads)
    if kind == "positional":
        return PositionalRouter(max_positions)
    raise ValueError(f"unknown router '{kind}' (expected 'segment' or 'positional')")
