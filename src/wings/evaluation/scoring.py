"""Scoring a model on multiple-choice, open-ended VQA and text-only tasks.

Everything here is batched, left-padded, runs under ``torch.no_grad()`` and reports progress with
tqdm. Requests are sorted by length before batching (less padding) and results come back in the
caller's order.

``model`` is a `WingsForConditionalGeneration` or any Hugging Face causal LM (the base LLM, to
measure what a WINGS model kept); ``processor`` is a `WingsProcessor`, or a plain tokenizer for
text-only prompts. Prompts are complete strings (render chat messages with
``processor.apply_chat_template``); they are tokenised without adding special tokens, as the
processor does, and each ``<image>`` marker stands for the next image of that prompt.

Two ways to score a multiple-choice item:

- :func:`score_choices_loglik`: the log-likelihood of each choice as a continuation of the
  prompt (summed, or averaged over its tokens); the highest wins. Never unparseable, and the
  usual choice for base models.
- :func:`score_choices_generate`: greedy generation, then :func:`wings.evaluation.iit.parse_choice`
  reads the option off the reply (None when it cannot be told). This is how a chat model is
  used, and how the WINGS paper scores IIT.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from PIL import Image
from tqdm.auto import tqdm

from ..data.images import ImageMode, ImageTransform
from .iit import accuracy_with_ci, format_question, parse_choice
from .pools import LETTERS, MCItem

__all__ = [
    "chat_prompt",
    "choice_loglikelihoods",
    "evaluate_mc_items",
    "exact_match_accuracy",
    "generate_answers",
    "lm_eval_accuracies",
    "lm_eval_text_tasks",
    "load_model_and_processor",
    "normalize_answer",
    "resolve_image_paths",
    "score_choices_generate",
    "score_choices_loglik",
    "vqa_exact_match",
    "vqa_score",
]

logger = logging.getLogger(__name__)

ImageInput = Image.Image | str | os.PathLike
Normalize = Literal["mean", "sum"]


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def load_model_and_processor(
    path: str | os.PathLike, device: str | torch.device = "cpu", dtype: str | torch.dtype | None = None
):
    """Load a saved WINGS directory (``wings train`` output): ``(model in eval mode, WingsProcessor)``.

    Args:
        path: a directory holding ``config.json`` + weights and the processor files
            (``model.save_pretrained(path)`` and ``processor.save_pretrained(path)``).
        device: where to put the model.
        dtype: e.g. ``"bfloat16"`` or ``torch.float32``; None keeps the checkpoint's dtype.
    """
    from ..modeling.model import WingsForConditionalGeneration
    from ..processing import WingsProcessor

    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"'{path}' is not a saved WINGS model: no config.json in it")
    if not (path / "processor_config.json").is_file() and not (path / "tokenizer_config.json").is_file():
        raise FileNotFoundError(
            f"'{path}' holds a model but no processor/tokenizer files; save them beside the model with "
            "processor.save_pretrained(path)"
        )
    kwargs: dict[str, Any] = {}
    if dtype is not None:
        kwargs["dtype"] = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    model = WingsForConditionalGeneration.from_pretrained(path, **kwargs).to(device).eval()
    processor = WingsProcessor.from_pretrained(path)
    if processor.image_seq_length != model.config.image_seq_length:
        raise ValueError(
            f"'{path}': the processor expands <image> into {processor.image_seq_length} tokens but the model "
            f"expects image_seq_length={model.config.image_seq_length}"
        )
    return model, processor


# --------------------------------------------------------------------------------------------
# Encoding helpers
# --------------------------------------------------------------------------------------------


def _tokenizer(processor):
    return getattr(processor, "tokenizer", processor)


def _image_token(processor) -> str | None:
    return getattr(processor, "image_token", None)


def _pad_id(processor) -> int:
    tok = _tokenizer(processor)
    for candidate in (tok.pad_token_id, tok.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


def _encode(processor, text: str) -> list[int]:
    """Token ids of ``text`` with each image marker expanded (no special tokens added)."""
    expand = getattr(processor, "expand_image_tokens", None)
    if expand is not None:
        text = expand(text)
    return list(_tokenizer(processor)(text, add_special_tokens=False)["input_ids"])


def _model_device(model) -> torch.device:
    device = getattr(model, "device", None)
    if device is not None:
        return torch.device(device)
    return next(model.parameters()).device


def _max_positions(model) -> int | None:
    config = getattr(model, "config", None)
    config = getattr(config, "text_config", None) or config
    value = getattr(config, "max_position_embeddings", None)
    return int(value) if isinstance(value, int) else None


def _left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of ids -> input_ids [B, T], attention_mask [B, T], padded on the left."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, row in enumerate(rows):
        if row:
            ids[b, width - len(row) :] = torch.tensor(row, dtype=torch.long)
            mask[b, width - len(row) :] = 1
    return ids, mask


class _ImageCache:
    """pixel_values per item, computed once (an item's images are reused for all its choices)."""

    def __init__(self, processor, images: Sequence[Sequence[ImageInput]] | None, image_mode: ImageMode):
        self.images = images
        self.processor = processor
        self.image_mode = image_mode
        self._transform: ImageTransform | None = None
        self._cache: dict[int, list[torch.Tensor]] = {}

    def __call__(self, item: int) -> list[torch.Tensor]:
        if self.images is None or not self.images[item]:
            return []
        if item not in self._cache:
            if self._transform is None:
                if getattr(self.processor, "image_processor", None) is None:
                    raise ValueError("images were given but the processor has no image_processor")
                self._transform = ImageTransform(self.processor, self.image_mode)
            self._cache[item] = [self._transform(img) for img in self.images[item]]
        return self._cache[item]

    def batch(self, items: Sequence[int]) -> torch.Tensor | None:
        """pixel_values [n_images, 3, H, W] of the items, in order, or None without images."""
        tensors = [t for item in items for t in self(item)]
        return torch.stack(tensors) if tensors else None


def _check_prompts(processor, prompts: Sequence[str], images: Sequence[Sequence[ImageInput]] | None) -> None:
    if isinstance(prompts, str):
        raise TypeError("prompts must be a list of strings, got one string")
    if images is not None and len(images) != len(prompts):
        raise ValueError(f"got {len(prompts)} prompts but {len(images)} image lists; give one list per prompt")
    marker = _image_token(processor)
    if marker is None and images is not None and any(images):
        raise ValueError(f"images were given but {type(processor).__name__} has no image token; use a WingsProcessor")
    for i, prompt in enumerate(prompts):
        given = 0 if images is None else len(images[i])
        markers = prompt.count(marker) if marker else 0
        if markers != given:
            raise ValueError(
                f"prompt {i}: {markers} '{marker}' marker(s) but {given} image(s); each image needs one marker"
            )


def _check_length(model, length: int, where: str) -> None:
    limit = _max_positions(model)
    if limit is not None and length > limit:
        raise ValueError(f"{where}: {length} tokens exceed the model's max_position_embeddings={limit}")


def _forward_kwargs(input_ids, attention_mask, pixel_values, device) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "input_ids": input_ids.to(device),
        "attention_mask": attention_mask.to(device),
    }
    if pixel_values is not None:
        kwargs["pixel_values"] = pixel_values.to(device)
    return kwargs


