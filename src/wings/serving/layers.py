"""WINGS decoder-layer parts built from vLLM layers (parallel linears, RMSNorm, RoPE, paged `Attention`).

A WINGS decoder layer computes, per token (as `wings.modeling.decoder_layer` does):

    h = x + SelfAttn(LN_1(x))                           (also: per-head attention mass on image keys)
    h = h + w_v * visual_learner(h) + w_t * textual_learner(h)
    out = h + MLP(LN_2(h))

The learners of a layer share one vLLM `Attention` and its paged KV cache: a learner only ever
attends to keys of its own modality, so each token stores the key/value (computed from its layer-0
input) of its own modality's learner, and each learner's query heads read them through a mask
channel of `wings.serving.attention` that hides the other modality's keys. Each learner thus sees
exactly the keys of its modality at positions <= the query's, as in the Hugging Face model, for half
the cache of one cache per learner.

Tensor parallelism: the LLM parts are vLLM's; each learner is split by heads like the main attention
(the up-projections B_q, B_k, B_v by output columns, A_o by input rows, the rest replicated).
"""

from __future__ import annotations

import inspect

import torch
from torch import nn
from vllm.distributed import (
    get_tensor_model_parallel_rank,
    get_tensor_model_parallel_world_size,
    tensor_model_parallel_all_gather,
    tensor_model_parallel_all_reduce,
)
from vllm.config import get_current_vllm_config
from vllm.model_executor.layers.attention import Attention
from vllm.model_executor.layers.linear import QKVParallelLinear, RowParallelLinear
from vllm.model_executor.layers.rotary_embedding import get_rope
from vllm.model_executor.models.utils import extract_layer_index

from ..modeling.lorra import mix_outputs
from ..modeling.router import segment_route
from .attention import supported_head_size
from .families import config_flag, load_class, served_family


def attention_biases(text_config) -> tuple[bool, bool]:
    """(q/k/v bias, o bias) of the LLM, as its family's entry in `wings.families` says."""
    parts = served_family(text_config).vllm
    return config_flag(text_config, parts.qkv_bias), config_flag(text_config, parts.o_bias)


def llm_head_dim(text_config) -> int:
    """The LLM's attention head width: `head_dim` where the config sets it (Qwen3, Mistral Nemo, ...), else d/H.
    The learners' heads are always d/H wide."""
    return getattr(text_config, "head_dim", None) or text_config.hidden_size // text_config.num_attention_heads


def rope_at(text_config, head_size: int, prefix: str):
    """vLLM's rotary embedding of the layer named by `prefix` at `head_size` channels (the LLM's head_dim for the
    main attention, d/H for the learners), or None on a layer without RoPE. Configs that keep RoPE settings per
    layer type (Gemma 3's local and global layers) give the layer's own; vLLM caches rotary embeddings by their
    arguments, so equal settings share one object."""
    if not layer_uses_rope(text_config, prefix):
        return None
    parameters = getattr(text_config, "rope_parameters", None)
    layer_types = getattr(text_config, "layer_types", None)
    if parameters and layer_types and layer_types[extract_layer_index(prefix)] in parameters:
        parameters = parameters[layer_types[extract_layer_index(prefix)]]
    return get_rope(head_size, max_position=text_config.max_position_embeddings, rope_parameters=parameters,
                    is_neox_style=True)


def layer_sliding_window(text_config, prefix: str) -> int | None:
    """The sliding window of the layer named by `prefix` where `layer_types` says it is a sliding layer, else None
    (vLLM then applies the model-wide window of a model whose every layer slides, such as Mistral's)."""
    layer_types = getattr(text_config, "layer_types", None)
    if layer_types and layer_types[extract_layer_index(prefix)] == "sliding_attention":
        return text_config.sliding_window
    return None


def layer_uses_rope(text_config, prefix: str) -> bool:
    """False on the layers (named by `prefix`) that apply no RoPE: SmolLM3's NoPE layers, whose config lists 0
    for them under the attribute the family table names (`VllmParts.rope_layers`)."""
    attribute = served_family(text_config).vllm.rope_layers
    return bool(getattr(text_config, attribute)[extract_layer_index(prefix)]) if attribute else True


