"""The frontier study's `metrics.json`, `report.md` and frontier chart, written from the numbers.

metrics.json (key names are a contract)::

    {"study": "frontier", "seeds": 3, "sizes": {...}, "base": {"text_acc", ...}, "vision": {...},
     "data": {...}, "models": {
        "<name>": {"method": "llava" | "wings", "lr": float, "text_share": bool,
                   "seeds": [{"seed", "lr", "text_acc", "text_retention", "mm_acc", "mm_acc_per_kind",
                              "vqa_acc", "iit": {setting: {"acc", "low", "high", "n"}},
                              "attention_shift", "per_skill", "train_seconds", "seconds_per_step"}],
                   "mean": {"text_retention" | "mm_acc" | "vqa_acc" | "attention_shift":
                                {"value", "ci_low", "ci_high"},
                            "iit": {setting: {"value", "ci_low", "ci_high"}}}}},
     "frontier_gap": {"value", "ci_low", "ci_high", "undefined", "verdict"},
     "interleaved_gap": {setting: {"value", "ci_low", "ci_high"}},
     "shift_forgetting_spearman": {"value", "ci_low", "ci_high", "n_models", "relation"},
     "timings": {...}, "total_seconds": float}

Per-seed IIT intervals are Wilson intervals over that seed's dialogues; every "mean" interval is a
bootstrap over seeds and items (`wings.lab.bootstrap`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from .bootstrap import ModelItems, Replicates, bootstrap, percentile_interval, spearman
from .frontier import frontier_gap, gap_verdict, pareto_frontier

CONFIDENCE = 0.95


INTERLEAVED_SETTINGS = ("T,V", "T,T,V")


def lr_tag(lr: float) -> str:
    """``3e-05 -> "3e-5"``, ``0.001 -> "1e-3"``: short and safe in folder names."""
    mantissa, exponent = f"{lr:.0e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def study_items(out: Path, models: list[Any], seeds: int) -> dict[str, Any]:
    """Every model's `items.json`, stacked per seed, as `bootstrap.ModelItems`."""
    result = {}
    for model in models:
        rows = [json.loads((out / "runs" / f"seed{s}" / model.name / "eval" / "items.json").read_text()) for s in range(seeds)]
        settings = list(rows[0]["iit"])
        result[model.name] = ModelItems(
            text=np.array([r["text"] for r in rows]), mm=np.array([r["mm"] for r in rows]),
            vqa=np.array([r["vqa"] for r in rows]),
            pearson=np.array([[math.nan if p is None else p for p in r["pearson"]] for r in rows], dtype=float),
            iit={s: np.array([r["iit"][s] for r in rows]) for s in settings})
    return result


def _interval(values: np.ndarray, point: float) -> dict[str, float]:
    low, high = percentile_interval(values, CONFIDENCE)
    return {"value": point, "ci_low": low, "ci_high": high}


def _frontier_points(means: dict[str, dict[str, float]], models, method: str) -> list[tuple[float, float]]:
    return [(means[m.name]["retention"], means[m.name]["mm_acc"]) for m in models
            if m.method == method and not m.text_share and not math.isnan(means[m.name]["retention"])]