# --------------------------------------------------------------------------------------------
# Multiple choice by log-likelihood
# --------------------------------------------------------------------------------------------


def choice_loglikelihoods(
    model,
    processor,
    prompts: Sequence[str],
    choices: Sequence[Sequence[str]],
    images: Sequence[Sequence[ImageInput]] | None = None,
    batch_size: int = 8,
    normalize: Normalize = "mean",
    image_mode: ImageMode = "pad",
) -> list[list[float]]:
    """Log-likelihood of every choice as a continuation of its prompt.

    Prompt and choice are tokenised separately and concatenated (so the choice's tokens are the
    same for every prompt); put any separator, e.g. a leading space, into the choices.

    Args:
        prompts: one string per item.
        choices: per item, the continuations to score (>= 1, non-empty strings).
        images: per item, the images of its ``<image>`` markers (PIL images or paths); repeated
            for each choice.
        normalize: "sum" of the choice's token log-probs, or their "mean" (per token).
        image_mode: "pad" (to a square, as training does) or "resize"; see `ImageTransform`.

    Returns:
        ``scores[i][j]`` for item i, choice j.
    """
    if normalize not in ("mean", "sum"):
        raise ValueError(f"normalize must be 'mean' or 'sum', got {normalize!r}")
    if len(choices) != len(prompts):
        raise ValueError(f"got {len(prompts)} prompts but {len(choices)} choice lists")
    _check_prompts(processor, prompts, images)
    marker = _image_token(processor)
    requests = []  # (item, choice index, context ids, continuation ids)
    for i, (prompt, options) in enumerate(zip(prompts, choices, strict=True)):
        if isinstance(options, str) or not options:
            raise ValueError(f"item {i}: choices must be a non-empty list of strings, got {options!r}")
        context = _encode(processor, prompt)
        for j, option in enumerate(options):
            if marker and marker in option:
                raise ValueError(f"item {i}: choice {j} contains the image marker {marker!r}")
            continuation = _encode(processor, option)
            if not continuation:
                raise ValueError(f"item {i}: choice {j} ({option!r}) tokenises to nothing")
            _check_length(model, len(context) + len(continuation), f"item {i}, choice {j}")
            requests.append((i, j, context, continuation))
    scores = [[math.nan] * len(options) for options in choices]
    if not requests:
        return scores
    # Longest first: similar lengths share a batch, and an out-of-memory error shows up at once.
    order = sorted(range(len(requests)), key=lambda r: -(len(requests[r][2]) + len(requests[r][3])))
    pixel_cache = _ImageCache(processor, images, image_mode)
    pad_id, device = _pad_id(processor), _model_device(model)
    batches = [order[k : k + batch_size] for k in range(0, len(order), batch_size)]
    with torch.no_grad():
        for batch in tqdm(batches, desc="scoring choices", leave=False):
            rows = [requests[r][2] + requests[r][3] for r in batch]
            input_ids, attention_mask = _left_pad(rows, pad_id)
            pixel_values = pixel_cache.batch([requests[r][0] for r in batch])
            keep = max(len(requests[r][3]) for r in batch) + 1
            logits = model(
                **_forward_kwargs(input_ids, attention_mask, pixel_values, device),
                use_cache=False,
                logits_to_keep=keep,
            ).logits[:, -keep:]
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            for b, r in enumerate(batch):
                item, choice, _, continuation = requests[r]
                n = len(continuation)
                # Logits at kept positions keep-n-1 .. keep-2 predict the n continuation tokens.
                predicting = logprobs[b, keep - n - 1 : keep - 1]
                target = torch.tensor(continuation, device=predicting.device)
                token_lp = predicting.gather(-1, target[:, None]).squeeze(-1)
                total = float(token_lp.sum())
                scores[item][choice] = total / n if normalize == "mean" else total
    return scores


