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


def residual_low_rank(x: torch.Tensor, down: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """x + (x A^T) B^T: the LoRRA projection of Q, K and V (Q = h + B_q A_q h).

    x [..., d]; down: A [r, d]; up: B [d, r] (both in `nn.Linear` weight layout). The residual add is fused
    into the up-projection (one addmm). Returns [..., d].
    """
    flat = x.reshape(-1, x.shape[-1])
    return torch.addmm(flat, torch.mm(flat, down.t()), up.t()).view(x.shape)


def low_rank_out(attended: torch.Tensor, down: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """(attended A_o^T) B_o^T: the learner's output projection B_o A_o, with no identity path.

    attended [..., d]; down: A_o [r, d]; up: B_o [d, r]. Returns [..., d].
    """
    flat = attended.reshape(-1, attended.shape[-1])
    return torch.mm(torch.mm(flat, down.t()), up.t()).view(*attended.shape[:-1], up.shape[0])


def mix_outputs(
    hidden: torch.Tensor, visual_out: torch.Tensor, textual_out: torch.Tensor, route: torch.Tensor
) -> torch.Tensor:
    """h + w_v * visual_out + w_t * textual_out: the routed learners' outputs added once to the residual.

    hidden, visual_out, textual_out [..., d]; route [..., 2] (w_v, w_t) from the router. Returns [..., d].
    """
    route = route if route.dtype == hidden.dtype else route.to(hidden.dtype)
    return torch.addcmul(torch.addcmul(hidden, route[..., 0:1], visual_out), route[..., 1:2], textual_out)


def residual_low_rank(x: torch.Tensor, down: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """x + (x A^T) B^T: the LoRRA projection of Q, K and V (Q = h + B_q A_q h).

    x [..., d]; down: A [r, d]; up: B [d, r] (both in `nn.Linear` weight layout). The residual add is fused
    into the up-projection (one addmm). Returns [..., d].
    """
    flat = x.reshape(-1, x.shape[-1])
    return torch.addmm(flat, torch.mm(flat, down.t()), up.t()).view(x.shape)


def low_rank_out(attended: torch.Tensor, down: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """(attended A_o^T) B_o^T: the learner's output projection B_o A_o, with no identity path.

    attended [..., d]; down: A_o [r, d]; up: B_o [d, r]. Returns [..., d].
    """
    flat = attended.reshape(-1, attended.shape[-1])
    return torch.mm(torch.mm(flat, down.t()), up.t()).view(*attended.shape[:-1], up.shape[0])


def mix_outputs(
    hidden: torch.Tensor, visual_out: torch.Tensor, textual_out: torch.Tensor, route: torch.Tensor
) -> torch.Tensor:
    """h + w_v * visual_out + w_t * textual_out: the routed learners' outputs added once to the residual.

    hidden, visual_out, textual_out [..., d]; route [..., 2] (w_v, w_t) from the router. Returns [..., d].
    """
    route = route if route.dtype == hidden.dtype else route.to(hidden.dtype)
    return torch.addcmul(torch.addcmul(hidden, route[..., 0:1], visual_out), route[..., 1:2], textual_out)


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
        self._pair_sees: dict[torch.dtype, tuple] = {}
        self._joint: dict[tuple, tuple] = {}
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


def packed_weights(holder: nn.Module, slot: str, params: tuple[nn.Parameter, ...], build) -> tuple[torch.Tensor, ...]:
    """Weights rearranged for fewer kernels (transposed, concatenated, block-diagonal), built from `params` by
    `build()` at run time: never saved (the checkpoint keeps the modules' own parameters), and reused until a
    parameter changes.

    Where gradients flow to `params` (training), `build()` runs on every call, so the result is part of the
    autograd graph and always current. Without gradients the contiguous result is kept in `holder` under `slot`,
    keyed by each parameter's storage, version counter (bumped by every in-place update: optimizer steps,
    `load_state_dict`, `copy_` under `no_grad`), dtype and device; a later call rebuilds it when any differs.
    Changes made through `param.data` bypass the version counter and are not seen. Inside a compiled step the
    kept copy is used as it is (the eager prefill before it refreshed it).
    """
    if torch.is_grad_enabled() and any(p.requires_grad for p in params):
        return build()
    kept = holder.__dict__.get(slot)
    if torch.compiler.is_compiling():
        return kept[1] if kept is not None else build()
    key = tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in params)
    if kept is None or kept[0] != key:
        with torch.no_grad():
            tensors = tuple(t.contiguous() for t in build())
        for t in tensors:
            torch._dynamo.mark_static_address(t)  # CUDA graphs read them in place, like parameters
        # The parameters are held (detached) so that their storage, part of the key, cannot be reused meanwhile.
        kept = (key, tensors, tuple(p.detach() for p in params))
        holder.__dict__[slot] = kept
    return kept[1]


def learner_pair_weights(visual: LoRRA, textual: LoRRA) -> tuple[torch.Tensor, ...]:
    """Both learners' query and output projections packed (see `packed_weights`; kept on `visual`):

    q_down [d, 2r] = [A_q^vis; A_q^txt]^T, q_up [2r, 2d] = block-diag(B_q^vis^T, B_q^txt^T),
    A_o^vis^T and A_o^txt^T [d, r], o_up [2r, d] = [B_o^vis^T; B_o^txt^T], o_down [2d, 2r] = block-diag(A_o^vis^T,
    A_o^txt^T) with its rows reordered from (learner, head, channel) to (head, learner, channel).
    """
    def build():
        rank, width = visual.rank, visual.hidden_size
        return (
            torch.cat((visual.q.down.weight, textual.q.down.weight)).t(),
            torch.block_diag(visual.q.up.weight.t(), textual.q.up.weight.t()),
            visual.o_down.weight.t(),
            textual.o_down.weight.t(),
            torch.cat((visual.o_up.weight, textual.o_up.weight), dim=1).t(),
            # Rows in (head, learner, channel) order: the joint attention's output is laid out that way.
            torch.block_diag(visual.o_down.weight.t(), textual.o_down.weight.t())
            .view(2, visual.num_heads, visual.head_dim, 2 * rank).transpose(0, 1).reshape(2 * width, 2 * rank),
        )

    return packed_weights(visual, "_packed_pair", visual.weights() + textual.weights(), build)


def mix_learners(
    visual: LoRRA,
    textual: LoRRA,
    hidden: torch.Tensor,
    rope: tuple[torch.Tensor, ...],
    kv: tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    masks: tuple[CrossAttentionMask, CrossAttentionMask],
    weights: torch.Tensor,
    joint: tuple[torch.Tensor, torch.Tensor, int] | None = None,
) -> torch.Tensor:
    """hidden + w_v * visual(hidden) + w_t * textual(hidden), the routed learners of one layer.

    hidden [B, T, d]; rope: the queries' tables from `rope_tables`; kv: each learner's K, V [B, H, N, d_h];
    masks: each learner's `CrossAttentionMask`; weights: the router's [B, T, 2] (w_v, w_t); joint: where the
    cache stores both learners' K/V side by side, those [B, H, N_vis + N_text, d_h] and N_vis
    (`LearnerCacheMixin.joint_learner_kv`). Returns [B, T, d].

    Chunks of at most `SHORT_QUERIES` tokens (decode steps) run both learners as one computation on packed
    weights (`learner_pair_weights`): one down- and one up-projection for both learners' queries, one RoPE,
    and the router's weights applied at rank r before one up-projection of both outputs that also adds the
    residual. Longer chunks run each learner as its module (forward hooks see its output), with both learners'
    queries rotated by one RoPE call and the mixing added in place.
    """
    batch, length, width = hidden.shape
    heads, head_dim = visual.num_heads, visual.head_dim
    flat = hidden.reshape(batch * length, width)
    if length <= SHORT_QUERIES:
        return _mix_short(visual, textual, hidden, flat, rope, kv, masks, weights, joint)
    q = torch.cat([visual.queries(flat), textual.queries(flat)], dim=-1)  # [B * T, 2 d]
    q = rotate(q.view(batch, length, 2 * heads, head_dim).transpose(1, 2), rope)  # [B, 2 H, T, d_h]
    outputs = [
        None if keys.shape[2] == 0  # no key anywhere (e.g. a text-only prompt for the visual learner): output 0
        else learner(hidden, None, None, keys, values, mask, queries=q[:, i * heads : (i + 1) * heads])
        for i, (learner, (keys, values), mask) in enumerate(zip((visual, textual), kv, masks))
    ]
    if all(out is not None for out in outputs):
        return mix_outputs(hidden, *outputs, weights)
    for i, out in enumerate(outputs):
        if out is not None:
            return torch.addcmul(hidden, weights[..., i : i + 1], out)
    return hidden


def _mix_short(visual, textual, hidden, flat, rope, kv, masks, weights, joint) -> torch.Tensor:
    """`mix_learners` for a short chunk, on packed weights. flat: hidden as [B * T, d]."""
    batch, length, width = hidden.shape
    heads, head_dim, rank = visual.num_heads, visual.head_dim, visual.rank
    q_down, q_up, o_down_visual, o_down_textual, o_up, o_down_both = learner_pair_weights(visual, textual)
    o_down = (o_down_visual, o_down_textual)
    # Both learners' queries h + B_q A_q h: [B * T, 2 d], the residual added by the block-diagonal up-projection.
    q = torch.addmm(torch.cat((flat, flat), dim=1), torch.mm(flat, q_down), q_up)
    q = rotate(q.view(batch, length, 2 * heads, head_dim).transpose(1, 2), rope)  # [B, 2 H, T, d_h]
    active = [i for i in (0, 1) if kv[i][0].shape[2] > 0]  # a learner without keys outputs zero
    if not active:
        return hidden
    # Router weight and "sees any key" (rows that see nothing output zero), applied at rank r.
    scale = weights.reshape(-1, 2) * masks_sees_any(masks, weights.dtype)  # [B * T, 2]
    if joint is not None and len(active) == 2:
        # Keys stored side by side (visual, then textual): each head's 2T queries (visual's, then textual's) attend
        # in one call, each seeing only its own learner's keys through the joint mask.
        keys, values, _ = joint
        n_keys = keys.shape[2]
        q = q.view(batch, 2, heads, length, head_dim).transpose(1, 2).reshape(batch * heads, 2 * length, head_dim)
        scores = torch.baddbmm(
            joint_mask(masks, q.dtype, heads), q, keys.reshape(batch * heads, n_keys, head_dim).transpose(1, 2),
            alpha=visual.scaling,
        )
        values = values if values.dtype == q.dtype else values.to(q.dtype)
        out = torch.bmm(torch.softmax(scores, dim=-1), values.reshape(batch * heads, n_keys, head_dim))
        # [B * H, 2T, d_h] -> [B * T, 2d] (head, learner, channel), then both A_o at once: [B * T, 2r].
        if length == 1:
            attended = out.view(batch, 2 * width)
        else:
            attended = out.view(batch, heads, 2, length, head_dim).permute(0, 3, 1, 2, 4).reshape(batch * length, 2 * width)
        down = torch.mm(attended, o_down_both).view(-1, 2, rank).mul_(scale.unsqueeze(-1)).view(-1, 2 * rank)
        return torch.addmm(flat, down, o_up).view(batch, length, width)
    downs = []
    for i in active:
        # softmax(q k^T * scale + mask) v by two batched matmuls over [B * H, ...] views of the cache.
        keys, values = kv[i]
        n_keys = keys.shape[2]
        scores = torch.baddbmm(
            masks[i].batched(q.dtype, heads),
            q[:, i * heads : (i + 1) * heads].reshape(batch * heads, length, head_dim),
            keys.reshape(batch * heads, n_keys, head_dim).transpose(1, 2),
            alpha=visual.scaling,
        )
        values = values if values.dtype == q.dtype else values.to(q.dtype)
        out = torch.bmm(torch.softmax(scores, dim=-1), values.reshape(batch * heads, n_keys, head_dim))
        if length == 1:
            attended = out.view(batch, width)
        else:
            attended = out.view(batch, heads, length, head_dim).transpose(1, 2).reshape(batch * length, width)
        downs.append(torch.mm(attended, o_down[i]))  # [B * T, r]
    # Router weight and "sees any key" (rows that see nothing output zero) applied at rank r, per learner.
    if len(active) == 2:
        down = torch.cat(downs, dim=1).view(-1, 2, rank).mul_(scale.unsqueeze(-1)).view(-1, 2 * rank)
        up = o_up
    else:
        i = active[0]
        down = downs[0].mul_(scale[:, i : i + 1])
        up = o_up[i * rank : (i + 1) * rank]
    return torch.addmm(flat, down, up).view(batch, length, width)


def joint_mask(masks: tuple[CrossAttentionMask, CrossAttentionMask], dtype: torch.dtype, heads: int) -> torch.Tensor:
    """The additive mask of both learners' queries over their keys side by side, [B * heads or 1, 2T, N_vis +
    N_text]: rows 0..T-1 (visual queries) see only visual keys, rows T..2T-1 only textual ones. Built once per
    forward (kept on the visual mask) and shared by every layer."""
    visual, textual = masks
    key = (dtype, heads)
    kept = visual._joint.get(key)
    if kept is None or kept[0] is not textual:
        vis, txt = visual.visible, textual.visible  # [B, T, N_vis], [B, T, N_text]
        visible = torch.cat((F.pad(vis, (0, txt.shape[2])), F.pad(txt, (vis.shape[2], 0))), dim=1)  # [B, 2T, N]
        additive = torch.where(visible, 0.0, torch.finfo(dtype).min)
        additive = additive if additive.dtype == dtype else additive.to(dtype)
        batch, rows, n_keys = additive.shape
        if batch > 1:
            additive = additive.unsqueeze(1).expand(batch, heads, rows, n_keys).reshape(batch * heads, rows, n_keys)
        kept = (textual, additive)
        visual._joint[key] = kept
    return kept[1]


def masks_sees_any(masks: tuple[CrossAttentionMask, CrossAttentionMask], dtype: torch.dtype) -> torch.Tensor:
    """[B * T, 2] of `dtype`: 1 where a query sees any key of the visual (column 0) / textual (1) learner.
    Built once per forward (kept on the visual mask) and shared by every layer."""
    visual, textual = masks
    kept = visual._pair_sees.get(dtype)
    if kept is None or kept[0] is not textual:
        kept = (textual, torch.cat((visual.sees_any, textual.sees_any), dim=-1).view(-1, 2).to(dtype))
        visual._pair_sees[dtype] = kept
    return kept[1]


class LowRankResidual(nn.Module):
    """x + B A x, with A: d -> r and B: r -> d (no bias)."""

    def __init__(self, hidden_size: int, rank: int):
        super().__init__()
        self.down = nn.Linear(hidden_size, rank, bias=False)
        self.up = nn.Linear(rank, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return residual_low_rank(x, self.down.weight, self.up.weight)


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

    def packed(self) -> tuple[torch.Tensor, ...]:
        """This learner's projections transposed for `mm` (see `packed_weights`): A_q^T [d, r], B_q^T [r, d],
        [A_k; A_v]^T [d, 2r] (one down-projection for keys and values), B_k^T, B_v^T [r, d], A_o^T [d, r],
        B_o^T [r, d], block-diag(B_k^T, B_v^T) [2r, 2d] (one up-projection for a few keys' K and V)."""
        def build():
            return (
                self.q.down.weight.t(), self.q.up.weight.t(),
                torch.cat((self.k.down.weight, self.v.down.weight)).t(), self.k.up.weight.t(), self.v.up.weight.t(),
                self.o_down.weight.t(), self.o_up.weight.t(), torch.block_diag(self.k.up.weight.t(), self.v.up.weight.t()),
            )

        return packed_weights(self, "_packed", self.weights(), build)

    def weights(self) -> tuple[nn.Parameter, ...]:
        """All of this learner's parameters, named one by one: `parameters()` walks the module tree, which costs
        more than a small decode step's arithmetic, and the packed weights look them up on every step."""
        return (self.q.down.weight, self.q.up.weight, self.k.down.weight, self.k.up.weight, self.v.down.weight,
                self.v.up.weight, self.o_down.weight, self.o_up.weight)

    def queries(self, flat: torch.Tensor) -> torch.Tensor:
        """h + B_q A_q h for flat hidden states [B * T, d] (before RoPE) -> [B * T, d]."""
        q_down, q_up = self.packed()[:2]
        return torch.addmm(flat, torch.mm(flat, q_down), q_up)

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
        packed = self.packed()
        kv_down, k_up, v_up = packed[2:5]
        down = torch.mm(flat, kv_down)  # [B * N, 2r]: the features are read once for K and V
        if n_keys <= SHORT_QUERIES:
            # A few keys (a decode step): K and V by one block-diagonal up-projection that also adds the residual.
            kv = torch.addmm(torch.cat((flat, flat), dim=1), down, packed[7])
            kv = kv.view(batch, n_keys, 2 * self.num_heads, self.head_dim).transpose(1, 2)  # [B, 2 H, N, d_h]
            return rotate(kv[:, : self.num_heads], rope), kv[:, self.num_heads :]
        k = torch.addmm(flat, down[:, :r], k_up).view(batch, n_keys, width)
        v = torch.addmm(flat, down[:, r:], v_up).view(batch, n_keys, width)
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
        o_down, o_up = self.packed()[5:7]
        down = torch.mm(attended, o_down).mul_(visible.sees_any_flat(attended.dtype))
        return torch.mm(down, o_up).view(batch, length, width)
