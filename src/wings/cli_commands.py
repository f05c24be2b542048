"""The typed functions behind the `wings` subcommands.

Each function is one subcommand: `wings.cli_builder` turns its signature into the options and its
docstring into the help (see `wings.cli` for the registry). They are thin: they call the library
function that does the work with the same parameter names and defaults, and print a summary (the
CLI may print; the library logs). Library imports stay inside the functions so that listing the
commands loads no evaluation or lab code.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Literal

from .errors import ConfigError, UsageError

ImageMode = Literal["pad", "resize"]
Method = Literal["generate", "loglik"]
AnswerFormat = Literal["letter", "text", "cloze"]
Normalize = Literal["mean", "sum"]


def train(
    recipe: str,
    /,
    *overrides: str,
    output: str,
    data: list[str] | None = None,
    llm: str | None = None,
    vision: str | None = None,
    image_folder: str | None = None,
    init: str | None = None,
    preset: str | None = None,
    max_steps: int | None = None,
    resume: bool = False,
    skip_bad_samples: bool = False,
    overwrite: bool = False,
) -> int:
    """Run one training stage of a recipe.

    Stage 1 builds the model from --llm and --vision (or a --preset); stage 2 starts from --init,
    the stage-1 output. The final model and processor are saved in --output.

    Args:
        recipe: a recipe YAML file or a shipped recipe name (e.g. wings_stage1).
        overrides: recipe overrides section.key=value (e.g. optim.batch_size=4 train.llm=1e-5); they
            may also follow the options.
        output: output directory (checkpoints and the final model).
        data: LLaVA or messages-format JSON/JSONL file; several make a mixture, each FILE or
            FILE:WEIGHT (e.g. --data llava.json --data text.jsonl:0.1: one sample in ten text-only).
            Default: the recipe's data.sources.
        llm: causal LM: local directory or hub id (with its tokenizer).
        vision: vision encoder: local directory or hub id (with its image processor).
        image_folder: folder the data's image paths are relative to.
        init: a previous stage's output directory to start from.
        preset: a model-size preset (e.g. wings-base): its LLM, encoder, rank and router.
        max_steps: stop after this many optimizer steps.
        resume: resume from the last checkpoint in --output (an --output holding a previous run is
            refused unless --resume or --overwrite is given).
        skip_bad_samples: log and skip bad samples instead of stopping.
        overwrite: train from scratch into an --output that holds a previous run: its checkpoints are
            deleted and its final model is replaced when this run saves.
    """
    from .training.recipe import load_recipe
    from .training.run import train as run_training

    llm, vision, overrides = _apply_preset(preset, llm, vision, init, list(overrides))
    loaded = load_recipe(recipe, overrides)
    try:
        result = run_training(
            loaded,
            data=data,
            output=output,
            image_folder=image_folder,
            llm=llm,
            vision=vision,
            init=init,
            max_steps=max_steps,
            resume=resume,
            skip_bad_samples=skip_bad_samples,
            overwrite=overwrite,
        )
    finally:
        _end_process_group()
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun / accelerate launch, one summary is enough
        print(
            f"[wings train] {loaded.name}: {result.global_step} steps on {result.samples} samples in "
            f"{result.seconds:.0f}s, mean loss {result.train_loss:.4f}; trainable {result.trainable}; "
            f"saved to {result.output_dir}"
        )
    return 0


def _apply_preset(
    preset: str | None, llm: str | None, vision: str | None, init: str | None, overrides: list[str]
) -> tuple[str | None, str | None, list[str]]:
    """(llm, vision, overrides) with a model-size preset's choices filling what was not given."""
    if not preset:
        return llm, vision, overrides
    from .presets import get_preset

    try:
        chosen = get_preset(preset)
    except KeyError as err:
        raise ConfigError(err.args[0]) from err
    if not init:  # shape settings are chosen when the model is built (stage 1); explicit overrides win
        overrides = [f"model.learner_rank={chosen.learner_rank}", f"model.router={chosen.router}", *overrides]
    return llm or chosen.llm_id, vision or chosen.vision_id, overrides


