"""`wings lab`: the offline forgetting experiment, step by step, with every finished step cached.

1. text world: lab tokenizer, a ~1M-parameter Llama chat LLM pretrained on generated skills + real
   text; its held-out text accuracy is the base line for retention;
2. vision world: a tiny SigLIP encoder pretrained on easy-vqa shape/colour labels, then frozen;
3. from the same LLM and encoder, the shipped recipes scaled to this size: `llava` (stage 2 full
   LLM at a high LR, multimodal-only on purpose), `llava_low_lr` (the fair control: the LLM at the
   LR WINGS gives it) and `wings` (stage 1 projector + visual learners; stage 2 LLM and textual
   learner at the low LR, visual learners, router and projector higher); optionally `lora` and
   `llava_text_share`;
4. every model: text-only accuracy and retention, VQA accuracy, IIT per setting, attention shift;
5. `report.md`, `metrics.json`, plots.

Each step writes its outputs into its own folder and a `done.json` last (atomically), so an
interrupted run resumes where it stopped; training stages also resume from their checkpoints.
Independent steps (the two pretrainings, the stage-1 runs, the models) run side by side in
`LabConfig.jobs` worker processes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .parallel import run_calls

logger = logging.getLogger(__name__)

DEFAULT_MODELS = ("llava", "llava_low_lr", "wings")
# Optional rows: the other baselines, and the WINGS variants the feasibility run left untried
# (docs/feasibility.md): learner rank 64, the textual learner 10x below the LLM's LR, twice the stage-2 steps.
ALL_MODELS = (*DEFAULT_MODELS, "lora", "llava_text_share", "wings_r64", "wings_txt_low", "wings_long")


@dataclass(frozen=True)
class LabSizes:
    """Sizes and learning rates; `FULL` follows the feasibility run (docs/feasibility.md), `QUICK` only proves the pipeline runs."""

    llm_hidden: int = 128
    llm_layers: int = 4
    # 1,500 steps reach the held-out text accuracy 2,500 did (measured 1.000 against 0.993, seed 0,
    # same LR and cosine schedule) in 60% of the time; 1,000 steps at 6e-3 reached only 0.645.
    llm_steps: int = 1500
    llm_batch: int = 64
    llm_lr: float = 3e-3
    vision_steps: int = 1200
    vision_batch: int = 64
    stage1_steps: int = 300
    stage2_steps: int = 400
    batch: int = 32
    learner_rank: int = 16
    high_lr: float = 1e-3  # projector, visual learners, router; the LLaVA baseline's LLM
    low_lr: float = 1e-4  # the LLM and textual learner under WINGS; llava_low_lr's LLM
    text_share: float = 0.1
    text_items: int = 400
    vqa_test: int = 1000
    iit_per_setting: int = 50
    laws_samples: int = 100
    eval_batch: int = 64


FULL = LabSizes()
QUICK = LabSizes(
    llm_hidden=64, llm_layers=2, llm_steps=250, llm_batch=32, vision_steps=120, vision_batch=32, stage1_steps=30,
    stage2_steps=50, batch=16, learner_rank=8, text_items=120, vqa_test=150, iit_per_setting=8, laws_samples=16,
)


@dataclass
class LabConfig:
    output: str = "runs/lab"
    quick: bool = False
    seeds: int = 1
    models: tuple[str, ...] = DEFAULT_MODELS
    threads: int = 1  # torch threads in all, shared by the jobs
    jobs: int = 2  # worker processes for independent steps (LLM and vision pretraining, models)
    sizes: LabSizes = field(default_factory=lambda: FULL)

    def __post_init__(self):
        unknown = set(self.models) - set(ALL_MODELS)
        if unknown:
            raise ValueError(f"wings lab: unknown model(s) {sorted(unknown)}; choose from {ALL_MODELS}")
        if self.jobs < 1:
            raise ValueError("wings lab: --jobs must be >= 1")
        if self.seeds < 1:
            raise ValueError("wings lab: --seeds must be >= 1")


# ------------------------------------------------------------------------------------------------
# step cache
def _write_json_atomic(path: Path, payload: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str))
    os.replace(tmp, path)


def cached_step(folder: Path, name: str, run: Callable[[Path], dict]) -> dict:
    """Run `run(folder)` once; later calls return the recorded result (`done.json`)."""
    folder.mkdir(parents=True, exist_ok=True)
    done = folder / "done.json"
    if done.exists():
        logger.info("lab: %s already done, reusing %s", name, folder)
        tqdm.write(f"[lab] {name}: cached")
        return json.loads(done.read_text())
    tqdm.write(f"[lab] {name} ...")
    start = time.time()
    result = run(folder)
    result.setdefault("seconds", time.time() - start)
    _write_json_atomic(done, result)
    tqdm.write(f"[lab] {name}: done in {result['seconds']:.0f}s")
    return result


# ------------------------------------------------------------------------------------------------
# worlds
def build_text_world(folder: Path, sizes: LabSizes) -> dict:
    from .text_world import PretrainMix, build_lab_tokenizer, evaluate_text, heldout_text_items, make_tiny_llm, pretrain_llm

    tokenizer = build_lab_tokenizer(seed=0)
    model = make_tiny_llm(tokenizer, hidden=sizes.llm_hidden, layers=sizes.llm_layers, seed=0)
    result = pretrain_llm(model, tokenizer, PretrainMix.from_installed(), steps=sizes.llm_steps,
                          batch_size=sizes.llm_batch, lr=sizes.llm_lr, seed=0)
    model.save_pretrained(folder / "llm")
    tokenizer.save_pretrained(folder / "llm")
    evaluation = evaluate_text(model, tokenizer, heldout_text_items(sizes.text_items, seed=0))
    return {"text_acc": evaluation["text_acc"], "per_skill": evaluation["per_skill"],
            "parameters": sum(p.numel() for p in model.parameters()), "train_seconds": result.seconds,
            "seconds_per_step": result.seconds / max(sizes.llm_steps, 1)}


def build_vision_world(folder: Path, sizes: LabSizes) -> dict:
    from .vision_world import make_image_processor, make_tiny_vision_encoder, pretrain_vision

    processor = make_image_processor()
    encoder = make_tiny_vision_encoder(seed=0)
    result = pretrain_vision(encoder, processor, steps=sizes.vision_steps, batch_size=sizes.vision_batch, seed=0)
    encoder.save_pretrained(folder / "vision")
    processor.save_pretrained(folder / "vision")
    return {"shape_acc": result.shape_acc, "colour_acc": result.colour_acc, "train_seconds": result.seconds,
            "parameters": sum(p.numel() for p in encoder.parameters())}


# ------------------------------------------------------------------------------------------------
# recipes scaled to the lab
def _common_overrides(sizes: LabSizes, seed: int) -> list[str]:
    return [f"optim.batch_size={sizes.batch}", "optim.gradient_accumulation_steps=1", "optim.bf16=false",
            "optim.gradient_checkpointing=false", "optim.save_steps=100", "optim.save_total_limit=1",
            "optim.logging_steps=50", f"optim.seed={seed}", "data.max_length=160"]


@dataclass(frozen=True)
class Stage:
    recipe: str
    overrides: tuple[str, ...]
    steps: int
    data: str = "stage1"  # key of the lab's data files


def stage_plan(model: str, sizes: LabSizes) -> tuple[Stage, Stage]:
    """The two stages (shipped recipe + overrides scaled to the lab) of one lab model."""
    hi, lo = sizes.high_lr, sizes.low_lr
    shape = ("model.vision_feature_layer=-1",)  # the encoder was trained on its last layer's tokens
    llava1 = Stage("llava_stage1", (f"train.projector={hi}", *shape), sizes.stage1_steps)
    if model.startswith("wings"):
        rank = 64 if model == "wings_r64" else sizes.learner_rank
        textual = lo / 10 if model == "wings_txt_low" else lo
        steps = 2 * sizes.stage2_steps if model == "wings_long" else sizes.stage2_steps
        stage1 = Stage("wings_stage1", (f"train.projector={hi}", f"train.visual_learners={hi}",
                                        f"model.learner_rank={rank}", *shape), sizes.stage1_steps)
        stage2 = Stage("wings_stage2", (f"train.llm={lo}", f"train.textual_learners={textual}",
                                        f"train.visual_learners={hi}", f"train.router={hi}", f"train.projector={hi}"),
                       steps, "stage2")
        return stage1, stage2
    llm_lr = {"llava": hi, "llava_low_lr": lo, "llava_text_share": hi}
    if model in llm_lr:
        data = "stage2_text_share" if model == "llava_text_share" else "stage2"
        return llava1, Stage("llava_stage2", (f"train.llm={llm_lr[model]}", f"train.projector={hi}"),
                             sizes.stage2_steps, data)
    if model == "lora":
        return llava1, Stage("lora_stage2", (f"train.lora={hi}", f"train.projector={hi}", "lora.r=8", "lora.alpha=16",
                                             "lora.dropout=0.0"), sizes.stage2_steps, "stage2")
    raise ValueError(model)


def run_stage(folder: Path, stage: Stage, common: list[str], data: dict, **sources) -> dict:
    from ..training.recipe import load_recipe
    from ..training.run import train

    result = train(load_recipe(stage.recipe, [*common, *stage.overrides]), data=data[stage.data],
                   output=str(folder / "model"), image_folder=data["image_folder"], max_steps=stage.steps,
                   resume=True, **sources)
    return {"train_seconds": result.seconds, "steps": result.global_step, "loss": result.train_loss,
            "seconds_per_step": result.train_runtime / max(result.global_step, 1), "trainable": result.trainable}


# ------------------------------------------------------------------------------------------------
# evaluation
def evaluate_lab_model(folder: Path, model_dir: str, data: dict, iit_file: str, sizes: LabSizes) -> dict:
    from ..evaluation.iit import evaluate_iit, load_iit, plot_iit
    from ..evaluation.laws import compute_laws, llava_laws_samples, write_laws
    from ..evaluation.loading import load_model_and_processor
    from ..evaluation.vqa import evaluate_vqa
    from .text_world import evaluate_text, heldout_text_items

    model, processor = load_model_and_processor(model_dir, device="cpu")
    text = evaluate_text(model, processor.tokenizer, heldout_text_items(sizes.text_items, seed=0))
    vqa = evaluate_vqa(model, processor, data["vqa_test"], data["image_folder"], batch_size=sizes.eval_batch,
                       max_new_tokens=6, check_images=False)["acc"]
    # The tiny models never learned multiple-choice prompts: ask the bare question, score each option as the reply.
    iit = evaluate_iit(model, processor, load_iit(iit_file), image_folder=data["image_folder"],
                       batch_size=sizes.eval_batch, method="loglik", answer_format="cloze")
    name = Path(model_dir).parents[1].name  # <out>/runs/seed<k>/<name>/train/model
    plot_iit(iit, folder / "iit.png", title=f"IIT: {name}")
    samples = llava_laws_samples(data["vqa_test"], data["image_folder"], processor, limit=sizes.laws_samples)
    laws = compute_laws(model, processor, samples, progress=False)
    write_laws(laws, folder, title=name)
    return {"text_acc": text["text_acc"], "per_skill": text["per_skill"], "vqa_acc": vqa,
            "iit": {k: v["acc"] for k, v in iit["settings"].items()}, "iit_ci": iit["settings"],
            "attention_shift": laws.attention_shift}


# ------------------------------------------------------------------------------------------------
# steps run by `run_lab` (module level: they may run in worker processes, see `parallel.run_calls`)
def world_step(out: Path, which: str, sizes: LabSizes, threads: int) -> dict:
    """The cached text or vision world (`which`), built with `threads` torch threads (run in a worker)."""
    torch.set_num_threads(threads)
    if which == "text":
        return cached_step(out / "text_world", "text world (tokenizer + LLM pretraining)",
                           lambda f: build_text_world(f, sizes))
    return cached_step(out / "vision_world", "vision world (encoder pretraining)", lambda f: build_vision_world(f, sizes))


def _stage1_name(plan: Stage) -> str:
    return plan.recipe + "_" + hashlib.sha1(repr(plan).encode()).hexdigest()[:8]


def _stage1_step(out: Path, seed: int, name: str, sizes: LabSizes, data: dict, threads: int) -> dict:
    torch.set_num_threads(threads)
    plan = stage_plan(name, sizes)[0]
    return cached_step(out / "runs" / f"seed{seed}" / _stage1_name(plan), f"seed {seed}: {name} stage 1", lambda f: run_stage(
        f, plan, _common_overrides(sizes, seed), data, llm=str(out / "text_world" / "llm"),
        vision=str(out / "vision_world" / "vision")))


def _model_step(out: Path, seed: int, name: str, sizes: LabSizes, data: dict, iit_file: str, threads: int) -> tuple[dict, dict]:
    torch.set_num_threads(threads)
    stage1_plan, stage2_plan = stage_plan(name, sizes)
    s1_folder = out / "runs" / f"seed{seed}" / _stage1_name(stage1_plan)
    s2_folder = out / "runs" / f"seed{seed}" / name
    stage2 = cached_step(s2_folder / "train", f"seed {seed}: {name} stage 2", lambda f: run_stage(
        f, stage2_plan, _common_overrides(sizes, seed), data, init=str(s1_folder / "model")))
    metrics = cached_step(s2_folder / "eval", f"seed {seed}: evaluate {name}", lambda f: evaluate_lab_model(
        f, str(s2_folder / "train" / "model"), data, iit_file, sizes))
    return stage2, metrics


# ------------------------------------------------------------------------------------------------
def iit_step(out: Path, data: dict, per_setting: int) -> dict:
    """The IIT dialogues built once from the step's text and visual pools (cached in `out/iit`)."""
    from ..evaluation.iit import build_iit, load_pool, write_iit

    def make_iit(folder: Path) -> dict:
        dialogues = build_iit(load_pool(data["text_pool"], "text"), load_pool(data["visual_pool"], "visual"),
                              per_setting=per_setting, seed=0)
        return {"file": str(write_iit(dialogues, folder / "iit.jsonl")), "dialogues": len(dialogues)}

    return cached_step(out / "iit", "IIT dialogues", make_iit)


