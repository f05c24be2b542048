"""`wings` command line: train, demo (and the evaluation / lab subcommands)."""

from __future__ import annotations

import argparse
import logging
import os
import sys


def _train(args: argparse.Namespace) -> int:
    from .training.recipe import load_recipe
    from .training.run import train

    recipe = load_recipe(args.recipe, args.overrides)
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
    p.add_argument("--max-steps", type=int, help="stop after this many optimizer steps")
    p.add_argument("--resume", action="store_true", help="resume from the last checkpoint in --output")
    p.add_argument("--skip-bad-samples", action="store_true", help="log and skip bad samples instead of stopping")
    p.add_argument(
        "overrides", nargs="*", default=[], help="recipe overrides: section.key=value (e.g. optim.batch_size=4)"
    )
    p.set_defaults(func=_train)

    p = sub.add_parser("demo", help="build a tiny WINGS model offline and chat with it about a generated image")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=150, help="training steps of the tiny demo model")
    p.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
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
