"""`WingsForConditionalGeneration` for vLLM: vision tower + projector + an LLM with WINGS learners.

The module tree and parameter names mirror `wings.modeling.model.WingsForConditionalGeneration`, so
the saved safetensors load as they are (vLLM fuses q/k/v and gate/up on load). Layers without
learners are vLLM's own decoder layers of the LLM's family (named in `wings.families`); layers with
learners are `wings.serving.layers.WingsDecoderLayer`. The families served are those of the table whose
features the plugin computes (`wings.serving.families`).

vLLM hands the model `inputs_embeds` (text embeddings with the projected image features scattered
into the image-token slots) and, because `requires_raw_input_tokens` is set, the token ids, which
say which tokens are image tokens.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch
from torch import nn
from vllm.compilation.decorators import support_torch_compile
from vllm.config import VllmConfig
from vllm.model_executor.layers.activation import get_act_fn
from vllm.model_executor.layers.linear import ColumnParallelLinear, RowParallelLinear
from vllm.model_executor.layers.logits_processor import LogitsProcessor
from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead, VocabParallelEmbedding
from vllm.model_executor.models.interfaces import MultiModalEmbeddings, SupportsMultiModal
from vllm.model_executor.models.utils import AutoWeightsLoader, WeightsMapper, maybe_prefix
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.sequence import IntermediateTensors
from vllm.transformers_utils.config import set_default_rope_theta

from .attention import learner_channels
from .families import plain_decoder_layer, served_family
from .layers import LearnerKeysValues, WingsDecoderLayer, learner_rope, norm_class
from .processing import WingsDummyInputsBuilder, WingsMultiModalProcessor, WingsProcessingInfo
from ..image_layout import anyres_tile_grid, image_layout_of
from ..modeling.vision import pack_anyres_features
from .vision import build_vision_tower, native_tower_features, tower_features, vision_tower_class

# Checkpoints saved before the decoder-layer wrapper kept the LLM's own names store the LLM weights
# of a layer with learners as `layers.N.decoder_layer.<key>`; both layouts load. Some transformers
# releases save the vision tower without its `vision_model.` level; vLLM's towers keep it. The towers'
# pooling heads (SigLIP, SigLIP 2) never make image features and are not built.
CHECKPOINT_NAMES = WeightsMapper(
    orig_to_new_regex={
        re.compile(r"^vision_tower\.(vision_model\.)?head\..*"): None,
        re.compile(r"^vision_tower\.(?!vision_model\.)"): "vision_tower.vision_model.",
    },
    orig_to_new_substr={".decoder_layer.": "."},
)
# Experts' projections (`mlp.experts.N.gate_proj`) are not fused here: vLLM's fused-MoE layer loads them itself.
FUSED_PROJECTIONS = WeightsMapper(
    orig_to_new_stacked={
        ".q_proj": (".qkv_proj", "q"),
        ".k_proj": (".qkv_proj", "k"),
        ".v_proj": (".qkv_proj", "v"),
        ".mlp.gate_proj": (".mlp.gate_up_proj", 0),
        ".mlp.up_proj": (".mlp.gate_up_proj", 1),
    }
)


def check_servable(config) -> None:
    """Raise a `ValueError` for WINGS settings the vLLM model cannot compute."""
    if config.router == "positional" and config.learner_mode == "routed":
        raise ValueError(
            "WINGS in vLLM: router='positional' reads whole attention rows, which vLLM's paged attention "
            "kernels never materialise; serve a model trained with router='segment' (the default), or use "
            "Hugging Face generate for this one."
        )
    served_family(config.text_config)
    vision_tower_class(config.vision_config)


# vLLM compiles the decoder (its default outside enforce_eager: inductor on CPU, CUDA graphs on GPUs) as it
# does its own Qwen2/Llama models; every input's first dimension is the step's token count.
@support_torch_compile(dynamic_arg_dims={"positions": {0: "b"}, "inputs_embeds": {0: "b"}, "is_image": {0: "b"}})
class WingsTextModel(nn.Module):
    """The LLM's decoder (`language_model.model`): embeddings, decoder layers, final norm."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        super().__init__()
        config = vllm_config.model_config.hf_config
        text = config.text_config
        family = served_family(text)
        default_theta = family.vllm.default_rope_theta
        if default_theta is not None:
            set_default_rope_theta(text, default_theta=default_theta)
        cache_config, quant_config = vllm_config.cache_config, vllm_config.quant_config
        self.embed_tokens = VocabParallelEmbedding(
            text.vocab_size, text.hidden_size, quant_config=quant_config, prefix=f"{prefix}.embed_tokens"
        )
        with_learners = sorted(set(config.layers_with_learners))
        self.learner_count = 2 if config.learner_mode == "routed" else 1
        self.learner_keys_values = LearnerKeysValues(
            len(with_learners), text.hidden_size, text.num_attention_heads, config.learner_rank, self.learner_count,
            [learner_rope(text, f"{prefix}.layers.{i}") for i in with_learners],
        )
        layers = []
        for i in range(text.num_hidden_layers):
            layer_prefix = f"{prefix}.layers.{i}"
            if i in with_learners:
                kv_weights = self.learner_keys_values.layer_weights(with_learners.index(i))
                layers.append(WingsDecoderLayer(config, kv_weights, cache_config, quant_config, layer_prefix))
            elif family.vllm.decoder_layer is None:  # vLLM has no layer of this family: WINGS' own, no learners
                layers.append(WingsDecoderLayer(config, None, cache_config, quant_config, layer_prefix))
            else:
                layers.append(plain_decoder_layer(vllm_config, text, layer_prefix))
        self.layers = nn.ModuleList(layers)
        self.learner_layers = [layer for layer in layers if isinstance(layer, WingsDecoderLayer) and layer.has_learners]
        # Decoders that scale their input embeddings (Granite) scale the image features too, as the learners'
        # key/value source in the Hugging Face model.
        self.embedding_multiplier = getattr(text, family.embedding_multiplier) if family.embedding_multiplier else None
        self.fused_residual = family.vllm.fused_residual
        self.norm = norm_class(text)(text.hidden_size, eps=text.rms_norm_eps)
        # Gemma scales its token embeddings by sqrt(d) (not the image features scattered into them, as in HF).
        self.embedding_scale = text.hidden_size**0.5 if family.vllm.embedding_scale else None

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        embeds = self.embed_tokens(input_ids)
        return embeds if self.embedding_scale is None else embeds * torch.tensor(self.embedding_scale).to(embeds.dtype)

    def forward(
        self, positions: torch.Tensor, inputs_embeds: torch.Tensor, is_image: torch.Tensor
    ) -> torch.Tensor:
        """positions [T], inputs_embeds [T, d] (the learners' key/value source), is_image [T] -> hidden [T, d]."""
        if self.embedding_multiplier is not None:
            inputs_embeds = inputs_embeds * self.embedding_multiplier
        hidden, residual = inputs_embeds, None
        if self.learner_layers:
            channels = learner_channels(is_image, self.learner_count, inputs_embeds.dtype)
            keys, values = self.learner_keys_values(positions, inputs_embeds, channels)
        index = 0
        for layer in self.layers:
            if isinstance(layer, WingsDecoderLayer) and layer.has_learners:
                hidden, residual = layer(positions, hidden, residual, is_image, keys[index], values[index])
                index += 1
            elif isinstance(layer, WingsDecoderLayer) or self.fused_residual:
                hidden, residual = layer(positions, hidden, residual)
            else:  # vLLM's layer takes and returns the stream itself
                hidden, residual = layer(positions, hidden if residual is None else hidden + residual), None
        return self.norm(hidden) if residual is None else self.norm(hidden, residual)[0]

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        return AutoWeightsLoader(self).load_weights(weights, mapper=FUSED_PROJECTIONS)


