"""`run_study("frontier")`: LLaVA and WINGS frontiers of text retention against a multimodal task.

The default lab compares three fixed recipes. This study traces each method's trade-off instead:
stage 2 of `llava` and of `wings` at several LLM learning rates (`StudySizes.lrs`, from "forgets
nothing" to "forgets most"), plus the text-share variant of both, over several seeds. Every model is
scored on

- text retention (held-out text skills / the base LLM's accuracy),
- `mm_acc`: the held-out items of `wings.lab.mm_task`, whose answers need the LLM's text skills,
- `vqa_acc`: easy-vqa test questions,
- IIT: every default setting with `iit_per_setting` dialogues, Wilson intervals per seed,
- attention shift from LAWS (1 - mean Pearson of the before/after curves).

`wings.lab.bootstrap` redraws seeds and items to put intervals on every mean, on the frontier gap
(`wings.lab.frontier`: WINGS' multimodal accuracy minus LLaVA's at matched retention) and on the
Spearman correlation of attention shift with forgetting over every model. `study_report` writes
`report.md` from those numbers.

Steps are cached like the default lab's (`done.json` per step folder), so an interrupted study
resumes; `jobs` runs independent steps (stage-1 runs, then every model of every seed) in that many
worker processes of `threads` torch threads each.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .parallel import run_calls
from .study_report import lr_tag, summarize_study, write_study_report
from .pipeline import (
    FULL,
    QUICK,
    LabSizes,
    Stage,
    _common_overrides,
    _write_json_atomic,
    cached_step,
    iit_step,
    run_stage,
    world_step,
)

logger = logging.getLogger(__name__)

STUDIES = ("frontier",)
METHODS = ("llava", "wings")
@dataclass(frozen=True)
class StudySizes:
    """The study's sizes. `lab` holds what it shares with the default lab (LLM, vision, stage 1
    and 2 steps, batch, the high LR of the projector/visual learners/router, eval sizes)."""

    lab: LabSizes = field(default_factory=lambda: FULL)
    lrs: tuple[float, ...] = (3e-5, 1e-4, 3e-4, 1e-3)  # stage-2 LLM (and WINGS textual learner) LRs
    text_share_lr: float = 1e-3  # the LLM LR of the text-share variants
    mm_test_per_kind: int = 150
    mm_share: float = 0.4  # of stage 2: task items; interleaved dialogues below; easy-vqa the rest
    interleaved_share: float = 0.25
    max_length: int = 256  # tokens: two images and two chat turns fit
    bootstrap: int = 2000


FULL_STUDY = StudySizes(lab=replace(FULL, stage2_steps=300, vqa_test=500, iit_per_setting=200))
QUICK_STUDY = StudySizes(
    lab=replace(QUICK, stage1_steps=20, stage2_steps=40, vqa_test=60, iit_per_setting=20, laws_samples=12,
                text_items=96),
    lrs=(1e-4, 1e-3), mm_test_per_kind=20, bootstrap=300)


@dataclass(frozen=True)
class StudyModel:
    """One stage-2 setting: `method` ("llava" or "wings") with its LLM at `lr`."""

    name: str
    method: str
    lr: float
    text_share: bool = False


def study_models(sizes: StudySizes) -> list[StudyModel]:
    """Every method at every LR, then the text-share variant of each method."""
    models = [StudyModel(f"{m}_lr{lr_tag(lr)}", m, lr) for m in METHODS for lr in sizes.lrs]
    models += [StudyModel(f"{m}_text_share", m, sizes.text_share_lr, True) for m in METHODS]
    return models


def stage1_plan(method: str, sizes: StudySizes) -> Stage:
    """Stage 1 as the default lab's: the projector (WINGS: and the visual learners) on captions."""
    lab = sizes.lab
    common = (f"train.projector={lab.high_lr}", "model.vision_feature_layer=-1")
    if method == "llava":
        return Stage("llava_stage1", common, lab.stage1_steps)
    return Stage("wings_stage1", (*common, f"train.visual_learners={lab.high_lr}", f"model.learner_rank={lab.learner_rank}"),
                 lab.stage1_steps)


