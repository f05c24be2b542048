"""`WingsRenderer`: vLLM's Hugging Face renderer, refusing prompts whose `<image>` markers have no image.

vLLM sends a prompt without image data straight to the engine, where an `<image>` token would be
embedded as text but treated as an image position. `wings serve` selects this renderer
(`--tokenizer-mode wings`: the usual Hugging Face tokenizer, this renderer) so such a request gets a
400 error instead. Prompts with images are checked by `WingsMultiModalProcessor`.
"""

from __future__ import annotations

from vllm.exceptions import VLLMValidationError
from vllm.renderers.hf import HfRenderer

MODE = "wings"


class WingsRenderer(HfRenderer):
    def _check(self, engine_input):
        ids = engine_input.get("prompt_token_ids") or []
        if engine_input.get("type") == "token":
            image_token_id = self.model_config.hf_config.image_token_id
            markers = sum(1 for token in ids if token == image_token_id)
            if markers:
                raise VLLMValidationError(
                    f"the prompt holds {markers} '<image>' marker(s) but no image was given; "
                    "each marker needs an image.",
                    parameter="messages",
                )
        return engine_input

    def process_for_engine(self, prompt, arrival_time, **kwargs):
        return self._check(super().process_for_engine(prompt, arrival_time, **kwargs))

    async def process_for_engine_async(self, prompt, arrival_time, **kwargs):
        return self._check(await super().process_for_engine_async(prompt, arrival_time, **kwargs))