class WingsLanguageModel(nn.Module):
    """`language_model`: the decoder plus the LM head (names as the Hugging Face *ForCausalLM)."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        super().__init__()
        config = vllm_config.model_config.hf_config
        text = config.text_config
        self.model = WingsTextModel(vllm_config=vllm_config, prefix=maybe_prefix(prefix, "model"))
        self.tied = bool(config.tie_word_embeddings or getattr(text, "tie_word_embeddings", False))
        self.lm_head = ParallelLMHead(
            text.vocab_size, text.hidden_size, quant_config=vllm_config.quant_config,
            prefix=maybe_prefix(prefix, "lm_head"),
        )
        if self.tied:
            self.lm_head = self.lm_head.tie_weights(self.model.embed_tokens)
        parts = served_family(text).vllm
        divisor = getattr(text, parts.logits_divisor) if parts.logits_divisor else 1.0  # Granite divides its logits
        softcap = getattr(text, parts.logits_softcap) if parts.logits_softcap else None  # Gemma 2 caps them
        self.logits_processor = LogitsProcessor(text.vocab_size, scale=1.0 / divisor, soft_cap=softcap)

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.embed_input_ids(input_ids)

    def forward(self, positions: torch.Tensor, inputs_embeds: torch.Tensor, is_image: torch.Tensor) -> torch.Tensor:
        return self.model(positions, inputs_embeds, is_image)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        return self.logits_processor(self.lm_head, hidden_states)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        loader = AutoWeightsLoader(self, ignore_unexpected_prefixes=["lm_head."] if self.tied else None)
        return loader.load_weights(weights)


class WingsMultiModalProjector(nn.Module):
    """`mlp2x_gelu` (`wings.modeling.vision.WingsMultiModalProjector`): Linear -> act -> Linear, split over TP ranks."""

    def __init__(self, vision_hidden_size: int, text_hidden_size: int, act: str, quant_config, prefix: str):
        super().__init__()
        self.linear_1 = ColumnParallelLinear(
            vision_hidden_size, text_hidden_size, bias=True, quant_config=quant_config, prefix=f"{prefix}.linear_1"
        )
        self.act = get_act_fn(act)
        self.linear_2 = RowParallelLinear(
            text_hidden_size, text_hidden_size, bias=True, quant_config=quant_config, prefix=f"{prefix}.linear_2"
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """[n_images, n_patches, d_vis] -> [n_images, n_patches, d]."""
        hidden, _ = self.linear_1(features)
        hidden, _ = self.linear_2(self.act(hidden))
        return hidden


@MULTIMODAL_REGISTRY.register_processor(
    WingsMultiModalProcessor, info=WingsProcessingInfo, dummy_inputs=WingsDummyInputsBuilder
)
class WingsForConditionalGeneration(nn.Module, SupportsMultiModal):
    """A saved WINGS model served by vLLM (continuous batching, paged caches for the LLM and every learner)."""

    requires_raw_input_tokens = True
    packed_modules_mapping = {"qkv_proj": ["q_proj", "k_proj", "v_proj"], "gate_up_proj": ["gate_proj", "up_proj"]}

    @classmethod
    def get_placeholder_str(cls, modality: str, i: int) -> str | None:
        if modality.startswith("image"):
            return "<image>"
        raise ValueError("WINGS models take images only")

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        super().__init__()
        config = vllm_config.model_config.hf_config
        check_servable(config)
        self.config, self.vllm_config = config, vllm_config
        self.image_token_id = config.image_token_id
        quant_config = vllm_config.quant_config
        self.configure_mm_token_handling(config.text_config.vocab_size, [config.image_token_id])
        with self._mark_tower_model(vllm_config, "image"):
            self.vision_tower = build_vision_tower(
                config.vision_config, config.vision_feature_layer, quant_config, maybe_prefix(prefix, "vision_tower")
            )
            self.multi_modal_projector = WingsMultiModalProjector(
                config.vision_config.hidden_size, config.text_config.hidden_size, config.projector_hidden_act,
                quant_config, maybe_prefix(prefix, "multi_modal_projector"),
            )
            # The anyres row separator (`image_newline`), loaded from the checkpoint.
            self.image_newline = (
                nn.Parameter(torch.empty(config.text_config.hidden_size))
                if config.image_layout == "anyres" and config.image_newline else None
            )
        with self._mark_language_model(vllm_config):
            self.language_model = WingsLanguageModel(
                vllm_config=vllm_config, prefix=maybe_prefix(prefix, "language_model")
            )

    def embed_multimodal(self, **kwargs: object) -> MultiModalEmbeddings:
        """pixel_values [n_images, 3, H, W] -> projected patch features [n_images, image_seq_length, d]; for the
        "anyres" and "native" layouts one [image_token_count, d] per image (see `wings.image_layout`)."""
        pixel_values = kwargs.get("pixel_values")
        if pixel_values is None:
            return []
        layout = self.config.image_layout
        if layout == "native":
            shapes = _stacked(kwargs["spatial_shapes"])
            features = native_tower_features(self.vision_tower, _stacked(pixel_values), shapes, self.vllm_config)
            return [self.multi_modal_projector(f) for f in features]
        if layout == "anyres":  # each image's overview and tiles through the tower, then packed as in HF
            blocks = list(pixel_values) if isinstance(pixel_values, (list, tuple)) else [pixel_values]
            sizes = _stacked(kwargs["image_sizes"]).tolist()
            tiles = torch.cat(blocks) if len(blocks) > 1 else blocks[0]
            features = self.multi_modal_projector(
                tower_features(self.vision_tower, self.config.vision_config, tiles, self.vllm_config))
            geometry = image_layout_of(self.config)
            counts = [1 + r * c for r, c in (anyres_tile_grid(h, w, geometry) for h, w in sizes)]
            return [pack_anyres_features(block, tuple(size), geometry, self.image_newline)
                    for block, size in zip(torch.split(features, counts), sizes)]
        pixel_values = _stacked(pixel_values)
        features = tower_features(self.vision_tower, self.config.vision_config, pixel_values, self.vllm_config)
        return self.multi_modal_projector(features)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: IntermediateTensors | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs: object,
    ) -> torch.Tensor:
        if inputs_embeds is None:
            inputs_embeds = self.language_model.embed_input_ids(input_ids)
        is_image = input_ids == self.image_token_id
        return self.language_model(positions, inputs_embeds, is_image)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        logits = self.language_model.compute_logits(hidden_states)
        if logits is not None:
            # The image token is an input placeholder, never an output (the HF model suppresses it too).
            logits[..., self.image_token_id] = float("-inf")
        return logits

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        if self.config.learner_mode != "routed":
            # Stage-1 checkpoints also hold the (untrained) textual learners and routers, which never run.
            weights = ((name, w) for name, w in weights if ".textual_learner." not in name and ".router." not in name)
        return AutoWeightsLoader(self).load_weights(weights, mapper=CHECKPOINT_NAMES)


def _stacked(value) -> torch.Tensor:
    """A per-image list of tensors (as vLLM batches items) as one tensor [n, ...]."""
    return torch.stack(list(value)) if isinstance(value, (list, tuple)) else value