def run_lab(config: LabConfig) -> dict:
    """Run (or resume) the whole experiment; returns the metrics written to `metrics.json`."""
    from .data import write_lab_data
    from .report import write_report

    torch.set_num_threads(config.threads)
    sizes = QUICK if config.quick and config.sizes == FULL else config.sizes
    out = Path(config.output)
    out.mkdir(parents=True, exist_ok=True)
    _write_json_atomic(out / "lab_config.json", {**asdict(replace(config, sizes=sizes)), "sizes": asdict(sizes)})
    start = time.time()

    # The two worlds, then the distinct stage-1 runs, then every (seed, model) run in `config.jobs` processes.
    threads = max(1, config.threads // config.jobs)  # per process: never more threads than asked for in all
    text_world, vision_world = run_calls([(world_step, out, "text", sizes, threads),
                                          (world_step, out, "vision", sizes, threads)], config.jobs)

    def make_data(folder: Path) -> dict:
        from .text_world import heldout_text_items

        return write_lab_data(folder, heldout_text_items(sizes.text_items, seed=0), sizes.vqa_test,
                              sizes.text_share, n_stage2=sizes.stage2_steps * sizes.batch).to_json()

    data = cached_step(out / "data", "data files", make_data)

    iit = iit_step(out, data, sizes.iit_per_setting)
    runs_todo = [(seed, name) for seed in range(config.seeds) for name in config.models]
    # Models with the same stage 1 (every LLaVA-style row; WINGS rows of one rank) share it per seed.
    stage1_todo: dict[tuple[int, str], str] = {}
    for seed, name in runs_todo:
        stage1_todo.setdefault((seed, _stage1_name(stage_plan(name, sizes)[0])), name)
    stage1_done = dict(zip(stage1_todo, run_calls(
        [(_stage1_step, out, seed, name, sizes, data, threads) for (seed, _), name in stage1_todo.items()], config.jobs)))
    results = run_calls([(_model_step, out, seed, name, sizes, data, iit["file"], threads)
                         for seed, name in runs_todo], config.jobs)
    runs: dict[str, list[dict]] = {}
    for (seed, name), (stage2, metrics) in zip(runs_todo, results):
        stage1 = stage1_done[(seed, _stage1_name(stage_plan(name, sizes)[0]))]
        runs.setdefault(name, []).append({
            "seed": seed, **metrics,
            "text_retention": metrics["text_acc"] / text_world["text_acc"] if text_world["text_acc"] else None,
            "train_seconds": stage1["train_seconds"] + stage2["train_seconds"],
            "seconds_per_step": {"stage1": stage1["seconds_per_step"], "stage2": stage2["seconds_per_step"]},
        })
    metrics = summarize(text_world, vision_world, runs)
    metrics["total_seconds"] = time.time() - start
    _write_json_atomic(out / "metrics.json", metrics)
    write_report(out, metrics, config, sizes)
    tqdm.write(f"[lab] wrote {out / 'report.md'} and {out / 'metrics.json'} ({metrics['total_seconds']:.0f}s this run)")
    return metrics


SCALARS = ("text_acc", "text_retention", "vqa_acc", "attention_shift", "train_seconds")


def summarize(text_world: dict, vision_world: dict, runs: dict[str, list[dict]]) -> dict:
    """metrics.json: `base.text_acc`, and per model the seed mean of each metric plus every seed's values."""
    metrics: dict[str, Any] = {
        "base": {"text_acc": text_world["text_acc"], "per_skill": text_world["per_skill"],
                 "parameters": text_world["parameters"], "train_seconds": text_world["train_seconds"]},
        "vision": vision_world,
    }
    for name, seeds in runs.items():
        entry: dict[str, Any] = {}
        for key in SCALARS:
            values = [s[key] for s in seeds if s.get(key) is not None]
            entry[key] = statistics.fmean(values) if values else None
            if len(values) > 1:
                entry[f"{key}_spread"] = {"min": min(values), "max": max(values), "std": statistics.pstdev(values)}
        settings = sorted({k for s in seeds for k in s["iit"]})
        entry["iit"] = {k: statistics.fmean(s["iit"][k] for s in seeds if k in s["iit"]) for k in settings}
        entry["per_skill"] = {k: statistics.fmean(s["per_skill"][k] for s in seeds) for k in seeds[0]["per_skill"]}
        entry["seconds_per_step"] = seeds[0]["seconds_per_step"]
        entry["seeds"] = seeds
        metrics[name] = entry
    return metrics
