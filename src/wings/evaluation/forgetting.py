"""`evaluate_models`: the forgetting report behind `wings eval`.

For each saved model it measures what the user provides data for: text-only multiple choice (next to
the base LLM's accuracy, giving the retention ratio), multimodal multiple choice or open-ended VQA,
IIT per setting, and the MLLM-LAWS attention shift. Then it writes `report.md`, `metrics.json`,
the retention-vs-multimodal chart and per-model LAWS / IIT plots.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..data.images import ImageMode
from ..errors import UsageError
from ..validation import check_device, check_model, check_positive
from .checks import check_model_reads, dialogues_have_images, require_image_samples
from .iit import evaluate_iit, load_iit, plot_iit
from .laws import compute_laws, llava_laws_samples
from .laws_plots import write_laws
from .loading import load_model_and_processor
from .multiple_choice import AnswerFormat, Method, evaluate_mc_items
from .pools import load_pool
from .report import ModelEvaluation, forgetting_report, plot_retention_vs_vqa, unique_names, write_metrics_json
from .vqa import evaluate_vqa

__all__ = ["EvalData", "base_text_accuracy", "check_eval_inputs", "evaluate_model", "evaluate_models"]

logger = logging.getLogger(__name__)


@dataclass
class EvalData:
    """What to measure, and how; every field is optional.

    Attributes:
        text_pool: text-only multiple-choice items (a pool file).
        visual_pool: multimodal multiple-choice items (a pool file).
        vqa: LLaVA-format open-ended VQA (first human turn -> gpt answer); used without a visual pool.
        iit: IIT dialogues (``wings iit build``).
        laws: LLaVA-format samples with images, for the attention shift.
        image_folder: where the image paths of all of the above are resolved.
        limit: use only the first ``limit`` items of each file.
        batch_size: prompts per forward.
        mc_method: how pool items are scored: "loglik" (the most likely option) or "generate".
        iit_method: how IIT dialogues are scored: "generate" (the paper's protocol) or "loglik".
        answer_format: "letter", "text" or "cloze" (see `wings.evaluation.multiple_choice`).
        max_new_tokens: reply length when generating a multiple-choice answer.
        vqa_max_new_tokens: reply length for open-ended VQA.
        image_mode: "pad" or "resize"; None: each model's processor's own (its training mode).
    """

    text_pool: str | None = None
    visual_pool: str | None = None
    vqa: str | None = None
    iit: str | None = None
    laws: str | None = None
    image_folder: str | None = None
    limit: int | None = None
    batch_size: int = 8
    mc_method: Method = "loglik"
    iit_method: Method = "generate"
    answer_format: AnswerFormat = "letter"
    max_new_tokens: int = 8
    vqa_max_new_tokens: int = 16
    image_mode: ImageMode | None = None


def base_text_accuracy(base_llm: str | os.PathLike, data: EvalData, device: str | None = None) -> float | None:
    """Text-only accuracy of the plain LLM (with its own tokenizer) on the text pool."""
    if data.text_pool is None:
        return None
    model, tokenizer = load_model_and_processor(base_llm, device)
    items = load_pool(data.text_pool, "text")[: data.limit]
    return evaluate_mc_items(model, tokenizer, items, method=data.mc_method, batch_size=data.batch_size,
                             max_new_tokens=data.max_new_tokens, answer_format=data.answer_format)["acc"]


def evaluate_model(
    model_dir: str | os.PathLike, name: str, data: EvalData, output: Path, device: str | None = None
) -> ModelEvaluation:
    """Everything ``data`` asks for, for one saved model (WINGS or HF LLaVA); plots go under ``output``."""
    model, processor = load_model_and_processor(model_dir, device)
    entry = ModelEvaluation(name=name)
    mc = dict(batch_size=data.batch_size, max_new_tokens=data.max_new_tokens, image_mode=data.image_mode,
              answer_format=data.answer_format)  # fmt: skip
    with torch.no_grad():
        if data.text_pool:
            items = load_pool(data.text_pool, "text")[: data.limit]
            result = evaluate_mc_items(model, processor, items, method=data.mc_method, **mc)
            entry.text_acc = result["acc"]
            entry.per_skill = {k: v["acc"] for k, v in result["per_subject"].items()}
        if data.visual_pool:
            items = load_pool(data.visual_pool, "visual")[: data.limit]
            entry.vqa_acc = evaluate_mc_items(
                model, processor, items, image_folder=data.image_folder, method=data.mc_method, **mc
            )["acc"]
        elif data.vqa:
            entry.vqa_acc = evaluate_vqa(model, processor, data.vqa, data.image_folder, data.limit, data.batch_size,
                                         data.vqa_max_new_tokens, data.image_mode)["acc"]  # fmt: skip
        if data.iit:
            result = evaluate_iit(model, processor, load_iit(data.iit)[: data.limit], data.image_folder,
                                  method=data.iit_method, **mc)  # fmt: skip
            entry.iit = result["settings"]
            plot_iit(result, output / f"iit_{name}.png", title=f"IIT accuracy: {name}")
        if data.laws:
            samples = llava_laws_samples(data.laws, data.image_folder, processor, limit=data.limit)
            laws = compute_laws(model, processor, samples, image_mode=data.image_mode)
            write_laws(laws, output / f"laws_{name}", title=name)
            entry.attention_shift = laws.attention_shift
    return entry


def check_eval_inputs(
    model_dirs: Sequence[str | os.PathLike],
    data: EvalData,
    output: str | os.PathLike,
    base_llm: str | os.PathLike | None = None,
    device: str | None = None,
) -> None:
    """What `evaluate_models` checks before the first model loads: every data file reads and holds what
    its measurement needs, every model directory exists and can read the data (a plain LLM cannot read
    images), the device exists, the numbers are positive.

    Raises:
        UsageError, DataError, ModelPathError: naming the option and the file or directory.
    """
    check_device(device)
    check_positive(limit=data.limit, batch_size=data.batch_size, max_new_tokens=data.max_new_tokens,
                   vqa_max_new_tokens=data.vqa_max_new_tokens)
    if Path(output).exists() and not Path(output).is_dir():
        raise UsageError(f"--output '{output}' is a file; give a folder")
    if not model_dirs:
        raise UsageError("--model: give at least one model directory")
    images = False
    if data.text_pool:
        load_pool(data.text_pool, "text")
    if data.visual_pool:
        load_pool(data.visual_pool, "visual")
        images = True
    if data.vqa:
        require_image_samples(data.vqa, data.image_folder, "--vqa", "open-ended VQA")
        images = True
    if data.iit:
        images |= dialogues_have_images(load_iit(data.iit))
    if data.laws:
        require_image_samples(data.laws, data.image_folder, "--laws-data", "LAWS")
        images = True
    for model_dir in model_dirs:
        check_model_reads(model_dir, "--model", images, why="the evaluation data holds images")
    if base_llm is not None:
        check_model(base_llm, "--base-llm", "llm")


def evaluate_models(
    model_dirs: Sequence[str | os.PathLike],
    data: EvalData,
    output: str | os.PathLike,
    base_llm: str | os.PathLike | None = None,
    device: str | None = None,
) -> tuple[list[ModelEvaluation], float | None, str]:
    """Evaluate every model (WINGS or HF LLaVA directories) and write the report.

    Everything is checked first (`check_eval_inputs`); report.md and metrics.json are rewritten after
    each model with the models finished so far (metrics.json lists the others as "pending_models").

    Args:
        model_dirs: saved models; each is named by its folder (made unique with -2, -3, ...).
        data: what to measure (see `EvalData`).
        output: folder for report.md, metrics.json and the plots.
        base_llm: the LLM the models were built from (a causal LM directory), for text retention.
        device: where to run; None: cuda when available, else cpu.

    Returns:
        the entries, the base LLM's text accuracy and the markdown report.
    """
    check_eval_inputs(model_dirs, data, output, base_llm, device)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    base = base_text_accuracy(base_llm, data, device) if base_llm else None
    names = unique_names(model_dirs)
    entries: list[ModelEvaluation] = []
    for model_dir, name in zip(model_dirs, names, strict=True):
        entries.append(evaluate_model(model_dir, name, data, out, device))
        # Written after every model, so that a later failure or interruption keeps what was measured.
        report = forgetting_report(entries, base)
        (out / "report.md").write_text(report, encoding="utf-8")
        write_metrics_json(entries, out / "metrics.json", base_text_acc=base,
                           extra={"pending_models": names[len(entries):]})
    if any(e.vqa_acc is not None for e in entries):
        plot_retention_vs_vqa(entries, out / "retention_vs_vqa.png", base_text_acc=base)
    return entries, base, report
