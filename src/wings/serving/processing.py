"""Multimodal processing for WINGS in vLLM: images through the saved `WingsProcessor`, `<image>` expansion.

A prompt holds one `<image>` token per image; vLLM replaces each by that image's image tokens (the positions
the projected patch features fill): `image_seq_length` for the fixed layout, `wings.image_token_count` of the
image's size for "anyres" (tiles) and "native" (SigLIP 2 NaFlex). Pixels come from the saved `WingsProcessor`, so
the saved image processor and `image_mode` ("pad" to a square in the mean colour, or "resize")
apply exactly as in Hugging Face generation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from transformers import BatchFeature
from vllm.config.multimodal import MultiModalDummyOptions
from vllm.exceptions import VLLMValidationError
from vllm.inputs import MultiModalDataDict
from vllm.multimodal.inputs import MultiModalFieldConfig, MultiModalKwargsItems
from vllm.multimodal.parse import ImageProcessorItems, MultiModalDataItems
from vllm.multimodal.processing import (
    BaseDummyInputsBuilder,
    BaseMultiModalProcessor,
    BaseProcessingInfo,
    PromptReplacement,
    PromptUpdate,
)

from ..config import WingsConfig
from ..image_layout import anyres_tile_grid, image_layout_of, image_token_count, largest_image
from ..processing import WingsProcessor


class WingsProcessingInfo(BaseProcessingInfo):
    def get_hf_config(self) -> WingsConfig:
        return self.ctx.get_hf_config(WingsConfig)

    def get_hf_processor(self, **kwargs: object) -> WingsProcessor:
        return self.ctx.get_hf_processor(WingsProcessor, **kwargs)

    def get_supported_mm_limits(self) -> Mapping[str, int | None]:
        return {"image": None}

    def get_mm_max_tokens_per_item(self, seq_len: int, mm_counts: Mapping[str, int]) -> Mapping[str, int]:
        return {"image": largest_image(image_layout_of(self.get_hf_config()))[1]}

    def largest_image_size(self) -> tuple[int, int]:
        """(height, width) of an image with the most image tokens (the profiling run's dummy images)."""
        return largest_image(image_layout_of(self.get_hf_config()))[0]


class WingsDummyInputsBuilder(BaseDummyInputsBuilder[WingsProcessingInfo]):
    def get_dummy_text(self, mm_counts: Mapping[str, int]) -> str:
        return self.info.get_hf_processor().image_token * mm_counts.get("image", 0)

    def get_dummy_mm_data(
        self, seq_len: int, mm_counts: Mapping[str, int], mm_options: MultiModalDummyOptions
    ) -> MultiModalDataDict:
        height, width = self.info.largest_image_size()
        images = self._get_dummy_images(
            width=width, height=height, num_images=mm_counts.get("image", 0), overrides=mm_options.get("image")
        )
        return {"image": images}


class WingsMultiModalProcessor(BaseMultiModalProcessor[WingsProcessingInfo]):
    def _get_hf_mm_text(self, mm_counts: Mapping[str, int]) -> str:
        # WingsProcessor pairs every image with an `<image>` marker, so it gets one marker per image.
        return self.dummy_inputs.get_dummy_text(mm_counts)

    def _get_mm_fields_config(
        self, hf_inputs: BatchFeature, hf_processor_mm_kwargs: Mapping[str, object]
    ) -> Mapping[str, MultiModalFieldConfig]:
        config = self.info.get_hf_config()
        if config.image_layout == "anyres":  # pixel_values: each image's overview and tiles, one after another
            layout = image_layout_of(config)
            sizes = hf_inputs.get("image_sizes")
            tiles = [1 + r * c for r, c in (anyres_tile_grid(h, w, layout) for h, w in (sizes.tolist() if sizes is not None else []))]
            return {"pixel_values": MultiModalFieldConfig.flat_from_sizes("image", torch.tensor(tiles, dtype=torch.long)),
                    "image_sizes": MultiModalFieldConfig.batched("image")}
        if config.image_layout == "native":
            return {key: MultiModalFieldConfig.batched("image")
                    for key in ("pixel_values", "pixel_attention_mask", "spatial_shapes")}
        return {"pixel_values": MultiModalFieldConfig.batched("image")}

    def _get_prompt_updates(
        self,
        mm_items: MultiModalDataItems,
        hf_processor_mm_kwargs: Mapping[str, object],
        out_mm_kwargs: MultiModalKwargsItems,
    ) -> Sequence[PromptUpdate]:
        config = self.info.get_hf_config()
        layout = image_layout_of(config)

        def image_tokens(item: int) -> list[int]:
            size = mm_items.get_items("image", ImageProcessorItems).get_image_size(item)
            return [config.image_token_id] * image_token_count(size.height, size.width, layout)

        return [PromptReplacement(modality="image", target=[config.image_token_id], replacement=image_tokens)]

    def _apply_prompt_updates(self, token_ids, mm_prompt_updates):
        config = self.info.get_hf_config()
        markers = token_ids.count(config.image_token_id)
        images = len(mm_prompt_updates.get("image", []))
        if markers != images:
            raise VLLMValidationError(
                f"the prompt holds {markers} '<image>' marker(s) but {images} image(s) were given; "
                "each image needs exactly one marker.",
                parameter="messages",
            )
        return super()._apply_prompt_updates(token_ids, mm_prompt_updates)
