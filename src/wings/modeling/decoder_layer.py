"""`WingsDecoderLayer`: owns an HF decoder layer and runs its block with the learners.

    h = x + Attn-branch(x)                                          (the family's norms, multipliers)
    h = h + w_v * visual_learner(h) + w_t * textual_learner(h)     (router weights, token-wise)
    out = h + MLP-branch(h)

Where the norms sit around each branch (pre-norm, sandwich, post-norm), any residual dropout or
multiplier, and how the attention builds its queries and keys, come from the family's description in
`wings.families`. The original layer's modules are used as they are (never patched): the wrapper
adopts them as its own children, under their own names, and adds `visual_learner`, `textual_learner`
and `router` beside them. So a wrapped layer's LLM weights keep the plain LLM's checkpoint keys
(`layers.N.self_attn.q_proj.weight`) and the LLM part of a WINGS checkpoint loads into the plain LLM.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer

from ..errors import UnsupportedLayerError
from ..families import PRE_NORM, TEXT_FAMILIES, TextFamily, text_family
from ..compat import layer_cache
from .attention import AttentionNeeds, main_attention, uses_rope
from .decode import mix_short, pair_weights
from .lorra import LoRRA, mix_outputs
from .masked_attention import SHORT_QUERIES
from .packing import PackedWeights
from .plan import LEARNER_KINDS, ForwardPlan
from .rope import LearnerRope, identity_tables
from .router import make_router

LLAMA_FAMILY = TextFamily(PRE_NORM)
REQUIRED_ATTENTION_ATTRIBUTES = ("head_dim", "scaling", "layer_idx", "config")


def check_layer(layer: nn.Module, layer_idx: int, family: TextFamily = LLAMA_FAMILY) -> None:
    """Raise a clear error naming the parts a decoder layer lacks for the family's block layout."""
    layout, attention = family.layout, family.attention
    in_block_order = (layout.attention_norm, "self_attn", layout.attention_out_norm, layout.attention_dropout,
                      layout.mlp_norm, "mlp", layout.mlp_out_norm, layout.mlp_dropout)
    missing = [p for p in in_block_order if p is not None and not hasattr(layer, p)]
    if not missing:
        missing = [f"self_attn.{p}" for p in (*attention.modules, *REQUIRED_ATTENTION_ATTRIBUTES)
                   if not hasattr(layer.self_attn, p)]
        for attribute in (attention.softcap, attention.rope_switch):
            if attribute and not hasattr(layer.self_attn, attribute):
                missing.append(f"self_attn.{attribute}")
    if missing:
        raise UnsupportedLayerError(
            f"decoder layer {layer_idx} ({type(layer).__name__}) lacks {', '.join(missing)}, which the "
            f"'{layout.name}' block layout WINGS runs needs (norms {', '.join(layout.modules)}; attention parts "
            f"{', '.join(attention.modules)}); describe its family in wings.families.TEXT_FAMILIES."
        )
    if attention.qk_norm is None and any(hasattr(layer.self_attn, p) for p in ("q_norm", "k_norm")):
        raise UnsupportedLayerError(
            f"decoder layer {layer_idx} ({type(layer).__name__}) normalises queries/keys (q_norm/k_norm), but its "
            "family's AttentionLayout declares no qk_norm; set qk_norm='head' or 'projection' in wings.families."
        )


def check_llama_family_layer(layer: nn.Module, layer_idx: int) -> None:
    """For code that recomputes a layer's attention the Llama way (separate q/k/v projections, RoPE on every
    layer, no q/k norms, no softcap): `check_layer` with Llama's layout, and a refusal of families whose
    attention differs although their modules have Llama's names (Gemma 2's softcap, SmolLM3's NoPE layers)."""
    check_layer(layer, layer_idx, LLAMA_FAMILY)
    model_type = getattr(getattr(layer.self_attn, "config", None), "model_type", None)
    family = TEXT_FAMILIES.get(model_type)
    if family is not None and family.attention != LLAMA_FAMILY.attention:
        raise UnsupportedLayerError(
            f"decoder layer {layer_idx} ({type(layer).__name__}): {model_type} attention ({family.notes}) is not the "
            "Llama attention this code recomputes."
        )


