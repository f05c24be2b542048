"""`train()`: one stage of one recipe, from a fresh LLM + encoder or from a previous stage's output."""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from transformers import AutoImageProcessor, AutoTokenizer, TrainerCallback, TrainingArguments, set_seed
from transformers.trainer_utils import get_last_checkpoint

from ..compat import checkpointing_arguments
from ..data.collate import LlavaCollator
from ..data.packing import PackedCollator, PackedDataset
from ..errors import UsageError
from ..modeling.model import WingsForConditionalGeneration
from ..config import IMAGE_LAYOUT_FIELDS, WingsConfig, with_image_layout
from ..processing import WingsProcessor, processor_image_settings
from ..validation import CHECKPOINT_PREFIX, check_model, check_output_dir
from .data import data_sources, load_training_data
from .groups import set_trainable
from .lora import add_lora, merge_lora
from .recipe import Recipe, RecipeError

logger = logging.getLogger(__name__)

# Settings that fix the model's shape: they can be chosen when a model is built, not changed later.
STRUCTURAL_SETTINGS = ("learner_rank", "learner_layers", "router", "router_max_positions")


@dataclass
class TrainResult:
    output_dir: str
    global_step: int
    train_loss: float
    seconds: float
    trainable: dict[str, int] = field(default_factory=dict)
    samples: int = 0
    train_runtime: float = 0.0  # the optimisation loop alone (no data checks, model building or saving)


def build_model_and_processor(
    recipe: Recipe, llm: str | None, vision: str | None, init: str | None
) -> tuple[WingsForConditionalGeneration, WingsProcessor]:
    """Load a previous stage's output (`init`) or build a new model from an LLM and a vision encoder."""
    settings = dict(recipe.model)
    if init is not None:
        # Image-layout settings may change between stages (LLaVA-NeXT: stage 1 at the base resolution, stage 2
        # tiled); they are given to the config before the model is built, so that the row separator of a
        # newly tiled model exists (and is initialised, being absent from the stage-1 checkpoint).
        layout = {key: settings.pop(key) for key in IMAGE_LAYOUT_FIELDS if key in settings}
        config = with_image_layout(WingsConfig.from_pretrained(init), **layout) if layout else None
        model = WingsForConditionalGeneration.from_pretrained(init, config=config)
        processor = WingsProcessor.from_pretrained(init)
        if layout:
            processor = processor.with_image_settings(model.config)
        for key in STRUCTURAL_SETTINGS:
            if key in settings and settings[key] != getattr(model.config, key):
                raise RecipeError(
                    f"recipe '{recipe.name}': model.{key}={settings[key]!r} differs from the stage-1 model in "
                    f"'{init}' ({getattr(model.config, key)!r}); shape settings are fixed when a model is built."
                )
        for key, value in settings.items():
            if key not in STRUCTURAL_SETTINGS:
                setattr(model.config, key, value)
        model.config.check()
        return model, processor
    if llm is None or vision is None:
        raise RecipeError(f"recipe '{recipe.name}': pass --llm and --vision, or --init with a previous stage's output")
    tokenizer = AutoTokenizer.from_pretrained(llm)
    model = WingsForConditionalGeneration.from_llm_and_vision(llm, vision, tokenizer=tokenizer, **settings)
    processor = WingsProcessor(
        image_processor=AutoImageProcessor.from_pretrained(vision),
        tokenizer=tokenizer,
        image_mode=recipe.data.image_mode,
        **processor_image_settings(model.config),
    )
    return model, processor


def check_run_arguments(output: str, max_steps: int | None, resume: bool, overwrite: bool) -> None:
    """Refuse, before anything is read, a used --output without --resume/--overwrite and a --max-steps < 1."""
    check_output_dir(output, resume=resume, overwrite=overwrite)
    if max_steps is not None and max_steps < 1:
        raise UsageError(f"--max-steps must be at least 1, got {max_steps}")


def check_model_arguments(llm: str | None, vision: str | None, init: str | None) -> None:
    """Missing, damaged or wrong-kind model directories, named before any model is built (a plain LLM
    given as --init would otherwise build a default-sized WINGS model)."""
    if init is not None:
        check_model(init, "--init", "wings")
        return
    if llm is not None:
        check_model(llm, "--llm", "llm")
    if vision is not None:
        check_model(vision, "--vision", "vision")


def remove_checkpoints(output: str) -> None:
    """Delete the previous run's checkpoints (--overwrite), so that rotation and a later --resume only
    see this run's."""
    for path in sorted(Path(output).glob(f"{CHECKPOINT_PREFIX}*")):
        if path.is_dir():
            logger.warning("--overwrite: deleting the previous run's %s", path)
            shutil.rmtree(path)


