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
from .lorra import LoRRA
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
        if cache is None:  # transformers < 5.20 passes the cache as `past_key_values`
            cache = kwargs.pop("past_key_values", None)
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
            **kwargs,
        )
        hidden = hidden_states + attn_out
        if asked:
            learner_inputs.attentions[self.layer_idx] = weights
        if learner_inputs is not None:
            visual = self._learner("visual", hidden, position_embeddings, learner_inputs)
            if routed:
                textual = self._learner("textual", hidden, position_embeddings, learner_inputs)
                w = self.router(weights if positional else image_mass).to(hidden.dtype)
                # hidden + w_v * visual + w_t * textual, without full-size temporaries for the products.
                hidden = torch.addcmul(hidden, w[..., :1], visual).addcmul_(w[..., 1:], textual)
            else:
                hidden = hidden + visual
        return hidden + self.mlp(self.post_attention_layernorm(hidden))

    def _learner(
        self,
        kind: str,
        hidden: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        inputs: LearnerInputs,
    ) -> torch.Tensor:
        learner = self.visual_learner if kind == "visual" else self.textual_learner
        keys = inputs.keys[kind]
        cos, sin = position_embeddings
        if keys.index.shape[1] or inputs.cache is None:
            # K/V of this chunk's new keys only: image tokens once (when they arrive), text tokens once each.
            key_cos, key_sin = keys.rope_tables(cos, sin)
            k, v = learner.keys_values(keys.features(inputs.source), key_cos, key_sin)
            if inputs.cache is not None:
                k, v = inputs.cache.update_learner(kind, self.layer_idx, k, v)
        else:  # decoding: nothing new for this learner (the visual one during text); its K/V are in the cache
            none = hidden.new_zeros(hidden.shape[0], learner.num_heads, 0, learner.head_dim)
            k, v = inputs.cache.learner_kv.get((kind, self.layer_idx), (none, none))
        # RoPE tables broadcast over the batch when all rows share positions.
        batch = hidden.shape[0]
        cos_b, sin_b = cos.expand(batch, -1, -1), sin.expand(batch, -1, -1)
        return learner(hidden, cos_b, sin_b, k, v, keys.mask)


__all__ = ["WingsDecoderLayer", "check_llama_family_layer", "LEARNER_KINDS"]
