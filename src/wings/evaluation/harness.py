"""Text-only benchmarks through lm-evaluation-harness, for a WINGS directory and its base LLM alike.

Importing any ``wings`` module registers the ``wings`` model type with the transformers Auto
classes (``wings/__init__.py``), which is what the harness's ``hf`` backend loads.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["lm_eval_accuracies", "lm_eval_text_tasks"]


def lm_eval_text_tasks(
    model_dir: str | os.PathLike,
    tasks: Sequence[str],
    include_path: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    limit: int | float | None = None,
    batch_size: int | str = 8,
    device: str = "cpu",
    dtype: str = "auto",
    num_fewshot: int | None = None,
    include_defaults: bool = True,
    **simple_evaluate_kwargs: Any,
) -> dict[str, Any]:
    """Run lm-evaluation-harness text-only tasks on a saved model directory with its ``hf`` backend.

    Works for a WINGS directory (model + tokenizer saved together; ``import wings`` registers the
    ``wings`` model type with ``AutoModelForCausalLM``, which is what the backend loads) and for
    the base LLM's directory alike, so both are scored by the same code. Text-only prompts never
    contain image tokens, so the WINGS model runs as its LLM plus the textual learners.

    Args:
        model_dir: local directory (or hub id, when online).
        tasks: lm-eval task names, e.g. ``["mmlu", "hellaswag"]`` or tasks under ``include_path``.
        include_path: folder(s) of extra task YAML files; built-in tasks stay available unless
            ``include_defaults=False`` (which also skips indexing the ~10k built-in task files).
        limit: documents per task (int) or fraction (float); None for all.
        dtype: passed to the backend ("auto", "float32", "bfloat16", ...).
        simple_evaluate_kwargs: anything else ``lm_eval.simple_evaluate`` takes (``bootstrap_iters``,
            ``log_samples``, ``apply_chat_template``, ...).

    Returns:
        the ``simple_evaluate`` result dict (``result["results"][task]["acc,none"]`` etc.).
    """
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("lm_eval_text_tasks needs lm-evaluation-harness: pip install lm-eval") from err
    if isinstance(tasks, str):
        tasks = [tasks]
    if isinstance(include_path, (str, os.PathLike)):
        include_path = [include_path]
    task_manager = TaskManager(
        include_path=[str(p) for p in include_path] if include_path else None, include_defaults=include_defaults
    )
    missing = [t for t in tasks if t not in task_manager.all_tasks]
    if missing:
        raise ValueError(f"lm-eval does not know task(s) {missing}; check the names or include_path={include_path}")
    return lm_eval.simple_evaluate(
        model="hf",
        # backend=causal: "wings" is not in transformers' static causal-LM name list, which lm-eval checks.
        model_args=f"pretrained={os.fspath(model_dir)},dtype={dtype},backend=causal",
        tasks=list(tasks),
        num_fewshot=num_fewshot,
        device=device,
        batch_size=batch_size,
        limit=limit,
        task_manager=task_manager,
        **simple_evaluate_kwargs,
    )


def lm_eval_accuracies(result: Mapping[str, Any], metric: str = "acc,none") -> dict[str, float]:
    """``{task: value}`` of one metric from a ``simple_evaluate`` result (tasks without it left out)."""
    return {
        task: float(values[metric])
        for task, values in result.get("results", {}).items()
        if isinstance(values.get(metric), (int, float))
    }