class WingsDecoderLayer(PackedWeights, GradientCheckpointingLayer):
    """A decoder layer with WINGS learners.

    Args:
        decoder_layer: the original HF decoder layer; its child modules (`input_layernorm`, `self_attn`,
            `post_attention_layernorm`, `mlp`, ...) become this layer's children under the same names.
        hidden_size, num_heads: the LLM's d and H.
        rank: LoRRA rank; router: "segment" or "positional"; router_max_positions: positional router width.
        family: the LLM family's description (block layout, attention layout); Llama's by default.
        learner_rope: tables for learner heads narrower or wider than the LLM's heads (None: the layer's
            own RoPE tables fit the learners).
        layer_type: the layer's entry of the LLM's `layer_types` (which RoPE a Gemma 3 layer uses).

    Its packed weights (`packing.PackedWeights`) are both learners' query and output projections, for the
    decode path (`decode.pair_weights`).
    """

    def __init__(
        self,
        decoder_layer: nn.Module,
        hidden_size: int,
        num_heads: int,
        rank: int,
        router: str,
        router_max_positions: int,
        family: TextFamily = LLAMA_FAMILY,
        learner_rope: LearnerRope | None = None,
        layer_type: str | None = None,
    ):
        super().__init__()
        check_layer(decoder_layer, getattr(getattr(decoder_layer, "self_attn", None), "layer_idx", -1), family)
        self.family, self.learner_rope, self.layer_type = family, learner_rope, layer_type
        for name, child in decoder_layer.named_children():
            self.add_module(name, child)
        # Non-module attributes the decoder reads per layer (e.g. sliding vs full attention).
        if hasattr(decoder_layer, "attention_type"):
            self.attention_type = decoder_layer.attention_type
        self.visual_learner = LoRRA(hidden_size, num_heads, rank)
        self.textual_learner = LoRRA(hidden_size, num_heads, rank)
        self.router = make_router(router, num_heads, router_max_positions)
        # Which RoPE tables the learners rotate with, as the forward plan names them: the layer's own (shared with
        # its attention), tables of the learners' head width, or none (a NoPE layer). Layers of one type receive
        # the same tables from the decoder.
        if not uses_rope(self.self_attn, family.attention):
            self.rope_key: tuple = ("none", layer_type)
        else:
            self.rope_key = ("layer" if learner_rope is None else "learner", layer_type)

    @property
    def layer_idx(self) -> int:
        return self.self_attn.layer_idx

    def reset_learners(self, std: float) -> None:
        self.visual_learner.reset_parameters(std)
        self.textual_learner.reset_parameters(std)
        self.router.reset_parameters(std)
        self._repack()

    def weights(self) -> tuple[nn.Parameter, ...]:
        return self.visual_learner.weights() + self.textual_learner.weights()

    def build_packed(self) -> tuple[torch.Tensor, ...]:
        return pair_weights(self.visual_learner, self.textual_learner)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        use_cache: bool | None = False,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        learner_inputs: ForwardPlan | None = None,
        **kwargs,
    ) -> torch.Tensor:
        """hidden_states [B, T, d] -> [B, T, d]. `learner_inputs` is the forward pass's `plan.ForwardPlan`; without
        it the layer computes what the LLM computes."""
        cache = layer_cache(cache, kwargs)
        plan, layout = learner_inputs, self.family.layout
        attn_in = self._run(layout.attention_norm, hidden_states)
        attn_out, image_mass, weights = main_attention(
            self.self_attn, attn_in, position_embeddings, attention_mask, cache, layout=self.family.attention,
            needs=self._attention_needs(plan, position_embeddings, hidden_states.shape[1]),
            position_ids=position_ids,  # as the HF layer passes them: flash kernels read packed rows off them
            **kwargs,
        )
        hidden = hidden_states + self._branch(attn_out, layout.attention_out_norm, layout.attention_dropout)
        if plan is not None:
            if plan.attentions is not None:
                plan.attentions[self.layer_idx] = weights
            hidden = self._learners(hidden, plan, position_embeddings, weights if self.positional else image_mass)
        mlp_out = self.mlp(self._run(layout.mlp_norm, hidden))
        return hidden + self._branch(mlp_out, layout.mlp_out_norm, layout.mlp_dropout)

    @property
    def positional(self) -> bool:
        return self.router.needs_attention_weights

    def _attention_needs(self, plan: ForwardPlan | None, position_embeddings, length: int) -> AttentionNeeds:
        """What the main attention must return (image mass, weights) and the RoPE tables it may reuse."""
        if plan is None:
            return AttentionNeeds()
        routed = plan.routed
        mass = routed and not self.positional
        needs = AttentionNeeds(
            key_is_image=plan.key_is_image if mass else None,
            need_weights=(routed and self.positional) or plan.attentions is not None,
            key_end=plan.key_end,
        )
        if self.rope_key[0] == "layer":  # same head width and rotation: one prepared copy for attention and learners
            needs.rope = plan.query_rope(self.rope_key, *position_embeddings)
            if mass and length == 1:  # single-query decode: the attention scale folded into the rotation
                needs.scaled_rope = plan.scaled_query_rope(self.rope_key, *position_embeddings, self.self_attn.scaling)
        return needs

    def _run(self, name: str | None, x: torch.Tensor) -> torch.Tensor:
        return x if name is None else getattr(self, name)(x)

    def _branch(self, out: torch.Tensor, norm: str | None, dropout: str | None) -> torch.Tensor:
        """A branch's output as the block adds it to the residual: normed, dropped out, multiplied."""
        out = self._run(dropout, self._run(norm, out))
        multiplier = self.family.layout.residual_multiplier
        return out if multiplier is None else out * getattr(self.self_attn.config, multiplier)

    def _learner_rope(self, plan: ForwardPlan, position_embeddings, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """The learners' RoPE tables cos, sin [B or 1, T, d/H]: the layer's rotation at the learners' head width."""
        kind = self.rope_key[0]
        if kind == "layer":
            return position_embeddings
        if kind == "none":
            return plan.derive(("tables", self.rope_key), lambda: identity_tables(position_embeddings, self.visual_learner.head_dim))
        return plan.derive(
            ("tables", self.rope_key), lambda: self.learner_rope.tables(plan.position_ids, self.layer_type, dtype)
        )

    def _learners(self, hidden: torch.Tensor, plan: ForwardPlan, position_embeddings, router_input) -> torch.Tensor:
        """hidden [B, T, d] plus the learners' outputs: routed (both, mixed by the router) or visual only."""
        cos, sin = self._learner_rope(plan, position_embeddings, hidden.dtype)
        rope = plan.query_rope(self.rope_key, cos, sin)
        visual_kv = plan.keys_values("visual", self.layer_idx, self.visual_learner, self.rope_key, cos, sin)
        if not plan.routed:
            return hidden + self.visual_learner(hidden, rope, *visual_kv, plan.mask("visual"))
        textual_kv = plan.keys_values("textual", self.layer_idx, self.textual_learner, self.rope_key, cos, sin)
        route = self.router(router_input)
        route = route if route.dtype == hidden.dtype else route.to(hidden.dtype)
        if hidden.shape[1] <= SHORT_QUERIES:
            joint = plan.cache.joint_learner_kv(self.layer_idx) if plan.cache is not None else None
            return mix_short(
                self.visual_learner, self.packed(), hidden, rope, (visual_kv, textual_kv), plan.pair_mask(), route, joint
            )
        # Longer chunks run each learner as its module (forward hooks see its output); a learner without keys
        # (e.g. the visual one on a text-only prompt) outputs zero.
        visual = self.visual_learner(hidden, rope, *visual_kv, plan.mask("visual")) if visual_kv[0].shape[2] else None
        textual = self.textual_learner(hidden, rope, *textual_kv, plan.mask("textual")) if textual_kv[0].shape[2] else None
        if visual is None:
            return hidden if textual is None else torch.addcmul(hidden, route[..., 1:], textual)
        if textual is None:
            return torch.addcmul(hidden, route[..., :1], visual)
        return mix_outputs(hidden, visual, textual, route)


def wrap_decoder_layers(layers: nn.ModuleList, language_model: nn.Module, config) -> None:
    """Replace the decoder layers `config.layers_with_learners` of `layers` by `WingsDecoderLayer`s (in place).

    config: the `WingsConfig`. The family description comes from the text config's model type; the learners
    get their own RoPE tables when their head width d/H differs from the LLM's heads.
    """
    text = config.text_config
    family = text_family(text.model_type)
    learner_head_dim = text.hidden_size // text.num_attention_heads
    llm_head_dim = getattr(text, "head_dim", None) or learner_head_dim
    learner_rope = None
    if learner_head_dim != llm_head_dim:
        rotary = getattr(language_model.get_decoder(), "rotary_emb", None)
        if rotary is None:
            raise UnsupportedLayerError(
                f"{type(language_model).__name__} has no `model.rotary_emb`: the learners' heads ({learner_head_dim} "
                f"channels) differ from the LLM's ({llm_head_dim}), and WINGS builds their RoPE with the LLM's rotary class."
            )
        learner_rope = LearnerRope(type(rotary), text, learner_head_dim)
    layer_types = getattr(text, "layer_types", None)
    for i in config.layers_with_learners:
        layers[i] = WingsDecoderLayer(
            layers[i],
            text.hidden_size,
            text.num_attention_heads,
            config.learner_rank,
            config.router,
            config.router_max_positions,
            family=family,
            learner_rope=learner_rope,
            layer_type=layer_types[i] if layer_types else None,
        )


__all__ = ["WingsDecoderLayer", "check_layer", "check_llama_family_layer", "wrap_decoder_layers", "LEARNER_KINDS"]