def stage2_plan(model: StudyModel, sizes: StudySizes) -> Stage:
    """LLaVA: the full LLM at `model.lr`, the projector high. WINGS: the LLM and the textual learner
    at `model.lr`; visual learners, router and projector high (the paper's rule at every LR)."""
    hi, data = sizes.lab.high_lr, "stage2_text_share" if model.text_share else "stage2"
    length = f"data.max_length={sizes.max_length}"
    if model.method == "llava":
        return Stage("llava_stage2", (f"train.llm={model.lr}", f"train.projector={hi}", length), sizes.lab.stage2_steps, data)
    if model.method == "wings":
        return Stage("wings_stage2", (f"train.llm={model.lr}", f"train.textual_learners={model.lr}",
                                      f"train.visual_learners={hi}", f"train.router={hi}", f"train.projector={hi}",
                                      length), sizes.lab.stage2_steps, data)
    raise ValueError(f"unknown method {model.method!r}; choose from {METHODS}")


# ------------------------------------------------------------------------------------------------
# evaluation of one model
def exact_match_items(model, processor, data_file: str, image_folder: str, batch_size: int) -> list[int]:
    """Greedy answers to the first turn of each LLaVA-format record, exact match (VQA-normalised)
    against the first reply: correct (0/1) per record, in file order, for the bootstrap."""
    from ..evaluation.vqa import evaluate_vqa

    result = evaluate_vqa(model, processor, data_file, image_folder, batch_size=batch_size, max_new_tokens=6,
                          check_images=False)
    return [int(row["correct"]) for row in result["records"]]


def evaluate_study_model(folder: Path, name: str, model_dir: str, data: dict, iit_file: str, sizes: StudySizes) -> dict:
    """Every score of one trained model; per-item results go to `items.json` for the bootstrap."""
    from ..evaluation.iit import evaluate_iit, load_iit, plot_iit
    from ..evaluation.laws import compute_laws, llava_laws_samples, write_laws
    from ..evaluation.loading import load_model_and_processor
    from .text_world import evaluate_text, heldout_text_items

    lab = sizes.lab
    model, processor = load_model_and_processor(model_dir)
    items = heldout_text_items(lab.text_items, seed=0)
    text = evaluate_text(model, processor.tokenizer, items)
    text_correct = [int(p == i.answer.strip()) for p, i in zip(text["predictions"], items)]
    mm = exact_match_items(model, processor, data["mm_test"], data["image_folder"], lab.eval_batch)
    kinds = [row["id"].split("-")[2] for row in json.loads(Path(data["mm_test"]).read_text())]  # "mm-test-<kind>-<k>"
    vqa = exact_match_items(model, processor, data["vqa_test"], data["image_folder"], lab.eval_batch)
    # The tiny models never learned multiple-choice prompts: ask the bare question, score each option as the reply.
    iit = evaluate_iit(model, processor, load_iit(iit_file), image_folder=data["image_folder"],
                       batch_size=lab.eval_batch, method="loglik", answer_format="cloze")
    plot_iit(iit, folder / "iit.png", title=f"IIT: {name}")
    iit_correct: dict[str, list[int]] = {}
    for record in iit["records"]:
        iit_correct.setdefault(record["setting"], []).append(int(record["correct"]))
    samples = llava_laws_samples(data["vqa_test"], data["image_folder"], processor, limit=lab.laws_samples)
    laws = compute_laws(model, processor, samples, progress=False)
    write_laws(laws, folder, title=name)
    pearson = [None if math.isnan(p) else float(p) for p in np.asarray(laws.pearson, dtype=float)]
    _write_json_atomic(folder / "items.json", {"text": text_correct, "mm": mm, "mm_kind": kinds, "vqa": vqa,
                                               "pearson": pearson, "iit": iit_correct})
    per_kind = {k: float(np.mean([c for c, kk in zip(mm, kinds) if kk == k])) for k in sorted(set(kinds))}
    return {"text_acc": text["text_acc"], "per_skill": text["per_skill"], "mm_acc": float(np.mean(mm)),
            "mm_acc_per_kind": per_kind, "vqa_acc": float(np.mean(vqa)), "iit": iit["settings"],
            "attention_shift": float(laws.attention_shift)}


