"""`train()`: one stage of one recipe, from a fresh LLM + encoder or from a previous stage's output."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm
from transformers import AutoImageProcessor, AutoTokenizer, TrainerCallback, TrainingArguments, set_seed
from transformers.trainer_utils import get_last_checkpoint

from ..data.collate import LlavaCollator, LlavaDataset
from ..data.llava import SampleTooLongError, load_llava_records
from ..modeling.model import WingsForConditionalGeneration
from ..config import WingsConfig
from ..processing import WingsProcessor, processor_image_settings
from .groups import set_trainable
from .lora import add_lora, merge_lora
from .recipe import Recipe, RecipeError

logger = logging.getLogger(__name__)

# Settings that fix the model's shape: they can be chosen when a model is built, not changed later.
STRUCTURAL_SETTINGS = ("learner_rank", "learner_layers", "router", "router_max_positions")
# How images become tokens: may change from one stage to the next (the model is then rebuilt with them).
IMAGE_LAYOUT_SETTINGS = ("image_layout", "image_grid_pinpoints", "image_pooling", "image_newline", "max_num_patches")


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
        layout = {key: settings.pop(key) for key in IMAGE_LAYOUT_SETTINGS if key in settings}
        config = WingsConfig.from_pretrained(init)
        if layout:
            if "image_layout" in layout and "image_grid_pinpoints" not in layout:
                layout["image_grid_pinpoints"] = None  # the new layout's defaults, not the old one's
            config = WingsConfig(**{**config.to_dict(), **layout})
        model = WingsForConditionalGeneration.from_pretrained(init, config=config)
        processor = WingsProcessor.from_pretrained(init)
        if layout:
            processor = with_image_settings(processor, model.config, processor.image_mode)
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


def with_image_settings(processor: WingsProcessor, config: WingsConfig, image_mode: str) -> WingsProcessor:
    """`processor` with the image settings of the model `config` (its tokenizer and image processor kept)."""
    return WingsProcessor(
        image_processor=processor.image_processor, tokenizer=processor.tokenizer, image_token=processor.image_token,
        image_mode=image_mode, chat_template=processor.chat_template, **processor_image_settings(config),
    )


def check_lengths(dataset: LlavaDataset, skip: bool) -> None:
    """Tokenise every sample once before training so that an over-long one is reported up front."""
    kept = []
    for record in tqdm(dataset.records, desc="checking sample lengths", leave=False):
        try:
            dataset.tokenize(record)
        except SampleTooLongError as err:
            if not skip:
                raise
            logger.warning("skipping sample: %s", err)
            continue
        kept.append(record)
    if len(kept) < len(dataset.records):
        logger.warning("skipped %d over-long samples", len(dataset.records) - len(kept))
    dataset.records = kept


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
        **_checkpointing_arguments(o.gradient_checkpointing),
        seed=o.seed,
        data_seed=o.seed,
        save_strategy="steps",
        save_steps=o.save_steps,
        save_total_limit=o.save_total_limit,
        logging_steps=o.logging_steps,
        report_to=o.report_to,
        remove_unused_columns=False,
        dataloader_num_workers=o.dataloader_num_workers,
        # Text-only batches leave the visual learners without gradients.
        ddp_find_unused_parameters=True,
        use_cpu=not _has_accelerator(),
        disable_tqdm=False,
    )


def _checkpointing_arguments(enabled: bool) -> dict:
    """Activation checkpointing for `TrainingArguments`, under the name this transformers version uses
    (`activation_checkpointing` replaced `gradient_checkpointing` after 5.19, the oldest release we support)."""
    name = "activation_checkpointing"
    if name not in TrainingArguments.__dataclass_fields__:
        name = "gradient_checkpointing"
    return {name: enabled, f"{name}_kwargs": {"use_reentrant": False} if enabled else None}


def _has_accelerator() -> bool:
    import torch

    return torch.cuda.is_available()


def train(
    recipe: Recipe,
    data: str,
    output: str,
    image_folder: str | None = None,
    llm: str | None = None,
    vision: str | None = None,
    init: str | None = None,
    max_steps: int | None = None,
    resume: bool = False,
    skip_bad_samples: bool = False,
    callbacks: list[TrainerCallback] | None = None,
) -> TrainResult:
    """Run one stage of `recipe`; the final `output` loads with `WingsForConditionalGeneration.from_pretrained`."""
    from .trainer import WingsTrainer

    start = time.time()
    records = load_llava_records(data, image_folder, skip_bad_samples=skip_bad_samples)
    set_seed(recipe.optim.seed)  # the fresh learners' init is part of the run's reproducibility
    model, processor = build_model_and_processor(recipe, llm, vision, init)
    dataset = LlavaDataset(records, processor, recipe.data.max_length, recipe.data.image_mode,
                           max_image_tokens=recipe.data.max_image_tokens)
    check_lengths(dataset, skip_bad_samples)
    if recipe.method == "lora":
        add_lora(model, recipe.lora)
    trainable = set_trainable(model, list(recipe.train))
    logger.info("trainable parameters per group: %s", trainable)

    os.makedirs(output, exist_ok=True)
    recipe.save(Path(output) / "recipe.yaml")
    pad_id = processor.tokenizer.pad_token_id
    if pad_id is None:
        pad_id = processor.tokenizer.eos_token_id
    trainer = WingsTrainer(
        model=model,
        args=training_arguments(recipe, output, max_steps),
        train_dataset=dataset,
        data_collator=LlavaCollator(pad_token_id=pad_id, padding_side="right"),
        group_lrs=recipe.train,
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
    trainer.save_model(output)
    if trainer.is_world_process_zero():
        processor.save_pretrained(output)
    return TrainResult(
        output_dir=output,
        global_step=result.global_step,
        train_loss=float(result.training_loss),
        seconds=time.time() - start,
        trainable=trainable,
        samples=len(dataset),
        train_runtime=float(result.metrics.get("train_runtime", 0.0)),
    )
