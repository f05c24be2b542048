"""`WingsDecoderLayer`: owns an HF Llama-family decoder layer and runs its block with the learners.

    h = x + SelfAttn(LN_1(x))
    h = h + w_v * visual_learner(h) + w_t * textual_learner(h)     (router weights, token-wise)
    out = h + MLP(LN_2(h))

The original layer's modules are used as they are (never patched): the wrapper adopts them as its
own children, under their own names, and adds `visual_learner`, `textual_learner` and `router` beside
them. So a wrapped layer's LLM weights keep the plain LLM's checkpoint keys
(`layers.N.self_attn.q_proj.weight`) and the LLM part of a WINGS checkpoint loads into the plain LLM.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer

from .attention import main_attention
from .cache import LEARNER_KINDS, LearnerInputs
from .lorra import LoRRA, mix_learners
from .router import make_router

REQUIRED_LAYER_PARTS = ("input_layernorm", "self_attn", "post_attention_layernorm", "mlp")
REQUIRED_ATTENTION_PARTS = ("q_proj", "k_proj", "v_proj", "o_proj", "head_dim", "scaling", "layer_idx")


def check_llama_family_layer(layer: nn.Module, layer_idx: int) -> None:
    """Raise a clear error when a decoder layer lacks the Llama block layout the wrapper runs."""
    missing = [p for p in REQUIRED_LAYER_PARTS if not hasattr(layer, p)]
    if not missing:
        missing = [f"self_attn.{p}" for p in REQUIRED_ATTENTION_PARTS if not hasattr(layer.self_attn, p)]
    if missing:
        raise TypeError(
            f"decoder layer {layer_idx} ({type(layer).__name__}) lacks {', '.join(missing)}: WINGS wraps "
            "Llama-family layers (input_layernorm -> self_attn(q/k/v/o_proj) -> post_attention_layernorm -> mlp)."
        )
    if any(hasattr(layer.self_attn, p) for p in ("q_norm", "k_norm")):
        raise TypeError(
            f"decoder layer {layer_idx} ({type(layer).__name__}) normalises queries/keys (q_norm/k_norm), which the "
            "WINGS wrapper does not reproduce; use a Llama, Qwen2 or Mistral LLM."
        )


class WingsDecoderLayer(GradientCheckpointingLayer):
    """A decoder layer with WINGS learners.

    Args:
        decoder_layer: the original HF decoder layer; its child modules (`input_layernorm`, `self_attn`,
            `post_attention_layernorm`, `mlp`, ...) become this layer's children under the same names.
        hidden_size, num_heads: the LLM's d and H.
        rank: LoRRA rank; router: "segment" or "positional"; router_max_positions: positional router width.
    """

    def __init__(
        self,
        decoder_layer: nn.Module,
        hidden_size: int,
        num_heads: int,
        rank: int,
        router: str,
        router_max_positions: int,
    ):
        super().__init__()
        check_llama_family_layer(decoder_layer, getattr(getattr(decoder_layer, "self_attn", None), "layer_idx", -1))
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
        routed = learner_inputs is not None and learner_inputs.mode == "routed"
        positional = self.router.needs_attention_weights
        asked = learner_inputs is not None and learner_inputs.attentions is not None
        need_weights = (routed and positional) or asked
        key_is_image = learner_inputs.key_is_image if routed and not positional else None
        attn_out, image_mass, weights = main_attention(
            self.self_attn,
            self.input_layernorm(hidden_states),
            position_embeddings,
            attention_mask,
            cache,
            key_is_image=key_is_image,
            need_weights=need_weights,
            rope=None if learner_inputs is None else learner_inputs.query_rope(*position_embeddings),
            **kwargs,
        )
        hidden = hidden_states + attn_out
        if asked:
            learner_inputs.attentions[self.layer_idx] = weights
        if learner_inputs is not None:
            hidden = self._learners(hidden, position_embeddings, learner_inputs, weights, image_mass, routed, positional)
        return hidden + self.mlp(self.post_attention_layernorm(hidden))

    def _learners(self, hidden, position_embeddings, inputs: LearnerInputs, weights, image_mass, routed, positional):
        """hidden [B, T, d] plus the learners' outputs: routed (both, mixed by the router) or visual only."""
        cos, sin = position_embeddings
        rope = inputs.query_rope(cos, sin)
        visual_kv = inputs.keys_values("visual", self.layer_idx, self.visual_learner, cos, sin)
        if not routed:
            visual = self.visual_learner(hidden, cos, sin, *visual_kv, inputs.keys["visual"].mask, rope=rope)
            return hidden + visual
        textual_kv = inputs.keys_values("textual", self.layer_idx, self.textual_learner, cos, sin)
        w = self.router(weights if positional else image_mass).to(hidden.dtype)
        masks = (inputs.keys["visual"].mask, inputs.keys["textual"].mask)
        return mix_learners(self.visual_learner, self.textual_learner, hidden, rope, (visual_kv, textual_kv), masks, w)


__all__ = ["WingsDecoderLayer", "check_llama_family_layer", "LEARNER_KINDS"]