def score_choices_loglik(
    model,
    processor,
    prompts: Sequence[str],
    choices: Sequence[Sequence[str]],
    images: Sequence[Sequence[ImageInput]] | None = None,
    batch_size: int = 8,
    normalize: Normalize = "mean",
    image_mode: ImageMode = "pad",
) -> list[int]:
    """Index of the most likely choice per item (ties: the first); see :func:`choice_loglikelihoods`."""
    scores = choice_loglikelihoods(model, processor, prompts, choices, images, batch_size, normalize, image_mode)
    return [max(range(len(s)), key=s.__getitem__) for s in scores]


# --------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------


def generate_answers(
    model,
    processor,
    prompts: Sequence[str],
    images: Sequence[Sequence[ImageInput]] | None = None,
    batch_size: int = 8,
    max_new_tokens: int = 32,
    image_mode: ImageMode = "pad",
) -> list[str]:
    """Greedy replies to ``prompts`` (batched, left padding); only the new tokens, decoded and stripped."""
    _check_prompts(processor, prompts, images)
    encoded = [_encode(processor, p) for p in prompts]
    for i, ids in enumerate(encoded):
        _check_length(model, len(ids) + max_new_tokens, f"prompt {i} (+ max_new_tokens={max_new_tokens})")
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
    pixel_cache = _ImageCache(processor, images, image_mode)
    pad_id, device = _pad_id(processor), _model_device(model)
    tokenizer = _tokenizer(processor)
    answers: list[str] = [""] * len(prompts)
    batches = [order[k : k + batch_size] for k in range(0, len(order), batch_size)]
    with torch.no_grad():
        for batch in tqdm(batches, desc="generating", leave=False):
            input_ids, attention_mask = _left_pad([encoded[i] for i in batch], pad_id)
            output = model.generate(
                **_forward_kwargs(input_ids, attention_mask, pixel_cache.batch(batch), device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                num_beams=1,
                pad_token_id=pad_id,
                # A model whose generation config names no eos (e.g. one built from a config) stops at the
                # tokenizer's end-of-turn token.
                eos_token_id=getattr(getattr(model, "generation_config", None), "eos_token_id", None)
                or tokenizer.eos_token_id,
            )
            new_tokens = output[:, input_ids.shape[1] :]
            texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
            for i, text in zip(batch, texts, strict=True):
                answers[i] = text.strip()
    return answers


def score_choices_generate(
    model,
    processor,
    prompts: Sequence[str],
    n_choices: int | Sequence[int],
    images: Sequence[Sequence[ImageInput]] | None = None,
    choices: Sequence[Sequence[str]] | None = None,
    batch_size: int = 8,
    max_new_tokens: int = 8,
    image_mode: ImageMode = "pad",
) -> list[int | None]:
    """Generate a reply per prompt and read the chosen option off it with ``parse_choice``.

    Args:
        n_choices: options per item (one int for all items, or one per item).
        choices: per item, the option texts, so that a reply giving the text instead of the
            letter still counts.

    Returns:
        the chosen index per item, None where the reply names no single valid option.
    """
    counts = [n_choices] * len(prompts) if isinstance(n_choices, int) else list(n_choices)
    if len(counts) != len(prompts):
        raise ValueError(f"got {len(prompts)} prompts but {len(counts)} n_choices")
    if choices is not None and len(choices) != len(prompts):
        raise ValueError(f"got {len(prompts)} prompts but {len(choices)} choice lists")
    replies = generate_answers(model, processor, prompts, images, batch_size, max_new_tokens, image_mode)
    return [
        parse_choice(reply, counts[i], None if choices is None else choices[i]) for i, reply in enumerate(replies)
    ]


# --------------------------------------------------------------------------------------------
# Open-ended VQA (normalisation as in the official VQA v2 evaluation script)
# --------------------------------------------------------------------------------------------

_NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
_ARTICLES = {"a", "an", "the"}
# The common entries of the VQA script's contraction table (answers written without apostrophes).
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldnt": "couldn't", "couldve": "could've",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't", "hasnt": "hasn't",
    "havent": "haven't", "hes": "he's", "im": "i'm", "isnt": "isn't", "itd": "it'd", "itll": "it'll",
    "ive": "i've", "lets": "let's", "mightnt": "mightn't", "mustnt": "mustn't", "shes": "she's",
    "shouldnt": "shouldn't", "shouldve": "should've", "thats": "that's", "theres": "there's",
    "theyre": "they're", "theyve": "they've", "wasnt": "wasn't", "werent": "weren't", "whats": "what's",
    "wheres": "where's", "whos": "who's", "wont": "won't", "wouldnt": "wouldn't", "wouldve": "would've",
    "youd": "you'd", "youll": "you'll", "youre": "you're", "youve": "you've",
}  # fmt: skip
_PUNCTUATION = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")