def _prepared_stage_data(recipe, overrides, data, llm, vision, init, preset, image_folder):
    """(recipe, prepared sources) of a stage, prepared as `wings train` would (or reused)."""
    from .training.data import prepare_stage_data
    from .training.recipe import load_recipe

    llm, vision, overrides = _apply_preset(preset, llm, vision, init, list(overrides))
    loaded = load_recipe(recipe, overrides)
    return loaded, prepare_stage_data(loaded, data, llm=llm, vision=vision, init=init, image_folder=image_folder)


def data_prepare(
    recipe: str,
    /,
    *overrides: str,
    data: list[str] | None = None,
    llm: str | None = None,
    vision: str | None = None,
    image_folder: str | None = None,
    init: str | None = None,
    preset: str | None = None,
) -> int:
    """Prepare a stage's data ahead of `wings train`: parse, check and tokenise every sample into the cache.

    Takes the same recipe, overrides and model options as `wings train` (the tokenizer, chat template,
    max_length and image tokens decide the cache); `wings train` with them then starts from the cache.
    Bad samples are listed; `wings train` stops on them unless given --skip-bad-samples.

    Args:
        recipe: a recipe YAML file or a shipped recipe name (e.g. wings_stage1).
        overrides: recipe overrides section.key=value (e.g. data.max_length=4096 data.num_proc=8).
        data: data files, FILE or FILE:WEIGHT, as for `wings train` (default: the recipe's data.sources).
        llm: causal LM whose tokenizer and chat template tokenise the data.
        vision: vision encoder (its patch count is the image token count).
        image_folder: folder the data's image paths are relative to.
        init: a previous stage's output directory (its processor) instead of --llm and --vision.
        preset: a model-size preset (e.g. wings-base): its LLM and encoder.
    """
    _, prepared = _prepared_stage_data(recipe, overrides, data, llm, vision, init, preset, image_folder)
    for source in prepared:
        errors = source.errors
        state = "prepared" if source.built else "already prepared"
        print(f"[wings data prepare] {source.path.name}: {state}, {len(source.rows) - len(errors)} good and "
              f"{len(errors)} bad samples in {source.directory}")
        for message in errors[:20]:
            print(f"  bad: {message}")
        if len(errors) > 20:
            print(f"  ... and {len(errors) - 20} more bad samples")
    return 0


def data_stats(
    recipe: str,
    /,
    *overrides: str,
    data: list[str] | None = None,
    llm: str | None = None,
    vision: str | None = None,
    image_folder: str | None = None,
    init: str | None = None,
    preset: str | None = None,
    output: str | None = None,
) -> int:
    """Samples, images, tokens, the modality split and token lengths of a stage's data (prepared if needed).

    Args:
        recipe: a recipe YAML file or a shipped recipe name (e.g. wings_stage1).
        overrides: recipe overrides section.key=value.
        data: data files, FILE or FILE:WEIGHT, as for `wings train` (default: the recipe's data.sources).
        llm: causal LM whose tokenizer and chat template tokenise the data.
        vision: vision encoder (its patch count is the image token count).
        image_folder: folder the data's image paths are relative to.
        init: a previous stage's output directory (its processor) instead of --llm and --vision.
        preset: a model-size preset (e.g. wings-base): its LLM and encoder.
        output: folder for stats.json and one length histogram per file (<file>_lengths.png).
    """
    from .data.stats import data_stats as compute, plot_lengths

    loaded, prepared = _prepared_stage_data(recipe, overrides, data, llm, vision, init, preset, image_folder)
    results = []
    for source in prepared:
        stats, lengths, has_images = compute(source)
        results.append(stats.to_dict())
        share = stats.image_samples / stats.samples if stats.samples else 0.0
        length = stats.length
        print(f"[wings data stats] {stats.source}: {stats.samples} samples ({stats.bad_samples} bad), "
              f"{stats.image_samples} with images ({share:.0%}), {stats.text_samples} text-only, {stats.images} images; "
              f"{stats.tokens} tokens ({stats.label_tokens} trained); length min {length['min']:.0f} / median "
              f"{length['p50']:.0f} / p99 {length['p99']:.0f} / max {length['max']:.0f}")
        if output:
            os.makedirs(output, exist_ok=True)
            plot_lengths(lengths, has_images, Path(output) / f"{source.path.stem}_lengths.png",
                         title=stats.source, max_length=loaded.data.max_length)
    if output:
        (Path(output) / "stats.json").write_text(json.dumps(results, indent=1))
        print(f"[wings data stats] wrote {output}/stats.json and the length histograms")
    return 0


