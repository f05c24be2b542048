"""RoPE: the rotate-half rotation (`apply_rope`, and `rotate` on tables prepared once per forward by
`rope_tables`), and the learners' tables: the rotation each layer's own attention uses, at the learners'
head width.

A learner splits the hidden size d into the LLM's H heads of d/H channels. Where the LLM's heads have
that width too (Llama, Qwen2, Mistral, ...), a learner reuses the RoPE tables its layer receives.
Where they do not (Qwen3-0.6B: d/H = 64, heads of 128; Gemma: heads of 256), the learner gets tables
of width d/H computed by the LLM's own rotary-embedding class, on a copy of its config with
`head_dim = d/H`: same base, same scaling, same per-layer-type bases (Gemma 3 local/global). Layers
that use no RoPE (SmolLM3's NoPE layers) give their learners none either (identity tables).
"""

from __future__ import annotations

import copy
import inspect

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


def rope_tables(cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """RoPE tables cos, sin [B or 1, T, d_h] -> ([B or 1, 1, T, d_h] cos, the same sin with rotate-half's sign
    folded in, and for a one-token chunk (T = 1, every decode step) the rotation as a matrix [B or 1, d_h, d_h]),
    for `rotate`. Prepared once per forward and shared by every layer.
    """
    half = cos.shape[-1] // 2
    signed_sin = torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)
    matrix = None
    if cos.shape[1] == 1:
        # rotate(x)_i = x_i cos_i + x_(i + half mod d_h) signed_sin_i = (x @ R)_i with R[i, i] = cos_i and
        # R[i + half mod d_h, i] = signed_sin_i: one batched matmul instead of five elementwise kernels.
        batch = cos.shape[0]
        diagonals = torch.diag_embed(torch.cat((cos[:, 0], signed_sin[:, 0])))  # [2B, d_h, d_h]
        matrix = diagonals[:batch] + diagonals[batch:].roll(half, dims=-2)
    return cos.unsqueeze(1), signed_sin.unsqueeze(1), matrix


def rotate(x: torch.Tensor, tables: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """RoPE of x [B, H, T, d_h] with tables from `rope_tables`: x * cos + swap_halves(x) * signed_sin.

    Equal to `apply_rope`; three kernels (the half swap is one flip of a [..., 2, d_h / 2] view), or one
    batched matmul by the prepared rotation matrix for a one-token chunk.
    """
    cos, signed_sin = tables[0], tables[1]
    matrix = tables[2] if len(tables) > 2 else None
    batch, heads, length, head_dim = x.shape
    if matrix is not None and length == 1:
        if matrix.shape[0] != batch:
            matrix = matrix.expand(batch, -1, -1)
        return torch.bmm(x.reshape(batch, heads, head_dim), matrix).view(batch, heads, 1, head_dim)
    swapped = x.unflatten(-1, (2, -1)).flip(-2).flatten(-2)
    return torch.addcmul(x * cos, swapped, signed_sin)


def scaled_tables(tables: tuple[torch.Tensor, ...], scale: float) -> tuple[torch.Tensor, ...] | None:
    """Tables from `rope_tables` whose one-token rotation matrix also multiplies by `scale` (the attention scale
    folded into the queries' RoPE), or None where they hold no matrix (chunks of several tokens)."""
    matrix = tables[2] if len(tables) > 2 else None
    return None if matrix is None else (tables[0], tables[1], matrix * scale)


class LearnerRope:
    """Computes the learners' RoPE tables for one model, shared by all of its wrapped layers.

    Args:
        rotary_class: the LLM's rotary-embedding class (`type(llm.model.rotary_emb)`).
        text_config: the LLM's config; copied, never changed.
        head_dim: the learners' head width d/H.

    The rotary module is built on first use (so a model built on the meta device holds no meta
    buffers). The tables are computed on every call: the forward pass's plan keeps them for its layers.
    """

    def __init__(self, rotary_class: type[nn.Module], text_config, head_dim: int):
        self.rotary_class, self.head_dim = rotary_class, head_dim
        self.config = copy.deepcopy(text_config)
        self.config.head_dim = head_dim
        self.takes_layer_type = "layer_type" in inspect.signature(rotary_class.forward).parameters
        self._rotary: nn.Module | None = None

    def tables(
        self, position_ids: torch.Tensor, layer_type: str | None, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [B or 1, T, d/H] at `position_ids` [B or 1, T] for layers of `layer_type`."""
        if self._rotary is None:
            with torch.device("cpu"):
                self._rotary = self.rotary_class(config=self.config)
        probe = torch.empty(0, dtype=dtype, device=position_ids.device)
        args = (layer_type,) if self.takes_layer_type else ()
        return self._rotary(probe, position_ids, *args)


def identity_tables(like: tuple[torch.Tensor, torch.Tensor], head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos = 1, sin = 0 tables shaped like `like` [B, T, *] with width head_dim: RoPE that rotates nothing."""
    cos = like[0]
    shape = (*cos.shape[:-1], head_dim)
    return cos.new_ones(shape), cos.new_zeros(shape)
