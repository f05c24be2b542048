"""`wings` command line: train, demo (and the evaluation / lab subcommands)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path


def _train(args: argparse.Namespace) -> int:
    from .training.recipe import load_recipe
    from .training.run import train

    overrides = list(args.overrides)
    if args.preset:
        from .presets import get_preset

        preset = get_preset(args.preset)
        args.llm, args.vision = args.llm or preset.llm_id, args.vision or preset.vision_id
        if not args.init:  # shape settings are chosen when the model is built (stage 1)
            overrides = [f"model.learner_rank={preset.learner_rank}", f"model.router={preset.router}", *overrides]
    recipe = load_recipe(args.recipe, overrides)
    result = train(
        recipe,
        data=args.data,
        output=args.output,
        image_folder=args.image_folder,
        llm=args.llm,
        vision=args.vision,
        init=args.init,
        max_steps=args.max_steps,
        resume=args.resume,
        skip_bad_samples=args.skip_bad_samples,
    )
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # under torchrun / accelerate launch, one summary is enough
    print(
        f"[wings train] {recipe.name}: {result.global_step} steps on {result.samples} samples in "
        f"{result.seconds:.0f}s, mean loss {result.train_loss:.4f}; trainable {result.trainable}; "
        f"saved to {result.output_dir}"
    )
    return 0


def _laws(args: argparse.Namespace) -> int:
    from .evaluation.laws import run_laws, run_laws_compare

    if args.compare:
        results = run_laws_compare(args.compare, args.data, args.image_folder, args.output, limit=args.limit)
        for name, result in results.items():
            print(f"[wings laws] {name}: attention shift {result.attention_shift:.4f} ({result.n_samples} samples)")
    elif args.model:
        result = run_laws(args.model, args.data, args.image_folder, args.output, limit=args.limit)
        print(f"[wings laws] attention shift {result.attention_shift:.4f} over {result.n_samples} samples "
              f"({result.n_skipped} skipped); wrote {args.output}/laws.json and laws.png")
    else:
        raise SystemExit("wings laws: pass --model DIR or --compare DIR1 DIR2 ...")
    return 0


def _iit_build(args: argparse.Namespace) -> int:
    from .evaluation.iit import DEFAULT_SETTINGS, build_iit, load_pool, write_iit

    text = load_pool(args.text_pool, "text")
    visual = load_pool(args.visual_pool, "visual") if args.visual_pool else None
    dialogues = build_iit(text, visual, settings=args.settings or DEFAULT_SETTINGS, per_setting=args.per_setting,
                          seed=args.seed)
    write_iit(dialogues, args.output)
    print(f"[wings iit build] {len(dialogues)} dialogues -> {args.output}")
    return 0


def _iit_eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .evaluation.iit import evaluate_iit, iit_table, load_iit, plot_iit
    from .evaluation.scoring import load_model_and_processor

    model, processor = load_model_and_processor(args.model)
    result = evaluate_iit(model, processor, load_iit(args.data), image_folder=args.image_folder,
                          batch_size=args.batch_size, method=args.method, answer_format=args.answer_format)
    print(iit_table(result))
    if args.output:
        Path(args.output).mkdir(parents=True, exist_ok=True)
        plot_iit(result, Path(args.output) / "iit.png")
        (Path(args.output) / "iit.json").write_text(json.dumps(result, indent=2, default=str))
    return 0


def _eval(args: argparse.Namespace) -> int:
    from .evaluation.forgetting import EvalData, evaluate_models

    data = EvalData(text_pool=args.text_pool, visual_pool=args.visual_pool, vqa=args.vqa, iit=args.iit,
                    laws=args.laws_data, image_folder=args.image_folder, limit=args.limit,
                    batch_size=args.batch_size)
    _, _, report = evaluate_models(args.model, data, args.output, base_llm=args.base_llm)
    print(report)
    if args.lm_eval_tasks:
        from .evaluation.scoring import lm_eval_accuracies, lm_eval_text_tasks

        for model_dir in args.model:
            result = lm_eval_text_tasks(model_dir, args.lm_eval_tasks.split(","), include_path=args.lm_eval_include,
                                        limit=args.limit)
            print(f"[wings eval] lm-eval {model_dir}: {lm_eval_accuracies(result)}")
    return 0


def lm_eval_main(argv: list[str]) -> int:
    """`wings lm-eval ARGS`: lm-evaluation-harness's CLI with model type "wings" registered."""
    import wings  # noqa: F401  (registers the Auto classes in this process)
    from lm_eval.__main__ import cli_evaluate

    sys.argv = ["lm_eval", *argv]
    cli_evaluate()
    return 0


def _lab(args: argparse.Namespace) -> int:
    from .lab.pipeline import DEFAULT_MODELS, LabConfig, run_lab

    config = LabConfig(output=args.output, quick=args.quick, seeds=args.seeds,
                       models=tuple(args.models or DEFAULT_MODELS), threads=args.threads or auto_threads())
    run_lab(config)
    print((Path(args.output) / "report.md").read_text())
    return 0


def _chat(args: argparse.Namespace) -> int:
    from .chat import chat_loop

    chat_loop(args.model, images=args.image or [], max_new_tokens=args.max_new_tokens)
    return 0


