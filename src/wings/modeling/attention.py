"""The main self-attention of a wrapped decoder layer, returning what the router reads.

WINGS' router needs, per query token, either the attention mass on image tokens (segment router) or
the whole attention row (positional router). The HF decoder layer discards attention weights, so the
wrapper runs the attention itself from the original `self_attn` module's own parts (projections,
q/k norms, scaling, softcap, sliding window), composed as the family's `AttentionLayout` describes,
with the attention kernel the LLM is configured for:

- segment router: one extra value channel holding "is this key an image token" makes the same
  attention kernel (SDPA, flash, ...) return the image mass next to the output: no T x T weights.
- positional router / explicit request: eager attention with weights.

Each way is a named `Strategy` (eager with weights, SDPA with the mass channel, single-query decode, the
configured kernel plus a flag call), picked by `select_strategy`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from ..families import AttentionLayout
from .rope import apply_rope, rotate

LLAMA_ATTENTION = AttentionLayout()


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """[B, H_kv, S, d] -> [B, H_kv * n_rep, S, d] (grouped-query attention)."""
    return x if n_rep == 1 else x.repeat_interleave(n_rep, dim=1)


def additive_mask(
    mask: torch.Tensor | None, q_len: int, kv_len: int, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """Turn an HF layer mask (None = plain causal, bool, or additive float) into an additive float mask."""
    if mask is None:
        offset = kv_len - q_len
        allowed = torch.ones(q_len, kv_len, dtype=torch.bool, device=device).tril(diagonal=offset)
        mask = allowed[None, None]
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=device).masked_fill(~mask, torch.finfo(dtype).min)
    return mask[..., :kv_len].to(dtype)


def eager_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    softcap: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention with explicit weights. query [B, H, T, d], key/value [B, H_kv, S, d_v].

    `softcap` caps the logits as softcap * tanh(logits / softcap) before the mask (Gemma 2).
    Returns output [B, T, H, d_v] and weights [B, H, T, S] (float32 softmax, as HF eager does).
    """
    n_rep = query.shape[1] // key.shape[1]
    key, value = repeat_kv(key, n_rep), repeat_kv(value, n_rep)
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    scores = scores + additive_mask(attention_mask, query.shape[2], key.shape[2], scores.dtype, scores.device)
    weights = F.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = F.dropout(weights, p=dropout, training=module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


def project_qkv(
    self_attn: nn.Module, x: torch.Tensor, layout: AttentionLayout
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Queries, keys, values [B, H(_kv), T, d] of normed input x [B, T, d], before RoPE, with q/k norms."""
    input_shape = x.shape[:-1]
    hidden_shape = (*input_shape, -1, self_attn.head_dim)
    if layout.qkv == "fused":
        q_width = self_attn.config.num_attention_heads * self_attn.head_dim
        kv_width = (self_attn.qkv_proj.out_features - q_width) // 2
        q, k, v = self_attn.qkv_proj(x).split([q_width, kv_width, kv_width], dim=-1)
    else:
        q, k, v = self_attn.q_proj(x), self_attn.k_proj(x), self_attn.v_proj(x)
    if layout.qk_norm == "projection":
        q, k = self_attn.q_norm(q), self_attn.k_norm(k)
    q, k, v = (t.view(hidden_shape).transpose(1, 2) for t in (q, k, v))
    if layout.qk_norm == "head":
        q, k = self_attn.q_norm(q), self_attn.k_norm(k)
    return q, k, v


def uses_rope(self_attn: nn.Module, layout: AttentionLayout) -> bool:
    """False on layers whose attention applies no RoPE (SmolLM3's NoPE layers)."""
    return bool(getattr(self_attn, layout.rope_switch)) if layout.rope_switch else True


@dataclass
class AttentionNeeds:
    """What a wrapped layer needs from its main attention, and the prepared RoPE tables it may reuse.

    key_is_image: [B, S] flags of all keys (cached + current, or every slot of a static cache); when given, the
    attention also returns the per-head image mass [B, T, H] (the segment router's input). key_end: see
    `key_flags`. need_weights: return the weights [B, H, T, S] (positional router, or asked for). rope: the tables
    of the layer's `position_embeddings` prepared by `rope.rope_tables` (shared with the learners where their heads
    have the LLM's width), or None. scaled_rope: for a one-token step, the same with the attention scale folded
    into the queries' rotation (`rope.scaled_tables`).
    """

    key_is_image: torch.Tensor | None = None
    need_weights: bool = False
    key_end: int | torch.Tensor | None = None
    rope: tuple[torch.Tensor, ...] | None = None
    scaled_rope: tuple[torch.Tensor, ...] | None = None


Attend = Callable[..., "tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]"]


@dataclass(frozen=True)
class Strategy:
    """One way to run the main attention. attend(self_attn, q, k, v, mask, flags, common, implementation, pad)
    -> (output [B, T, H, d], image mass [B, T, H] or None, weights [B, H, T, S] or None); flags: the keys' image
    flags [B, S] or None; common: the kernel keywords (scaling, dropout, sliding window, softcap).

    widens: queries and keys carry zero channels up to `mass_channel_width` (pad > 0); folds_scale: the queries
    come rotated by the scaled tables, so `common["scaling"]` is 1.
    """

    name: str
    attend: Attend
    widens: bool = False
    folds_scale: bool = False


def _eager(self_attn, q, k, v, mask, flags, common, implementation, pad):
    """Eager attention with explicit weights; the image mass is the weights summed over image keys."""
    out, weights = eager_attention(self_attn, q, k, v, mask, **common)
    image_mass = None if flags is None else torch.einsum("bhts,bs->bth", weights, flags.to(weights.dtype))
    return out, image_mass, weights


def _mass_channel(self_attn, q, k, v, mask, flags, common, implementation, pad):
    """SDPA with one extra value channel holding the image flags: the kernel returns the image mass beside the
    output, no T x T weights. The fused kernels need equal q/k/v widths, so q and k carry zero channels (their
    scores do not change; the scale is passed explicitly)."""
    head_dim = v.shape[-1]
    if k.shape[-1] == head_dim:  # keys from the cache are stored unpadded
        k = F.pad(k, (0, pad))
    flag_channel = flags[:, None, :, None].to(v.dtype).expand(-1, v.shape[1], -1, 1)
    v = torch.cat([v, flag_channel, v.new_zeros((*v.shape[:3], pad - 1))], dim=-1)
    out, _ = ALL_ATTENTION_FUNCTIONS[implementation](self_attn, q, k, v, mask, **common)
    return out[..., :head_dim], out[..., head_dim], None


def _single_query(self_attn, q, k, v, mask, flags, common, implementation, pad):
    """Decoding: the single query's weights are only [B, H, 1, S]; computing them explicitly reads the cached K/V
    once and copies nothing, where widening them for the kernel would copy them every step."""
    out, image_mass = single_query_attention(q, k, v, mask, flags, common["scaling"])
    return out, image_mass, None


def _kernel(self_attn, q, k, v, mask, flags, common, implementation, pad):
    """The configured kernel (SDPA, flash, ...); where the mass is needed, a second call on a value tensor holding
    the flags (kernels that need equal q/v head dims cannot take the extra channel)."""
    attend = ALL_ATTENTION_FUNCTIONS[implementation]
    out, _ = attend(self_attn, q, k, v, mask, **common)
    image_mass = None
    if flags is not None:
        flag_values = torch.zeros_like(v)
        flag_values[..., 0] = flags[:, None].to(v.dtype)
        image_mass = attend(self_attn, q, k, flag_values, mask, **common)[0][..., 0]
    return out, image_mass, None


EAGER = Strategy("eager", _eager)
MASS_CHANNEL = Strategy("mass_channel", _mass_channel, widens=True)
SINGLE_QUERY = Strategy("single_query", _single_query, folds_scale=True)
KERNEL = Strategy("kernel", _kernel)


def select_strategy(implementation: str, softcap: bool, needs: AttentionNeeds, n_queries: int) -> Strategy:
    """Eager where weights are wanted or the kernel cannot run the layer (SDPA cannot cap logits: HF's own SDPA
    path would silently skip the cap); with SDPA and the image mass wanted, the mass channel, or the single-query
    path for one query; else the configured kernel (plus a flag call where the mass is wanted)."""
    if needs.need_weights or implementation == "eager" or (softcap and implementation == "sdpa"):
        return EAGER
    if needs.key_is_image is not None and implementation == "sdpa":
        return SINGLE_QUERY if n_queries == 1 else MASS_CHANNEL
    return KERNEL


def main_attention(
    self_attn: nn.Module,
    x: torch.Tensor,
    position_embeddings: tuple[torch.Tensor, torch.Tensor],
    attention_mask: torch.Tensor | None,
    cache,
    layout: AttentionLayout = LLAMA_ATTENTION,
    needs: AttentionNeeds | None = None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Run a decoder layer's `self_attn` on its input x [B, T, d] (normed, where the block norms it).

    layout: how the family's attention builds queries and keys; needs: what to return besides the output
    (`AttentionNeeds`; None: the output only). The `Strategy` comes from `select_strategy`.
    Returns (output after o_proj [B, T, d], image mass [B, T, H] or None, weights [B, H, T, S] or None).
    """
    needs = needs or AttentionNeeds()
    input_shape = x.shape[:-1]
    q, k, v = project_qkv(self_attn, x, layout)
    implementation = self_attn.config._attn_implementation or "sdpa"
    softcap = getattr(self_attn, layout.softcap, None) if layout.softcap else None
    strategy = select_strategy(implementation, softcap is not None, needs, q.shape[2])
    pad = mass_channel_width(v.shape[-1], v.device) - v.shape[-1] if strategy.widens else 0
    q, k, folded = _rotate(self_attn, layout, q, k, position_embeddings, needs, pad, 0 if cache is not None else pad,
                           strategy.folds_scale)
    if cache is not None:
        k, v = cache.update(k, v, self_attn.layer_idx)
    sliding_window = (
        self_attn.sliding_window if hasattr(self_attn, "sliding_window")
        else getattr(self_attn.config, "sliding_window", None)
    )
    common = dict(
        dropout=0.0 if not self_attn.training else self_attn.attention_dropout,
        scaling=1.0 if folded else self_attn.scaling,
        sliding_window=sliding_window,
        **kwargs,
    )
    if softcap is not None:
        common["softcap"] = softcap
    flags = None if needs.key_is_image is None else key_flags(needs.key_is_image, k.shape[2], needs.key_end)
    out, image_mass, weights = strategy.attend(self_attn, q, k, v, attention_mask, flags, common, implementation, pad)
    out = out.reshape(*input_shape, -1)
    return self_attn.o_proj(out), image_mass, weights if needs.need_weights else None


def _rotate(self_attn, layout, q, k, position_embeddings, needs: AttentionNeeds, q_pad: int, k_pad: int, fold: bool):
    """Queries and keys after RoPE (and zero channels, for the mass channel; the cache keeps keys unpadded).
    Returns (q, k, whether the attention scale is folded into q)."""
    if not uses_rope(self_attn, layout):
        return (F.pad(q, (0, q_pad)) if q_pad else q), (F.pad(k, (0, k_pad)) if k_pad else k), False
    dtype = k.dtype
    if needs.rope is not None and not q_pad:
        folded = fold and needs.scaled_rope is not None
        q, k = rotate(q, needs.scaled_rope if folded else needs.rope), rotate(k, needs.rope)
    else:
        cos, sin = position_embeddings
        q, k, folded = apply_rope(q, cos, sin, pad=q_pad), apply_rope(k, cos, sin, pad=k_pad), False
    if k.dtype != dtype:
        # Under autocast the projections give bf16 but the element-wise RoPE promotes to the tables' fp32 (a
        # one-token step's matmul form does not): the cache must get one dtype, the projections'.
        q, k = q.to(dtype), k.to(dtype)
    return q, k, folded


def key_flags(key_is_image: torch.Tensor, n_keys: int, key_end: int | torch.Tensor | None) -> torch.Tensor:
    """The image flags [B, n_keys] of the keys a layer's cache returned, from the flags of all keys [B, S].

    A cache returns either all its slots from the first (a static layer; a static sliding-window layer before it
    fills) or the n_keys keys that end at the chunk's last token (a dynamic layer; a full sliding-window layer,
    which keeps the window in order). key_end: tokens seen after this chunk (past + T) for a static cache, whose
    flags span every slot; None for a dynamic cache, whose flags end at the chunk.
    """
    if key_is_image.shape[1] == n_keys:
        return key_is_image
    if key_end is None:
        return key_is_image[:, -n_keys:]
    if isinstance(key_end, int):
        start = max(key_end - n_keys, 0)
        return key_is_image[:, start : start + n_keys]
    # A tensor length (a static full-attention layer's): gather at a device-side offset, no host sync.
    index = (key_end - n_keys).clamp(min=0) + torch.arange(n_keys, device=key_is_image.device)
    return key_is_image.index_select(1, index)


def mass_channel_width(head_dim: int, device: torch.device) -> int:
    """Head width carrying the image-flag channel: d + 1 on CPU, else the next multiple of 8 (the
    alignment the accelerator kernels need)."""
    return head_dim + 1 if device.type == "cpu" else -(-(head_dim + 1) // 8) * 8


def single_query_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attention_mask: torch.Tensor | None,
    flags: torch.Tensor,
    scaling: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of one query per row with its image mass. q [B, H, 1, d], k/v [B, H_kv, S, d], flags [B, S].

    Query heads are grouped onto their key/value head (no repeat of the cache). Returns output
    [B, 1, H, d] and image mass [B, 1, H].
    """
    batch, heads, _, head_dim = q.shape
    kv_heads, length = k.shape[1], k.shape[2]
    group = heads // kv_heads
    # [B * H_kv, ...] views (no copy of the cache): each key/value head serves its group of query heads.
    scores = torch.bmm(
        q.reshape(batch * kv_heads, group, head_dim), k.reshape(batch * kv_heads, length, head_dim).transpose(1, 2)
    ).view(batch, heads, 1, length)
    if attention_mask is None:
        scores = scores if scaling == 1.0 else scores * scaling
    else:
        scores = torch.add(additive_mask(attention_mask, 1, length, scores.dtype, scores.device), scores, alpha=scaling)
    weights = F.softmax(scores, dim=-1) if scores.dtype == torch.float32 else F.softmax(scores, -1, dtype=torch.float32)
    if weights.dtype != q.dtype:
        weights = weights.to(q.dtype)
    out = torch.bmm(weights.view(batch * kv_heads, group, length), v.reshape(batch * kv_heads, length, head_dim))
    flags = flags if flags.dtype == weights.dtype else flags.to(weights.dtype)
    image_mass = torch.bmm(weights.view(batch, heads, length), flags.view(batch, length, 1))
    return out.view(batch, 1, heads, head_dim), image_mass.view(batch, 1, heads)
