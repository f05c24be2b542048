"""Checks every evaluation command makes before its first model loads: the data holds what the
measurement needs, and the model can read it (a plain LLM cannot read images)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

from ..data.llava import DataError, load_llava_records
from ..validation import check_model

__all__ = ["check_model_reads", "dialogues_have_images", "require_image_samples"]


def require_image_samples(
    data_file: str | os.PathLike, image_folder: str | os.PathLike | None, option: str, purpose: str
) -> None:
    """Raise `DataError` unless the LLaVA-format `data_file` (checked as it would be loaded) has a sample
    with an image; `purpose` says what needs them (e.g. "LAWS")."""
    records = load_llava_records(data_file, image_folder)
    if not any(record.num_images for record in records):
        raise DataError(f"{option} '{os.fspath(data_file)}': no sample has an image; {purpose} needs image samples")


def dialogues_have_images(dialogues: Iterable[Mapping[str, Any]]) -> bool:
    """True when a turn of the IIT dialogues shows an image."""
    return any(turn.get("image") for dialogue in dialogues for turn in dialogue["turns"])


def check_model_reads(model: str | os.PathLike, option: str, images: bool, why: str = "the data holds images") -> None:
    """`model` is a saved model an evaluation can load; a multimodal one (WINGS, LLaVA) when `images`."""
    if images:
        check_model(model, option, "multimodal", why=why)
    else:
        check_model(model, option, "evaluable")
