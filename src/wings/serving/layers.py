"""WINGS decoder-layer parts built from vLLM layers (parallel linears, RMSNorm, RoPE, paged `Attention`).

A WINGS decoder layer computes, per token (as `wings.modeling.decoder_layer` does):

    h = x + SelfAttn(LN_1(x))                           (also: per-head attention mass on image keys)
    h = h + w_v * visual_learner(h) + w_t * textual_learner(h)
    out = h + MLP(LN_2(h))

Each learner is a vLLM `Attention` with its own paged KV cache. Every token writes its key/value
(computed from its layer-0 input) to both learner caches; keys of the other modality are hidden by
the mask channel of `wings.serving.attention`, so each learner sees exactly the keys of its modality
at positions <= the query's, as in the Hugging Face model.

Tensor parallelism: the LLM parts are vLLM's; each learner is split by heads like the main attention
(the up-projections B_q, B_k, B_v by output columns, A_o by input rows, the rest replicated).
"""

from __future__ import annotations

import torch
from torch import nn
from vllm.distributed import (
    get_tensor_model_parallel_rank,
    get_tensor_model_parallel_world_size,
    tensor_model_parallel_all_gather,
)
from vllm.model_executor.layers.attention import Attention
from vllm.model_executor.layers.layernorm import RMSNorm
from vllm.model_executor.layers.linear import (
    ColumnParallelLinear,
    QKVParallelLinear,
    ReplicatedLinear,
    RowParallelLinear,
)
from vllm.model_executor.layers.rotary_embedding import get_rope
from vllm.model_executor.models.llama import LlamaMLP

from .attention import MASK_BIAS, pad_heads, supported_head_size


def attention_biases(text_config) -> tuple[bool, bool]:
    """(q/k/v bias, o bias) of the LLM family: Qwen2 has q/k/v biases; Llama/Mistral follow `attention_bias`."""
    if text_config.model_type == "qwen2":
        return True, False
    bias = bool(getattr(text_config, "attention_bias", False))
    return bool(getattr(text_config, "qkv_bias", bias)), bias


