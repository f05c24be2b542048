"""`WingsForConditionalGeneration`: vision tower + projector + an LLM of a `wings.families` family, with learners.

Module tree (print the model to see it):

    vision_tower            SiglipVisionModel / Siglip2VisionModel / CLIPVisionModel (frozen in the recipes)
    multi_modal_projector   mlp2x_gelu
    language_model          the HF *ForCausalLM; chosen decoder layers are replaced by
                            WingsDecoderLayer(decoder_layer, visual_learner, textual_learner, router)

Inputs follow the HF LLaVA contract: `input_ids` hold consecutive `image_token_id` tokens per image, images in
the order of `pixel_values`, any number per sample, anywhere. How many tokens an image has follows
`config.image_layout` (`wings.image_layout.image_token_count`): `image_seq_length` for "fixed"; for "anyres"
(LLaVA-NeXT tiling) and "native" (SigLIP 2 NaFlex) it depends on the image's size, given by `image_sizes`
(anyres) or `spatial_shapes` (native), as the processor returns them.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoTokenizer,
    CLIPVisionModel,
    DynamicCache,
    GenerationMixin,
    PreTrainedModel,
    Siglip2VisionModel,
    SiglipVisionModel,
    StaticCache,
)
from transformers.masking_utils import find_packed_sequence_indices
from transformers.modeling_outputs import CausalLMOutputWithPast

from ..compat import (
    CACHE_KWARGS,
    cache_kwarg,
    drop_weight_conversions,
    generation_max_cache_len,
    is_activation_checkpointing,
    layer_cache,
    set_attn_implementation,
    set_experts_implementation,
)
from ..config import WingsConfig
from ..errors import UnsupportedLayerError, UnsupportedModelError
from ..families import text_family
from ..image_layout import anyres_tile_grid, image_layout_of, image_token_count
from .cache import LearnerCacheMixin, WingsCache, WingsStaticCache
from .plan import LEARNER_KINDS, ForwardPlan, LearnerKeys, same_sample, select_keys
from .decoder_layer import WingsDecoderLayer, wrap_decoder_layers
from .vision import WingsMultiModalProjector, native_patch_features, pack_anyres_features, patch_features

# Checkpoints written before the decoder layer kept the LLM's own keys stored a wrapped layer's LLM
# weights under `layers.N.decoder_layer.`; loading renames them to today's `layers.N.`.
LEGACY_KEY_MAPPING = {r"(layers\.\d+)\.decoder_layer\.": r"\1."}

# Which component each parameter belongs to (what recipes train, what presets count), in one place.
# The projector group also holds the anyres row separator (`image_newline`): both map vision into the LLM.
PARAMETER_GROUPS = ("projector", "vision_tower", "visual_learners", "textual_learners", "router", "llm")

VISION_MODEL_CLASSES = {
    "siglip": SiglipVisionModel,
    "siglip_vision_model": SiglipVisionModel,
    "clip": CLIPVisionModel,
    "clip_vision_model": CLIPVisionModel,
    "siglip2": Siglip2VisionModel,
    "siglip2_vision_model": Siglip2VisionModel,
}


class WingsPreTrainedModel(PreTrainedModel):
    config_class = WingsConfig
    config: WingsConfig
    base_model_prefix = ""
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_attention_backend = True
    _no_split_modules = ["WingsDecoderLayer"]
    _skip_keys_device_placement = list(CACHE_KWARGS)

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(getattr(module, "image_newline", None), nn.Parameter):
            # As LLaVA-NeXT: a random embedding of the LLM's scale (also when a fixed-layout stage-1 model
            # is loaded for an anyres stage 2, where the separator is new).
            with torch.no_grad():
                module.image_newline.normal_(std=module.image_newline.shape[0] ** -0.5)


class WingsForConditionalGeneration(WingsPreTrainedModel, GenerationMixin):
    """A WINGS multimodal LLM.

    Args:
        config: the `WingsConfig`.
        language_model, vision_tower: already-built modules to use instead of building them from the
            config (how `from_llm_and_vision` keeps pretrained weights without a second copy).
    """

    def __init__(
        self,
        config: WingsConfig,
        language_model: PreTrainedModel | None = None,
        vision_tower: PreTrainedModel | None = None,
    ):
        super().__init__(config)
        text = config.text_config
        # Building a WingsConfig resets the sub-configs' attention implementation to None; give them the
        # one resolved for the whole model so the LLM and tower dispatch to a real kernel.
        for sub in (config.text_config, config.vision_config):
            if sub._attn_implementation is None:
                set_attn_implementation(sub, config._attn_implementation)
            if getattr(sub, "_experts_implementation", "") is None:  # MoE LLMs (Qwen3-MoE): same for the experts
                set_experts_implementation(sub, getattr(config, "_experts_implementation", None) or "eager")
        self.vision_tower = vision_tower if vision_tower is not None else AutoModel.from_config(config.vision_config)
        self.multi_modal_projector = WingsMultiModalProjector(
            config.vision_config.hidden_size, text.hidden_size, config.projector_hidden_act
        )
        # The learned row separator of tiled images (LLaVA-NeXT's `image_newline`), in the LLM's embedding space.
        self.image_newline = (
            nn.Parameter(torch.randn(text.hidden_size) * text.hidden_size**-0.5)
            if config.image_layout == "anyres" and config.image_newline
            else None
        )
        llm_class = type(language_model) if language_model is not None else AutoModelForCausalLM._model_mapping[type(text)]
        if text._attn_implementation == "sdpa" and not llm_class._supports_sdpa:
            set_attn_implementation(text, "eager")  # e.g. Gemma 2: SDPA cannot softcap its logits
        self.language_model = (
            language_model if language_model is not None else AutoModelForCausalLM.from_config(text)
        )
        wrap_decoder_layers(self.decoder_layers, self.language_model, config)
        self.post_init()
        # post_init lets the LLM's own initialiser touch the new learner modules (they sit in its tree),
        # so the WINGS init (B = 0: learners start as a no-op) is applied explicitly afterwards.
        self.reset_learners()
        if self.generation_config is not None and not self.generation_config.suppress_tokens:
            # The image token is an input placeholder, never an output.
            self.generation_config.suppress_tokens = [config.image_token_id]

    # ----------------------------------------------------------------------------------------------
    # construction
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, key_mapping: dict[str, str] | None = None, **kwargs):
        """`PreTrainedModel.from_pretrained`, also reading checkpoints saved with the legacy layer keys."""
        mapping = {**LEGACY_KEY_MAPPING, **(key_mapping or {})}
        model = super().from_pretrained(pretrained_model_name_or_path, *args, key_mapping=mapping, **kwargs)
        # transformers re-applies (reversed) the renamings used at load when saving; a model loaded from
        # a legacy checkpoint must still save today's keys.
        drop_weight_conversions(model, set(LEGACY_KEY_MAPPING))
        return model

    @classmethod
    def from_llm_and_vision(
        cls,
        llm: str | PreTrainedModel,
        vision: str | PreTrainedModel,
        tokenizer: Any | None = None,
        image_token_id: int | None = None,
        image_token: str = "<image>",
        **wings_settings,
    ) -> WingsForConditionalGeneration:
        """Build a WINGS model from a causal LM and a vision encoder (local dir, hub id or built model).

        The learners start at zero, so the result computes exactly what the LLM computes. Without
        `image_token_id`, the tokenizer's `image_token` is used; a tokenizer without it gets it added
        (in place) and the LLM's embeddings are resized. `wings_settings` are `WingsConfig` fields
        (`learner_rank`, `learner_layers`, `router`, ...).
        """
        if isinstance(llm, str):
            if tokenizer is None and image_token_id is None:
                tokenizer = AutoTokenizer.from_pretrained(llm)
            llm = AutoModelForCausalLM.from_pretrained(llm)
        if isinstance(vision, str):
            model_type = AutoConfig.from_pretrained(vision).model_type
            if model_type not in VISION_MODEL_CLASSES:
                raise UnsupportedModelError(f"vision encoder '{vision}' has model type '{model_type}'; expected SigLIP, SigLIP 2 or CLIP.")
            vision = VISION_MODEL_CLASSES[model_type].from_pretrained(vision)
        if image_token_id is None:
            if tokenizer is None:
                raise ValueError("from_llm_and_vision: pass `tokenizer` or `image_token_id` to locate the image token.")
            image_token_id = ensure_image_token(tokenizer, image_token)
            if image_token_id >= llm.get_input_embeddings().num_embeddings:
                llm.resize_token_embeddings(len(tokenizer))
        config = WingsConfig(
            text_config=llm.config, vision_config=vision.config, image_token_id=image_token_id, **wings_settings
        )
        model = cls(config, language_model=llm, vision_tower=vision)
        suppress = model.generation_config.suppress_tokens
        model.generation_config = copy.deepcopy(llm.generation_config)
        model.generation_config.suppress_tokens = suppress
        return model.to(llm.dtype)

    @property
    def decoder_layers(self) -> nn.ModuleList:
        inner = getattr(self.language_model, "model", None)
        layers = getattr(inner, "layers", None)
        if not isinstance(layers, nn.ModuleList):
            raise UnsupportedLayerError(
                f"{type(self.language_model).__name__} has no `model.layers`: WINGS needs a Llama-family causal LM."
            )
        return layers

    @property
    def wings_layers(self) -> list[WingsDecoderLayer]:
        return [layer for layer in self.decoder_layers if isinstance(layer, WingsDecoderLayer)]

    def parameter_groups(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        """Each of `PARAMETER_GROUPS` mapped to its (name, parameter) pairs, by module membership.

        Every parameter is in exactly one group; whatever is not the projector, the vision tower or a
        learner/router module is the LLM's (embeddings, decoder layers, norm, lm_head).
        """
        owner: dict[int, str] = {}
        for group, modules in (
            ("projector", [self.multi_modal_projector, *([self.image_newline] if self.image_newline is not None else [])]),
            ("vision_tower", [self.vision_tower]),
            ("visual_learners", [layer.visual_learner for layer in self.wings_layers]),
            ("textual_learners", [layer.textual_learner for layer in self.wings_layers]),
            ("router", [layer.router for layer in self.wings_layers]),
        ):
            for module in modules:
                params = [module] if isinstance(module, nn.Parameter) else module.parameters()
                owner.update((id(p), group) for p in params)
        groups: dict[str, list[tuple[str, nn.Parameter]]] = {name: [] for name in PARAMETER_GROUPS}
        for name, param in self.named_parameters():
            groups[owner.get(id(param), "llm")].append((name, param))
        return groups

    def to_llm(self) -> PreTrainedModel:
        """The LLM without learners: a plain HF causal LM holding (copies of) this model's LLM weights.

        What `wings export-llm` saves: a stage-2-trained LLM that loads with `AutoModelForCausalLM`.
        """
        text_config = copy.deepcopy(self.config.text_config)
        llm = AutoModelForCausalLM.from_config(text_config).to(self.dtype)
        learners = tuple(
            f"{name}." for name, module in self.named_modules()
            if any(module is getattr(layer, part) for layer in self.wings_layers
                   for part in ("visual_learner", "textual_learner", "router"))
        )
        state = {
            key.removeprefix("language_model."): value
            for key, value in self.state_dict().items()
            if key.startswith("language_model.") and not key.startswith(learners)
        }
        missing, unexpected = llm.load_state_dict(state, strict=False)
        # Tied output embeddings are not stored twice; anything else missing is a real mismatch.
        missing = [k for k in missing if not (k == "lm_head.weight" and text_config.tie_word_embeddings)]
        if missing or unexpected:
            raise RuntimeError(f"to_llm: LLM keys do not match the plain model (missing {missing}, unexpected {unexpected})")
        if text_config.tie_word_embeddings:
            llm.tie_weights()
        llm.generation_config = copy.deepcopy(self.generation_config)
        llm.generation_config.suppress_tokens = None
        return llm

    def reset_learners(self) -> None:
        """Re-initialise every learner (A truncated normal, B zero) and router."""
        with torch.no_grad():
            for layer in self.wings_layers:
                layer.reset_learners(self.config.learner_init_std)

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.get_output_embeddings()

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_output_embeddings(value)

    def get_decoder(self) -> nn.Module:
        return self.language_model.get_decoder()

    # ----------------------------------------------------------------------------------------------
    # forward
    def get_image_features(
        self,
        pixel_values: torch.Tensor,
        image_sizes: torch.Tensor | None = None,
        spatial_shapes: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.Tensor:
        """Projected image features, per `config.image_layout`.

        fixed: pixel_values [n_images, 3, H, W] -> [n_images, image_seq_length, hidden].
        anyres: pixel_values [n_tiles, 3, H, W] (each image's overview, then its tiles row by row) and
            image_sizes [n_images, 2] (height, width in pixels) -> [n_image_tokens, hidden], images concatenated.
        native: pixel_values [n_images, max_num_patches, p * p * 3], spatial_shapes [n_images, 2] (patch rows,
            columns) -> [n_image_tokens, hidden]. (`pixel_attention_mask` is accepted and follows from
            spatial_shapes.)
        """
        layout = self.config.image_layout
        feature_layer = self.config.vision_feature_layer
        if layout == "native":
            if spatial_shapes is None:
                raise ValueError("image_layout='native': pass spatial_shapes [n_images, 2] with pixel_values")
            per_image = native_patch_features(self.vision_tower, pixel_values, spatial_shapes, feature_layer)
            return self._project(torch.cat(per_image))
        if layout == "fixed":
            return self._project(patch_features(self.vision_tower, pixel_values, feature_layer))
        if image_sizes is None:
            raise ValueError("image_layout='anyres': pass image_sizes [n_images, 2] (height, width) with pixel_values")
        sizes = [tuple(size) for size in image_sizes.tolist()]
        geometry = image_layout_of(self.config)
        tiles = [1 + rows * cols for rows, cols in (anyres_tile_grid(h, w, geometry) for h, w in sizes)]
        if sum(tiles) != pixel_values.shape[0]:
            raise ValueError(
                f"image_layout='anyres': image_sizes {sizes} need {sum(tiles)} tiles (overview + grid each), but "
                f"pixel_values hold {pixel_values.shape[0]}"
            )
        features = self._project(patch_features(self.vision_tower, pixel_values, feature_layer))
        return torch.cat([
            pack_anyres_features(block, size, geometry, self.image_newline)
            for block, size in zip(torch.split(features, tiles), sizes)
        ])

    def _project(self, features: torch.Tensor) -> torch.Tensor:
        return self.multi_modal_projector(features.to(self.multi_modal_projector.linear_1.weight.dtype))

    def image_token_counts(
        self, n_images: int, image_sizes: torch.Tensor | None = None, spatial_shapes: torch.Tensor | None = None
    ) -> list[int]:
        """Image tokens of each of `n_images` images (from image_sizes [n, 2] or spatial_shapes [n, 2])."""
        if self.config.image_layout == "native" and spatial_shapes is not None:
            return spatial_shapes.prod(-1).tolist()
        if self.config.image_layout == "anyres" and image_sizes is not None:
            geometry = image_layout_of(self.config)
            return [image_token_count(h, w, geometry) for h, w in image_sizes.tolist()]
        return [self.config.image_seq_length] * n_images

    def embed_inputs(
        self,
        input_ids: torch.LongTensor,
        pixel_values: torch.Tensor | None = None,
        image_features: torch.Tensor | None = None,
        **image_inputs,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Token embeddings with image features scattered into the image-token slots.

        `image_inputs`: image_sizes (anyres) or spatial_shapes (native); see `get_image_features`.
        `image_features`: [n_images, image_seq_length, d] or [n_image_tokens, d] (any layout).
        Returns inputs_embeds [B, T, d] and is_image [B, T] bool.
        """
        is_image = input_ids == self.config.image_token_id
        if pixel_values is None and image_features is None:
            # No images (every decode step): plain embeddings, after checking that no image token waits for features
            # (one host sync; skipped when compiled, where it would break the graph: generation never emits it).
            if torch.compiler.is_compiling() or not bool(is_image.any()):
                return self.get_input_embeddings()(input_ids), is_image
        embeds = self.get_input_embeddings()(input_ids.masked_fill(is_image, 0))
        n_slots = int(is_image.sum())
        if image_features is None and pixel_values is not None:
            image_features = self.get_image_features(pixel_values, **image_inputs)
        n_features = 0 if image_features is None else image_features.shape[:-1].numel()
        if n_slots != n_features:
            sized = [v for v in (image_inputs.get("image_sizes"), image_inputs.get("spatial_shapes"), pixel_values) if v is not None]
            n_images = len(sized[0]) if sized else (0 if image_features is None or image_features.dim() == 2 else len(image_features))
            raise ValueError(
                f"input_ids hold {n_slots} image tokens (id {self.config.image_token_id}) but {n_images} image(s) give "
                f"{n_features} features (image_layout='{self.config.image_layout}'): every image needs exactly its "
                "own number of consecutive image tokens (wings.image_token_count; the processor expands them)."
            )
        if n_features and self.config.image_layout == "fixed":
            partial = (is_image.sum(1) % self.config.image_seq_length).nonzero().flatten().tolist()
            if partial:
                raise ValueError(
                    f"input_ids row(s) {partial} hold a number of image tokens that is not a multiple of "
                    f"image_seq_length={self.config.image_seq_length}: an image's tokens were cut or duplicated."
                )
        if n_features:
            embeds = embeds.masked_scatter(is_image.unsqueeze(-1), image_features.to(embeds.dtype))
        return embeds, is_image

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: WingsCache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        image_features: torch.Tensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        image_sizes: torch.Tensor | None = None,
        spatial_shapes: torch.Tensor | None = None,
        pixel_attention_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """input_ids [B, T]; attention_mask [B, past + T] (1 = real token); pixel_values [n_images, 3, H, W]
        (anyres: [n_tiles, 3, H, W] with image_sizes [n_images, 2]; native: [n_images, max_num_patches, p * p * 3]
        with spatial_shapes [n_images, 2]; see `get_image_features`).

        `image_features` ([n_images, image_seq_length, d], or [n_image_tokens, d]) may replace `pixel_values`.
        `labels` [B, T] give the shifted next-token loss (-100 ignored). Returns the LLM's `CausalLMOutputWithPast`.

        Packed rows (several samples per row, as `wings.data.packing` builds them): `position_ids` restarting at 0
        at each sample, no `attention_mask` and no cache. transformers then confines the main attention to each
        sample, and the learners' keys are confined likewise; labels at a sample's first token must be -100.
        """
        cache = layer_cache(cache, kwargs)
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds, is_image = self.embed_inputs(
                input_ids, pixel_values, image_features, image_sizes=image_sizes, spatial_shapes=spatial_shapes
            )
        else:
            if pixel_values is not None or image_features is not None:
                raise ValueError("with inputs_embeds, merge image features yourself; pass input_ids to give images")
            is_image = torch.zeros(inputs_embeds.shape[:2], dtype=torch.bool, device=inputs_embeds.device)

        if use_cache is None:
            use_cache = self.config.text_config.use_cache and not self.training
        if use_cache and self.training and is_activation_checkpointing(self):
            # The checkpointed layers are re-run in backward, which would append to the cache twice.
            use_cache = False
        if use_cache and cache is None:
            cache = WingsCache(config=self.config.text_config)
        if cache is not None and not isinstance(cache, LearnerCacheMixin):
            raise TypeError(
                f"WINGS keeps learner state in a WingsCache or WingsStaticCache; got {type(cache).__name__}. "
                "Pass wings.WingsCache(config=model.config.text_config) or let the model create one."
            )
        batch, length = inputs_embeds.shape[:2]
        past = cache.get_seq_length() if cache is not None else 0
        # transformers reads packed samples off restarting position ids under exactly these conditions.
        packed = position_ids is not None and attention_mask is None and cache is None
        segments = find_packed_sequence_indices(position_ids.expand(batch, -1)) if packed else None
        if position_ids is None:
            position_ids = default_position_ids(attention_mask, batch, length, past, inputs_embeds.device)
        valid = chunk_validity(attention_mask, batch, length, past, inputs_embeds.device)
        has_images = pixel_values is not None or image_features is not None
        learner_inputs = self._learner_inputs(
            self._decoder_input(inputs_embeds), is_image, valid, position_ids, cache, has_images, segments
        )
        # HF records hidden states with hooks on its own decoder-layer class, which a wrapped layer does
        # not run; so the model collects them itself, in HF's layout.
        want_hidden = kwargs.pop("output_hidden_states", None) or self.config.text_config.output_hidden_states
        # Attention weights: wrapped layers hand theirs over through learner_inputs (eager for this call);
        # layers without learners are read by a hook (they need attn_implementation="eager").
        want_attentions = learner_inputs is not None and bool(kwargs.pop("output_attentions", None))
        if want_attentions:
            learner_inputs.attentions = {}
        with (
            collect_hidden_states(self.language_model, inputs_embeds, enabled=bool(want_hidden)) as hidden,
            collect_plain_attentions(self.decoder_layers, learner_inputs, enabled=want_attentions),
        ):
            outputs = self.language_model(
                inputs_embeds=inputs_embeds,
                attention_mask=attention_mask,
                position_ids=position_ids,
                **{cache_kwarg(self.language_model): cache},
                use_cache=use_cache,
                labels=labels,
                logits_to_keep=logits_to_keep,
                learner_inputs=learner_inputs,
                **kwargs,
            )
        if want_hidden:
            outputs.hidden_states = tuple(hidden)
        if want_attentions:
            outputs.attentions = tuple(learner_inputs.attentions[i] for i in range(len(self.decoder_layers)))
        return outputs

    def _decoder_input(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
        """What the first decoder layer receives from inputs_embeds [B, T, d]: decoders that scale their input
        embeddings themselves (Granite's embedding_multiplier) give the learners the scaled features too."""
        multiplier = text_family(self.config.text_config.model_type).embedding_multiplier
        return inputs_embeds if multiplier is None else inputs_embeds * getattr(self.config.text_config, multiplier)

    def _learner_inputs(
        self,
        source: torch.Tensor,
        is_image: torch.Tensor,
        valid: torch.Tensor,
        position_ids: torch.LongTensor,
        cache: LearnerCacheMixin | None,
        has_images: bool = True,
        segments: torch.Tensor | None = None,
    ) -> ForwardPlan | None:
        """Key selection and visibility for both learners, computed once per forward for all layers.

        Without images in the chunk (`has_images` False: every decode step) nothing is selected: the
        textual keys are the chunk's tokens in order and the visual learner gets none (no host sync).
        segments: [B, T] each token's sample in packed rows (None: one sample per row); a query sees only
        its own sample's keys.
        """
        if not self.wings_layers:
            return None
        if segments is not None and any(layer.positional for layer in self.wings_layers):
            raise ValueError(
                "packed rows (restarting position_ids): the positional router reads attention rows by key index, "
                "which packing shifts; use router='segment' or unpacked batches."
            )
        batch, length = source.shape[:2]
        positions = position_ids.expand(batch, -1)
        keys = {}
        for kind in LEARNER_KINDS:
            if has_images:
                selected = (is_image if kind == "visual" else ~is_image) & valid
                index, key_valid = select_keys(selected)
                key_pos = torch.gather(positions, 1, index)
            elif kind == "textual":
                index, key_pos, key_valid = None, positions, valid
            elif cache is not None and kind in cache.learner_key_meta:  # no new visual keys: the cached ones
                index = None
                key_pos, key_valid = cache.learner_key_meta[kind]
                visible = (key_pos.unsqueeze(1) <= positions.unsqueeze(2)) & key_valid.unsqueeze(1)
                keys[kind] = LearnerKeys(index=index, visible=visible, n_new=0)
                continue
            else:
                index = positions.new_zeros(batch, 0)
                key_pos, key_valid = index, valid.new_zeros(batch, 0)
            n_new = key_pos.shape[1]
            if cache is not None:
                key_pos, key_valid = cache.append_key_meta(kind, key_pos, key_valid, length)
            # Strictly causal by original position: a token at position i sees keys at positions <= i.
            visible = (key_pos.unsqueeze(1) <= positions.unsqueeze(2)) & key_valid.unsqueeze(1)
            if segments is not None:
                visible = visible & same_sample(segments, index)
            keys[kind] = LearnerKeys(index=index, visible=visible, n_new=n_new)
        key_is_image = is_image.to(source.dtype)
        # A static cache's flags span all its slots; its sliding-window layers return keys that end at this chunk's
        # last token, which the main attention locates by `key_end`.
        key_end = cache.get_seq_length() + length if isinstance(cache, WingsStaticCache) else None
        if cache is not None:
            key_is_image = cache.append_key_is_image(key_is_image)
        return ForwardPlan(
            source=source, position_ids=position_ids, keys=keys, key_is_image=key_is_image, mode=self.config.learner_mode, cache=cache,
            key_end=key_end,
        )

    # ----------------------------------------------------------------------------------------------
    # generation
    def prepare_inputs_for_generation(self, *args, is_first_iteration: bool | None = False, **kwargs):
        inputs = super().prepare_inputs_for_generation(*args, is_first_iteration=is_first_iteration, **kwargs)
        if not is_first_iteration and inputs.get("use_cache", True):
            # Image K/V are in the cache after prefill; decode steps carry no images.
            for key in ("image_features", "spatial_shapes"):
                inputs.pop(key, None)
        return inputs

    def _expand_inputs_for_generation(self, expand_size: int = 1, is_encoder_decoder: bool = False, input_ids=None, **kwargs):
        # The default repeats every tensor row-wise, which would mis-assign images when a sample has
        # several (or an image has several tiles): repeat each sample's block of images instead.
        keys = ("pixel_values", "image_features", "image_sizes", "spatial_shapes", "pixel_attention_mask")
        images = {key: kwargs.pop(key) for key in keys if kwargs.get(key) is not None}
        if images and expand_size > 1 and input_ids is not None:
            for key, blocks in self._image_blocks_per_row(input_ids, images).items():
                images[key] = torch.cat([block for block in blocks for _ in range(expand_size)])
        input_ids, kwargs = super()._expand_inputs_for_generation(expand_size, is_encoder_decoder, input_ids, **kwargs)
        return input_ids, {**kwargs, **images}

    def _image_blocks_per_row(self, input_ids: torch.LongTensor, images: dict[str, torch.Tensor]) -> dict:
        """Split each image input into one block per row of input_ids [B, T] (the row's images, tiles or tokens)."""
        tokens_per_row = (input_ids == self.config.image_token_id).sum(1).tolist()
        sized = [k for k in ("image_sizes", "spatial_shapes", "pixel_values") if k in images]
        if sized:
            n_images = len(images[sized[0]])
        else:
            n_images = len(images["image_features"]) if images["image_features"].dim() == 3 else 0
        counts = self.image_token_counts(n_images, images.get("image_sizes"), images.get("spatial_shapes"))
        images_per_row, start = [], 0
        for tokens in tokens_per_row:  # a row's images are the next ones whose tokens add up to the row's
            end, total = start, 0
            while total < tokens and end < len(counts):
                total, end = total + counts[end], end + 1
            images_per_row.append(end - start)
            start = end
        tiles = [1] * n_images
        if self.config.image_layout == "anyres" and "image_sizes" in images:
            geometry = image_layout_of(self.config)
            tiles = [1 + r * c for r, c in (anyres_tile_grid(h, w, geometry) for h, w in images["image_sizes"].tolist())]
        bounds = [0, *torch.tensor(images_per_row).cumsum(0).tolist()]
        tiles_per_row = [sum(tiles[a:b]) for a, b in zip(bounds, bounds[1:])]
        blocks = {}
        for key, value in images.items():
            if key == "image_features":
                per_row = tokens_per_row if value.dim() == 2 else images_per_row
            else:
                per_row = tiles_per_row if key == "pixel_values" else images_per_row
            blocks[key] = torch.split(value, per_row)
        return blocks

    def _prepare_cache_for_generation(self, generation_config, model_kwargs, *args, **kwargs):
        super()._prepare_cache_for_generation(generation_config, model_kwargs, *args, **kwargs)
        for key in CACHE_KWARGS:
            cache = model_kwargs.get(key)
            if type(cache) is DynamicCache and cache.get_seq_length() == 0:
                model_kwargs[key] = WingsCache(config=self.config.text_config)
            elif type(cache) is StaticCache and not cache.is_initialized:
                # cache_implementation="static": the same preallocated main cache, plus the learners' state.
                # Sliding-window layers hold only their window, so the length comes from what generate sized.
                max_cache_len = generation_max_cache_len(self, cache)
                model_kwargs[key] = WingsStaticCache(config=self.config.text_config, max_cache_len=max_cache_len)


@contextlib.contextmanager
def collect_hidden_states(language_model: nn.Module, inputs_embeds: torch.Tensor, enabled: bool):
    """Collect (embeddings, every decoder layer's output..., with the last one after the final norm).

    That is HF's `output_hidden_states` layout for Llama-family models; yields the list being filled.
    """
    hidden: list[torch.Tensor] = []
    if not enabled:
        yield hidden
        return
    base = language_model.get_decoder()
    hidden.append(inputs_embeds)
    handles = [layer.register_forward_hook(lambda m, i, o: hidden.append(o[0] if isinstance(o, tuple) else o))
               for layer in base.layers]
    handles.append(base.norm.register_forward_hook(lambda m, i, o: hidden.__setitem__(-1, o)))
    try:
        yield hidden
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def collect_plain_attentions(layers: nn.ModuleList, learner_inputs: ForwardPlan | None, enabled: bool):
    """Store the attention weights of decoder layers without learners in `learner_inputs.attentions`."""
    if not enabled:
        yield
        return

    def hook(index):
        def store(module, args, output):
            if output[1] is None:
                raise ValueError(
                    f"decoder layer {index} has no learners and its attention kernel returns no weights: load the "
                    "model with attn_implementation='eager' to get attention weights of every layer."
                )
            learner_inputs.attentions[index] = output[1]

        return store

    handles = [layer.self_attn.register_forward_hook(hook(i)) for i, layer in enumerate(layers)
               if not isinstance(layer, WingsDecoderLayer)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def default_position_ids(
    attention_mask: torch.Tensor | None, batch: int, length: int, past: int | torch.Tensor, device: torch.device
) -> torch.LongTensor:
    """Positions that skip left padding: cumsum of the 2D mask (past + current), else past..past+T.

    `past` is a tensor for a static cache (its length lives on the device).
    """
    if isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == 2:
        positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        return positions[:, -length:]
    return (torch.arange(length, device=device) + past).unsqueeze(0).expand(batch, -1)


def chunk_validity(
    attention_mask, batch: int, length: int, past: int | torch.Tensor, device: torch.device
) -> torch.Tensor:
    """[B, T] bool: which tokens of the chunk are real (not padding).

    attention_mask: the 2D padding mask [B, past + T]; or the 4D mask [B or 1, 1, T, S] (bool, or additive
    float with 0 where allowed) that `generate` builds for a static cache, possibly in a dict by layer type,
    where a real token is one that sees any key; or None (no padding).
    """
    if isinstance(attention_mask, dict):
        attention_mask = attention_mask.get("full_attention", next(iter(attention_mask.values()), None))
    if not isinstance(attention_mask, torch.Tensor):
        return torch.ones(batch, length, dtype=torch.bool, device=device)
    if attention_mask.dim() == 2:
        return attention_mask[:, -length:].bool()
    # A real token sees at least itself; a padding token sees no key (every key up to it is padding). This holds
    # for full and sliding-window masks alike, whatever slot the cache keeps a token's key in.
    allowed = attention_mask[:, 0] if attention_mask.dtype == torch.bool else attention_mask[:, 0] == 0
    return allowed[:, -length:].any(-1).expand(batch, length)


def ensure_image_token(tokenizer, image_token: str = "<image>") -> int:
    """Id of `image_token` in the tokenizer, adding it as a special token when missing."""
    token_id = tokenizer.convert_tokens_to_ids(image_token)
    if token_id is None or token_id == tokenizer.unk_token_id:
        tokenizer.add_special_tokens({"additional_special_tokens": [image_token]}, replace_extra_special_tokens=False)
        token_id = tokenizer.convert_tokens_to_ids(image_token)
    return token_id
