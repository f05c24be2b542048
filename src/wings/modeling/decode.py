"""The decode fast path: both learners of a layer as one computation, for chunks of a few tokens.

It computes what the modules do (`LoRRA` twice, then `lorra.mix_outputs`), rearranged for fewer kernels:

- both learners' queries h + B_q A_q h by one down- and one block-diagonal up-projection, one RoPE;
- where the cache keeps both learners' keys side by side (`LearnerCacheMixin.joint_learner_kv`), one attention
  call for both, each learner's queries seeing only its own keys through `PairMask.joint`;
- the router's weights and "sees any key" applied at rank r, before one up-projection of both outputs that
  also adds the residual.

The packed weights (`pair_weights`) are owned by the decoder layer (`packing.PackedWeights`).
"""

from __future__ import annotations

import torch

from .lorra import LoRRA
from .masked_attention import PairMask, short_attention
from .rope import rotate


def pair_weights(visual: LoRRA, textual: LoRRA) -> tuple[torch.Tensor, ...]:
    """Both learners' query and output projections packed:

    q_down [d, 2r] = [A_q^vis; A_q^txt]^T, q_up [2r, 2d] = block-diag(B_q^vis^T, B_q^txt^T),
    A_o^vis^T and A_o^txt^T [d, r], o_up [2r, d] = [B_o^vis^T; B_o^txt^T], o_down [2d, 2r] = block-diag(A_o^vis^T,
    A_o^txt^T) with its rows reordered from (learner, head, channel) to (head, learner, channel).
    """
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


def mix_short(
    visual: LoRRA,
    packed: tuple[torch.Tensor, ...],
    hidden: torch.Tensor,
    rope: tuple[torch.Tensor, ...],
    kv: tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    masks: PairMask,
    weights: torch.Tensor,
    joint: tuple[torch.Tensor, torch.Tensor, int] | None = None,
) -> torch.Tensor:
    """hidden + w_v * visual(hidden) + w_t * textual(hidden) for a short chunk hidden [B, T, d] -> [B, T, d].

    visual: the visual learner (its shapes and scale; both learners have the same); packed: `pair_weights`;
    rope: the queries' tables from `rope.rope_tables`; kv: each learner's K, V [B, H, N, d_h]; masks: the
    learners' masks; weights: the router's [B, T, 2] (w_v, w_t); joint: where the cache stores both learners'
    K/V side by side, those [B, H, N_vis + N_text, d_h] and N_vis.
    """
    batch, length, width = hidden.shape
    heads, head_dim, rank = visual.num_heads, visual.head_dim, visual.rank
    q_down, q_up, o_down_visual, o_down_textual, o_up, o_down_both = packed
    flat = hidden.reshape(batch * length, width)
    # Both learners' queries h + B_q A_q h: [B * T, 2 d], the residual added by the block-diagonal up-projection.
    q = torch.addmm(torch.cat((flat, flat), dim=1), torch.mm(flat, q_down), q_up)
    q = rotate(q.view(batch, length, 2 * heads, head_dim).transpose(1, 2), rope)  # [B, 2 H, T, d_h]
    active = [i for i in (0, 1) if kv[i][0].shape[2] > 0]  # a learner without keys outputs zero
    if not active:
        return hidden
    # Router weight and "sees any key" (rows that see nothing output zero), applied at rank r.
    scale = weights.reshape(-1, 2) * masks.sees_any(weights.dtype)  # [B * T, 2]
    if joint is not None and len(active) == 2:
        # Keys stored side by side (visual, then textual): each head's 2T queries (visual's, then textual's) attend
        # in one call, each seeing only its own learner's keys through the joint mask.
        keys, values, _ = joint
        q = q.view(batch, 2, heads, length, head_dim).transpose(1, 2).reshape(batch * heads, 2 * length, head_dim)
        out = short_attention(q, keys, values, masks.joint(q.dtype, heads), visual.scaling)
        # [B * H, 2T, d_h] -> [B * T, 2d] (head, learner, channel), then both A_o at once: [B * T, 2r].
        if length == 1:
            attended = out.view(batch, 2 * width)
        else:
            attended = out.view(batch, heads, 2, length, head_dim).permute(0, 3, 1, 2, 4).reshape(batch * length, 2 * width)
        down = torch.mm(attended, o_down_both).view(-1, 2, rank).mul_(scale.unsqueeze(-1)).view(-1, 2 * rank)
        return torch.addmm(flat, down, o_up).view(batch, length, width)
    o_down = (o_down_visual, o_down_textual)
    downs = []
    for i in active:
        mask = (masks.visual, masks.textual)[i].batched(q.dtype, heads)
        out = short_attention(
            q[:, i * heads : (i + 1) * heads].reshape(batch * heads, length, head_dim), *kv[i], mask, visual.scaling
        )
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