# ------------------------------------------------------------------------------------------------
# steps (module-level functions: they run in worker processes)
@dataclass(frozen=True)
class _Context:
    out: Path
    sizes: StudySizes
    threads: int
    data: dict
    iit_file: str


def _stage1_folder(ctx: _Context, seed: int, method: str) -> Path:
    return ctx.out / "runs" / f"seed{seed}" / f"{method}_stage1"


def _stage1_task(ctx: _Context, seed: int, method: str) -> dict:
    torch.set_num_threads(ctx.threads)
    plan = stage1_plan(method, ctx.sizes)
    common = [*_common_overrides(ctx.sizes.lab, seed), f"data.max_length={ctx.sizes.max_length}"]
    return cached_step(_stage1_folder(ctx, seed, method), f"seed {seed}: {method} stage 1", lambda f: run_stage(
        f, plan, common, ctx.data, llm=str(ctx.out / "text_world" / "llm"), vision=str(ctx.out / "vision_world" / "vision")))


def _model_task(ctx: _Context, seed: int, model: StudyModel) -> dict:
    torch.set_num_threads(ctx.threads)
    folder = ctx.out / "runs" / f"seed{seed}" / model.name
    init = str(_stage1_folder(ctx, seed, model.method) / "model")
    stage2 = cached_step(folder / "train", f"seed {seed}: {model.name} stage 2", lambda f: run_stage(
        f, stage2_plan(model, ctx.sizes), _common_overrides(ctx.sizes.lab, seed), ctx.data, init=init))
    scores = cached_step(folder / "eval", f"seed {seed}: evaluate {model.name}", lambda f: evaluate_study_model(
        f, model.name, str(folder / "train" / "model"), ctx.data, ctx.iit_file, ctx.sizes))
    return {"stage2": stage2, "eval": scores}


