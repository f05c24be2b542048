"""RoPE for the learners: the rotation each layer's own attention uses, at the learners' head width.

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
from torch import nn


class LearnerRope:
    """Computes the learners' RoPE tables for one model, shared by all of its wrapped layers.

    Args:
        rotary_class: the LLM's rotary-embedding class (`type(llm.model.rotary_emb)`).
        text_config: the LLM's config; copied, never changed.
        head_dim: the learners' head width d/H.

    The rotary module is built on first use (so a model built on the meta device holds no meta
    buffers), and the tables of the latest `position_ids` are kept until the next forward pass asks for
    other positions: every layer of one pass shares them.
    """

    def __init__(self, rotary_class: type[nn.Module], text_config, head_dim: int):
        self.rotary_class, self.head_dim = rotary_class, head_dim
        self.config = copy.deepcopy(text_config)
        self.config.head_dim = head_dim
        self.takes_layer_type = "layer_type" in inspect.signature(rotary_class.forward).parameters
        self._rotary: nn.Module | None = None
        self._positions: torch.Tensor | None = None
        self._tables: dict = {}

    def tables(
        self, position_ids: torch.Tensor, layer_type: str | None, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [B or 1, T, d/H] at `position_ids` [B or 1, T] for layers of `layer_type`."""
        if position_ids is not self._positions:
            self._positions, self._tables = position_ids, {}
        key = (layer_type, dtype)
        if key not in self._tables:
            if self._rotary is None:
                with torch.device("cpu"):
                    self._rotary = self.rotary_class(config=self.config)
            probe = torch.empty(0, dtype=dtype, device=position_ids.device)
            args = (layer_type,) if self.takes_layer_type else ()
            self._tables[key] = self._rotary(probe, position_ids, *args)
        return self._tables[key]


def identity_tables(like: tuple[torch.Tensor, torch.Tensor], head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos = 1, sin = 0 tables shaped like `like` [B, T, *] with width head_dim: RoPE that rotates nothing."""
    cos = like[0]
    shape = (*cos.shape[:-1], head_dim)
    return cos.new_ones(shape), cos.new_zeros(shape)
