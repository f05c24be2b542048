"""Multimodal processing for WINGS in vLLM: images through the saved `WingsProcessor`, `<image>` expansion.

A prompt holds one `<image>` token per image; vLLM replaces each by `image_seq_length` image tokens
(the positions the projected patch features fill). Pixels come from the saved `WingsProcessor`, so
the saved image processor and `image_mode` ("pad" to a square in the mean colour, or "resize")
apply exactly as in Hugging Face generation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from transformers import BatchFeature
from vllm.config.multimodal import MultiModalDummyOptions
from vllm.exceptions import VLLMValidationError
from vllm.inputs import MultiModalDataDict
from vllm.multimodal.inputs import MultiModalFieldConfig, MultiModalKwargsItems
from vllm.multimodal.parse import MultiModalDataItems
from vllm.multimodal.processing import (
    BaseDummyInputsBuilder,
    BaseMultiModalProcessor,
    BaseProcessingInfo,
    PromptReplacement,
    PromptUpdate,
)

from ..config import WingsConfig
from ..processing import WingsProcessor


class WingsProcessingInfo(BaseProcessingInfo):
    def get_hf_config(self) -> WingsConfig:
        return self.ctx.get_hf_config(WingsConfig)

    def get_hf_processor(self, **kwargs: object) -> WingsProcessor:
        return self.ctx.get_hf_processor(WingsProcessor, **kwargs)

    def get_supported_mm_limits(self) -> Mapping[str, int | None]:
        return {"image": None}

    def get_mm_max_tokens_per_item(self, seq_len: int, mm_counts: Mapping[str, int]) -> Mapping[str, int]:
        return {"image": self.get_hf_config().image_seq_length}

    def image_size(self) -> int:
        """The side of the tower's square input (SigLIP 2 NaFlex configs name a patch count instead)."""
        vision = self.get_hf_config().vision_config
        return getattr(vision, "image_size", None) or int(vision.num_patches**0.5) * vision.patch_size


class WingsDummyInputsBuilder(BaseDummyInputsBuilder[WingsProcessingInfo]):
    def get_dummy_text(self, mm_counts: Mapping[str, int]) -> str:
        return self.info.get_hf_processor().image_token * mm_counts.get("image", 0)

    def get_dummy_mm_data(
        self, seq_len: int, mm_counts: Mapping[str, int], mm_options: MultiModalDummyOptions
    ) -> MultiModalDataDict:
        side = self.info.image_size()
        images = self._get_dummy_images(
            width=side, height=side, num_images=mm_counts.get("image", 0), overrides=mm_options.get("image")
        )
        return {"image": images}


class WingsMultiModalProcessor(BaseMultiModalProcessor[WingsProcessingInfo]):
    def _get_hf_mm_text(self, mm_counts: Mapping[str, int]) -> str:
        # WingsProcessor pairs every image with an `<image>` marker, so it gets one marker per image.
        return self.dummy_inputs.get_dummy_text(mm_counts)

    def _get_mm_fields_config(
        self, hf_inputs: BatchFeature, hf_processor_mm_kwargs: Mapping[str, object]
    ) -> Mapping[str, MultiModalFieldConfig]:
        return {"pixel_values": MultiModalFieldConfig.batched("image")}

    def _get_prompt_updates(
        self,
        mm_items: MultiModalDataItems,
        hf_processor_mm_kwargs: Mapping[str, object],
        out_mm_kwargs: MultiModalKwargsItems,
    ) -> Sequence[PromptUpdate]:
        config = self.info.get_hf_config()
        image_tokens = [config.image_token_id] * config.image_seq_length
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