def summarize_study(out: Path, models, per_model: dict[str, list[dict]], base: dict, text_world: dict,
                    vision_world: dict, data: dict, sizes, seeds: int) -> dict[str, Any]:  # fmt: skip
    """Assemble metrics.json (see the module docstring) from every model's cached results."""
    from dataclasses import asdict

    items = study_items(out, models, seeds)
    reps: Replicates = bootstrap(items, np.array(base["text"]), n=sizes.bootstrap, seed=0)
    base_acc = base["text_acc"]
    metrics: dict[str, Any] = {
        "study": "frontier", "seeds": seeds, "sizes": asdict(sizes),
        "base": {"text_acc": base_acc, "per_skill": text_world["per_skill"], "parameters": text_world["parameters"],
                 "train_seconds": text_world["train_seconds"], "layers": sizes.lab.llm_layers},
        "vision": vision_world, "data": data.get("mix", {}), "models": {},
    }
    for model in models:
        seeds_out = []
        for run in per_model[model.name]:
            e = run["eval"]
            seeds_out.append({
                "seed": run["seed"], "lr": model.lr, "text_acc": e["text_acc"],
                "text_retention": e["text_acc"] / base_acc if base_acc else None,
                "mm_acc": e["mm_acc"], "mm_acc_per_kind": e["mm_acc_per_kind"], "vqa_acc": e["vqa_acc"],
                "iit": e["iit"], "attention_shift": e["attention_shift"], "per_skill": e["per_skill"],
                "train_seconds": run["stage1"]["train_seconds"] + run["stage2"]["train_seconds"],
                "seconds_per_step": {"stage1": run["stage1"]["seconds_per_step"],
                                     "stage2": run["stage2"]["seconds_per_step"]},
                "eval_seconds": e.get("seconds"),
            })
        p = reps.point[model.name]
        metrics["models"][model.name] = {
            "method": model.method, "lr": model.lr, "text_share": model.text_share, "seeds": seeds_out,
            "mean": {
                "text_retention": _interval(reps.retention[model.name], p["retention"]),
                "mm_acc": _interval(reps.mm_acc[model.name], p["mm_acc"]),
                "vqa_acc": _interval(reps.vqa_acc[model.name], p["vqa_acc"]),
                "attention_shift": _interval(reps.attention_shift[model.name], p["attention_shift"]),
                "iit": {s: _interval(v, float(np.mean(items[model.name].iit[s]))) for s, v in reps.iit[model.name].items()},
            },
        }

    def gap(means):
        return frontier_gap(_frontier_points(means, models, "wings"), _frontier_points(means, models, "llava"))

    frontier = reps.interval(gap, CONFIDENCE)
    frontier["verdict"] = gap_verdict(frontier["value"], frontier["ci_low"], frontier["ci_high"])
    metrics["frontier_gap"] = frontier

    # Interleaved settings: WINGS minus LLaVA at the same LLM LR, averaged over the LRs.
    pairs = [(f"wings_{m.name.split('_', 1)[1]}", m.name) for m in models if m.method == "llava" and not m.text_share]
    metrics["interleaved_gap"] = {}
    for setting in INTERLEAVED_SETTINGS:
        if all(setting in reps.iit[w] for w, _ in pairs):
            diff = np.mean([reps.iit[w][setting] - reps.iit[ll][setting] for w, ll in pairs], axis=0)
            point = float(np.mean([np.mean(items[w].iit[setting]) - np.mean(items[ll].iit[setting]) for w, ll in pairs]))
            metrics["interleaved_gap"][setting] = _interval(diff, point)

    def rho(means):
        names = sorted(means)
        return spearman([means[n]["attention_shift"] for n in names], [1 - means[n]["retention"] for n in names])

    relation = reps.interval(rho, CONFIDENCE)
    relation["n_models"] = len(models)
    relation["relation"] = ("holds" if relation["ci_low"] > 0 else "opposite" if relation["ci_high"] < 0
                            else "not shown")
    metrics["shift_forgetting_spearman"] = relation
    metrics["timings"] = {
        "llm_pretrain_seconds": text_world.get("train_seconds"), "vision_pretrain_seconds": vision_world.get("train_seconds"),
        "stage1_seconds": float(np.mean([r["stage1"]["seconds"] for runs in per_model.values() for r in runs])),
        "stage2_seconds": float(np.mean([r["stage2"]["seconds"] for runs in per_model.values() for r in runs])),
        "eval_seconds": float(np.mean([r["eval"]["seconds"] for runs in per_model.values() for r in runs])),
        "stage2_seconds_per_step": float(np.mean([r["stage2"]["seconds_per_step"] for runs in per_model.values()
                                                  for r in runs])),
    }
    return metrics


