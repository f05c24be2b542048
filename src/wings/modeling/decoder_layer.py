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
from .attention import main_attention, uses_rope
from .cache import LEARNER_KINDS, LearnerInputs
from .lorra import LoRRA, mix_learners
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


class WingsDecoderLayer(GradientCheckpointingLayer):
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

    @property
    def layer_idx(self) -> int:
        return self.self_attn.layer_idx

    def reset_learners(self, std: float) -> None:
        self.visual_learner.reset_parameters(std)
        self.textual_learner.reset_parameters(std)
        self.router.reset_parameters(std)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        use_cache: bool | None = False,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        learner_inputs: LearnerInputs | None = None,
        **kwargs,
    ) -> torch.Tensor:
        """hidden_states [B, T, d] -> [B, T, d]. Without `learner_inputs` the layer computes what the LLM computes."""
        if cache is None:  # transformers < 5.20 passes the cache as `past_key_values`
            cache = kwargs.pop("past_key_values", None)
        layout = self.family.layout
        routed = learner_inputs is not None and learner_inputs.mode == "routed"
        positional = self.router.needs_attention_weights
        asked = learner_inputs is not None and learner_inputs.attentions is not None
        need_weights = (routed and positional) or asked
        key_is_image = learner_inputs.key_is_image if routed and not positional else None
        attn_in = self._run(layout.attention_norm, hidden_states)
        learner_rope = None
        main_rope = scaled_rope = None
        if learner_inputs is not None:
            learner_rope = self._learner_rope(position_embeddings, position_ids, hidden_states.dtype)
            if self.shares_rope:  # same head width and rotation: one prepared copy for the main attention and learners
                main_rope = learner_inputs.query_rope(*position_embeddings)
                if key_is_image is not None and hidden_states.shape[1] == 1:  # single-query decode: scale folded in
                    scaled_rope = learner_inputs.scaled_query_rope(*position_embeddings, self.self_attn.scaling)
        attn_out, image_mass, weights = main_attention(
            self.self_attn,
            attn_in,
            position_embeddings,
            attention_mask,
            cache,
            key_is_image=key_is_image,
            need_weights=need_weights,
            layout=self.family.attention,
            rope=main_rope,
            scaled_rope=scaled_rope,
            key_end=None if learner_inputs is None else learner_inputs.key_end,
            **kwargs,
        )
        hidden = hidden_states + self._branch(attn_out, layout.attention_out_norm, layout.attention_dropout)
        if asked:
            learner_inputs.attentions[self.layer_idx] = weights
        if learner_inputs is not None:
            hidden = self._learners(hidden, learner_rope, learner_inputs, weights, image_mass, routed, positional)
        mlp_out = self.mlp(self._run(layout.mlp_norm, hidden))
        return hidden + self._branch(mlp_out, layout.mlp_out_norm, layout.mlp_dropout)

    def _run(self, name: str | None, x: torch.Tensor) -> torch.Tensor:
        return x if name is None else getattr(self, name)(x)

    def _branch(self, out: torch.Tensor, norm: str | None, dropout: str | None) -> torch.Tensor:
        """A branch's output as the block adds it to the residual: normed, dropped out, multiplied."""
        out = self._run(dropout, self._run(norm, out))
        multiplier = self.family.layout.residual_multiplier
        return out if multiplier is None else out * getattr(self.self_attn.config, multiplier)

    @property
    def shares_rope(self) -> bool:
        """True when the learners rotate with the layer's own RoPE tables (a RoPE layer whose heads have the
        learners' width), so that the main attention and the learners share one prepared copy."""
        return self.learner_rope is None and uses_rope(self.self_attn, self.family.attention)

    def _learner_rope(
        self, position_embeddings: tuple[torch.Tensor, torch.Tensor], position_ids: torch.Tensor | None, dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The learners' RoPE tables [B or 1, T, d/H]: the layer's rotation at the learners' head width."""
        head_dim = self.visual_learner.head_dim
        if not uses_rope(self.self_attn, self.family.attention):
            return identity_tables(position_embeddings, head_dim)
        if self.learner_rope is None:
            return position_embeddings
        return self.learner_rope.tables(position_ids, self.layer_type, dtype)

    def _learners(self, hidden, rope_cos_sin, inputs: LearnerInputs, weights, image_mass, routed, positional):
        """hidden [B, T, d] plus the learners' outputs: routed (both, mixed by the router) or visual only.

        rope_cos_sin: the learners' RoPE tables cos, sin [B or 1, T, d/H] (from `_learner_rope`)."""
        cos, sin = rope_cos_sin
        rope = inputs.query_rope(cos, sin)
        visual_kv = inputs.keys_values("visual", self.layer_idx, self.visual_learner, cos, sin)
        if not routed:
            visual = self.visual_learner(hidden, cos, sin, *visual_kv, inputs.keys["visual"].mask, rope=rope)
            return hidden + visual
        textual_kv = inputs.keys_values("textual", self.layer_idx, self.textual_learner, cos, sin)
        w = self.router(weights if positional else image_mass)
        w = w if w.dtype == hidden.dtype else w.to(hidden.dtype)
        masks = (inputs.keys["visual"].mask, inputs.keys["textual"].mask)
        joint = inputs.cache.joint_learner_kv(self.layer_idx) if inputs.cache is not None else None
        return mix_learners(
            self.visual_learner, self.textual_learner, hidden, rope, (visual_kv, textual_kv), masks, w, joint
        )




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
