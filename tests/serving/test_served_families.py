"""The family table and the vLLM plugin agree: every family and encoder WINGS trains is served, or the test names
what the vLLM side lacks for it (a family added to `wings.families` without its vLLM parts fails here)."""

from __future__ import annotations

import pytest

pytest.importorskip("vllm")

from wings.families import TEXT_FAMILIES, VISION_ENCODERS, VLLM_VISION_TOWERS  # noqa: E402

@pytest.mark.parametrize("model_type", list(TEXT_FAMILIES))
def test_every_family_in_the_table_is_served(model_type):
    from wings.serving.families import load_class, missing_parts

    family = TEXT_FAMILIES[model_type]
    assert missing_parts(family) == [], f"{model_type}: the vLLM plugin lacks {missing_parts(family)}"
    if family.vllm.decoder_layer is not None:
        load_class(family.vllm.decoder_layer)  # vLLM's own layer of the family exists under that name


def test_every_vision_encoder_has_a_vllm_tower():
    from wings.serving.families import load_class

    assert set(VLLM_VISION_TOWERS) == set(VISION_ENCODERS)
    for tower in VLLM_VISION_TOWERS.values():
        load_class(tower.tower)