def auto_threads() -> int:
    """2 torch threads on an idle machine; 1 when it is busy, where a second thread contending with
    another process made training about 10x slower (LAB_NOTES), while 1 thread only costs ~1.5x."""
    busy = os.getloadavg()[0] >= 0.5 if hasattr(os, "getloadavg") else True
    return 1 if busy else min(2, os.cpu_count() or 1)


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(seed=args.seed, steps=args.steps)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wings", description="WINGS multimodal LLMs without text-only forgetting")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="run one training stage of a recipe")
    p.add_argument("recipe", help="a recipe YAML file or a shipped recipe name (e.g. wings_stage1)")
    p.add_argument("--llm", help="causal LM: local directory or hub id (with its tokenizer)")
    p.add_argument("--vision", help="vision encoder: local directory or hub id (with its image processor)")
    p.add_argument("--data", required=True, help="LLaVA-format JSON/JSONL file")
    p.add_argument("--image-folder", help="folder the data's image paths are relative to")
    p.add_argument("--output", required=True, help="output directory (checkpoints and the final model)")
    p.add_argument("--init", help="a previous stage's output directory to start from")
    p.add_argument("--preset", help="a model-size preset (e.g. wings-base): its LLM, encoder, rank and router")
    p.add_argument("--max-steps", type=int, help="stop after this many optimizer steps")
    p.add_argument("--resume", action="store_true", help="resume from the last checkpoint in --output")
    p.add_argument("--skip-bad-samples", action="store_true", help="log and skip bad samples instead of stopping")
    p.add_argument(
        "overrides", nargs="*", default=[], help="recipe overrides: section.key=value (e.g. optim.batch_size=4)"
    )
    p.set_defaults(func=_train)

    p = sub.add_parser("laws", help="MLLM-LAWS: attention on text before vs after the image, per layer")
    p.add_argument("--model", help="a saved WINGS (or HF LLaVA) model directory")
    p.add_argument("--compare", nargs="+", metavar="DIR", help="several model directories to overlay")
    p.add_argument("--data", required=True, help="LLaVA-format JSON/JSONL with image samples")
    p.add_argument("--image-folder", help="folder the data's image paths are relative to")
    p.add_argument("--output", required=True)
    p.add_argument("--limit", type=int, help="use at most this many samples")
    p.set_defaults(func=_laws)

    iit = sub.add_parser("iit", help="the Interleaved Image-Text benchmark").add_subparsers(dest="iit", required=True)
    p = iit.add_parser("build", help="build IIT dialogues from multiple-choice pools")
    p.add_argument("--text-pool", required=True)
    p.add_argument("--visual-pool")
    p.add_argument("--output", required=True)
    p.add_argument("--per-setting", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--settings", nargs="+", help="settings such as T T,T T,V V,T (default: the paper's six)")
    p.set_defaults(func=_iit_build)
    p = iit.add_parser("eval", help="score a model on IIT dialogues (last turn scored)")
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--image-folder")
    p.add_argument("--method", choices=["generate", "loglik"], default="generate")
    p.add_argument("--answer-format", choices=["letter", "text", "cloze"], default="letter",
                   help="lettered options answered by letter (the paper), options answered by their text, or "
                        "the bare question with each option scored as the reply (cloze)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--output", help="folder for iit.json and iit.png")
    p.set_defaults(func=_iit_eval)

    p = sub.add_parser("eval", help="forgetting report: text-only vs base LLM, multimodal, IIT, attention shift")
    p.add_argument("--model", nargs="+", required=True, help="saved model directories")
    p.add_argument("--base-llm", help="the LLM the models were built from (for the retention ratio)")
    p.add_argument("--text-pool", help="text-only multiple-choice items (JSONL)")
    p.add_argument("--visual-pool", help="multimodal multiple-choice items (JSONL)")
    p.add_argument("--vqa", help="LLaVA-format open-ended VQA data")
    p.add_argument("--iit", help="IIT dialogues (from `wings iit build`)")
    p.add_argument("--laws-data", help="LLaVA-format image samples for the attention shift")
    p.add_argument("--image-folder")
    p.add_argument("--limit", type=int)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lm-eval-tasks", help="comma-separated lm-evaluation-harness tasks (text-only)")
    p.add_argument("--lm-eval-include", help="folder with extra lm-eval task YAMLs")
    p.add_argument("--output", required=True)
    p.set_defaults(func=_eval)

    sub.add_parser("lm-eval", help="lm-evaluation-harness CLI with WINGS models loadable (args passed through)")

    p = sub.add_parser("lab", help="the offline forgetting experiment: LLaVA vs WINGS on a tiny LLM (main job)")
    p.add_argument("--output", default="runs/lab", help="where steps, report.md and metrics.json go")
    p.add_argument("--quick", action="store_true", help="tiny sizes: proves the pipeline in about 3 minutes")
    p.add_argument("--seeds", type=int, default=1, help="repeat the recipes over this many seeds")
    p.add_argument("--models", nargs="+", help="llava llava_low_lr wings [lora llava_text_share]")
    p.add_argument("--threads", type=int, help="torch threads (default: 2 on an idle machine, 1 when it is busy)")
    p.set_defaults(func=_lab)

    p = sub.add_parser("chat", help="chat with a saved model in the terminal (/image PATH attaches an image)")
    p.add_argument("--model", required=True, help="a saved WINGS model directory (model + processor)")
    p.add_argument("--image", action="append", help="an image for the first message (repeatable)")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.set_defaults(func=_chat)

    p = sub.add_parser("demo", help="build a tiny WINGS model offline and chat with it about a generated image")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=150, help="training steps of the tiny demo model")
    p.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["lm-eval"]:
        return lm_eval_main(argv[1:])
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse cannot collect positionals that follow options: recipe overrides (key=value) may come last.
    stray = [item for item in extra if item.startswith("-") or "=" not in item]
    if stray or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
