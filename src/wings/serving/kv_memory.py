"""KV-cache memory per token of a WINGS model in vLLM against its plain LLM: what the learners' cache costs.

Per layer, per token, vLLM caches K and V of every KV head. The plain LLM caches 2 * KV * d_h channels. A layer
with learners caches its main attention (KV heads, zero-padded to d_h + 1 channels for the router's image-flag
value channel) plus the learners' shared cache: H heads (the learners' heads are d/H wide, one per query head of
the LLM; each token stores its own modality's learner, see `wings.serving.layers.WingsLearners`), zero-padded to
d/H + n channels for the n mask/flag channels. Under grouped-query attention H is several times KV, so the
learners' cache alone is H / KV times the main attention's (7x at Qwen2-7B's 28 / 4 heads): that is the method's
own cost. Padding to a head size the attention backend supports adds to it (64 -> 80 on CPU, 72 on GPUs).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


def gpu_head_size(width: int) -> int:
    """The head size vLLM's GPU backends take for `width` channels (a multiple of 8)."""
    return -(-width // 8) * 8


@dataclass(frozen=True)
class KvChannels:
    """Cached channels per token (K and V, summed over layers) and the ratio WINGS / plain LLM.

    plain: the LLM without learners; wings: the WINGS model; unpadded: WINGS without any head padding (the
    method's own cost: the learners' H heads of d/H channels, no mask, flag or alignment channels).
    """

    plain: int
    wings: int
    unpadded: int

    @property
    def ratio(self) -> float:
        return self.wings / self.plain

    @property
    def method_ratio(self) -> float:
        return self.unpadded / self.plain


def kv_channels(config, head_size: Callable[[int], int] = gpu_head_size) -> KvChannels:
    """Cached channels per token of a `WingsConfig` in vLLM. head_size: the backend's padded head size for a
    width (`gpu_head_size`, or `wings.serving.attention.supported_head_size` on the running platform)."""
    text = config.text_config
    heads = text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    learner_dim = text.hidden_size // heads
    routed = config.learner_mode == "routed"
    count = 2 if routed else 1
    with_learners = len(set(config.layers_with_learners))
    plain_layer = 2 * kv_heads * head_dim
    main = 2 * kv_heads * (head_size(head_dim + 1) if routed else head_size(head_dim))
    learners = 2 * heads * head_size(learner_dim + count)
    layers = text.num_hidden_layers
    return KvChannels(
        plain=layers * plain_layer,
        wings=(layers - with_learners) * plain_layer + with_learners * (main + learners),
        unpadded=layers * plain_layer + with_learners * 2 * heads * learner_dim,
    )