def _base_items(out: Path, sizes: LabSizes) -> dict:
    """The base LLM's per-item text correctness (the bootstrap's retention denominator)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .text_world import evaluate_text, heldout_text_items

    llm = out / "text_world" / "llm"
    items = heldout_text_items(sizes.text_items, seed=0)
    result = evaluate_text(AutoModelForCausalLM.from_pretrained(llm), AutoTokenizer.from_pretrained(llm), items)
    return {"text_acc": result["text_acc"], "text": [int(p == i.answer.strip()) for p, i in zip(result["predictions"], items)]}


# ------------------------------------------------------------------------------------------------
def _check_resume(out: Path, config: dict) -> None:
    path = out / "study_config.json"
    config = json.loads(json.dumps(config))  # tuples as lists, as the file holds them
    if path.exists():
        old = json.loads(path.read_text())
        changed = sorted(k for k in set(old) | set(config) if k != "jobs" and old.get(k) != config.get(k))
        if changed:
            raise ValueError(f"{path}: this folder holds a study with other settings ({', '.join(changed)}); "
                             "finished steps would not match. Use another --output, or delete the folder.")
    _write_json_atomic(path, config)


def run_study(study: str = "frontier", output: str = "runs/lab_frontier", quick: bool = False, seeds: int | None = None,
              jobs: int = 2, threads: int = 1, llm_layers: int | None = None,
              sizes: StudySizes | None = None) -> dict:  # fmt: skip
    """Run (or resume) a lab study; returns the metrics written to `<output>/metrics.json`.

    Args:
        study: "frontier" (the only study so far).
        output: folder for every step, `report.md`, `metrics.json` and the plots.
        quick: small sizes and 2 LRs that prove the pipeline in a few minutes (numbers mean nothing).
        seeds: stage-1/2 seeds (default 3; quick: 2). The LLM and encoder are pretrained once.
        jobs: worker processes for independent steps (the two pretrainings, stage-1 runs, models).
        threads: torch threads in all, shared by the jobs (at least 1 each).
        llm_layers: decoder layers of the tiny LLM (default 4; 8 gives LAWS curves twice as many
            points, at about twice the LLM cost).
        sizes: explicit sizes (overrides `quick`).

    With jobs > 1 the workers are spawned processes: a script that calls this must do so under
    ``if __name__ == "__main__":`` (the `wings` command does).
    """
    from .mm_task import write_study_data

    if study not in STUDIES:
        raise ValueError(f"wings lab: unknown study {study!r}; choose from {STUDIES}")
    if jobs < 1 or threads < 1:
        raise ValueError(f"wings lab: jobs and threads must be >= 1, got jobs={jobs}, threads={threads}")
    sizes = sizes or (QUICK_STUDY if quick else FULL_STUDY)
    if llm_layers is not None:
        if llm_layers < 1:
            raise ValueError(f"wings lab: llm_layers must be >= 1, got {llm_layers}")
        sizes = replace(sizes, lab=replace(sizes.lab, llm_layers=llm_layers))
    seeds = seeds if seeds is not None else (2 if quick else 3)
    if seeds < 1:
        raise ValueError("wings lab: seeds must be >= 1")
    threads = max(1, threads // jobs)  # per process
    torch.set_num_threads(threads)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    _check_resume(out, {"study": study, "seeds": seeds, "sizes": asdict(sizes), "jobs": jobs})
    start = time.time()
    lab = sizes.lab

    text_world, vision_world = run_calls([(world_step, out, "text", lab, threads),
                                          (world_step, out, "vision", lab, threads)], jobs)
    base = cached_step(out / "base", "base LLM per-item text scores", lambda f: _base_items(out, lab))

    def make_data(folder: Path) -> dict:
        return write_study_data(folder, n_stage2=lab.stage2_steps * lab.batch, n_mm_test_per_kind=sizes.mm_test_per_kind,
                                n_vqa_test=lab.vqa_test, text_items=lab.text_items, text_share=lab.text_share,
                                mm_share=sizes.mm_share, interleaved_share=sizes.interleaved_share).to_json()

    data = cached_step(out / "data", "study data files", make_data)

    iit = iit_step(out, data, lab.iit_per_setting)
    ctx = _Context(out, sizes, threads, data, iit["file"])
    models = study_models(sizes)
    stage1 = run_calls([(_stage1_task, ctx, seed, method) for seed in range(seeds) for method in METHODS], jobs)
    runs = run_calls([(_model_task, ctx, seed, model) for seed in range(seeds) for model in models], jobs)

    stage1_by = {(seed, method): r for (seed, method), r in zip(((s, m) for s in range(seeds) for m in METHODS), stage1)}
    per_model: dict[str, list[dict]] = {}
    for (seed, model), run in zip(((s, m) for s in range(seeds) for m in models), runs):
        s1 = stage1_by[(seed, model.method)]
        per_model.setdefault(model.name, []).append({"seed": seed, "stage1": s1, **run})
    metrics = summarize_study(out, models, per_model, base, text_world, vision_world, data, sizes, seeds)
    metrics["total_seconds"] = time.time() - start
    _write_json_atomic(out / "metrics.json", metrics)
    write_study_report(out, metrics, sizes)
    tqdm.write(f"[lab] wrote {out / 'report.md'} and {out / 'metrics.json'} ({metrics['total_seconds']:.0f}s this run)")
    return metrics