def _strip_punctuation(text: str) -> str:
    out = text
    for p in _PUNCTUATION:
        # As the VQA script: punctuation touching a space (or a digit group comma) disappears,
        # punctuation inside a word ("black-and-white") becomes a space.
        if (p + " " in text or " " + p in text) or _COMMA_STRIP.search(text) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out)


def normalize_answer(text: str) -> str:
    """Normalise an answer as the VQA v2 evaluation does.

    Lower case; newlines/tabs to spaces; punctuation removed (a period only when not a decimal
    point, ``"3.5"`` stays); number words zero..ten to digits; articles a/an/the dropped; common
    apostrophe-less contractions restored (``"dont"`` -> ``"don't"``); whitespace collapsed.
    """
    text = text.replace("\n", " ").replace("\t", " ").strip().lower()
    text = _strip_punctuation(text)
    words = []
    for word in text.split():
        word = _NUMBER_WORDS.get(word, word)
        if word in _ARTICLES:
            continue
        words.append(_CONTRACTIONS.get(word, word))
    return " ".join(words)


def _answer_list(answers: str | Sequence[str]) -> list[str]:
    return [answers] if isinstance(answers, str) else list(answers)


def vqa_exact_match(prediction: str, answers: str | Sequence[str]) -> bool:
    """Whether the normalised prediction equals any normalised reference answer."""
    said = normalize_answer(prediction)
    return any(said == normalize_answer(a) for a in _answer_list(answers))


def vqa_score(prediction: str, answers: str | Sequence[str]) -> float:
    """The VQA v2 accuracy: ``min(1, #matching human answers / 3)``, averaged over the 10
    leave-one-annotator-out subsets when 10 answers are given (as the official script does)."""
    said = normalize_answer(prediction)
    refs = [normalize_answer(a) for a in _answer_list(answers)]
    if not refs:
        raise ValueError("vqa_score needs at least one reference answer")
    if len(refs) < 10:
        return min(1.0, sum(r == said for r in refs) / 3)
    per_subset = [min(1.0, sum(r == said for k, r in enumerate(refs) if k != left) / 3) for left in range(len(refs))]
    return sum(per_subset) / len(per_subset)