class WingsSelfAttention(nn.Module):
    """The LLM's self-attention; with `with_image_mass` it also returns each head's attention mass on image keys.

    The mass rides in one extra value channel (1 on image keys), so the paged kernel computes it with
    the output; queries and keys are zero-padded to the same width, which leaves the scores unchanged.
    """

    def __init__(self, text_config, with_image_mass: bool, cache_config, quant_config, prefix: str):
        super().__init__()
        tp_size = get_tensor_model_parallel_world_size()
        hidden = text_config.hidden_size
        self.total_num_heads = text_config.num_attention_heads
        self.total_num_kv_heads = getattr(text_config, "num_key_value_heads", None) or self.total_num_heads
        if self.total_num_heads % tp_size or (
            self.total_num_kv_heads % tp_size if self.total_num_kv_heads >= tp_size else tp_size % self.total_num_kv_heads
        ):
            raise ValueError(
                f"{prefix}: {self.total_num_heads} attention heads / {self.total_num_kv_heads} KV heads do not split "
                f"over tensor-parallel size {tp_size}"
            )
        self.num_heads = self.total_num_heads // tp_size
        self.num_kv_heads = max(1, self.total_num_kv_heads // tp_size)
        self.head_dim = hidden // self.total_num_heads
        self.q_size, self.kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        self.with_image_mass = with_image_mass
        self.padded = supported_head_size(self.head_dim + 1) if with_image_mass else self.head_dim
        qkv_bias, o_bias = attention_biases(text_config)
        self.qkv_proj = QKVParallelLinear(
            hidden, self.head_dim, self.total_num_heads, self.total_num_kv_heads,
            bias=qkv_bias, quant_config=quant_config, prefix=f"{prefix}.qkv_proj",
        )
        self.o_proj = RowParallelLinear(
            self.total_num_heads * self.head_dim, hidden, bias=o_bias, quant_config=quant_config,
            prefix=f"{prefix}.o_proj",
        )
        self.rotary_emb = get_rope(
            self.head_dim,
            max_position=text_config.max_position_embeddings,
            rope_parameters=getattr(text_config, "rope_parameters", None),
            is_neox_style=True,
        )
        self.attn = Attention(
            self.num_heads, self.padded, self.head_dim**-0.5, num_kv_heads=self.num_kv_heads,
            cache_config=cache_config, quant_config=quant_config, prefix=f"{prefix}.attn",
        )

    def forward(
        self, positions: torch.Tensor, x: torch.Tensor, is_image: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x [T, d] (normed), is_image [T] bool -> output after o_proj [T, d] and image mass [T, H] (or None)."""
        qkv, _ = self.qkv_proj(x)
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q, k = self.rotary_emb(positions, q, k)
        mass = None
        if self.with_image_mass:
            tokens = x.shape[0]
            q = pad_heads(q.reshape(tokens, self.num_heads, self.head_dim), self.padded)
            k = pad_heads(k.reshape(tokens, self.num_kv_heads, self.head_dim), self.padded)
            v = pad_heads(v.reshape(tokens, self.num_kv_heads, self.head_dim), self.padded, is_image)
            out = self.attn(q, k, v).view(tokens, self.num_heads, self.padded)
            mass = out[..., self.head_dim]
            if get_tensor_model_parallel_world_size() > 1:
                mass = tensor_model_parallel_all_gather(mass.contiguous(), dim=-1)
            attn_out = out[..., : self.head_dim].reshape(tokens, self.q_size)
        else:
            attn_out = self.attn(q, k, v)
        out, _ = self.o_proj(attn_out)
        return out, mass


class LowRankResidual(nn.Module):
    """x + B A x (A: d -> r replicated, B: r -> d split by output columns). Returns this rank's columns [T, d/tp]."""

    def __init__(self, hidden_size: int, rank: int, quant_config, prefix: str):
        super().__init__()
        self.down = ReplicatedLinear(hidden_size, rank, bias=False, quant_config=quant_config, prefix=f"{prefix}.down")
        self.up = ColumnParallelLinear(rank, hidden_size, bias=False, quant_config=quant_config, prefix=f"{prefix}.up")
        tp_rank, tp_size = get_tensor_model_parallel_rank(), get_tensor_model_parallel_world_size()
        width = hidden_size // tp_size
        self.columns = slice(tp_rank * width, (tp_rank + 1) * width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        down, _ = self.down(x)
        up, _ = self.up(down)
        return x[:, self.columns] + up


class WingsLearner(nn.Module):
    """One LoRRA learner (`wings.modeling.lorra.LoRRA`) on a paged KV cache of its own.

    Q = h + B_q A_q h, K = f + B_k A_k f, V = f + B_v A_v f (f: the token's layer-0 input), RoPE on Q and
    K at the tokens' positions, causal attention restricted to keys of one modality, out = B_o A_o attn.
    A query that sees no key of its modality outputs zero.
    """

    def __init__(self, hidden_size: int, num_heads: int, rank: int, cache_config, quant_config, prefix: str):
        super().__init__()
        tp_size = get_tensor_model_parallel_world_size()
        if num_heads % tp_size:
            raise ValueError(f"{prefix}: {num_heads} learner heads do not split over tensor-parallel size {tp_size}")
        self.num_heads = num_heads // tp_size
        self.head_dim = hidden_size // num_heads
        self.padded = supported_head_size(self.head_dim + 1)
        self.scale = self.head_dim**-0.5
        self.q = LowRankResidual(hidden_size, rank, quant_config, f"{prefix}.q")
        self.k = LowRankResidual(hidden_size, rank, quant_config, f"{prefix}.k")
        self.v = LowRankResidual(hidden_size, rank, quant_config, f"{prefix}.v")
        self.o_down = RowParallelLinear(
            hidden_size, rank, bias=False, input_is_parallel=True, quant_config=quant_config, prefix=f"{prefix}.o_down"
        )
        self.o_up = ReplicatedLinear(rank, hidden_size, bias=False, quant_config=quant_config, prefix=f"{prefix}.o_up")
        self.attn = Attention(
            self.num_heads, self.padded, self.scale, num_kv_heads=self.num_heads,
            cache_config=cache_config, quant_config=quant_config, prefix=f"{prefix}.attn",
        )

    def forward(
        self, positions: torch.Tensor, hidden: torch.Tensor, source: torch.Tensor, is_key: torch.Tensor, rotary_emb
    ) -> torch.Tensor:
        """hidden [T, d] queries, source [T, d] layer-0 inputs, is_key [T] bool (token is of this learner's
        modality) -> [T, d]."""
        tokens = hidden.shape[0]
        q, k = rotary_emb(positions, self.q(hidden), self.k(source))
        v = self.v(source)
        shape = (tokens, self.num_heads, self.head_dim)
        is_key = is_key.to(hidden.dtype)
        # Query channel 1/scale against key channel 0 (visible) or -MASK_BIAS (hidden): the score drops by MASK_BIAS.
        q = pad_heads(q.reshape(shape), self.padded, 1.0 / self.scale)
        k = pad_heads(k.reshape(shape), self.padded, (is_key - 1.0) * MASK_BIAS)
        # Value channel 1 on visible keys: its output is ~1 when the query sees a key of its modality, else 0.
        v = pad_heads(v.reshape(shape), self.padded, is_key)
        out = self.attn(q, k, v).view(tokens, self.num_heads, self.padded)
        sees_any = out[:, :1, self.head_dim] > 0.5
        down, _ = self.o_down(out[..., : self.head_dim].reshape(tokens, -1))
        up, _ = self.o_up(down * sees_any.to(down.dtype))
        return up


class SegmentRouter(nn.Module):
    """`wings.modeling.router.SegmentRouter`: softmax(Linear([mass, 1 - mass])) over the H heads' image mass."""

    def __init__(self, num_heads: int, quant_config, prefix: str):
        super().__init__()
        self.linear = ReplicatedLinear(2 * num_heads, 2, bias=True, quant_config=quant_config, prefix=f"{prefix}.linear")

    def forward(self, image_mass: torch.Tensor) -> torch.Tensor:
        """image_mass [T, H] -> weights (w_visual, w_textual) [T, 2]."""
        mass = image_mass.to(self.linear.weight.dtype)
        logits, _ = self.linear(torch.cat([mass, 1.0 - mass], dim=-1))
        return torch.softmax(logits, dim=-1)


class WingsDecoderLayer(nn.Module):
    """A Llama-family decoder layer with WINGS learners, in vLLM's (hidden, residual) calling convention.

    Parameter names are the LLM's own (`self_attn.*`, `mlp.*`, norms) plus `visual_learner.*`,
    `textual_learner.*` and `router.*`, as in the saved checkpoints.
    """

    def __init__(self, config, cache_config, quant_config, prefix: str):
        super().__init__()
        text = config.text_config
        hidden, heads = text.hidden_size, text.num_attention_heads
        self.routed = config.learner_mode == "routed"
        self.self_attn = WingsSelfAttention(text, self.routed, cache_config, quant_config, f"{prefix}.self_attn")
        self.mlp = LlamaMLP(
            hidden, text.intermediate_size, text.hidden_act, quant_config=quant_config,
            bias=bool(getattr(text, "mlp_bias", False)), prefix=f"{prefix}.mlp",
        )
        self.input_layernorm = RMSNorm(hidden, eps=text.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(hidden, eps=text.rms_norm_eps)
        rank = config.learner_rank
        self.visual_learner = WingsLearner(hidden, heads, rank, cache_config, quant_config, f"{prefix}.visual_learner")
        if self.routed:  # stage-1 models ("visual_only") never run the textual learner or the router
            self.textual_learner = WingsLearner(
                hidden, heads, rank, cache_config, quant_config, f"{prefix}.textual_learner"
            )
            self.router = SegmentRouter(heads, quant_config, f"{prefix}.router")

    def forward(
        self,
        positions: torch.Tensor,
        hidden_states: torch.Tensor,
        residual: torch.Tensor | None,
        source: torch.Tensor,
        is_image: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """hidden_states, residual [T, d] (their sum is the layer input); source [T, d] layer-0 inputs;
        is_image [T] bool. Returns (MLP output, residual stream) whose sum is the layer output."""
        x = hidden_states if residual is None else hidden_states + residual
        attn_out, mass = self.self_attn(positions, self.input_layernorm(x), is_image if self.routed else None)
        h = x + attn_out
        rope = self.self_attn.rotary_emb
        visual = self.visual_learner(positions, h, source, is_image, rope)
        if self.routed:
            textual = self.textual_learner(positions, h, source, ~is_image, rope)
            w = self.router(mass).to(h.dtype)
            h = torch.addcmul(h, w[:, :1], visual).addcmul_(w[:, 1:], textual)
        else:
            h = h + visual
        return self.mlp(self.post_attention_layernorm(h)), h
