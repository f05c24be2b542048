"""Routers: token-wise weights (w_visual, w_textual), summing to one, read off the main self-attention."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .packing import PackedWeights


def segment_route(image_mass: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """(w_visual, w_textual) = softmax(W [m, 1 - m] + b): the segment router's equation.

    image_mass [..., H]: the attention mass each query puts on image tokens, per head; weight [2, 2H] and
    bias [2]: the router's `nn.Linear` over [image mass, text mass]. Returns [..., 2].
    """
    image_mass = image_mass.to(weight.dtype)
    return F.softmax(F.linear(torch.cat((image_mass, 1 - image_mass), dim=-1), weight, bias), dim=-1)


class SegmentRouter(PackedWeights):
    """Reads, per head, the attention mass each query puts on image tokens and on text tokens.

    Length-independent and computable without materialising T x T weights (the main attention returns
    the image mass as one extra value channel). Input [B, T, H] image mass; output [B, T, 2]. Computes
    `segment_route` with the text mass folded into the weights (one matmul on the image mass).
    """

    needs_attention_weights = False

    def __init__(self, num_heads: int):
        super().__init__()
        self.linear = nn.Linear(2 * num_heads, 2)

    def reset_parameters(self, std: float = 0.02) -> None:
        nn.init.normal_(self.linear.weight, std=std)
        nn.init.zeros_(self.linear.bias)
        self._repack()

    def forward(self, image_mass: torch.Tensor) -> torch.Tensor:
        shape = image_mass.shape
        image_mass = image_mass.reshape(-1, shape[-1])
        weight, bias = self.packed()
        if image_mass.dtype != weight.dtype:
            image_mass = image_mass.to(weight.dtype)
        # W [m, 1 - m] + b = (W_img - W_txt) m + (b + W_txt 1): the text mass folded into the weights.
        logits = torch.addmm(bias, image_mass, weight)
        return F.softmax(logits, dim=-1).view(*shape[:-1], 2)

    def weights(self) -> tuple[nn.Parameter, ...]:
        return (self.linear.weight, self.linear.bias)

    def build_packed(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The linear map on [image mass, text mass] as one on the image mass: weight [H, 2], bias [2]."""
        heads = self.linear.in_features // 2
        image, text = self.linear.weight[:, :heads], self.linear.weight[:, heads:]
        return (image - text).t(), self.linear.bias + text.sum(dim=1)


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
