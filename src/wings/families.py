"""The LLM families and vision encoders WINGS knows how to wrap, described as data.

A WINGS layer runs the LLM's own decoder block, "residual + attention, residual + MLP", with the
learners added to the residual stream right after the attention branch. Decoders differ in where
they put their norms, in multipliers on the branches, and in how the attention builds its queries and
keys. Each supported text `model_type` is described once here; the modeling code reads only these
descriptions (`wings.modeling.decoder_layer`, `wings.modeling.attention`), so a new family that
fits one of the layouts is one table entry.

Block layouts (x: layer input, h: the learners' query):

    pre-norm    h = x + m * Attn(norm_1(x));        out = h + m * MLP(norm_2(h))
    sandwich    h = x + norm_a(Attn(norm_1(x)));    out = h + norm_b(MLP(norm_2(h)))
    post-norm   h = x + norm_a(Attn(x));            out = h + norm_b(MLP(h))

`m` is a residual multiplier (Granite) or 1; some families add a residual dropout (Phi-3).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .errors import UnsupportedModelError


@dataclass(frozen=True)
class BlockLayout:
    """Names of the decoder layer's modules around its attention and MLP (None: not present).

    Args:
        name: label used in errors and docs.
        attention_norm: normalises the attention's input (pre-norm, sandwich).
        attention_out_norm: normalises the attention's output before the residual add (sandwich, post-norm).
        mlp_norm: normalises the MLP's input.
        mlp_out_norm: normalises the MLP's output before the residual add.
        attention_dropout, mlp_dropout: dropout modules on each branch's output (Phi-3).
        residual_multiplier: config attribute that scales each branch's output (Granite).
    """

    name: str
    attention_norm: str | None
    attention_out_norm: str | None
    mlp_norm: str | None
    mlp_out_norm: str | None
    attention_dropout: str | None = None
    mlp_dropout: str | None = None
    residual_multiplier: str | None = None

    @property
    def modules(self) -> tuple[str, ...]:
        """Every module the layout reads from the decoder layer (besides `self_attn` and `mlp`)."""
        names = (self.attention_norm, self.attention_out_norm, self.mlp_norm, self.mlp_out_norm,
                 self.attention_dropout, self.mlp_dropout)
        return tuple(n for n in names if n is not None)


PRE_NORM = BlockLayout("pre-norm", "input_layernorm", None, "post_attention_layernorm", None)
PRE_NORM_DROPOUT = replace(
    PRE_NORM, name="pre-norm, residual dropout", attention_dropout="resid_attn_dropout", mlp_dropout="resid_mlp_dropout"
)
PRE_NORM_MULTIPLIER = replace(PRE_NORM, name="pre-norm, residual multiplier", residual_multiplier="residual_multiplier")
SANDWICH = BlockLayout(
    "sandwich", "input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm", "post_feedforward_layernorm"
)
POST_NORM = BlockLayout("post-norm", None, "post_attention_layernorm", None, "post_feedforward_layernorm")


@dataclass(frozen=True)
class AttentionLayout:
    """How a family's `self_attn` builds queries, keys and values before the attention kernel.

    Args:
        qkv: "separate" (q_proj, k_proj, v_proj) or "fused" (one qkv_proj, split as [q | k | v]).
        qk_norm: None, "head" (q_norm/k_norm over each head's channels: Qwen3, Gemma 3) or "projection"
            (over the whole projection, before splitting into heads: OLMo 2).
        softcap: attribute of the attention module holding the attention-logit softcap (Gemma 2), or None.
        rope_switch: attribute of the attention module that is False on layers without RoPE (SmolLM3), or None.
    """

    qkv: str = "separate"
    qk_norm: str | None = None
    softcap: str | None = None
    rope_switch: str | None = None

    @property
    def modules(self) -> tuple[str, ...]:
        """The attention module's parts the layout reads."""
        projections = ("qkv_proj",) if self.qkv == "fused" else ("q_proj", "k_proj", "v_proj")
        norms = ("q_norm", "k_norm") if self.qk_norm else ()
        return (*projections, *norms, "o_proj")


@dataclass(frozen=True)
class VllmParts:
    """What vLLM's plugin (`wings.serving`) reads of a family besides the layouts: vLLM builds its layers from
    the config, not from loaded modules, so facts the Hugging Face side reads off the modules are named here.

    Args:
        decoder_layer: vLLM's own decoder layer of the family ("module:Class"), run where a layer has no learners;
            None where vLLM has none (it serves such families through its Transformers backend): the plugin's
            own layer then runs without learners.
        layer_args: how that class is constructed: "vllm_config" (`Class(vllm_config, prefix=..., config=text)`,
            Llama style), "vllm_config_only" (`Class(vllm_config, prefix=...)`, reading the text config from it) or
            "configs" (`Class(text, cache_config, quant_config, prefix=...)`, Qwen style).
        qkv_bias: whether q/k/v projections have biases: a bool, or the config attribute that says so.
        o_bias: the same for the output projection.
        default_rope_theta: the RoPE base vLLM's model assumes when the config names none (Qwen: 1e6), or None.
        fused_residual: whether vLLM's layer takes and returns (hidden, residual), whose sum is the stream (the
            Llama convention), rather than the stream itself (Granite).
        attention_scale: config attribute holding the attention's score scale where it is not head_dim^-0.5
            (Granite's attention_multiplier), or None.
        logits_divisor: config attribute by which the LM head's logits are divided (Granite's logits_scaling).
        rope_layers: config attribute listing, per layer, 1 where it applies RoPE and 0 where not (SmolLM3's
            `no_rope_layers`), or None (every layer).
        attention_scale_power: the power to which `attention_scale`'s value is raised (Gemma: its
            query_pre_attn_scalar ** -0.5).
        norm: vLLM's RMSNorm class of the family ("module:Class"; Gemma's scales by 1 + w).
        mlp, mlp_activation: vLLM's gated MLP class of the family and the config attribute naming its activation.
        embedding_scale: whether the decoder scales its token embeddings by sqrt(d) (Gemma; the image features
            scattered into them are not scaled, as in the Hugging Face model).
        logits_softcap: config attribute holding the final logit softcap (Gemma 2), or None.
        sparse_mlp: vLLM's mixture-of-experts block of the family ("module:Class", built from the vLLM config and
            its prefix), used on the layers the config makes sparse (`wings.serving.layers.sparse_layer`), or None.
    """

    decoder_layer: str | None
    layer_args: str = "vllm_config"
    qkv_bias: bool | str = "attention_bias"
    o_bias: bool | str = "attention_bias"
    default_rope_theta: float | None = None
    fused_residual: bool = True
    attention_scale: str | None = None
    logits_divisor: str | None = None
    rope_layers: str | None = None
    attention_scale_power: float = 1.0
    norm: str = "vllm.model_executor.layers.layernorm:RMSNorm"
    mlp: str = "vllm.model_executor.models.llama:LlamaMLP"
    mlp_activation: str = "hidden_act"
    embedding_scale: bool = False
    logits_softcap: str | None = None
    sparse_mlp: str | None = None


@dataclass(frozen=True)
class TextFamily:
    """One supported decoder family.

    Args:
        layout: where the block puts norms, dropouts and multipliers.
        attention: how its attention builds queries and keys.
        embedding_multiplier: config attribute by which the decoder multiplies its input embeddings
            itself (Granite); the learners' features are multiplied alike, so they see what the decoder
            receives. Families that scale inside their embedding module (Gemma) need nothing here.
        notes: what differs from Llama (for docs and errors).
        vllm: what the vLLM plugin needs to serve the family (None: not served yet; `wings.serving.families`
            names what is missing).
    """

    layout: BlockLayout
    attention: AttentionLayout = AttentionLayout()
    embedding_multiplier: str | None = None
    notes: str = ""
    vllm: VllmParts | None = None


_VLLM = "vllm.model_executor.models."
TEXT_FAMILIES: dict[str, TextFamily] = {
    "llama": TextFamily(PRE_NORM, notes="the reference layout", vllm=VllmParts(_VLLM + "llama:LlamaDecoderLayer")),
    "qwen2": TextFamily(PRE_NORM, notes="q/k/v biases", vllm=VllmParts(
        _VLLM + "qwen2:Qwen2DecoderLayer", "configs", qkv_bias=True, o_bias=False, default_rope_theta=1e6)),
    "mistral": TextFamily(PRE_NORM, notes="optional sliding window",
                          vllm=VllmParts(_VLLM + "mistral:MistralDecoderLayer")),
    "ministral": TextFamily(PRE_NORM, notes="sliding window on some layers",
                            vllm=VllmParts(_VLLM + "mistral:MistralDecoderLayer")),
    "qwen3": TextFamily(PRE_NORM, AttentionLayout(qk_norm="head"), notes="per-head q/k norms", vllm=VllmParts(
        _VLLM + "qwen3:Qwen3DecoderLayer", "configs", default_rope_theta=1e6)),
    "qwen3_moe": TextFamily(PRE_NORM, AttentionLayout(qk_norm="head"), notes="per-head q/k norms, MoE MLP",
                            vllm=VllmParts(_VLLM + "qwen3_moe:Qwen3MoeDecoderLayer", "vllm_config_only",
                                           default_rope_theta=1e6,
                                           sparse_mlp=_VLLM + "qwen3_moe:Qwen3MoeSparseMoeBlock")),
    "gemma2": TextFamily(
        SANDWICH,
        AttentionLayout(softcap="attn_logit_softcapping"),
        notes="sandwich norms, sqrt(d) embedding scale, query_pre_attn_scalar, logit softcapping, sliding layers",
        vllm=VllmParts(_VLLM + "gemma2:Gemma2DecoderLayer", "configs", attention_scale="query_pre_attn_scalar",
                       attention_scale_power=-0.5, norm="vllm.model_executor.layers.layernorm:GemmaRMSNorm",
                       mlp=_VLLM + "gemma2:Gemma2MLP", mlp_activation="hidden_activation", embedding_scale=True,
                       logits_softcap="final_logit_softcapping"),
    ),
    "gemma3_text": TextFamily(
        SANDWICH,
        AttentionLayout(qk_norm="head"),
        notes="sandwich norms, sqrt(d) embedding scale, per-head q/k norms, local/global layers with two RoPE bases",
        vllm=VllmParts(_VLLM + "gemma3:Gemma3DecoderLayer", "configs", attention_scale="query_pre_attn_scalar",
                       attention_scale_power=-0.5, norm="vllm.model_executor.layers.layernorm:GemmaRMSNorm",
                       mlp=_VLLM + "gemma3:Gemma3MLP", mlp_activation="hidden_activation", embedding_scale=True),
    ),
    "phi3": TextFamily(PRE_NORM_DROPOUT, AttentionLayout(qkv="fused"), notes="fused qkv_proj and gate_up_proj",
                       vllm=VllmParts(_VLLM + "llama:LlamaDecoderLayer")),
    "olmo2": TextFamily(POST_NORM, AttentionLayout(qk_norm="projection"), notes="post-norm, q/k norms over the projection",
                        vllm=VllmParts(None)),
    "smollm3": TextFamily(PRE_NORM, AttentionLayout(rope_switch="use_rope"), notes="NoPE layers between RoPE layers",
                          vllm=VllmParts(None, rope_layers="no_rope_layers")),
    "granite": TextFamily(
        PRE_NORM_MULTIPLIER,
        embedding_multiplier="embedding_multiplier",
        notes="embedding, attention and residual multipliers, logits scaling",
        vllm=VllmParts(_VLLM + "granite:GraniteDecoderLayer", "configs", fused_residual=False,
                       attention_scale="attention_multiplier", logits_divisor="logits_scaling"),
    ),
}

# Vision encoders: model_type -> how many leading non-patch tokens its hidden states carry.
# SigLIP 2 at a fixed resolution comes two ways: checkpoints in SigLIP's format (model_type
# "siglip_vision_model", e.g. google/siglip2-so400m-patch14-384) and the NaFlex `Siglip2VisionModel`
# ("siglip2_vision_model"), which WINGS feeds square images at its native patch grid.
VISION_ENCODERS: dict[str, int] = {
    "siglip_vision_model": 0,
    "clip_vision_model": 1,  # CLS token first
    "siglip2_vision_model": 0,
}

@dataclass(frozen=True)
class VllmTower:
    """vLLM's tower for an encoder, built by `wings.serving.vision`.

    Args:
        tower: "module:Class" of vLLM's vision model.
        inputs: "pixels" (images [n, 3, H, W]) or "patches" (SigLIP 2 NaFlex: patches packed image after image,
            with each image's grid, as `wings.modeling.vision.siglip2_inputs` lays them out).
    """

    tower: str
    inputs: str = "pixels"


VLLM_VISION_TOWERS: dict[str, VllmTower] = {
    "siglip_vision_model": VllmTower(_VLLM + "siglip:SiglipVisionModel"),
    "clip_vision_model": VllmTower(_VLLM + "clip:CLIPVisionModel"),
    "siglip2_vision_model": VllmTower(_VLLM + "lfm2_siglip2:Siglip2Model", inputs="patches"),
}

def text_family(model_type: str) -> TextFamily:
    """The description of `model_type`, or an `UnsupportedModelError` naming what is missing."""
    if model_type not in TEXT_FAMILIES:
        raise UnsupportedModelError(
            f"text model type '{model_type}' is not supported: WINGS has no block layout for it. Supported: "
            f"{', '.join(TEXT_FAMILIES)}. A decoder whose block is 'residual + attention, residual + MLP' can be "
            "added as one entry of wings.families.TEXT_FAMILIES, naming its norms (BlockLayout) and how its "
            "attention builds queries and keys (AttentionLayout)."
        )
    return TEXT_FAMILIES[model_type]
