"""Open-ended VQA: answer normalisation as the official VQA v2 evaluation does, and the one loop
that asks a model LLaVA-format questions and scores its replies."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any

from ..data.images import ImageMode
from ..data.llava import load_llava_records
from .inputs import chat_prompt, image_token_of
from .multiple_choice import accuracy_with_ci
from .scoring import generate_answers

__all__ = ["evaluate_vqa", "normalize_answer", "vqa_exact_match", "vqa_score"]

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


def evaluate_vqa(
    model: Any,
    processor: Any,
    data_file: str | os.PathLike,
    image_folder: str | os.PathLike | None,
    limit: int | None = None,
    batch_size: int = 8,
    max_new_tokens: int = 16,
    image_mode: ImageMode | None = None,
    check_images: bool = True,
) -> dict[str, Any]:
    """Open-ended VQA exact match on LLaVA-format data.

    Each sample's conversation up to its first reply is the question (with the images of its
    markers), the reply is the reference answer; the model's greedy reply matches when
    :func:`vqa_exact_match` says so.

    Args:
        data_file, image_folder: LLaVA-format JSON/JSONL and the folder its images are under.
        limit: only the first ``limit`` samples.
        check_images: open and verify every image while loading (a missing one is always reported).

    Returns:
        ``{"acc", "low", "high", "n"}`` (Wilson 95% interval) and ``"records"``: one
        ``{"id", "answer", "prediction", "correct"}`` per sample.
    """
    records = load_llava_records(data_file, image_folder, check_images=check_images)[:limit]
    marker = image_token_of(processor)
    prompts, images, answers = [], [], []
    for record in records:
        messages = record.messages()
        first_reply = next(i for i, m in enumerate(messages) if m["role"] == "assistant")
        prompts.append(chat_prompt(processor, messages[:first_reply]))
        n_images = prompts[-1].count(marker) if marker else 0
        images.append(list(record.images[:n_images]))
        answers.append(messages[first_reply]["content"])
    predictions = generate_answers(
        model, processor, prompts, images if any(images) else None, batch_size, max_new_tokens, image_mode
    )
    rows = [
        {"id": r.id, "answer": a, "prediction": p, "correct": vqa_exact_match(p, a)}
        for r, a, p in zip(records, answers, predictions, strict=True)
    ]
    return {**accuracy_with_ci([r["correct"] for r in rows]), "records": rows}
