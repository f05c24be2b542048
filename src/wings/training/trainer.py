"""`WingsTrainer`: Hugging Face `Trainer` with per-group learning rates, atomic checkpoints and a NaN guard.

Everything else (DDP / FSDP / DeepSpeed through `accelerate`, gradient accumulation, bf16, gradient
checkpointing, logging integrations, RNG and data-position restore on resume) is the stock Trainer.
"""

from __future__ import annotations

import os
import shutil

import torch
from transformers import Trainer
from transformers.trainer_utils import rotate_checkpoints

from ..data.sampler import ModalityLengthGroupedSampler
from .groups import parameter_groups

STAGING_DIR = ".staging"
FINAL_STAGING_DIR = ".staging-final"


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf; the last checkpoint on disk is the last good state."""


class WingsTrainer(Trainer):
    """A `Trainer` whose optimizer gives each parameter group (projector, learners, LLM, ...) its own lr.

    Args:
        group_lrs: group name -> learning rate, for the groups that train (see `training.groups`).
        group_by_modality_length: order the training samples with `ModalityLengthGroupedSampler`
            (the data set needs `lengths` and `has_images`, as `PreparedDataset` has).
        Other arguments are those of `transformers.Trainer`.
    """

    def __init__(self, *args, group_lrs: dict[str, float], group_by_modality_length: bool = False, **kwargs):
        self.group_lrs = dict(group_lrs)
        self.group_by_modality_length = group_by_modality_length
        self._staging = False
        super().__init__(*args, **kwargs)

    def _get_train_sampler(self, train_dataset=None):
        dataset = self.train_dataset if train_dataset is None else train_dataset
        if not self.group_by_modality_length:
            return super()._get_train_sampler(train_dataset)
        megabatch = self.args.train_batch_size * self.args.world_size * self.args.gradient_accumulation_steps
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        return ModalityLengthGroupedSampler(dataset.lengths, dataset.has_images, megabatch, seed)

    def create_optimizer(self, model=None):
        if self.optimizer is not None:
            return self.optimizer
        opt_model = self.model if model is None else model
        decay = set(self.get_decay_parameter_names(opt_model))
        groups = parameter_groups(self.accelerator.unwrap_model(opt_model))
        param_groups = []
        for name, lr in self.group_lrs.items():
            params = [(n, p) for n, p in groups[name] if p.requires_grad]
            for with_decay in (True, False):
                chosen = [p for n, p in params if (n in decay) == with_decay]
                if chosen:
                    weight_decay = self.args.weight_decay if with_decay else 0.0
                    param_groups.append({"params": chosen, "lr": lr, "weight_decay": weight_decay, "group": name})
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        optimizer_kwargs.pop("lr", None)
        self.optimizer = optimizer_cls(param_groups, **optimizer_kwargs)
        return self.optimizer

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        if not torch.isfinite(loss).all():
            step = self.state.global_step + 1
            raise NonFiniteLossError(
                f"training step {step}: the loss is {loss.item()}; stopping before the optimizer step. "
                f"The last good checkpoint in '{self.args.output_dir}' is intact (resume with --resume after "
                "lowering the learning rate or checking the data)."
            )
        return loss

    def _get_output_dir(self, trial) -> str:
        root = super()._get_output_dir(trial)
        return os.path.join(root, STAGING_DIR) if self._staging else root

    def _save_checkpoint(self, model, trial) -> None:
        """Write the checkpoint under `.staging/`, then rename it into place: a kill leaves no half checkpoint."""
        root = self._get_output_dir(trial)
        staging = os.path.join(root, STAGING_DIR)
        if self.args.should_save:
            shutil.rmtree(staging, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        self._staging = True
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging = False
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            name = f"checkpoint-{self.state.global_step}"
            final = os.path.join(root, name)
            if os.path.exists(final):
                shutil.rmtree(final)
            os.replace(os.path.join(staging, name), final)
            shutil.rmtree(staging, ignore_errors=True)
            rotate_checkpoints(root, self.args.save_total_limit, use_mtime=True)
        self.accelerator.wait_for_everyone()

    def save_final(self, output_dir: str, processor=None) -> None:
        """Save the final model (and `processor`) into `output_dir` as a whole or not at all.

        Everything is written under `.staging-final/` first, then moved into place with `config.json`
        last, after the previous `config.json` is removed: a kill at any moment leaves either the
        previous complete model or a directory without `config.json`, which loaders report as "no saved
        model" in one line (never weights without their processor files).
        """
        staging = os.path.join(output_dir, FINAL_STAGING_DIR)
        if self.args.should_save:
            shutil.rmtree(staging, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        self.save_model(staging)
        if self.is_world_process_zero() and processor is not None:
            processor.save_pretrained(staging)
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            config = os.path.join(output_dir, "config.json")
            if os.path.exists(config):
                os.remove(config)
            names = sorted(os.listdir(staging), key=lambda name: name == "config.json")
            for name in names:
                target = os.path.join(output_dir, name)
                if os.path.isdir(target) and not os.path.islink(target):
                    shutil.rmtree(target)
                os.replace(os.path.join(staging, name), target)
            shutil.rmtree(staging, ignore_errors=True)
        self.accelerator.wait_for_everyone()
