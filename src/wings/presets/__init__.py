"""Presets: the paper's WINGS sizes and current equivalents, built from the backbones' published configs.

Each backbone's Hugging Face `config.json` is kept here as a small JSON fixture (only the fields that
decide shapes, plus `_name_or_path` = the hub id), named after the hub id with "/" -> "--". That lets
`preset_config` / `build_on_meta` describe a full-size WINGS model offline, and lets
`expected_parameter_counts` be checked against a model built on the meta device (no memory used).

    preset                LLM                                 vision encoder
    wings-base            Qwen/Qwen1.5-7B-Chat                google/siglip-so400m-patch14-384 (729 tokens)
    wings-pro             Qwen/Qwen1.5-7B-Chat                same                     (larger data mix)
    wings-1.8b            Qwen/Qwen1.5-1.8B-Chat              same
    wings-qwen2.5-0.5b    Qwen/Qwen2.5-0.5B-Instruct          same
    wings-qwen2.5-1.5b    Qwen/Qwen2.5-1.5B-Instruct          same
    wings-qwen2.5-7b      Qwen/Qwen2.5-7B-Instruct            same
    wings-llama3.1-8b     meta-llama/Llama-3.1-8B-Instruct    same
    wings-qwen3-0.6b      Qwen/Qwen3-0.6B                     same
    wings-qwen3-1.7b      Qwen/Qwen3-1.7B                     same
    wings-qwen3-4b        Qwen/Qwen3-4B                       same
    wings-qwen3-8b        Qwen/Qwen3-8B                       same
    wings-gemma3-1b       google/gemma-3-1b-it                same
    wings-gemma3-4b       google/gemma-3-4b-it (text tower)   same
    wings-phi3-mini       microsoft/Phi-3-mini-4k-instruct    same
    wings-olmo2-1b        allenai/OLMo-2-0425-1B-Instruct     same
    wings-smollm3-3b      HuggingFaceTB/SmolLM3-3B            same

The fixtures of the Qwen3, Gemma 3, Phi-3, OLMo 2 and SmolLM3 backbones were written by hand from the
published `config.json` of each model (shape fields only); the parameter counts they give are checked
against the sizes the publishers state.

Usage:

    config = preset_config("wings-base")          # offline, from the fixtures
    model = build_on_meta("wings-1.8b")           # shapes only, no memory
    count_parameters(model) == expected_parameter_counts(model.config)
    model = from_preset("wings-base")             # downloads the backbones (or pass llm=/vision= dirs)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources

import torch
from transformers import CONFIG_MAPPING, PreTrainedConfig

from ..config import WingsConfig
from ..families import text_family
from ..modeling import WingsForConditionalGeneration
from ..modeling.model import PARAMETER_GROUPS

__all__ = [
    "PARAMETER_GROUPS",
    "PRESETS",
    "Preset",
    "build_on_meta",
    "count_parameters",
    "expected_parameter_counts",
    "fixture_config",
    "fixture_ids",
    "from_preset",
    "get_preset",
    "preset_config",
    "preset_names",
]

SIGLIP_SO400M_384 = "google/siglip-so400m-patch14-384"

# What the paper's recipes trained on (docs/method.md, "Training in two stages").
LLAVA_15_MIX = (
    "stage 1: LLaVA-Pretrain (558K image-caption pairs); "
    "stage 2: LLaVA-1.5 instruction mix (665K, some text-only)"
)
PRO_MIX = (
    LLAVA_15_MIX + "; plus about 2M more instruction samples (the paper's WINGS-pro data, not published as one set)"
)


@dataclass(frozen=True)
class Preset:
    """One WINGS size: which backbones, which learner settings, and what it was (or should be) trained on.

    Args:
        name: registry key ("wings-base", ...).
        llm_id, vision_id: hub ids of the chat LLM and the vision encoder (fixtures under `wings/presets/`).
        learner_rank: LoRRA rank r (the released models use 64).
        router: "segment" (this project's default) or "positional" (the released code's).
        data_mix: the training data of the two stages.
        notes: provenance (released by the authors, or a current equivalent).
        llm_class: transformers class that loads the LLM from `llm_id` when `AutoModelForCausalLM` would
            load something else (the text tower of a multimodal checkpoint); None for the Auto class.
    """

    name: str
    llm_id: str
    vision_id: str = SIGLIP_SO400M_384
    learner_rank: int = 64
    router: str = "segment"
    data_mix: str = LLAVA_15_MIX
    notes: str = ""
    llm_class: str | None = None


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "wings-base",
            "Qwen/Qwen1.5-7B-Chat",
            notes="WINGS-base as released (AIDC-AI/Wings-Qwen1_5-8B); the release used the positional router.",
        ),
        Preset(
            "wings-pro",
            "Qwen/Qwen1.5-7B-Chat",
            data_mix=PRO_MIX,
            notes="WINGS-pro: the WINGS-base model trained on the larger data mix.",
        ),
        Preset(
            "wings-1.8b",
            "Qwen/Qwen1.5-1.8B-Chat",
            notes="WINGS-1.8B: the paper's small size (a Qwen1.5-1.8B-class LLM).",
        ),
        Preset("wings-qwen2.5-0.5b", "Qwen/Qwen2.5-0.5B-Instruct", notes="Current equivalent; tied embeddings."),
        Preset("wings-qwen2.5-1.5b", "Qwen/Qwen2.5-1.5B-Instruct", notes="Current equivalent of WINGS-1.8B."),
        Preset("wings-qwen2.5-7b", "Qwen/Qwen2.5-7B-Instruct", notes="Current equivalent of WINGS-base."),
        Preset("wings-llama3.1-8b", "meta-llama/Llama-3.1-8B-Instruct", notes="Current equivalent, Llama family."),
        Preset("wings-qwen3-0.6b", "Qwen/Qwen3-0.6B", notes="Qwen3: per-head q/k norms; learner heads 64 wide."),
        Preset("wings-qwen3-1.7b", "Qwen/Qwen3-1.7B", notes="Qwen3, tied embeddings."),
        Preset("wings-qwen3-4b", "Qwen/Qwen3-4B", notes="Qwen3; learner heads 80 wide (the LLM's are 128)."),
        Preset("wings-qwen3-8b", "Qwen/Qwen3-8B", notes="Qwen3, current equivalent of WINGS-base."),
        Preset("wings-gemma3-1b", "google/gemma-3-1b-it", notes="Gemma 3 text model: sandwich norms, local/global layers."),
        Preset(
            "wings-gemma3-4b",
            "google/gemma-3-4b-it",
            notes="The text tower of Gemma 3 4B (its own vision tower is not used).",
            llm_class="Gemma3ForCausalLM",
        ),
        Preset("wings-phi3-mini", "microsoft/Phi-3-mini-4k-instruct", notes="Phi-3 mini: fused qkv and gate/up."),
        Preset("wings-olmo2-1b", "allenai/OLMo-2-0425-1B-Instruct", notes="OLMo 2: post-norm blocks."),
        Preset("wings-smollm3-3b", "HuggingFaceTB/SmolLM3-3B", notes="SmolLM3: every fourth layer without RoPE."),
    )
}


def preset_names() -> list[str]:
    return list(PRESETS)


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise KeyError(f"unknown WINGS preset '{name}'; known presets: {', '.join(PRESETS)}")
    return PRESETS[name]


# --------------------------------------------------------------------------------------------------
# fixtures
def _fixture_file(hub_id: str) -> str:
    return hub_id.replace("/", "--") + ".json"


def fixture_ids() -> list[str]:
    """Hub ids of the config fixtures shipped with the package."""
    files = resources.files(__name__).iterdir()
    return sorted(f.name[: -len(".json")].replace("--", "/") for f in files if f.name.endswith(".json"))


def fixture_config(hub_id: str) -> PreTrainedConfig:
    """The published config of `hub_id` (shape fields only), as its transformers config class."""
    path = resources.files(__name__) / _fixture_file(hub_id)
    if not path.is_file():
        raise KeyError(f"no config fixture for '{hub_id}' in wings/presets/ (have: {', '.join(fixture_ids())})")
    fields = json.loads(path.read_text())
    model_type = fields.pop("model_type")
    # from_dict maps legacy keys (rope_theta / rope_scaling) onto transformers 5's rope_parameters.
    return CONFIG_MAPPING[model_type].from_dict(fields)


def preset_config(name: str, image_token_id: int | None = None, **overrides) -> WingsConfig:
    """`WingsConfig` of a preset, built offline from the fixtures.

    `image_token_id` defaults to `vocab_size - 1`, the last row of the LLM's embedding matrix: in every
    preset's LLM that row lies outside the tokenizer's real vocabulary (Qwen pads its embeddings past the
    tokenizer; Llama 3.1's id 128255 is a reserved special token), so no embedding resize is needed and
    the placeholder never collides with text. `from_preset` instead uses the tokenizer's `<image>` token
    (added when missing), as `from_llm_and_vision` does; pass `image_token_id` to match a real tokenizer.
    `overrides` are further `WingsConfig` fields (`learner_layers`, `router_max_positions`, ...).
    """
    preset = get_preset(name)
    text = fixture_config(preset.llm_id)
    vision = fixture_config(preset.vision_id)
    settings = {"learner_rank": preset.learner_rank, "router": preset.router, **overrides}
    return WingsConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=text.vocab_size - 1 if image_token_id is None else image_token_id,
        **settings,
    )


def build_on_meta(name: str, **config_overrides) -> WingsForConditionalGeneration:
    """The full-size model of a preset on the meta device: every shape, no memory, no weights."""
    config = preset_config(name, **config_overrides)
    with torch.device("meta"):
        return WingsForConditionalGeneration(config)


def from_preset(name: str, llm=None, vision=None, **overrides) -> WingsForConditionalGeneration:
    """A fresh (learners at zero) WINGS model on the preset's pretrained backbones.

    `llm` / `vision` replace the preset's hub ids (a local directory or an already-built model);
    `overrides` go to `WingsForConditionalGeneration.from_llm_and_vision` (WingsConfig fields,
    `image_token_id`, `tokenizer`, ...) and take precedence over the preset's settings.
    """
    preset = get_preset(name)
    if llm is None and preset.llm_class is not None:
        import transformers

        try:
            llm = getattr(transformers, preset.llm_class).from_pretrained(preset.llm_id)
        except OSError as error:
            raise OSError(f"from_preset('{name}'): could not load the LLM '{preset.llm_id}': {error}") from error
        overrides.setdefault("tokenizer", transformers.AutoTokenizer.from_pretrained(preset.llm_id))
    llm = preset.llm_id if llm is None else llm
    vision = preset.vision_id if vision is None else vision
    settings = {"learner_rank": preset.learner_rank, "router": preset.router, **overrides}
    try:
        return WingsForConditionalGeneration.from_llm_and_vision(llm, vision, **settings)
    except OSError as error:
        sources = ", ".join(repr(s) for s in (llm, vision) if isinstance(s, str))
        raise OSError(
            f"from_preset('{name}'): could not load the backbones ({sources}): {error}\n"
            "Download them first (the hub must be reachable, and HF_HUB_OFFLINE unset), or pass local "
            "directories as llm=... and vision=...; preset_config / build_on_meta work offline."
        ) from error


# --------------------------------------------------------------------------------------------------
# parameter accounting
def count_parameters(model: WingsForConditionalGeneration) -> dict[str, int]:
    """Parameters per group (`PARAMETER_GROUPS` + "total"), as the model assigns them; tied weights count once."""
    counts = {group: sum(p.numel() for _, p in params) for group, params in model.parameter_groups().items()}
    counts["total"] = sum(counts[g] for g in PARAMETER_GROUPS)
    return counts


def _linear(n_in: int, n_out: int, bias: bool) -> int:
    return n_in * n_out + (n_out if bias else 0)


def _llm_parameters(text: PreTrainedConfig) -> int:
    """A causal LM of a supported family: embeddings, decoder layers, final norm, lm_head unless tied.

    Norms are RMSNorms (weight only): the block layout's norms per layer, and the q/k norms the
    attention layout names (per head, or over the whole projection). Fused projections (Phi-3) hold
    as many weights as separate ones.
    """
    family = text_family(text.model_type)
    if text.model_type == "qwen3_moe":
        raise ValueError("expected_parameter_counts: no formula for MoE MLPs (qwen3_moe)")
    d, n_layers, vocab = text.hidden_size, text.num_hidden_layers, text.vocab_size
    heads, kv_heads = text.num_attention_heads, text.num_key_value_heads or text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or d // heads
    attention_bias = bool(getattr(text, "attention_bias", False))
    qkv_bias = text.model_type == "qwen2" or attention_bias  # Qwen2 always has q/k/v biases, no o bias
    mlp_bias = bool(getattr(text, "mlp_bias", False))
    attention = (
        _linear(d, heads * head_dim, qkv_bias)
        + 2 * _linear(d, kv_heads * head_dim, qkv_bias)
        + _linear(heads * head_dim, d, attention_bias)
    )
    qk_norm = family.attention.qk_norm
    if qk_norm == "head":
        attention += 2 * head_dim
    elif qk_norm == "projection":
        attention += (heads + kv_heads) * head_dim
    mlp = 2 * _linear(d, text.intermediate_size, mlp_bias) + _linear(text.intermediate_size, d, mlp_bias)
    layout = family.layout
    norms = sum(n is not None for n in (layout.attention_norm, layout.attention_out_norm,
                                        layout.mlp_norm, layout.mlp_out_norm))
    layer = attention + mlp + norms * d
    lm_head = 0 if text.tie_word_embeddings else vocab * d
    return vocab * d + n_layers * layer + d + lm_head


def _vision_parameters(vision: PreTrainedConfig) -> int:
    """SigLIP / SigLIP 2 / CLIP vision transformer as built by `AutoModel.from_config`."""
    d, inner = vision.hidden_size, vision.intermediate_size
    patches = (vision.image_size // vision.patch_size) ** 2 if hasattr(vision, "image_size") else 0
    conv = vision.num_channels * vision.patch_size**2 * d
    layer_norm = 2 * d
    mlp = _linear(d, inner, True) + _linear(inner, d, True)
    layer = 4 * _linear(d, d, True) + 2 * layer_norm + mlp
    encoder = vision.num_hidden_layers * layer
    if vision.model_type == "siglip2_vision_model":
        # Patches are flattened and embedded by a Linear (with bias); position table of num_patches rows.
        total = conv + d + vision.num_patches * d + encoder + layer_norm
        if vision.vision_use_head:
            total += d + (3 * d * d + 3 * d) + _linear(d, d, True) + layer_norm + mlp
        return total
    if vision.model_type == "siglip_vision_model":
        total = conv + d + patches * d + encoder + layer_norm  # conv has a bias; post_layernorm
        if vision.vision_use_head:
            # Multihead attention pooling: probe, nn.MultiheadAttention (packed in_proj + out_proj), norm, MLP.
            total += d + (3 * d * d + 3 * d) + _linear(d, d, True) + layer_norm + mlp
        return total
    if vision.model_type == "clip_vision_model":
        # class embedding, bias-free conv, positions for patches + CLS, pre_layrnorm, post_layernorm.
        return d + conv + (patches + 1) * d + layer_norm + encoder + layer_norm
    raise ValueError(f"expected_parameter_counts: no formula for vision model type '{vision.model_type}'")


def expected_parameter_counts(config: WingsConfig) -> dict[str, int]:
    """The groups of `count_parameters`, computed analytically from the config's shapes."""
    text, vision = config.text_config, config.vision_config
    d, r = text.hidden_size, config.learner_rank
    n_learner_layers = len(config.layers_with_learners)
    learner = 8 * d * r  # q, k, v low-rank residuals (down + up) and o_down, o_up; no biases
    if config.router == "segment":
        router = _linear(2 * text.num_attention_heads, 2, True)
    else:
        router = _linear(config.router_max_positions, 2, True)
    counts = {
        "llm": _llm_parameters(text),
        "vision_tower": _vision_parameters(vision),
        "projector": _linear(vision.hidden_size, d, True) + _linear(d, d, True),
        "visual_learners": n_learner_layers * learner,
        "textual_learners": n_learner_layers * learner,
        "router": n_learner_layers * router,
    }
    counts["total"] = sum(counts.values())
    return counts