def training_arguments(recipe: Recipe, output: str, max_steps: int | None) -> TrainingArguments:
    o = recipe.optim
    return TrainingArguments(
        output_dir=output,
        per_device_train_batch_size=o.batch_size,
        gradient_accumulation_steps=o.gradient_accumulation_steps,
        num_train_epochs=o.epochs,
        max_steps=max_steps if max_steps is not None else -1,
        learning_rate=max(recipe.train.values()),
        lr_scheduler_type=o.lr_scheduler,
        warmup_steps=o.warmup_ratio,
        weight_decay=o.weight_decay,
        max_grad_norm=o.max_grad_norm,
        bf16=o.bf16,
        **checkpointing_arguments(TrainingArguments, o.gradient_checkpointing),
        seed=o.seed,
        data_seed=o.seed,
        save_strategy="steps",
        save_steps=o.save_steps,
        save_total_limit=o.save_total_limit,
        logging_steps=o.logging_steps,
        report_to=o.report_to,
        remove_unused_columns=False,
        dataloader_num_workers=o.dataloader_num_workers,
        dataloader_pin_memory=_has_accelerator(),
        # Text-only batches leave the visual learners without gradients.
        ddp_find_unused_parameters=True,
        use_cpu=not _has_accelerator(),
        disable_tqdm=False,
    )


def _has_accelerator() -> bool:
    import torch

    return torch.cuda.is_available()


def train(
    recipe: Recipe,
    data: str | Sequence[str] | None,
    output: str,
    image_folder: str | None = None,
    llm: str | None = None,
    vision: str | None = None,
    init: str | None = None,
    max_steps: int | None = None,
    resume: bool = False,
    skip_bad_samples: bool = False,
    callbacks: list[TrainerCallback] | None = None,
    overwrite: bool = False,
) -> TrainResult:
    """Run one stage of `recipe`; the final `output` loads with `WingsForConditionalGeneration.from_pretrained`.

    `data` is one data file or several (`path` or `path:weight`, see `wings.data.mixture`); None
    takes the recipe's `data.sources`.

    An `output` holding a previous run (its final model or checkpoints) is refused unless `resume`
    (continue from its last checkpoint) or `overwrite` (delete its checkpoints and train from scratch).
    """
    from .trainer import WingsTrainer

    start = time.time()
    check_run_arguments(output, max_steps, resume, overwrite)
    sources = data_sources(recipe, data)
    check_model_arguments(llm, vision, init)
    set_seed(recipe.optim.seed)  # the fresh learners' init is part of the run's reproducibility
    model, processor = build_model_and_processor(recipe, llm, vision, init)
    args = training_arguments(recipe, output, max_steps)
    dataset = load_training_data(recipe, sources, processor, args, image_folder, skip_bad_samples)
    if recipe.method == "lora":
        add_lora(model, recipe.lora)
    trainable = set_trainable(model, list(recipe.train))
    logger.info("trainable parameters per group: %s", trainable)

    os.makedirs(output, exist_ok=True)
    if overwrite and int(os.environ.get("RANK", "0")) == 0:
        remove_checkpoints(output)
    recipe.save(Path(output) / "recipe.yaml")
    pad_id = processor.tokenizer.pad_token_id
    if pad_id is None:
        pad_id = processor.tokenizer.eos_token_id
    train_dataset, collator = dataset, LlavaCollator(pad_token_id=pad_id, padding_side="right")
    if recipe.data.packing:
        train_dataset, collator = PackedDataset(dataset, recipe.data.max_length), PackedCollator(pad_token_id=pad_id)
        logger.info("packing: %d samples in %d rows of at most %d tokens", len(dataset), len(train_dataset),
                    recipe.data.max_length)
    trainer = WingsTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        data_collator=collator,
        group_lrs=recipe.train,
        group_by_modality_length=recipe.data.group_by_modality_length,
        callbacks=callbacks,
    )
    checkpoint = None
    if resume:
        checkpoint = get_last_checkpoint(output)
        if checkpoint is None:
            logger.warning("--resume: no checkpoint in '%s' yet, starting from the beginning", output)
        else:
            logger.info("resuming from %s", checkpoint)
    result = trainer.train(resume_from_checkpoint=checkpoint)
    if recipe.method == "lora":
        merge_lora(model)
    trainer.save_final(output, processor)
    return TrainResult(
        output_dir=output,
        global_step=result.global_step,
        train_loss=float(result.training_loss),
        seconds=time.time() - start,
        trainable=trainable,
        samples=len(dataset),
        train_runtime=float(result.metrics.get("train_runtime", 0.0)),
    )
