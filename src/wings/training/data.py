"""A stage's data: its sources (`--data` or the recipe's `data.sources`), prepared (or reused) under
the main process first, checked, and mixed into the training set; and the processor that preparing
needs, built as `wings train` builds it (so `wings data prepare` fills the cache `wings train` reads)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer, TrainingArguments

from ..config import IMAGE_LAYOUT_FIELDS, WingsConfig, default_image_seq_length, with_image_layout
from ..data.collate import PreparedDataset
from ..data.llava import DataError
from ..data.mixture import DataSource, mix_sources
from ..data.prepared import PreparedSource, prepare_data
from ..modeling.model import ensure_image_token
from ..processing import WingsProcessor
from .recipe import Recipe, RecipeError

logger = logging.getLogger(__name__)


def data_sources(recipe: Recipe, data: str | Sequence[str] | None) -> list[DataSource]:
    """The stage's data files: `data` (the `--data` values) when given, else the recipe's `data.sources`."""
    specs = [data] if isinstance(data, str) else list(data or recipe.data.sources)
    if not specs:
        raise RecipeError(f"recipe '{recipe.name}': no data; pass --data FILE (or set data.sources in the recipe)")
    sources = [DataSource.parse(spec) for spec in specs]
    for source in sources:  # before minutes of model loading
        if not Path(source.path).is_file():
            raise DataError(f"{Path(source.path).name}: data file '{source.path}' not found")
    return sources


def load_training_data(
    recipe: Recipe,
    sources: Sequence[DataSource],
    processor: WingsProcessor,
    args: TrainingArguments,
    image_folder: str | None = None,
    skip_bad_samples: bool = False,
) -> PreparedDataset:
    """Prepare (or reuse) every source, check it, and mix the sources into the training set.

    Under torchrun / accelerate the main process prepares first while the other ranks wait; they then
    find the finished cache and map it. Every bad sample raises a `DataError` naming it, or is logged
    and skipped with `skip_bad_samples`.
    """
    with args.main_process_first(local=False, desc="data preparation"):
        parts = [p.good(skip_bad_samples) for p in prepare_sources(recipe, sources, processor, image_folder)]
    rows, counts = mix_sources(parts, [s.weight for s in sources], seed=recipe.optim.seed)
    if len(sources) > 1:
        logger.info("data mixture: %s", ", ".join(f"{s.path}: {n}" for s, n in zip(sources, counts)))
    return PreparedDataset(rows, processor, recipe.data.image_mode)


def prepare_sources(
    recipe: Recipe, sources: Sequence[DataSource], processor: WingsProcessor, image_folder: str | None = None
) -> list[PreparedSource]:
    """Prepare each source with the recipe's `max_length`, `num_proc` and `cache_dir` (or reuse its cache)."""
    d = recipe.data
    return [prepare_data(s.path, processor, d.max_length, image_folder, num_proc=d.num_proc, cache_dir=d.cache_dir,
                         max_image_tokens=d.max_image_tokens)
            for s in sources]


def stage_processor(recipe: Recipe, llm: str | None, vision: str | None, init: str | None) -> WingsProcessor:
    """The processor `wings train` uses for this stage, without loading any weights: --init's saved
    processor, or --llm's tokenizer (with the image token added, as building the model adds it) and
    --vision's image processor with its patch count as `image_seq_length`."""
    layout = {key: recipe.model[key] for key in IMAGE_LAYOUT_FIELDS if key in recipe.model}
    if init is not None:
        processor = WingsProcessor.from_pretrained(init)
        if layout:  # the layout this stage switches to (configs only, no weights)
            processor = processor.with_image_settings(with_image_layout(WingsConfig.from_pretrained(init), **layout))
        return processor
    if llm is None or vision is None:
        raise RecipeError(f"recipe '{recipe.name}': pass --llm and --vision, or --init with a previous stage's output")
    tokenizer = AutoTokenizer.from_pretrained(llm)
    image_token_id = ensure_image_token(tokenizer)
    config = AutoConfig.from_pretrained(vision)
    vision_config = getattr(config, "vision_config", None) or config
    seq_length = recipe.model.get("image_seq_length") or default_image_seq_length(vision_config)
    processor = WingsProcessor(image_processor=AutoImageProcessor.from_pretrained(vision), tokenizer=tokenizer,
                               image_seq_length=seq_length, image_mode=recipe.data.image_mode)
    if layout.get("image_layout", "fixed") != "fixed":
        config = WingsConfig(text_config=AutoConfig.from_pretrained(llm), vision_config=vision_config,
                             image_token_id=image_token_id, **layout)
        processor = processor.with_image_settings(config)
    return processor


def prepare_stage_data(
    recipe: Recipe,
    data: str | Sequence[str] | None = None,
    llm: str | None = None,
    vision: str | None = None,
    init: str | None = None,
    image_folder: str | None = None,
) -> list[PreparedSource]:
    """Prepare a stage's sources as `wings train` would with the same arguments (or reuse the cache)."""
    sources = data_sources(recipe, data)
    return prepare_sources(recipe, sources, stage_processor(recipe, llm, vision, init), image_folder)
