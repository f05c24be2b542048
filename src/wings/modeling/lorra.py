"""LoRRA: Low-Rank Residual Attention, the block behind each WINGS learner.

    Q = h + B_q A_q h      K = f + B_k A_k f      V = f + B_v A_v f          (`residual_low_rank`)
    Q, K <- RoPE at each token's original position                           (`rope.rotate`)
    out  = B_o A_o [ softmax(Q K^T / sqrt(d_h) + M) V ]                      (`low_rank_out`)
    h   <- h + w_v * out_visual + w_t * out_textual                          (`mix_outputs`, router weights)

h: the hidden states at the learner's layer; f: the layer-0 inputs of the learner's keys (image tokens for
the visual learner, text tokens for the textual one); M hides keys after the query's position. A_* (d -> r)
start truncated-normal, B_* (r -> d) start at zero, so a fresh learner outputs exactly zero and a fresh WINGS
model computes what its LLM computes.

`LoRRA` below computes these equations for one learner; `wings.modeling.decode` runs both learners of a layer
as one computation for decode steps (tested equal to this module).
"""

from __future__ import annotations

import torch
from torch import nn

from .masked_attention import SHORT_QUERIES, CrossAttentionMask, cross_attention
from .packing import PackedWeights
from .rope import apply_rope, rope_tables, rotate  # noqa: F401  (apply_rope: imported from here by evaluation.laws)


class LowRankResidual(nn.Module):
    """x + B A x, with A: d -> r and B: r -> d (no bias)."""

    def __init__(self, hidden_size: int, rank: int):
        super().__init__()
        self.down = nn.Linear(hidden_size, rank, bias=False)
        self.up = nn.Linear(rank, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return residual_low_rank(x, self.down.weight, self.up.weight)


class LoRRA(PackedWeights):
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
        self._repack()

    @property
    def scaling(self) -> float:
        return self.head_dim**-0.5

    def forward(
        self,
        hidden: torch.Tensor,
        rope: tuple[torch.Tensor, ...],
        keys: torch.Tensor,
        values: torch.Tensor,
        visible: torch.Tensor | CrossAttentionMask,
    ) -> torch.Tensor:
        """Attend from hidden [B, T, d] to keys/values [B, H, N, d_h] (from `keys_values`); returns [B, T, d].

        rope: the queries' RoPE tables, prepared by `rope.rope_tables` from cos, sin [B or 1, T, d_h].
        visible: [B, T, N] bool, which keys each query may see, or the same prepared once as a
        `CrossAttentionMask` (shared by every layer). A query that sees no key gets a zero output (not NaN).
        """
        batch, length, width = hidden.shape
        if keys.shape[2] == 0:
            return hidden.new_zeros(hidden.shape)
        if not isinstance(visible, CrossAttentionMask):
            visible = CrossAttentionMask(visible)
        q = self.queries(hidden.reshape(batch * length, width)).view(batch, length, width)
        attended = cross_attention(rotate(self._heads(q), rope), keys, values, visible, self.scaling)
        # out = B_o A_o attended; zeroing rows that see nothing commutes with the bias-free A_o: done at width r.
        o_down, o_up = self.packed()[5:7]
        down = torch.mm(attended, o_down).mul_(visible.sees_any_flat(attended.dtype))
        return torch.mm(down, o_up).view(batch, length, width)

    def queries(self, flat: torch.Tensor) -> torch.Tensor:
        """Q = h + B_q A_q h for flat hidden states [B * T, d] (before RoPE) -> [B * T, d]."""
        q_down, q_up = self.packed()[:2]
        return torch.addmm(flat, torch.mm(flat, q_down), q_up)

    def keys_values(
        self, features: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """K = f + B_k A_k f, V = f + B_v A_v f for features [B, N, d] with RoPE tables cos, sin [B, N, d_h] at the
        keys' positions -> K (rotated), V [B, H, N, d_h]."""
        return self.project_keys(features, rope_tables(cos, sin))

    def project_keys(self, features: torch.Tensor, rope: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """`keys_values` with the keys' RoPE tables already prepared by `rope.rope_tables`."""
        batch, n_keys, width = features.shape
        flat = features.reshape(batch * n_keys, width)
        packed = self.packed()
        down = torch.mm(flat, packed[2])  # [B * N, 2r]: the features are read once for K and V
        if n_keys <= SHORT_QUERIES:
            # A few keys (a decode step): K and V by one block-diagonal up-projection that also adds the residual.
            kv = torch.addmm(torch.cat((flat, flat), dim=1), down, packed[7])
            kv = kv.view(batch, n_keys, 2 * self.num_heads, self.head_dim).transpose(1, 2)  # [B, 2 H, N, d_h]
            return rotate(kv[:, : self.num_heads], rope), kv[:, self.num_heads :]
        k = torch.addmm(flat, down[:, : self.rank], packed[3]).view(batch, n_keys, width)
        v = torch.addmm(flat, down[:, self.rank :], packed[4]).view(batch, n_keys, width)
        return rotate(self._heads(k), rope), self._heads(v)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """[B, N, d] -> [B, H, N, d_h]."""
        return x.view(*x.shape[:2], self.num_heads, self.head_dim).transpose(1, 2)

    def weights(self) -> tuple[nn.Parameter, ...]:
        return (self.q.down.weight, self.q.up.weight, self.k.down.weight, self.k.up.weight, self.v.down.weight,
                self.v.up.weight, self.o_down.weight, self.o_up.weight)

    def build_packed(self) -> tuple[torch.Tensor, ...]:
        """The projections transposed for `mm`: A_q^T [d, r], B_q^T [r, d], [A_k; A_v]^T [d, 2r] (one down-projection
        for keys and values), B_k^T, B_v^T [r, d], A_o^T [d, r], B_o^T [r, d], block-diag(B_k^T, B_v^T) [2r, 2d]
        (one up-projection for a few keys' K and V)."""
        return (
            self.q.down.weight.t(), self.q.up.weight.t(),
            torch.cat((self.k.down.weight, self.v.down.weight)).t(), self.k.up.weight.t(), self.v.up.weight.t(),
            self.o_down.weight.t(), self.o_up.weight.t(), torch.block_diag(self.k.up.weight.t(), self.v.up.weight.t()),
        )


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
