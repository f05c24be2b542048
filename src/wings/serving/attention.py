"""Padded attention heads: the extra channels that let vLLM's paged attention kernels compute WINGS' attentions.

vLLM's attention backends take no per-key mask and return no attention weights, but both can be carried
by extra head channels, appended after RoPE:

- key masking (a learner sees only keys of its modality): the query gets a channel holding
  1/scale, every key a channel holding 0 (visible) or -MASK_BIAS (hidden); with the scale passed
  explicitly the score of a hidden key drops by MASK_BIAS, so its softmax weight is exactly 0.
- attention mass on a set of keys (the segment router's input, "does this query see any key"):
  a value channel holding 1 on those keys and 0 elsewhere makes the output channel equal
  sum_j p_ij * flag_j.
- two learners on one cache: every token stores its own modality's learner's key/value; learner j's
  queries use key channel j (hiding the other modality's keys) and read value channel j.

Queries, keys and values are zero-padded to a head size the backend supports (K and V equal).
"""

from __future__ import annotations

import torch

# Score drop of a hidden key. exp(-1e4) is 0 in every float format, and 1e4 fits an fp16/bf16 cache.
MASK_BIAS = 1.0e4


def supported_head_size(width: int) -> int:
    """The smallest head size >= width that the current platform's attention backend accepts."""
    from vllm.platforms import current_platform

    if current_platform.is_cpu():
        from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

        fits = [size for size in CPUAttentionBackend.get_supported_head_sizes() if size >= width]
        if not fits:
            raise ValueError(f"no CPU attention head size holds {width} channels")
        return min(fits)
    # The GPU backends (FlashAttention, Triton, FlashInfer) take multiples of 8.
    return -(-width // 8) * 8


def learner_channels(is_image: torch.Tensor, count: int, dtype: torch.dtype) -> torch.Tensor:
    """is_image [T] bool -> the learners' extra key and value channels [2, T, 1, count].

    Learner 0 (visual) owns image tokens, learner 1 (textual) text tokens. Key channel j: 0 on learner
    j's keys, -MASK_BIAS on the others; value channel j: 1 on learner j's keys, else 0.
    """
    own = is_image.to(dtype)[:, None]
    if count == 2:
        own = torch.cat([own, 1.0 - own], dim=-1)
    return torch.stack([(own - 1.0) * MASK_BIAS, own])[:, :, None, :]
