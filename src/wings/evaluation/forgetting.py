"""`evaluate_models`: the forgetting report behind `wings eval`.

For each saved model it measures what the user provides data for: text-only multiple choice (next to
the base LLM's accuracy, giving the retention ratio), multimodal multiple choice or open-ended VQA,
IIT per setting, and the MLLM-LAWS attention shift. Then it writes `report.md`, `metrics.json`,
the retention-vs-multimodal chart and per-model LAWS / IIT plots.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ..data.llava import load_llava_records
from .iit import evaluate_iit, load_iit, plot_iit
from .laws import compute_laws, llava_laws_samples, write_laws
from .pools import load_pool
from .report import ModelEvaluation, forgetting_report, plot_retention_vs_vqa, write_metrics_json
from .scoring import (
    chat_prompt,
    evaluate_mc_items,
    generate_answers,
    load_model_and_processor,
    vqa_exact_match,
)

logger = logging.getLogger(__name__)


@dataclass
class EvalData:
    """What to measure; every field is optional."""

    text_pool: str | None = None  # text-only multiple-choice items (JSONL pool)
    visual_pool: str | None = None  # multimodal multiple-choice items
    vqa: str | None = None  # LLaVA-format open-ended VQA (first human turn -> gpt answer)
    iit: str | None = None  # IIT dialogues (`wings iit build`)
    laws: str | None = None  # LLaVA-format samples with images, for the attention shift
    image_folder: str | None = None
    limit: int | None = None
    batch_size: int = 8
    iit_method: str = "generate"  # `evaluate_iit`'s method and answer_format
    iit_answer_format: str = "letter"


def vqa_accuracy(model, processor, data_file: str, image_folder: str | None, limit: int | None, batch_size: int) -> float:
    """Open-ended VQA exact match: each sample's first human turn is the question, its reply the answer."""
    records = load_llava_records(data_file, image_folder)[:limit]
    prompts, images, answers = [], [], []
    for record in records:
        messages = record.messages()
        first_reply = next(i for i, m in enumerate(messages) if m["role"] == "assistant")
        prompts.append(chat_prompt(processor, messages[:first_reply]))
        images.append([str(p) for p in record.images[: prompts[-1].count(processor.image_token)]])
        answers.append(messages[first_reply]["content"])
    predictions = generate_answers(model, processor, prompts, images, batch_size=batch_size, max_new_tokens=16)
    return sum(vqa_exact_match(p, a) for p, a in zip(predictions, answers)) / max(len(answers), 1)


def base_text_accuracy(base_llm: str, data: EvalData) -> float | None:
    """Text-only accuracy of the plain LLM (with its own tokenizer) on the text pool."""
    if data.text_pool is None:
        return None
    model = AutoModelForCausalLM.from_pretrained(base_llm).eval()
    tokenizer = AutoTokenizer.from_pretrained(base_llm)
    items = load_pool(data.text_pool, "text")[: data.limit]
    return evaluate_mc_items(model, tokenizer, items, batch_size=data.batch_size)["acc"]


def evaluate_model(model_dir: str, name: str, data: EvalData, output: Path) -> ModelEvaluation:
    model, processor = load_model_and_processor(model_dir)
    entry = ModelEvaluation(name=name)
    with torch.no_grad():
        if data.text_pool:
            result = evaluate_mc_items(model, processor, load_pool(data.text_pool, "text")[: data.limit],
                                       batch_size=data.batch_size)
            entry.text_acc = result["acc"]
            entry.per_skill = {k: v["acc"] for k, v in result["per_subject"].items()}
        if data.visual_pool:
            items = load_pool(data.visual_pool, "visual")[: data.limit]
            entry.vqa_acc = evaluate_mc_items(model, processor, items, image_folder=data.image_folder,
                                              batch_size=data.batch_size)["acc"]
        elif data.vqa:
            entry.vqa_acc = vqa_accuracy(model, processor, data.vqa, data.image_folder, data.limit, data.batch_size)
        if data.iit:
            result = evaluate_iit(model, processor, load_iit(data.iit)[: data.limit], image_folder=data.image_folder,
                                  batch_size=data.batch_size, method=data.iit_method,
                                  answer_format=data.iit_answer_format)
            entry.iit = result["settings"]
            plot_iit(result, output / f"iit_{name}.png", title=f"IIT accuracy: {name}")
        if data.laws:
            samples = llava_laws_samples(data.laws, data.image_folder, processor, limit=data.limit)
            laws = compute_laws(model, processor, samples)
            write_laws(laws, output / f"laws_{name}", title=name)
            entry.attention_shift = laws.attention_shift
    return entry


def evaluate_models(
    model_dirs: list[str], data: EvalData, output: str, base_llm: str | None = None
) -> tuple[list[ModelEvaluation], float | None, str]:
    """Evaluate every model; returns the entries, the base LLM's text accuracy and the markdown report."""
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    base = base_text_accuracy(base_llm, data) if base_llm else None
    names = _unique_names(model_dirs)
    entries = [evaluate_model(d, n, data, out) for d, n in zip(model_dirs, names)]
    report = forgetting_report(entries, base)
    (out / "report.md").write_text(report)
    write_metrics_json(entries, out / "metrics.json", base_text_acc=base)
    if any(e.vqa_acc is not None for e in entries):
        plot_retention_vs_vqa(entries, out / "retention_vs_vqa.png", base_text_acc=base)
    return entries, base, report


def _unique_names(model_dirs: list[str]) -> list[str]:
    names, seen = [], {}
    for d in model_dirs:
        name = Path(d).name or str(d)
        seen[name] = seen.get(name, 0) + 1
        names.append(name if seen[name] == 1 else f"{name}-{seen[name]}")
    return names
