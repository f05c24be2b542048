"""`WingsConfig`: a composite config (text LLM + vision encoder + WINGS settings), shaped like HF LLaVA's."""

from __future__ import annotations

from typing import Literal

from transformers import AutoConfig, PreTrainedConfig

from .compat import SubConfigSpec
from .errors import ConfigError, UnsupportedModelError

from .families import TEXT_FAMILIES, VISION_ENCODERS, text_family
from .image_layout import IMAGE_LAYOUTS, default_grid_pinpoints, image_layout_of

# Decoder families whose blocks the WINGS layer runs (described in `wings.families`), and vision encoders.
SUPPORTED_TEXT_MODEL_TYPES = tuple(TEXT_FAMILIES)
SUPPORTED_VISION_MODEL_TYPES = tuple(VISION_ENCODERS)
ROUTERS = ("segment", "positional")
LEARNER_MODES = ("routed", "visual_only")


class WingsConfig(PreTrainedConfig):
    r"""Configuration of a WINGS multimodal LLM.

    Args:
        text_config: config of the causal LM (a family of `wings.families.TEXT_FAMILIES`: Llama, Qwen2/3,
            Mistral, Gemma 2/3, Phi-3, OLMo 2, SmolLM3, Granite, ...).
        vision_config: config of the vision encoder (SigLIP, SigLIP 2 or CLIP vision model).
        image_token_id: id of the image placeholder token; `image_seq_length` consecutive copies stand
            for one image in `input_ids` (the HF LLaVA contract).
        image_seq_length: image tokens per image (= patch tokens of the encoder).
        vision_feature_layer: hidden-state index of the vision tower whose patch tokens are used.
        projector_hidden_act: activation of the `mlp2x_gelu` projector.
        learner_rank: rank r of the LoRRA low-rank projections.
        learner_layers: decoder layer indices that get learners; `None` means every layer.
        router: "segment" (per-head attention mass on image vs text tokens; length-independent) or
            "positional" (the released code's Linear over the head-summed attention row).
        router_max_positions: input width of the positional router (its maximum sequence length).
        learner_mode: "routed" (both learners mixed by the router, stage 2 and inference) or
            "visual_only" (stage 1: h <- h + visual_out, no router, textual learner unused).
        learner_init_std: std of the truncated-normal init of the LoRRA down-projections A.
        image_layout: how an image becomes tokens (see `wings.image_layout`): "fixed" (one square of the
            encoder's size, `image_seq_length` tokens), "anyres" (LLaVA-NeXT tiling: overview + a grid of
            tiles fitted to the aspect ratio) or "native" (SigLIP 2 NaFlex at the image's aspect ratio, up to
            `max_num_patches` patches).
        image_grid_pinpoints: anyres: candidate tiled resolutions [height, width] in pixels, multiples of the
            encoder's image size; `None` gives LLaVA-NeXT's 1x2, 2x1, 2x2, 3x1 and 1x3 tile grids.
        image_pooling: anyres: average-pool tile features over `image_pooling` x `image_pooling` patches
            (2 cuts the tiles' tokens by 4); 1 keeps them all.
        image_newline: anyres: a learned row-separator embedding after each row of tile features.
        max_num_patches: native: the most patches (= tokens) per image; `None`: the tower's `num_patches`.
    """

    model_type = "wings"
    attribute_map = {"image_token_index": "image_token_id"}
    if SubConfigSpec is not None:
        sub_configs_defaults = {
            "text_config": SubConfigSpec(config_class=AutoConfig, model_type="qwen2"),
            "vision_config": SubConfigSpec(config_class=AutoConfig, model_type="siglip_vision_model"),
        }
    else:
        sub_configs = {"text_config": AutoConfig, "vision_config": AutoConfig}

    text_config: dict | PreTrainedConfig | None = None
    vision_config: dict | PreTrainedConfig | None = None
    image_token_id: int = 151646
    image_seq_length: int | None = None
    vision_feature_layer: int = -2
    projector_hidden_act: str = "gelu"
    learner_rank: int = 64
    learner_layers: list[int] | None = None
    router: Literal["segment", "positional"] = "segment"
    router_max_positions: int = 4096
    learner_mode: Literal["routed", "visual_only"] = "routed"
    learner_init_std: float = 0.02
    tie_word_embeddings: bool = False
    image_layout: Literal["fixed", "anyres", "native"] = "fixed"
    image_grid_pinpoints: list[list[int]] | None = None
    image_pooling: int = 1
    image_newline: bool = True
    max_num_patches: int | None = None

    def __post_init__(self, **kwargs):
        if SubConfigSpec is None:
            self.text_config = _sub_config(self.text_config, "qwen2")
            self.vision_config = _sub_config(self.vision_config, "siglip_vision_model")
        super().__post_init__(**kwargs)
        if not self.tie_word_embeddings and getattr(self.text_config, "tie_word_embeddings", False):
            self.tie_word_embeddings = True
        if self.image_seq_length is None:
            self.image_seq_length = default_image_seq_length(self.vision_config)
        if self.image_layout == "anyres" and self.image_grid_pinpoints is None:
            self.image_grid_pinpoints = default_grid_pinpoints(image_layout_of(self).tile_size)
        if self.image_layout == "native" and self.max_num_patches is None:
            self.max_num_patches = getattr(self.vision_config, "num_patches", None)
        self.check()

    def check(self) -> None:
        """Raise a `ConfigError` (a `ValueError`) naming the first inconsistent setting."""
        text, vision = self.text_config, self.vision_config
        try:
            text_family(text.model_type)
        except ValueError as error:
            raise UnsupportedModelError(f"WingsConfig: {error}") from None
        if vision.model_type not in SUPPORTED_VISION_MODEL_TYPES:
            raise UnsupportedModelError(
                f"WingsConfig: vision model type '{vision.model_type}' is not supported "
                f"({', '.join(SUPPORTED_VISION_MODEL_TYPES)})."
            )
        heads = text.num_attention_heads
        if text.hidden_size % heads:
            raise ConfigError(f"WingsConfig: hidden_size {text.hidden_size} is not divisible by {heads} heads.")
        if (text.hidden_size // heads) % 2:
            raise ConfigError(
                f"WingsConfig: LoRRA learners split hidden_size {text.hidden_size} into {heads} heads of "
                f"{text.hidden_size // heads} channels, an odd number that RoPE cannot rotate."
            )
        partial = partial_rotary_factor(text)
        if partial != 1.0:
            raise ConfigError(
                f"WingsConfig: the LLM rotates only part of each head (partial_rotary_factor={partial}); the "
                "learners' RoPE covers whole heads."
            )
        if self.router not in ROUTERS:
            raise ConfigError(f"WingsConfig: router must be one of {ROUTERS}, got '{self.router}'.")
        if self.learner_mode not in LEARNER_MODES:
            raise ConfigError(f"WingsConfig: learner_mode must be one of {LEARNER_MODES}, got '{self.learner_mode}'.")
        if self.learner_rank < 1:
            raise ConfigError(f"WingsConfig: learner_rank must be >= 1, got {self.learner_rank}.")
        n_layers = text.num_hidden_layers
        for i in self.learner_layers or []:
            if not 0 <= i < n_layers:
                raise ConfigError(f"WingsConfig: learner layer {i} is outside the LLM's {n_layers} layers.")
        if self.image_seq_length != default_image_seq_length(vision):
            raise ConfigError(
                f"WingsConfig: image_seq_length={self.image_seq_length}, but the vision encoder yields "
                f"{default_image_seq_length(vision)} patch tokens per image."
            )
        self._check_image_layout()
        if not 0 <= self.image_token_id:
            raise ConfigError(f"WingsConfig: image_token_id must be a token id, got {self.image_token_id}.")

    def _check_image_layout(self) -> None:
        if self.image_layout not in IMAGE_LAYOUTS:
            raise ConfigError(f"WingsConfig: image_layout must be one of {IMAGE_LAYOUTS}, got '{self.image_layout}'.")
        if self.image_layout == "native" and self.vision_config.model_type != "siglip2_vision_model":
            raise ConfigError(
                f"WingsConfig: image_layout='native' needs a SigLIP 2 NaFlex tower (siglip2_vision_model), not "
                f"'{self.vision_config.model_type}'; use 'anyres' (tiling) for fixed-resolution encoders."
            )
        if self.image_layout == "native" and not (self.max_num_patches or 0) >= 1:
            raise ConfigError(f"WingsConfig: max_num_patches must be >= 1, got {self.max_num_patches}.")
        if self.image_pooling < 1:
            raise ConfigError(f"WingsConfig: image_pooling must be >= 1, got {self.image_pooling}.")
        if self.image_layout == "anyres":
            tile = image_layout_of(self).tile_size
            for pinpoint in self.image_grid_pinpoints:
                if len(pinpoint) != 2 or any(side < tile or side % tile for side in pinpoint):
                    raise ConfigError(
                        f"WingsConfig: image_grid_pinpoints entry {pinpoint} is not [height, width] in whole tiles of "
                        f"{tile} pixels (the vision encoder's image size)."
                    )

    @property
    def layers_with_learners(self) -> list[int]:
        n = self.text_config.num_hidden_layers
        return sorted(set(range(n) if self.learner_layers is None else self.learner_layers))


# The fields that say how images become tokens: they may change from one training stage to the next.
IMAGE_LAYOUT_FIELDS = ("image_layout", "image_grid_pinpoints", "image_pooling", "image_newline", "max_num_patches")


def with_image_layout(config: WingsConfig, **settings) -> WingsConfig:
    """A new `WingsConfig`: `config` with the `IMAGE_LAYOUT_FIELDS` in `settings` (checked; `config` unchanged).

    A new `image_layout` without `image_grid_pinpoints` gets that layout's default pinpoints.
    """
    unknown = sorted(set(settings) - set(IMAGE_LAYOUT_FIELDS))
    if unknown:
        raise ConfigError(f"with_image_layout: {unknown} are not image-layout fields {IMAGE_LAYOUT_FIELDS}")
    if "image_layout" in settings and "image_grid_pinpoints" not in settings:
        settings["image_grid_pinpoints"] = None
    return WingsConfig(**{**config.to_dict(), **settings})


def _sub_config(value: dict | PreTrainedConfig | None, default_model_type: str) -> PreTrainedConfig:
    """A sub-config from a dict (its `model_type`, else the default), None (defaults) or a config."""
    if isinstance(value, PreTrainedConfig):
        return value
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    value = dict(value or {})
    return CONFIG_MAPPING[value.setdefault("model_type", default_model_type)](**value)


def partial_rotary_factor(text_config: PreTrainedConfig) -> float:
    """The fraction of each head RoPE rotates (1.0 unless a config says otherwise, per layer type or not)."""
    rope = getattr(text_config, "rope_parameters", None) or {}
    per_type = [p for p in rope.values() if isinstance(p, dict)]
    factors = [p.get("partial_rotary_factor", 1.0) for p in (per_type or [rope])]
    factors.append(getattr(text_config, "partial_rotary_factor", None) or 1.0)
    return min(factors)


def default_image_seq_length(vision_config: PreTrainedConfig) -> int:
    """Patch tokens per image: (image_size / patch_size)^2 (the CLS token of CLIP is dropped).

    SigLIP 2 (NaFlex) has no fixed image size: WINGS feeds it square images at its native grid of
    `num_patches` patches.
    """
    if vision_config.model_type == "siglip2_vision_model":
        return vision_config.num_patches
    return (vision_config.image_size // vision_config.patch_size) ** 2