def _end_process_group() -> None:
    """Tear down the torchrun process group before the interpreter exits.

    Left alive, gloo's worker threads are destroyed during interpreter shutdown and a rank can abort
    ("terminate called without an active exception") after all its work is saved. Only the command
    does this: a library caller may train several stages in one process group.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def laws(
    *,
    data: str,
    output: str,
    model: str | None = None,
    compare: list[str] | None = None,
    image_folder: str | None = None,
    limit: int | None = None,
    batch_size: int = 1,
    image_mode: ImageMode | None = None,
    device: str | None = None,
) -> int:
    """MLLM-LAWS: attention on text before vs after the image, per layer.

    One model (--model) writes laws.json and laws.png; several (--compare) are overlaid in
    laws_compare.json and laws_compare.png. docs/method.md defines the attention shift.

    Args:
        data: LLaVA-format JSON/JSONL with image samples.
        output: folder for the JSON summary and the plot.
        model: a saved WINGS (or HF LLaVA) model directory.
        compare: several model directories to overlay.
        image_folder: folder the data's image paths are relative to.
        limit: use at most this many samples.
        batch_size: samples per forward pass.
        image_mode: pad each image to a square first (as LLaVA-1.5 trains) or leave it to the
            image processor's resize; default: the model's processor's own mode (its training mode).
        device: e.g. cpu or cuda:0 (default: cuda when available).
    """
    from .evaluation.checks import check_model_reads, require_image_samples
    from .evaluation.laws import run_laws, run_laws_compare
    from .validation import check_device, check_positive

    options = dict(limit=limit, batch_size=batch_size, image_mode=image_mode, device=device)
    if model and compare:
        raise UsageError("wings laws: pass --model DIR or --compare DIR1 DIR2 ..., not both")
    if not (model or compare):
        raise UsageError("wings laws: pass --model DIR or --compare DIR1 DIR2 ...")
    check_positive(limit=limit, batch_size=batch_size)
    check_device(device)
    for option, path in [("--model", model)] if model else [("--compare", path) for path in compare or []]:
        check_model_reads(path, option, images=True, why="LAWS measures attention on image tokens")
    require_image_samples(data, image_folder, "--data", "LAWS")
    if compare:
        results = run_laws_compare(compare, data, image_folder, output, **options)
        for name, result in results.items():
            print(f"[wings laws] {name}: attention shift {result.attention_shift:.4f} ({result.n_samples} samples)")
    else:
        result = run_laws(model, data, image_folder, output, **options)
        print(f"[wings laws] attention shift {result.attention_shift:.4f} over {result.n_samples} samples "
              f"({result.n_skipped} skipped); wrote {output}/laws.json and laws.png")
    return 0


def iit_build(
    *,
    text_pool: str,
    output: str,
    visual_pool: str | None = None,
    per_setting: int = 100,
    seed: int = 0,
    settings: list[str] | None = None,
    top_k: int = 5,
) -> int:
    """Build IIT dialogues from multiple-choice pools.

    Each dialogue's turns are questions on related topics; the last turn is the one scored.

    Args:
        text_pool: text-only multiple-choice items (JSONL pool).
        output: the IIT dialogues file to write (JSONL).
        visual_pool: multiple-choice items with an image (JSONL pool); needed by settings with V.
        per_setting: dialogues per setting (fewer when the pool of the scored kind is smaller).
        seed: the same pools and seed give the same dialogues.
        settings: settings such as T T,T T,V V,T (default: the paper's six).
        top_k: each context turn is drawn among this many nearest unused neighbours.
    """
    from .evaluation.iit import DEFAULT_SETTINGS, build_iit, load_pool, write_iit
    from .validation import check_positive

    check_positive(per_setting=per_setting, top_k=top_k)
    if seed < 0:
        raise UsageError(f"--seed must be a non-negative integer, got {seed}")
    text = load_pool(text_pool, "text")
    visual = load_pool(visual_pool, "visual") if visual_pool else None
    dialogues = build_iit(text, visual, settings=settings or DEFAULT_SETTINGS, per_setting=per_setting, seed=seed,
                          top_k=top_k)
    write_iit(dialogues, output)
    print(f"[wings iit build] {len(dialogues)} dialogues -> {output}")
    return 0


def iit_eval(
    *,
    model: str,
    data: str,
    image_folder: str | None = None,
    method: Method = "generate",
    answer_format: AnswerFormat = "letter",
    batch_size: int = 8,
    max_new_tokens: int = 8,
    normalize: Normalize = "mean",
    image_mode: ImageMode | None = None,
    confidence: float = 0.95,
    device: str | None = None,
    output: str | None = None,
) -> int:
    """Score a model on IIT dialogues (last turn scored).

    Prints a table of accuracy per setting with its confidence interval.

    Args:
        model: a saved model directory (model + processor).
        data: IIT dialogues (from `wings iit build`).
        image_folder: folder the dialogues' image paths are relative to.
        method: generate a reply and read the chosen option from it (the paper), or pick the most
            likely option (loglik).
        answer_format: lettered options answered by letter (the paper), options answered by their
            text, or the bare question with each option scored as the reply (cloze).
        batch_size: dialogues per forward pass.
        max_new_tokens: reply length with --method generate.
        normalize: with --method loglik, compare options by mean or summed token log-likelihood.
        image_mode: pad images to a square or resize them (default: what the model was trained with).
        confidence: level of the reported interval.
        device: e.g. cpu or cuda:0.
        output: folder for iit.json and iit.png.
    """
    from .evaluation.checks import check_model_reads, dialogues_have_images
    from .evaluation.iit import evaluate_iit, iit_table, load_iit, plot_iit
    from .evaluation.loading import load_model_and_processor
    from .validation import check_device, check_positive

    check_positive(batch_size=batch_size, max_new_tokens=max_new_tokens)
    if not 0 < confidence < 1:
        raise UsageError(f"--confidence is a level between 0 and 1 (e.g. 0.95), got {confidence}")
    check_device(device)
    if output and Path(output).exists() and not Path(output).is_dir():
        raise UsageError(f"--output '{output}' is a file; give a folder")
    dialogues = load_iit(data)
    check_model_reads(model, "--model", images=dialogues_have_images(dialogues),
                      why=f"dialogues in '{data}' show images")
    loaded, processor = load_model_and_processor(model, **_given(device=device))
    result = evaluate_iit(
        loaded, processor, dialogues, image_folder=image_folder, batch_size=batch_size, method=method,
        answer_format=answer_format, max_new_tokens=max_new_tokens, normalize=normalize, confidence=confidence,
        **_given(image_mode=image_mode),
    )
    print(iit_table(result))
    if output:
        Path(output).mkdir(parents=True, exist_ok=True)
        plot_iit(result, Path(output) / "iit.png")
        (Path(output) / "iit.json").write_text(json.dumps(result, indent=2, default=str))
    return 0


def evaluate(
    *,
    model: list[str],
    output: str,
    base_llm: str | None = None,
    text_pool: str | None = None,
    visual_pool: str | None = None,
    vqa: str | None = None,
    iit: str | None = None,
    laws_data: str | None = None,
    image_folder: str | None = None,
    limit: int | None = None,
    batch_size: int = 8,
    mc_method: Method = "loglik",
    iit_method: Method = "generate",
    answer_format: AnswerFormat = "letter",
    max_new_tokens: int = 8,
    vqa_max_new_tokens: int = 16,
    image_mode: ImageMode | None = None,
    device: str | None = None,
    lm_eval_tasks: str | None = None,
    lm_eval_include: str | None = None,
) -> int:
    """Forgetting report: text-only vs base LLM, multimodal, IIT, attention shift.

    Writes report.md, metrics.json and plots to --output; measures only what data is given for.

    Args:
        model: saved model directories.
        output: folder for the report.
        base_llm: the LLM the models were built from (for the retention ratio).
        text_pool: text-only multiple-choice items (JSONL pool).
        visual_pool: multimodal multiple-choice items (JSONL pool).
        vqa: LLaVA-format open-ended VQA data.
        iit: IIT dialogues (from `wings iit build`).
        laws_data: LLaVA-format image samples for the attention shift.
        image_folder: folder the data's image paths are relative to.
        limit: use at most this many items of each kind.
        batch_size: items per forward pass.
        mc_method: how pool items are scored: "loglik" (the most likely option) or "generate".
        iit_method: IIT scoring, as `wings iit eval --method`.
        answer_format: "letter", "text" or "cloze", for pool items and IIT turns.
        max_new_tokens: reply length when generating a multiple-choice answer.
        vqa_max_new_tokens: reply length for open-ended VQA.
        image_mode: "pad" or "resize"; default: each model's processor's own (its training mode).
        device: where the models run (default: cuda when available).
        lm_eval_tasks: comma-separated lm-evaluation-harness tasks (text-only).
        lm_eval_include: folder with extra lm-eval task YAMLs.
    """
    from .evaluation.forgetting import EvalData, evaluate_models

    data = EvalData(text_pool=text_pool, visual_pool=visual_pool, vqa=vqa, iit=iit, laws=laws_data,
                    image_folder=image_folder, limit=limit, batch_size=batch_size, mc_method=mc_method,
                    iit_method=iit_method, answer_format=answer_format, max_new_tokens=max_new_tokens,
                    vqa_max_new_tokens=vqa_max_new_tokens, image_mode=image_mode)
    _, _, report = evaluate_models(list(model), data, output, base_llm=base_llm, device=device)
    print(report)
    if lm_eval_tasks:
        from .evaluation.harness import lm_eval_accuracies, lm_eval_text_tasks

        for model_dir in model:
            result = lm_eval_text_tasks(model_dir, lm_eval_tasks.split(","), include_path=lm_eval_include, limit=limit)
            print(f"[wings eval] lm-eval {model_dir}: {lm_eval_accuracies(result)}")
    return 0


def pool_convert(
    format: str,
    source: str,
    /,
    *,
    output: str,
    split: str | None = None,
    kind: Literal["visual", "text"] | None = None,
    image_dir: str | None = None,
    image_root: str | None = None,
    limit: int | None = None,
    cache_dir: str | None = None,
) -> int:
    """Convert a benchmark set on disk (MMLU, CMMLU, OpenBookQA, HellaSwag, ScienceQA, MMBench,
    SEED-Bench, AI2D) into a multiple-choice pool file that `wings iit build` and `wings eval` read.

    Args:
        format: the benchmark: mmlu, cmmlu, openbookqa, hellaswag (text pools); scienceqa, mmbench,
            seedbench, ai2d (visual pools).
        source: the set as downloaded: a dataset folder or one parquet/json/jsonl/csv/tsv file.
        output: the pool file (JSONL) to write.
        split: which split to read (default: the benchmark's usual evaluation split).
        kind: ScienceQA only: visual (rows with an image, the default) or text (rows without).
        image_dir: visual sets: where embedded images are written (default: <output>_images/).
        image_root: visual sets whose image column holds paths: the folder they are relative to.
        limit: keep only the first LIMIT items.
        cache_dir: the datasets cache folder (default: its own).
    """
    from .evaluation.converters import convert_pool

    path = convert_pool(format, source, output, split=split, kind=kind, image_dir=image_dir,
                        image_root=image_root, limit=limit, cache_dir=cache_dir)
    print(f"[wings pool convert] {format}: wrote {path}")
    return 0


def export(model_dir: str, /, *, output: str, metrics: str | None = None, overwrite: bool = False) -> int:
    """Write a Hub-ready copy of a saved WINGS directory: it loads with only transformers and torch installed
    (`trust_remote_code=True`), with a model card.

    Args:
        model_dir: a saved WINGS directory (`wings train` output).
        output: the directory to write.
        metrics: a JSON file of results for the model card (default: metrics.json in model_dir, if any).
        overwrite: replace the contents of an existing output directory.
    """
    from .export import export_hub

    print(f"[wings export] wrote {export_hub(model_dir, output, metrics=metrics, overwrite=overwrite)}")
    return 0


def export_llm(model_dir: str, /, *, output: str, overwrite: bool = False) -> int:
    """Write the (possibly stage-2-trained) LLM of a saved WINGS model as a plain Hugging Face causal LM.

    Args:
        model_dir: a saved WINGS directory.
        output: the directory to write (model and tokenizer; loads with AutoModelForCausalLM).
        overwrite: replace the contents of an existing output directory.
    """
    from .export import export_llm as write_llm

    print(f"[wings export-llm] wrote {write_llm(model_dir, output, overwrite=overwrite)}")
    return 0


def lm_eval(argv: list[str]) -> int:
    """lm-evaluation-harness CLI with WINGS models loadable (arguments passed through)."""
    import wings  # noqa: F401  (registers the Auto classes in this process)

    try:
        from lm_eval.__main__ import cli_evaluate
    except ImportError as err:
        raise UsageError(f"wings lm-eval needs lm-evaluation-harness ({err}): pip install 'wings[eval]'") from err

    sys.argv = ["lm_eval", *argv]
    cli_evaluate()
    return 0


def lab(
    *,
    output: str | None = None,
    quick: bool = False,
    seeds: int | None = None,
    models: list[str] | None = None,
    threads: int | None = None,
    jobs: int = 2,
    study: Literal["default", "frontier"] = "default",
    llm_layers: int | None = None,
) -> int:
    """The offline forgetting experiment: LLaVA vs WINGS on a tiny LLM (main job).

    About 10 minutes on 2 idle CPU cores (9 min measured); --quick proves the pipeline in about 3 minutes. Finished steps
    are cached in --output, so an interrupted run resumes. `--study frontier` runs the second study:
    stage 2 of llava and wings at four LLM learning rates (plus text-share variants) over 3 seeds, on
    a multimodal task that needs the LLM, with bootstrap intervals (about 45 minutes on 2 cores;
    --quick about 5).

    Args:
        output: where steps, report.md and metrics.json go (default: runs/lab, or runs/lab_frontier).
        quick: tiny sizes: proves the pipeline (numbers mean nothing).
        seeds: repeat the recipes over this many seeds (default: 1; the frontier study: 3, quick 2).
        models: rows of the default study: llava llava_low_lr wings (default), lora llava_text_share
            wings_r64 wings_txt_low wings_long.
        threads: torch threads in all, shared by the jobs (default: 2 on an idle machine, 1 when busy).
        jobs: worker processes for independent steps (pretrainings, models).
        study: "default" (the lab) or "frontier" (retention-vs-multimodal frontiers of llava and wings).
        llm_layers: the frontier study's tiny LLM depth (default 4; 8 doubles the LAWS curve's points).
    """
    if study == "frontier":
        if models:
            raise UsageError("wings lab: --models chooses rows of the default study; the frontier study has its own")
        from .lab.study import run_study

        output = output or "runs/lab_frontier"
        run_study("frontier", output=output, quick=quick, seeds=seeds, jobs=jobs,
                  threads=threads or auto_threads(), llm_layers=llm_layers)
    else:
        if llm_layers is not None:
            raise UsageError("wings lab: --llm-layers applies to the frontier study (--study frontier)")
        from .lab.pipeline import DEFAULT_MODELS, LabConfig, run_lab

        output = output or "runs/lab"
        config = LabConfig(output=output, quick=quick, seeds=seeds or 1, models=tuple(models or DEFAULT_MODELS),
                           threads=threads or auto_threads(), jobs=jobs)
        run_lab(config)
    print((Path(output) / "report.md").read_text())
    return 0


def chat(*, model: str, image: list[str] | None = None, max_new_tokens: int = 256) -> int:
    """Chat with a saved model in the terminal (/image PATH attaches an image).

    Args:
        model: a saved WINGS model directory (model + processor).
        image: an image for the first message (repeatable).
        max_new_tokens: longest reply, in tokens.
    """
    from .chat import chat_loop

    chat_loop(model, images=image or [], max_new_tokens=max_new_tokens)
    return 0


def demo(*, seed: int = 0, steps: int = 150, output: str = "runs/demo") -> int:
    """Build a tiny WINGS model offline and chat with it about a generated image.

    Args:
        seed: seed of the data, the models and the training.
        steps: training steps of the tiny demo model (stage 2; stage 1 runs half as many).
        output: folder for the tiny hub, the data, both stages and the chat image.
    """
    from .demo import run_demo

    run_demo(seed=seed, steps=steps, output=output)
    return 0


def auto_threads() -> int:
    """2 torch threads on an idle machine; 1 when it is busy, where a second thread contending with
    another process made training about 10x slower, while 1 thread only costs about 1.5x
    (docs/setup.md, "Threads")."""
    busy = os.getloadavg()[0] >= 0.5 if hasattr(os, "getloadavg") else True
    return 1 if busy else min(2, os.cpu_count() or 1)


def _given(**options):
    """The options that were given (not None): the library's own defaults apply to the rest."""
    return {k: v for k, v in options.items() if v is not None}