def exact_match_accuracy(predictions: Sequence[Any], golds: Sequence[Any]) -> float:
    """Fraction of predictions equal to their gold (strings compared stripped; None never counts).

    Works for choice indices (``score_choices_*`` output vs item answers) and short texts.
    NaN for empty input.
    """
    if len(predictions) != len(golds):
        raise ValueError(f"got {len(predictions)} predictions but {len(golds)} golds")
    if not predictions:
        return math.nan

    def same(p, g) -> bool:
        if p is None:
            return False
        if isinstance(p, str) and isinstance(g, str):
            return p.strip() == g.strip()
        return p == g

    return sum(same(p, g) for p, g in zip(predictions, golds, strict=True)) / len(predictions)


# --------------------------------------------------------------------------------------------
# Multiple-choice pools (MMLU-style text items, MMBench-style visual items)
# --------------------------------------------------------------------------------------------


def resolve_image_paths(paths: Sequence[str], image_folder: str | os.PathLike | None, where: str) -> list[Path]:
    """Paths relative to ``image_folder`` (absolute ones kept); raise naming ``where`` if one is missing."""
    resolved = []
    for path in paths:
        full = Path(path) if image_folder is None or Path(path).is_absolute() else Path(image_folder) / path
        if not full.is_file():
            hint = f" under image folder '{image_folder}'" if image_folder is not None else ""
            raise FileNotFoundError(f"{where}: image '{path}' not found{hint}")
        resolved.append(full)
    return resolved


def evaluate_mc_items(
    model,
    processor,
    items: Sequence[MCItem],
    image_folder: str | os.PathLike | None = None,
    method: Literal["loglik", "generate"] = "loglik",
    batch_size: int = 8,
    max_new_tokens: int = 8,
    normalize: Normalize = "mean",
    image_mode: ImageMode = "pad",
) -> dict[str, Any]:
    """Accuracy of a model on multiple-choice items, as single-turn chat questions.

    Each item is rendered with ``format_question`` (lettered options) as one user message; the
    model answers with a letter ("generate", parsed with ``parse_choice``) or the letter's
    likelihood decides ("loglik"). Text items need no image processor, so a base LLM with its
    tokenizer can be scored the same way.

    Returns:
        ``{"acc", "low", "high", "n"}`` (Wilson 95% interval), ``"per_subject"``: the same per
        item subject (items without one are under ``"-"``), and ``"records"``: one
        ``{"id", "subject", "answer", "prediction", "correct"}`` (+ ``"output"`` when generating)
        per item.
    """
    if method not in ("loglik", "generate"):
        raise ValueError(f"method must be 'loglik' or 'generate', got {method!r}")
    prompts, images = [], []
    for item in items:
        paths = [] if item.image is None else [item.image]
        images.append(resolve_image_paths(paths, image_folder, f"item {item.id!r}"))
        prompts.append(chat_prompt(processor, [{"role": "user", "content": format_question(item)}]))
    has_images = any(images)
    outputs: list[str | None] = [None] * len(items)
    if method == "loglik":
        letters = [list(LETTERS[: len(item.choices)]) for item in items]
        predictions: list[int | None] = list(
            score_choices_loglik(
                model, processor, prompts, letters, images if has_images else None, batch_size, normalize, image_mode
            )
        )
    else:
        outputs = list(
            generate_answers(
                model, processor, prompts, images if has_images else None, batch_size, max_new_tokens, image_mode
            )
        )
        predictions = [parse_choice(o, len(it.choices), it.choices) for o, it in zip(outputs, items, strict=True)]
    records = []
    for item, prediction, output in zip(items, predictions, outputs, strict=True):
        record = {
            "id": item.id,
            "subject": item.subject,
            "answer": item.answer,
            "prediction": prediction,
            "correct": prediction == item.answer,
        }
        if output is not None:
            record["output"] = output
        records.append(record)
    by_subject: dict[str, list[bool]] = {}
    for record in records:
        by_subject.setdefault(record["subject"] or "-", []).append(record["correct"])
    return {
        **accuracy_with_ci([r["correct"] for r in records]),
        "per_subject": {s: accuracy_with_ci(c) for s, c in sorted(by_subject.items())},
        "records": records,
    }


def chat_prompt(processor, messages: list[dict[str, str]]) -> str:
    """Render messages with the processor's (or tokenizer's) chat template, ready for the reply."""
    render: Callable[..., str] | None = getattr(processor, "apply_chat_template", None)
    if render is None:
        raise TypeError(f"{type(processor).__name__} has no apply_chat_template")
    if hasattr(processor, "image_processor"):
        return render(messages, add_generation_prompt=True)
    return render(messages, tokenize=False, add_generation_prompt=True)


# --------------------------------------------------------------------------------------------
# lm-evaluation-harness (text-only tasks)
# --------------------------------------------------------------------------------------------


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
    import wings  # noqa: F401  (registers model type "wings" with the Auto classes the backend uses)

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