def learner_rope(text_config, prefix: str):
    """The learners' rotary embedding in the layer `prefix`: `rope_at` their head width d/H (None without RoPE)."""
    return rope_at(text_config, text_config.hidden_size // text_config.num_attention_heads, prefix)


def norm_class(text_config) -> type[nn.Module]:
    """The family's RMSNorm (vLLM's `RMSNorm`, or `GemmaRMSNorm`, which scales by 1 + w)."""
    return load_class(served_family(text_config).vllm.norm)


def sparse_layer(text_config, prefix: str) -> bool:
    """Whether the layer `prefix` has a mixture-of-experts MLP: families with a sparse block, on the layers their
    config does not keep dense (`mlp_only_layers`) and that fall on its `decoder_sparse_step` (Qwen-MoE's rule)."""
    if served_family(text_config).vllm.sparse_mlp is None or not getattr(text_config, "num_experts", 0):
        return False
    index = extract_layer_index(prefix)
    step = getattr(text_config, "decoder_sparse_step", 1) or 1
    return index not in (getattr(text_config, "mlp_only_layers", None) or ()) and (index + 1) % step == 0


def layer_mlp(text_config, vllm_config, prefix: str) -> nn.Module:
    """The family's MLP: its mixture-of-experts block on sparse layers (vLLM's fused MoE), else its gated MLP
    (gate_up_proj, down_proj), from the classes its table entry names."""
    parts = served_family(text_config).vllm
    if sparse_layer(text_config, prefix):
        return load_class(parts.sparse_mlp)(vllm_config=vllm_config, prefix=prefix)
    quant_config = vllm_config.quant_config
    cls = load_class(parts.mlp)
    kwargs = dict(quant_config=quant_config, prefix=prefix)
    if "bias" in inspect.signature(cls).parameters:
        kwargs["bias"] = bool(getattr(text_config, "mlp_bias", False))
    return cls(text_config.hidden_size, text_config.intermediate_size, getattr(text_config, parts.mlp_activation),
               **kwargs)


class WingsSelfAttention(nn.Module):
    """The LLM's self-attention; with `with_image_mass` it also returns each head's attention mass on image keys.

    Per-head RMSNorm of queries and keys (`q_norm`, `k_norm`, before RoPE) is applied where the family's
    `AttentionLayout` has it (`qk_norm="head"`). The mass rides in one extra value channel (1 on image keys), so the paged kernel computes it with
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
        self.head_dim = llm_head_dim(text_config)
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
        self.rotary_emb = rope_at(text_config, self.head_dim, prefix)  # None on layers without RoPE
        # q/k RMSNorm over each head's channels ("head": Qwen3) or over the whole projection ("projection": OLMo 2).
        self.qk_norm = served_family(text_config).attention.qk_norm
        if self.qk_norm == "projection" and tp_size > 1:
            raise ValueError(f"{prefix}: q/k norms over the whole projection are not split over tensor-parallel ranks")
        if self.qk_norm:
            q_width, k_width = (self.head_dim, self.head_dim) if self.qk_norm == "head" else (self.q_size, self.kv_size)
            self.q_norm = norm_class(text_config)(q_width, eps=text_config.rms_norm_eps)
            self.k_norm = norm_class(text_config)(k_width, eps=text_config.rms_norm_eps)
        family = served_family(text_config)
        parts = family.vllm
        scale = self.head_dim**-0.5
        if parts.attention_scale:  # Granite: attention_multiplier; Gemma: query_pre_attn_scalar ** -0.5
            scale = getattr(text_config, parts.attention_scale) ** parts.attention_scale_power
        softcap = getattr(text_config, family.attention.softcap) if family.attention.softcap else None
        self.attn = Attention(
            self.num_heads, self.padded, scale, num_kv_heads=self.num_kv_heads, cache_config=cache_config,
            quant_config=quant_config, logits_soft_cap=softcap,
            per_layer_sliding_window=layer_sliding_window(text_config, prefix), prefix=f"{prefix}.attn",
        )

    def forward(
        self, positions: torch.Tensor, x: torch.Tensor, is_image: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x [T, d] (normed), is_image [T] bool -> output after o_proj [T, d] and image mass [T, H] (or None)."""
        qkv, _ = self.qkv_proj(x)
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        if self.qk_norm == "head":
            q = self.q_norm(q.reshape(-1, self.num_heads, self.head_dim)).view(q.shape)
            k = self.k_norm(k.reshape(-1, self.num_kv_heads, self.head_dim)).view(k.shape)
        elif self.qk_norm == "projection":
            q, k = self.q_norm(q.contiguous()), self.k_norm(k.contiguous())
        if self.rotary_emb is not None:
            q, k = self.rotary_emb(positions, q, k)
        mass = None
        if self.with_image_mass:
            tokens, hd, heads, kv_heads = x.shape[0], self.head_dim, self.num_heads, self.num_kv_heads
            # q, k, v zero-padded in one buffer [T, H + 2 KV, padded] (the kernels take strided token rows).
            qkv = x.new_zeros(tokens, heads + 2 * kv_heads, self.padded)
            qkv[:, :heads, :hd] = q.view(tokens, heads, hd)
            qkv[:, heads: heads + kv_heads, :hd] = k.view(tokens, kv_heads, hd)
            qkv[:, heads + kv_heads:, :hd] = v.view(tokens, kv_heads, hd)
            qkv[:, heads + kv_heads:, hd] = is_image.to(x.dtype)[:, None]
            q, k, v = qkv.split([heads, kv_heads, kv_heads], dim=1)
            out = self.attn(q, k, v).view(tokens, self.num_heads, self.padded)
            mass = out[..., self.head_dim]
            if get_tensor_model_parallel_world_size() > 1:
                mass = tensor_model_parallel_all_gather(mass.contiguous(), dim=-1)
            attn_out = out[..., : self.head_dim].reshape(tokens, self.q_size)
        else:
            attn_out = self.attn(q, k, v)
        out, _ = self.o_proj(attn_out)
        return out, mass


class StackedWeight(nn.Module):
    """A checkpoint-named `weight` that is a view into a stack shared by all learners of a layer.

    The stacks let one matmul serve every learner; the per-learner views keep the saved names
    (`visual_learner.q.down.weight`, ...) and load in place. `split` = (dim, tensor-parallel width)
    narrows the saved weight to this rank's slice.
    """

    def __init__(self, view: torch.Tensor, split: tuple[int, int] | None = None):
        super().__init__()
        self.weight = nn.Parameter(view, requires_grad=False)
        self.weight.weight_loader = self._load
        self.split = split

    def _load(self, param: torch.Tensor, loaded: torch.Tensor) -> None:
        if self.split is not None:
            dim, width = self.split
            loaded = loaded.narrow(dim, get_tensor_model_parallel_rank() * width, width)
        if param.shape != loaded.shape:
            raise ValueError(f"learner weight of shape {tuple(loaded.shape)} does not fit {tuple(param.shape)}")
        param.data.copy_(loaded)


class LearnerNames(nn.Module):
    """One learner's parameter names (`q.down`, `q.up`, `k.*`, `v.*`, `o_down`, `o_up`), all views into stacks."""

    def __init__(self, parts: dict[str, StackedWeight]):
        super().__init__()
        for name in ("q", "k", "v"):
            block = nn.Module()
            block.down, block.up = parts[f"{name}.down"], parts[f"{name}.up"]
            self.add_module(name, block)
        self.o_down, self.o_up = parts["o_down"], parts["o_up"]


class LearnerKeysValues(nn.Module):
    """Every layer's learner keys/values, computed at once: they depend only on the layer-0 input f.

    For layer l and learner j: K = f + B_k A_k f (with RoPE), V = f + B_v A_v f, each token keeping its
    own modality's learner's (see `WingsLearners`), zero-padded with the key/value channels of
    `wings.serving.attention.learner_channels`. One matmul does all down-projections, one batched
    matmul all up-projections. The per-layer weights are views into the stacks held here.
    """

    def __init__(self, num_layers: int, hidden_size: int, num_heads: int, rank: int, count: int, ropes: list):
        """ropes: per layer with learners, its learners' rotary embedding (`learner_rope`; None without RoPE)."""
        super().__init__()
        # One rotation per distinct RoPE (Gemma 3: local and global layers), kept where the layer uses it.
        self.ropes = list({id(rope): rope for rope in ropes if rope is not None}.values())
        for i, rope in enumerate(self.ropes):
            mask = torch.tensor([other is rope for other in ropes])[:, None, None]
            self.register_buffer(f"rope_layers_{i}", mask, persistent=False)
        tp_size = get_tensor_model_parallel_world_size()
        self.num_layers, self.count, self.rank = num_layers, count, rank
        self.num_heads = num_heads // tp_size
        self.head_dim = hidden_size // num_heads
        self.width = self.num_heads * self.head_dim
        tp_rank = get_tensor_model_parallel_rank()
        self.columns = slice(tp_rank * self.width, (tp_rank + 1) * self.width)
        self.padded = supported_head_size(self.head_dim + count)
        dtype = torch.get_default_dtype()
        # Rows of `down`: (k|v, layer, learner, r); `up[k|v * L + layer]` holds the learners' B side by side,
        # so each token's own learner is picked in rank space (the other learner's r inputs set to zero).
        rows = 2 * num_layers * count * rank
        self.register_buffer("down", torch.empty(rows, hidden_size, dtype=dtype), persistent=False)
        self.register_buffer("up", torch.empty(2 * num_layers, self.width, count * rank, dtype=dtype), persistent=False)

    def layer_weights(self, index: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """The `index`-th layer's weight views {"j.k" | "j.v": (A [r, d], B [d/tp, r])} for learner j."""
        n, r, layers = self.count, self.rank, self.num_layers
        views = {}
        for which, name in enumerate("kv"):
            group = which * layers + index
            for j in range(n):
                row = (group * n + j) * r
                views[f"{j}.{name}"] = self.down[row: row + r], self.up[group, :, j * r: (j + 1) * r]
        return views

    def forward(self, positions: torch.Tensor, source: torch.Tensor, channels: torch.Tensor) -> torch.Tensor:
        """positions [T], source [T, d], channels [2, T, 1, n] (`learner_channels`; the value channels say which
        learner owns each token) -> [2 (k|v), L, T, H, padded]."""
        tokens, layers, n, r, hd = source.shape[0], self.num_layers, self.count, self.rank, self.head_dim
        down = torch.mm(source, self.down.t()).view(tokens, 2 * layers, n, r)
        if n > 1:
            down = down * channels[1, :, :, :, None]  # [T, 1, n, 1]: zero the other learner's rank inputs
        down = down.view(tokens, 2 * layers, n * r).transpose(0, 1)
        own_kv = torch.baddbmm(source[None, :, self.columns], down, self.up.transpose(1, 2))
        own_kv = own_kv.view(2, layers, tokens, self.width)
        # The rotated keys are taken from the return value: vLLM's RoPE is in place only in its custom kernels;
        # the native form (what a compiled model runs) returns new tensors.
        keys = own_kv[0]
        for i, rope in enumerate(self.ropes):
            rotated, _ = rope(positions.repeat(layers), own_kv[0].reshape(layers * tokens, self.width))
            keys = torch.where(getattr(self, f"rope_layers_{i}"), rotated.view(layers, tokens, self.width), keys)
        out = source.new_zeros(2, layers, tokens, self.num_heads, self.padded)
        out[0, ..., :hd] = keys.view(layers, tokens, self.num_heads, hd)
        out[1, ..., :hd] = own_kv[1].view(layers, tokens, self.num_heads, hd)
        out[..., hd: hd + n] = channels[:, None]
        return out


class WingsLearners(nn.Module):
    """The layer's n LoRRA learners (`wings.modeling.lorra.LoRRA`; n = 2 visual + textual, or 1 visual) on
    one paged KV cache.

    Learner j: Q = h + B_q A_q h, K = f + B_k A_k f, V = f + B_v A_v f (f: the token's layer-0 input),
    RoPE on Q and K, causal attention restricted to keys of its modality, out = B_o A_o attn; a query
    that sees no key of its modality outputs zero. A learner only ever reads keys of its own modality,
    so every token stores the key/value of its own modality's learner in one shared cache (KV heads H),
    read by n*H query heads (head h of learner j is query head h*n + j, grouped onto KV head h). Key
    channel d_h + j hides the keys of the other modality from learner j; value channel d_h + j carries
    "this key is learner j's", so that output channel tells whether the query sees any (see
    `wings.serving.attention`).

    All learners' down-projections run as one matmul, the up-projections as one batched matmul.
    """

    def __init__(self, hidden_size: int, num_heads: int, rank: int, count: int,
                 kv_weights: dict[str, tuple[torch.Tensor, torch.Tensor]], cache_config, prefix: str):
        """kv_weights: this layer's K/V weight views from `LearnerKeysValues.layer_weights`, which computes
        every layer's learner keys/values at once."""
        super().__init__()
        tp_size = get_tensor_model_parallel_world_size()
        if num_heads % tp_size:
            raise ValueError(f"{prefix}: {num_heads} learner heads do not split over tensor-parallel size {tp_size}")
        self.count, self.rank, self.hidden_size = count, rank, hidden_size
        self.num_heads = num_heads // tp_size
        self.head_dim = hidden_size // num_heads
        self.width = self.num_heads * self.head_dim  # this rank's columns of d
        tp_rank = get_tensor_model_parallel_rank()
        self.columns = slice(tp_rank * self.width, (tp_rank + 1) * self.width)
        self.padded = supported_head_size(self.head_dim + count)
        self.scale = self.head_dim**-0.5
        n, r, d, w = count, rank, hidden_size, self.width
        dtype = torch.get_default_dtype()
        # Stacks (not saved: the per-learner views below carry the checkpoint names).
        self.register_buffer("q_down", torch.empty(n * r, d, dtype=dtype), persistent=False)
        self.register_buffer("q_up", torch.empty(n, w, r, dtype=dtype), persistent=False)
        self.register_buffer("o_down", torch.empty(n, r, w, dtype=dtype), persistent=False)
        self.register_buffer("o_up", torch.empty(d, n, r, dtype=dtype), persistent=False)
        self.names: list[LearnerNames] = []  # a plain list: the decoder layer registers them under their names
        for j in range(n):
            parts = {
                "q.down": StackedWeight(self.q_down[j * r: (j + 1) * r]),
                "q.up": StackedWeight(self.q_up[j], split=(0, w)),
                "k.down": StackedWeight(kv_weights[f"{j}.k"][0]),
                "v.down": StackedWeight(kv_weights[f"{j}.v"][0]),
                "k.up": StackedWeight(kv_weights[f"{j}.k"][1], split=(0, w)),
                "v.up": StackedWeight(kv_weights[f"{j}.v"][1], split=(0, w)),
                "o_down": StackedWeight(self.o_down[j], split=(1, w)),
                "o_up": StackedWeight(self.o_up[:, j]),
            }
            self.names.append(LearnerNames(parts))
        # Query channel d_h + j of learner j holds 1/scale (scores of hidden keys drop by MASK_BIAS).
        query_channels = torch.zeros(1, self.num_heads, n, self.padded, dtype=dtype)
        for j in range(n):
            query_channels[..., j, self.head_dim + j] = 1.0 / self.scale
        self.register_buffer("query_channels", query_channels, persistent=False)
        # No cache_config: the learners attend over every earlier key of their modality, also where the LLM's
        # layers attend over a sliding window (as in the Hugging Face model), and their mask channel needs an
        # unquantised cache (a quantised one would clip -MASK_BIAS).
        self.attn = Attention(n * self.num_heads, self.padded, self.scale, num_kv_heads=self.num_heads,
                              prefix=f"{prefix}.attn")

    def forward(
        self, positions: torch.Tensor, hidden: torch.Tensor, key: torch.Tensor, value: torch.Tensor, rotary_emb
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """hidden [T, d] queries; key, value [T, H, padded] this layer's from `LearnerKeysValues` -> each learner's
        A_o attn [T, n, r] (summed over tensor-parallel ranks) and whether its query sees any key [T, n]."""
        tokens, n, r, hd, heads = hidden.shape[0], self.count, self.rank, self.head_dim, self.num_heads
        # Queries of all learners: [T, n*r] -> [n, T, w] -> + h, laid out [T, n, w].
        down = torch.mm(hidden, self.q_down.t()).view(tokens, n, r).transpose(0, 1)
        q = torch.bmm(down, self.q_up.transpose(1, 2)).transpose(0, 1) + hidden[:, None, self.columns]
        if rotary_emb is not None:  # None on layers without RoPE
            q, _ = rotary_emb(positions, q.reshape(tokens, n * self.width))  # the return value: see LearnerKeysValues
        query = self.query_channels.repeat(tokens, 1, 1, 1)
        query[..., :hd] = q.view(tokens, n, heads, hd).transpose(1, 2)
        out = self.attn(query.view(tokens, n * heads, self.padded), key, value)
        out = out.view(tokens, heads, n, self.padded)
        sees_any = torch.diagonal(out[:, 0, :, hd: hd + n], dim1=-2, dim2=-1) > 0.5
        # A_o per learner over this rank's heads: [n, T, w] @ [n, w, r] -> [n, T, r].
        attended = out[..., :hd].permute(2, 0, 1, 3).reshape(n, tokens, self.width)
        down = torch.bmm(attended, self.o_down.transpose(1, 2))
        if get_tensor_model_parallel_world_size() > 1:
            down = tensor_model_parallel_all_reduce(down)
        return down.transpose(0, 1), sees_any

    def outputs(self, down: torch.Tensor) -> list[torch.Tensor]:
        """Each learner's output B_o (A_o attn) (`wings.modeling.lorra.low_rank_out`, whose first factor `forward`
        computed and summed over tensor-parallel ranks): down [T, n, r] -> n tensors [T, d]."""
        return [torch.mm(down[:, j], self.o_up[:, j].t()) for j in range(self.count)]


class SegmentRouter(nn.Module):
    """`wings.modeling.router.SegmentRouter`'s parameters; its equation is `segment_route`, shared with it."""

    def __init__(self, num_heads: int):
        super().__init__()
        self.linear = nn.Linear(2 * num_heads, 2, bias=True)

    def forward(self, image_mass: torch.Tensor) -> torch.Tensor:
        """image_mass [T, H] -> weights (w_visual, w_textual) [T, 2]."""
        return segment_route(image_mass, self.linear.weight, self.linear.bias)


class WingsDecoderLayer(nn.Module):
    """A decoder layer of the LLM's family, built from its `wings.families` entry (norm placement, residual
    multiplier, q/k norms, RoPE or not), with WINGS learners where `kv_weights` is given; in vLLM's (hidden,
    residual) calling convention. Families without a vLLM decoder layer of their own run it without learners too.

        a = Attn(norm_1(x) or x);  h = x + m * (norm_a(a) or a);  h += learners(h)
        out = h + m * (norm_b(f) or f),  f = MLP(norm_2(h) or h)

    Parameter names are the LLM's own (`self_attn.*`, `mlp.*`, the norms the layout names) plus
    `visual_learner.*`, `textual_learner.*` and `router.*`, as in the saved checkpoints.
    """

    def __init__(self, config, kv_weights: dict[str, tuple[torch.Tensor, torch.Tensor]] | None, cache_config,
                 quant_config, prefix: str):
        """kv_weights: this layer's learner K/V weight views from `LearnerKeysValues.layer_weights`; None for a
        layer without learners."""
        super().__init__()
        text = config.text_config
        hidden, heads = text.hidden_size, text.num_attention_heads
        family = served_family(text)
        self.has_learners = kv_weights is not None
        self.routed = self.has_learners and config.learner_mode == "routed"
        multiplier = family.layout.residual_multiplier  # Granite scales both branches
        self.residual_multiplier = getattr(text, multiplier) if multiplier else 1.0
        self.self_attn = WingsSelfAttention(text, self.routed, cache_config, quant_config, f"{prefix}.self_attn")
        self.mlp = layer_mlp(text, get_current_vllm_config(), f"{prefix}.mlp")
        layout = family.layout
        self.norm_names = (layout.attention_norm, layout.attention_out_norm, layout.mlp_norm, layout.mlp_out_norm)
        for name in self.norm_names:
            if name is not None:
                self.add_module(name, norm_class(text)(hidden, eps=text.rms_norm_eps))
        if not self.has_learners:
            return
        self.learner_rotary_emb = learner_rope(text, prefix)  # None on layers without RoPE
        count = 2 if self.routed else 1  # stage-1 models ("visual_only") have no textual learner or router
        self.learners = WingsLearners(
            hidden, heads, config.learner_rank, count, kv_weights, cache_config, f"{prefix}.learners"
        )
        self.visual_learner = self.learners.names[0]
        if self.routed:
            self.textual_learner = self.learners.names[1]
            self.router = SegmentRouter(heads)

    def _norm(self, which: int, x: torch.Tensor) -> torch.Tensor:
        name = self.norm_names[which]
        return x if name is None else getattr(self, name)(x)

    def forward(
        self,
        positions: torch.Tensor,
        hidden_states: torch.Tensor,
        residual: torch.Tensor | None,
        is_image: torch.Tensor | None = None,
        key: torch.Tensor | None = None,
        value: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """hidden_states, residual [T, d] (their sum is the layer input); is_image [T] bool; key, value
        [T, H, padded] the learners' (this layer's slice of `LearnerKeysValues`). Returns (MLP output, residual
        stream) whose sum is the layer output."""
        x = hidden_states if residual is None else hidden_states + residual
        attn_out, mass = self.self_attn(positions, self._norm(0, x), is_image if self.routed else None)
        h = x + self.residual_multiplier * self._norm(1, attn_out)
        if self.has_learners:
            down, sees_any = self.learners(positions, h, key, value, self.learner_rotary_emb)
            # A learner whose query sees no key of its modality adds nothing (as in the Hugging Face model).
            weights = sees_any.to(h.dtype)
            outputs = self.learners.outputs(down)
            if self.routed:
                h = mix_outputs(h, *outputs, weights * self.router(mass).to(h.dtype))
            else:
                h = torch.addcmul(h, weights, outputs[0])
        return self.residual_multiplier * self._norm(3, self.mlp(self._norm(2, h))), h
