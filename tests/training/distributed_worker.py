"""Worker for the multi-process tests: FSDP2 training of a tiny WINGS model on CPU with gloo.

Run with `torchrun --nproc_per_node 2 distributed_worker.py OUT --steps N --save-at K [--resume CKPT]`
(FSDP2), or with `--engine zero2` / `--engine zero3` (DeepSpeed with its CPU accelerator).
FSDP2's wrap units come from the shipped `recipes/accelerate_fsdp.yaml` through accelerate's own
FSDP2 wrap-policy function; DeepSpeed runs the shipped `recipes/deepspeed_zero{2,3}.json` with their
"auto" values filled in as the HF integration would. The global batch of every step is fixed by its
step number, and each rank takes an equal share of it, so a run is comparable with a single process on
the whole batch.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))

from tiny import IMAGE_TOKEN_ID, VOCAB, tiny_wings  # noqa: E402

GLOBAL_BATCH, TEXT_TOKENS, N_IMAGE_TOKENS, LR = 4, 10, 4, 0.05
FSDP_RECIPE = REPO / "recipes" / "accelerate_fsdp.yaml"


def make_model():
    """The tiny WINGS model every run starts from (fixed seeds), in training mode, vision tower frozen."""
    return freeze_vision(tiny_wings().train())


def freeze_vision(model):
    # As the WINGS recipes do; its last layer gets no gradient anyway (features come from layer -2).
    model.vision_tower.requires_grad_(False)
    return model


def make_batch(step: int, rows: slice = slice(None)) -> dict[str, torch.Tensor]:
    """Global batch of `step` (rows `rows` of it): 1 image + text per sample, labels on the text."""
    gen = torch.Generator().manual_seed(1000 + step)
    text = torch.randint(8, VOCAB, (GLOBAL_BATCH, TEXT_TOKENS), generator=gen)
    image = torch.full((GLOBAL_BATCH, N_IMAGE_TOKENS), IMAGE_TOKEN_ID)
    input_ids = torch.cat([text[:, :2], image, text[:, 2:]], dim=1)
    labels = input_ids.masked_fill(input_ids == IMAGE_TOKEN_ID, -100)
    pixel_values = torch.randn(GLOBAL_BATCH, 3, 32, 32, generator=gen)
    return {"input_ids": input_ids[rows], "labels": labels[rows], "pixel_values": pixel_values[rows]}


def make_optimizer(model):
    # SGD with momentum (state to save and resume): Adam would turn the rounding noise of gradients that
    # are zero in exact arithmetic (key biases: softmax ignores them) into full-size, run-dependent steps.
    return torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=LR, momentum=0.9)


def train_steps(model, optimizer, steps: range, rows: slice = slice(None)) -> list[float]:
    """One optimizer step per global batch; returns each step's loss (on `rows`)."""
    losses = []
    for step in steps:
        loss = model(**make_batch(step, rows)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
    return losses


def fsdp_plugin_from_recipe(path: Path = FSDP_RECIPE):
    """accelerate's FSDP plugin configured as the shipped launch config says."""
    from accelerate.utils import FullyShardedDataParallelPlugin

    config = yaml.safe_load(path.read_text())["fsdp_config"]
    return FullyShardedDataParallelPlugin(
        fsdp_version=config["fsdp_version"],
        auto_wrap_policy=config["fsdp_auto_wrap_policy"].lower(),
        transformer_cls_names_to_wrap=config["fsdp_transformer_layer_cls_to_wrap"].split(","),
        reshard_after_forward=config["fsdp_reshard_after_forward"],
        state_dict_type=config["fsdp_state_dict_type"],
    )


def shard(model, mesh):
    """fully_shard every module the recipe's wrap policy picks, then the root (as accelerate does)."""
    from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy
    from torch.distributed.fsdp import fully_shard

    plugin = fsdp_plugin_from_recipe()
    policy = fsdp2_prepare_auto_wrap_policy(plugin, model)
    units = [name for name, module in model.named_modules() if name and policy(module)]
    for name in reversed(units):
        fully_shard(model.get_submodule(name), mesh=mesh, reshard_after_forward=plugin.reshard_after_forward)
    fully_shard(model, mesh=mesh, reshard_after_forward=plugin.reshard_after_forward)
    return units


def deepspeed_config(stage: int, world: int) -> dict:
    """The shipped ZeRO config with its "auto" values filled in for this run (fp32, no clipping)."""
    config = json.loads((REPO / "recipes" / f"deepspeed_zero{stage}.json").read_text())
    config["zero_optimization"] = {k: v for k, v in config["zero_optimization"].items() if v != "auto"}
    config.update(bf16={"enabled": False}, train_micro_batch_size_per_gpu=GLOBAL_BATCH // world,
                  gradient_accumulation_steps=1, train_batch_size=GLOBAL_BATCH, gradient_clipping=0.0,
                  zero_allow_untested_optimizer=True)  # plain torch SGD beside ZeRO
    return config


def run_deepspeed(stage: int, out: Path, steps: int) -> None:
    import deepspeed
    import torch.distributed as dist

    deepspeed.init_distributed(dist_backend="gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    share = GLOBAL_BATCH // world
    rows = slice(rank * share, (rank + 1) * share)
    model = make_model()
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=make_optimizer(model),
                                           config=deepspeed_config(stage, world))
    losses = []
    for step in range(steps):
        loss = engine(**make_batch(step, rows)).loss
        engine.backward(loss)
        engine.step()
        losses.append(float(loss.detach()))
    per_step = torch.tensor(losses)
    dist.all_reduce(per_step)
    # ZeRO-3 holds each parameter in pieces: gather one full copy (collective), written by rank 0 alone.
    weights = engine._zero3_consolidated_16bit_state_dict() if stage == 3 else model.state_dict()
    if rank == 0:
        model.save_pretrained(out / "final", state_dict=weights)
        partitioned = sum(1 for p in model.parameters() if hasattr(p, "ds_id"))
        (out / "run.json").write_text(json.dumps({"losses": (per_step / world).tolist(), "world": world,
                                                  "zero_partitioned_params": partitioned}))
    dist.barrier()
    dist.destroy_process_group()


def main() -> None:
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
        set_optimizer_state_dict,
    )
    from torch.distributed.device_mesh import init_device_mesh

    from wings import WingsForConditionalGeneration

    parser = argparse.ArgumentParser()
    parser.add_argument("output")
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--save-at", type=int, default=None)
    parser.add_argument("--resume", default=None)
    parser.add_argument("--engine", choices=("fsdp", "zero2", "zero3"), default="fsdp")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.engine != "fsdp":
        return run_deepspeed(int(args.engine[-1]), Path(args.output), args.steps)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    share = GLOBAL_BATCH // world
    rows = slice(rank * share, (rank + 1) * share)
    out = Path(args.output)

    start = 0
    if args.resume:
        model = freeze_vision(WingsForConditionalGeneration.from_pretrained(args.resume).train())
        start = json.loads((Path(args.resume) / "step.json").read_text())["step"]
    else:
        model = make_model()
    units = shard(model, init_device_mesh("cpu", (world,)))
    optimizer = make_optimizer(model)
    full = StateDictOptions(full_state_dict=True, cpu_offload=True)
    if args.resume:
        state = torch.load(Path(args.resume) / "optimizer.pt", weights_only=False)
        set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))

    def save(folder: Path, step: int) -> None:
        # Collective calls: every rank takes part; rank 0 alone writes the one full copy.
        weights = get_model_state_dict(model, options=full)
        optim = get_optimizer_state_dict(model, optimizer, options=full)
        if rank == 0:
            model.save_pretrained(folder, state_dict=weights)
            torch.save(optim, folder / "optimizer.pt")
            (folder / "step.json").write_text(json.dumps({"step": step}))
        dist.barrier()

    losses = []
    stop = args.save_at if args.save_at is not None else args.steps
    losses += train_steps(model, optimizer, range(start, stop), rows)
    if args.save_at is not None and args.save_at < args.steps:
        save(out / f"checkpoint-{args.save_at}", args.save_at)
        losses += train_steps(model, optimizer, range(args.save_at, args.steps), rows)
    # The loss of the whole global batch: the mean over ranks (every rank holds as many label tokens).
    per_step = torch.tensor(losses)
    dist.all_reduce(per_step)
    save(out / "final", args.steps)
    if rank == 0:
        (out / "run.json").write_text(json.dumps({
            "losses": (per_step / world).tolist(), "units": units, "world": world,
            "fsdp_modules": [name for name, m in model.named_modules()
                             if isinstance(m, torch.distributed.fsdp.FSDPModule)],
        }))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