# ------------------------------------------------------------------------------------------------
def plot_frontiers(metrics: dict, path: Path) -> Path:
    """Retention (x) against task accuracy (y): one line per method through its Pareto points,
    every model with its bootstrap intervals, text-share variants as open markers."""
    from ..evaluation.plots import new_figure, save_figure

    fig, ax = new_figure(7.0, 4.6)
    colours = {"llava": "tab:red", "wings": "tab:blue"}
    for method, colour in colours.items():
        rows = [(n, m) for n, m in metrics["models"].items() if m["method"] == method]
        for name, m in rows:
            r, a = m["mean"]["text_retention"], m["mean"]["mm_acc"]
            ax.errorbar(r["value"], a["value"], xerr=[[max(0, r["value"] - r["ci_low"])], [max(0, r["ci_high"] - r["value"])]],
                        yerr=[[max(0, a["value"] - a["ci_low"])], [max(0, a["ci_high"] - a["value"])]],
                        fmt="o" if not m["text_share"] else "s", mfc=colour if not m["text_share"] else "white",
                        color=colour, capsize=3, zorder=3)
            label = "text share" if m["text_share"] else lr_tag(m["lr"])
            ax.annotate(label, (r["value"], a["value"]), textcoords="offset points", xytext=(5, 4), fontsize=7, color=colour)
        points = [(m["mean"]["text_retention"]["value"], m["mean"]["mm_acc"]["value"]) for _, m in rows
                  if not m["text_share"] and not math.isnan(m["mean"]["text_retention"]["value"])]
        if points:
            front = pareto_frontier(points)
            ax.plot([p[0] for p in front], [p[1] for p in front], color=colour, label=f"{method} frontier (LLM LRs)")
    ax.set_xlabel("text retention (held-out text skills / base LLM)")
    ax.set_ylabel("multimodal task accuracy (held-out)")
    gap = metrics["frontier_gap"]
    ax.set_title(f"Frontiers: WINGS - LLaVA at matched retention {_fmt(gap['value'], sign=True)} "
                 f"[{_fmt(gap['ci_low'], sign=True)}, {_fmt(gap['ci_high'], sign=True)}]", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    return save_figure(fig, path)


def _fmt(value: Any, digits: int = 3, sign: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def _ci(entry: dict, digits: int = 3, sign: bool = False) -> str:
    return f"{_fmt(entry['value'], digits, sign)} [{_fmt(entry['ci_low'], digits, sign)}, {_fmt(entry['ci_high'], digits, sign)}]"


def frontier_sentence(gap: dict) -> str:
    """The verdict on the two frontiers, from the gap and its interval."""
    text = {
        "above": "**WINGS lies above the LLaVA frontier**: at matched text retention it reaches more multimodal "
                 "accuracy, and the interval excludes zero. This is the paper's claim, shown here.",
        "below": "**WINGS lies below the LLaVA frontier**: at matched text retention a LLaVA with the right LLM "
                 "learning rate reaches more multimodal accuracy, and the interval excludes zero.",
        "level": "**The two frontiers are level within the interval** (it includes zero): at this scale WINGS "
                 "does not trade text retention for multimodal accuracy better than LLaVA, nor worse.",
        "undecided": "**Not decided**: the two frontiers do not cover a common retention range.",
    }[gap["verdict"]]
    return (f"{text} Gap (WINGS - LLaVA task accuracy, mean over the retention range both frontiers cover): "
            f"{_ci(gap, sign=True)}" + (f"; undefined in {gap['undefined']:.0%} of the bootstrap replicates."
                                          if gap.get("undefined") else "."))


def spearman_sentence(rho: dict) -> str:
    relation = {
        "holds": "The paper's relation holds here: models whose attention shifts more forget more.",
        "opposite": "Here the relation runs opposite to the paper's: models whose attention shifts more forget less.",
        "not shown": "The paper's relation (more attention shift, more forgetting) is not shown here: the interval "
                     "includes zero.",
    }[rho["relation"]]
    return (f"Spearman correlation of attention shift with forgetting (1 - retention) over all {rho['n_models']} "
            f"models: {_ci(rho, sign=True)}. {relation}")


def write_study_report(out: Path, metrics: dict, sizes) -> Path:
    """`report.md` and `frontiers.png`, plus each model's seed-0 LAWS and IIT plots beside them."""
    import shutil

    plot_frontiers(metrics, out / "frontiers.png")
    for name in metrics["models"]:
        for kind in ("laws", "iit"):
            src = out / "runs" / "seed0" / name / "eval" / f"{kind}.png"
            if src.exists():
                shutil.copyfile(src, out / f"{kind}_{name}.png")
    lab = sizes.lab
    settings = sorted({s for m in metrics["models"].values() for s in m["mean"]["iit"]}, key=lambda s: (s.count(","), s))
    header = ["model", "LLM LR", "retention", "task acc", "VQA acc", "IIT T,V", "IIT T,T,V", "attn shift"]
    rows = []
    for name, m in metrics["models"].items():
        mean = m["mean"]
        rows.append([f"`{name}`", lr_tag(m["lr"]), _ci(mean["text_retention"]), _ci(mean["mm_acc"]),
                     _ci(mean["vqa_acc"]), *[_ci(mean["iit"][s]) if s in mean["iit"] else "-" for s in ("T,V", "T,T,V")],
                     _ci(mean["attention_shift"])])
    table = "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] +
                      ["| " + " | ".join(r) + " |" for r in rows])
    kinds = sorted({k for m in metrics["models"].values() for s in m["seeds"] for k in s["mm_acc_per_kind"]})
    kind_rows = [[f"`{n}`", *[_fmt(float(np.mean([s["mm_acc_per_kind"].get(k, math.nan) for s in m["seeds"]])))
                              for k in kinds]] for n, m in metrics["models"].items()]
    kind_table = "\n".join(["| model | " + " | ".join(kinds) + " |", "|" + "---|" * (len(kinds) + 1)] +
                           ["| " + " | ".join(r) + " |" for r in kind_rows])
    iit_rows = [[f"`{n}`", *[_fmt(m["mean"]["iit"].get(s, {}).get("value")) for s in settings]]
                for n, m in metrics["models"].items()]
    iit_table = "\n".join(["| model | " + " | ".join(settings) + " |", "|" + "---|" * (len(settings) + 1)] +
                          ["| " + " | ".join(r) + " |" for r in iit_rows])
    inter = metrics["interleaved_gap"]
    inter_lines = "\n".join(f"- ({s}): WINGS - LLaVA at the same LLM LR, mean over the LRs: {_ci(v, sign=True)}"
                            f" ({'WINGS ahead' if v['ci_low'] > 0 else 'LLaVA ahead' if v['ci_high'] < 0 else 'no difference shown'})."
                            for s, v in inter.items()) or "- (no interleaved settings were evaluated)"
    t = metrics["timings"]
    mix = metrics["data"]
    quick = lab.stage2_steps < 100
    text = f"""# wings lab --study frontier{' (--quick: sizes only prove the pipeline; the numbers mean nothing)' if quick else ''}

Does WINGS reach more multimodal skill than LLaVA at the same text retention? Each method's stage 2
runs at {len(sizes.lrs)} LLM learning rates ({', '.join(lr_tag(lr) for lr in sizes.lrs)}; WINGS' textual learner
at the same rate, its visual learners, router and projector at {lab.high_lr:g}); each traces a
retention-vs-task-accuracy frontier. Everything below was measured in this run, over {metrics['seeds']} seed(s).

## Setup
- LLM: Llama-config chat model, {lab.llm_layers} layers, {metrics['base']['parameters']:,} parameters, held-out
  text accuracy **{metrics['base']['text_acc']:.3f}** (the retention baseline, {lab.text_items} items).
- Task (`mm_acc`): {sizes.mm_test_per_kind} held-out items of each kind: "What is 37 + the number of corners of
  the shape?" (addends never trained), "Is the shape the favourite colour of tom?" (memorised facts),
  and questions about the second of two images; easy-vqa test images.
- Stage 2: {lab.stage2_steps} steps x {lab.batch}: {mix.get('task', 0)} task items, {mix.get('easy_vqa', 0)} easy-vqa
  questions and {mix.get('interleaved', 0)} interleaved dialogues (shapes T,V and T,T,V; their text turns are
  chatterbot-corpus exchanges the text test never asks). Every sample holds an image; the `*_text_share`
  models add {mix.get('text_share_samples', 0)} text-skill samples ({lab.text_share:.0%}).
- IIT: {lab.iit_per_setting} dialogues per setting, last turn scored by log-likelihood of each option.
  VQA: {lab.vqa_test} easy-vqa test questions. LAWS: {lab.laws_samples} samples.
- Intervals: {CONFIDENCE:.0%} bootstrap over seeds and test items ({sizes.bootstrap} replicates).

## Results (mean over seeds [{CONFIDENCE:.0%} interval])
{table}

![frontiers](frontiers.png)

## What the numbers say
{frontier_sentence(metrics['frontier_gap'])}

Interleaved settings (last turn an image question after text turns):
{inter_lines}

{spearman_sentence(metrics['shift_forgetting_spearman'])}

## Task accuracy per kind (mean over seeds)
{kind_table}

## IIT per setting (mean over seeds)
{iit_table}

## Time
This run: {metrics.get('total_seconds', 0):.0f} s (cached steps cost nothing). LLM pretraining
{_fmt(t['llm_pretrain_seconds'], 0)} s, vision {_fmt(t['vision_pretrain_seconds'], 0)} s; per run: stage 1
{_fmt(t['stage1_seconds'], 0)} s, stage 2 {_fmt(t['stage2_seconds'], 0)} s ({_fmt(t['stage2_seconds_per_step'])} s/step),
evaluation {_fmt(t['eval_seconds'], 0)} s.

Files: `metrics.json`, `frontiers.png`, `laws_<model>.png`, `iit_<model>.png` (seed 0), and every step under
`text_world/`, `vision_world/`, `data/`, `iit/`, `runs/`.
"""
    path = out / "report.md"
    path.write_text(text)
    return path
