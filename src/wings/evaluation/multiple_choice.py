"""Multiple-choice questions: rendering, reading the answer, and the one scoring loop.

A question is asked as a chat (:class:`MCQuestion`: the messages ending with the asked user turn,
their images, the options and the gold index). :func:`answer_questions` is the loop every
multiple-choice evaluation runs (pool items with :func:`evaluate_mc_items`, IIT dialogues with
:func:`wings.evaluation.iit.evaluate_iit`): render with the chat template, then either generate a
reply and read the option off it (:func:`parse_choice`; the paper's protocol), or take the most
likely option ("loglik").

Answer formats: "letter" (options lettered "A. ...", answered with a letter: the paper's format),
"text" (options listed, answered with the option's text) or "cloze" (the bare question; best with
"loglik", which scores each option's text as the reply). The last two suit small models that never
learned lettered multiple choice.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any, Literal

from ..data.images import ImageMode
from ..data.llava import IMAGE_MARKER, DataError, find_image
from .inputs import chat_prompt
from .pools import LETTERS, MCItem
from .scoring import Normalize, best_choices, choice_loglikelihoods, generate_answers

__all__ = [
    "ANSWER_FORMATS",
    "ANSWER_INSTRUCTION",
    "METHODS",
    "MCQuestion",
    "accuracy_with_ci",
    "answer_questions",
    "evaluate_mc_items",
    "format_question",
    "gold_reply",
    "is_correct",
    "parse_choice",
    "predict_choices",
]

logger = logging.getLogger(__name__)

ANSWER_INSTRUCTION = "Answer with the option's letter."
TEXT_ANSWER_INSTRUCTION = "Answer with the option's text."
Method = Literal["generate", "loglik"]
AnswerFormat = Literal["letter", "text", "cloze"]
METHODS: tuple[str, ...] = ("generate", "loglik")
ANSWER_FORMATS: tuple[str, ...] = ("letter", "text", "cloze")


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


def _as_turn(turn: Mapping[str, Any] | MCItem) -> Mapping[str, Any]:
    return {"kind": turn.kind, **turn.to_dict()} if isinstance(turn, MCItem) else turn


def _no_marker(text: str, image_token: str) -> str:
    # A literal marker inside question text would make the processor expect an extra image.
    if image_token in text:
        logger.warning("question text contains %r; replaced by 'image'", image_token)
        return text.replace(image_token, "image")
    return text


def format_question(
    turn: Mapping[str, Any] | MCItem,
    with_letters: bool = True,
    *,
    image_token: str = IMAGE_MARKER,
    list_choices: bool = True,
) -> str:
    """Render one turn as a user message.

    ``with_letters=True``: ``"<image>\\n" (V only) + question + "\\nA. c0\\nB. c1..." +
    "\\nAnswer with the option's letter."``; otherwise choices are listed as ``"- c"`` and the
    model is asked for the option's text. ``list_choices=False`` (text answers only) gives the bare
    question, for scoring each option as a cloze continuation.
    """
    turn = _as_turn(turn)
    question = _no_marker(turn["question"].strip(), image_token)
    choices = [_no_marker(c, image_token) for c in turn["choices"]]
    if not list_choices and not with_letters:
        lines = [question]
    elif with_letters:
        lines = [
            question,
            *(f"{LETTERS[i]}. {c}" for i, c in enumerate(choices)),
            ANSWER_INSTRUCTION,
        ]
    else:
        lines = [question, *(f"- {c}" for c in choices), TEXT_ANSWER_INSTRUCTION]
    text = "\n".join(lines)
    is_visual = turn.get("kind") == "V" or (turn.get("kind") is None and turn.get("image"))
    return f"{image_token}\n{text}" if is_visual else text


def gold_reply(turn: Mapping[str, Any] | MCItem, with_letters: bool = True) -> str:
    """The assistant reply shown for a context turn: its gold letter (or choice text)."""
    turn = _as_turn(turn)
    return LETTERS[turn["answer"]] if with_letters else turn["choices"][turn["answer"]]


# --------------------------------------------------------------------------------------------
# Reading the answer
# --------------------------------------------------------------------------------------------

_BARE_LETTER = re.compile(r"[\W_]*([A-Za-z])[\W_]*")
_LEADING_LABEL = re.compile(r"[\s*_]*[(\[]?([A-Za-z])[)\].:](?:\s|$)")
_ANSWER_PHRASE = re.compile(
    r"(?i:answer)(?i:\s+(?:is|would\s+be|should\s+be))?\s*[:：]?\s*(?i:option\s+|choice\s+)?"
    r"(?:[(\[]([A-Za-z])[)\]]|([A-Z])\b)"
)
_OPTION_PHRASE = re.compile(r"(?i:option|choice)\s*[:：]?\s*(?:[(\[]([A-Za-z])[)\]]|([A-Z])\b)")
_LONE_CAPITAL = re.compile(r"\b([A-Z])\b")


def _normalize(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def _letters_of(matches: Iterable[re.Match[str]]) -> list[str]:
    return [next(g for g in m.groups() if g).upper() for m in matches]


def _match_choice_text(text: str, choices: Sequence[str]) -> int | None:
    said = _normalize(text)
    normalized = [_normalize(c) for c in choices]
    exact = [i for i, c in enumerate(normalized) if c and c == said]
    if len(exact) == 1:
        return exact[0]
    padded = f" {said} "
    contained = [i for i, c in enumerate(normalized) if c and f" {c} " in padded]
    # "red" and "dark red" both occur in "dark red": keep only the choices not inside another.
    maximal = [
        i
        for i in contained
        if not any(i != j and normalized[i] in normalized[j] for j in contained)
    ]
    return maximal[0] if len(maximal) == 1 else None


def parse_choice(text: str, n_choices: int, choices: Sequence[str] | None = None) -> int | None:
    """Index of the option a generated answer picks, or None if it cannot be told.

    Tried in order: a bare letter ("B", "B.", "(b)", "**C**"); a leading label ("B. Paris",
    "(B) Paris"); an answer phrase ("The answer is B", "Answer: (c)"; the last one wins); an
    option phrase ("option B", one distinct letter only); the choice text itself (needs
    ``choices``; exact match, else the one choice mentioned); a single capital letter among the
    valid ones standing alone ("I think C"). Letters beyond ``n_choices`` never count.
    """
    if not 1 <= n_choices <= len(LETTERS):
        raise ValueError(f"n_choices must be in 1..{len(LETTERS)}, got {n_choices}")
    if choices is not None and len(choices) != n_choices:
        raise ValueError(f"got {len(choices)} choices but n_choices={n_choices}")
    valid = LETTERS[:n_choices]
    text = (text or "").strip()
    if not text:
        return None
    bare = _BARE_LETTER.fullmatch(text)
    if bare:
        letter = bare.group(1).upper()
        return valid.index(letter) if letter in valid else None
    label = _LEADING_LABEL.match(text)
    if label and label.group(1).upper() in valid:
        return valid.index(label.group(1).upper())
    answered = [c for c in _letters_of(_ANSWER_PHRASE.finditer(text)) if c in valid]
    if answered:
        return valid.index(answered[-1])
    options = {c for c in _letters_of(_OPTION_PHRASE.finditer(text)) if c in valid}
    if len(options) == 1:
        return valid.index(options.pop())
    if choices is not None:
        found = _match_choice_text(text, choices)
        if found is not None:
            return found
    capitals = {c for c in _LONE_CAPITAL.findall(text) if c in valid}
    return valid.index(capitals.pop()) if len(capitals) == 1 else None


def is_correct(turn: Mapping[str, Any], generated: str) -> bool:
    """Whether a generated answer to ``turn`` picks its gold option."""
    choices = turn["choices"]
    return parse_choice(generated, len(choices), choices) == turn["answer"]


def accuracy_with_ci(correct: Sequence[bool], confidence: float = 0.95) -> dict[str, float | int]:
    """Accuracy with a Wilson score interval: ``{"acc", "low", "high", "n"}``.

    Wilson rather than the normal approximation because it stays inside [0, 1] and is sensible
    for small n and accuracies near 0 or 1. With n == 0, acc is NaN and the interval is [0, 1].
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    values = list(correct)
    bad = [v for v in values if v not in (0, 1)]
    if bad:
        raise ValueError(f"correct must hold booleans, got {bad[0]!r}")
    n = len(values)
    if n == 0:
        return {"acc": math.nan, "low": 0.0, "high": 1.0, "n": 0}
    p = sum(bool(v) for v in values) / n
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    denom = 1.0 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return {"acc": p, "low": max(0.0, center - half), "high": min(1.0, center + half), "n": n}


# --------------------------------------------------------------------------------------------
# The scoring loop
# --------------------------------------------------------------------------------------------


def _check_choice(method: str, answer_format: str) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be 'generate' or 'loglik', got {method!r}")
    if answer_format not in ANSWER_FORMATS:
        raise ValueError(f"answer_format must be 'letter', 'text' or 'cloze', got {answer_format!r}")


def predict_choices(
    model: Any,
    processor: Any,
    prompts: Sequence[str],
    choices: Sequence[Sequence[str]],
    images: Sequence[Sequence[Any]] | None = None,
    method: Method = "generate",
    answer_format: AnswerFormat = "letter",
    batch_size: int = 8,
    max_new_tokens: int = 8,
    normalize: Normalize = "mean",
    image_mode: ImageMode | None = None,
) -> tuple[list[int | None], list[str | None]]:
    """The option each rendered prompt's answer picks, and the generated replies.

    Args:
        prompts: rendered chats ending where the reply starts (see `chat_prompt`).
        choices: per prompt, the option texts.
        images: per prompt, the images of its markers (paths or PIL images).
        method: "generate" (greedy reply read with :func:`parse_choice`; None where it names no
            single option) or "loglik" (the most likely reply among the options' letters, or their
            texts when ``answer_format`` is not "letter").
        max_new_tokens, normalize, image_mode: see :mod:`wings.evaluation.scoring`.

    Returns:
        ``(predictions, replies)``; replies are None with "loglik".
    """
    _check_choice(method, answer_format)
    if method == "generate":
        replies = generate_answers(model, processor, prompts, images, batch_size, max_new_tokens, image_mode)
        predictions = [parse_choice(r, len(c), c) for r, c in zip(replies, choices, strict=True)]
        return predictions, list(replies)
    options = [list(LETTERS[: len(c)]) if answer_format == "letter" else list(c) for c in choices]
    scores = choice_loglikelihoods(model, processor, prompts, options, images, batch_size, normalize, image_mode)
    return list(best_choices(scores)), [None] * len(prompts)


@dataclass(frozen=True)
class MCQuestion:
    """One multiple-choice question asked as a chat.

    Attributes:
        name: how errors refer to it (``"item 'q3'"``).
        messages: ``[{"role", "content"}, ...]`` ending with the asked user turn.
        images: image paths of the messages' markers, in order (relative to the image folder).
        choices: the option texts; ``answer`` is the gold index.
        info: copied into the question's record (ids, subject, setting...).
    """

    name: str
    messages: list[dict[str, str]]
    images: list[str]
    choices: tuple[str, ...]
    answer: int
    info: dict[str, Any] = field(default_factory=dict)


def answer_questions(
    model: Any,
    processor: Any,
    questions: Sequence[MCQuestion],
    image_folder: str | os.PathLike | None = None,
    **options: Any,
) -> list[dict[str, Any]]:
    """Ask every question; one record per question: its ``info`` plus ``"answer"``,
    ``"prediction"`` (an index, None when a reply names no option), ``"correct"`` and, when
    generating, ``"output"`` (the reply). Every image is found before any compute.

    ``options`` are :func:`predict_choices`'s (method, answer_format, batch_size, ...).

    Raises:
        DataError: an image is missing (naming the question and the image folder).
    """
    prompts, images = [], []
    for question in questions:
        try:
            images.append([find_image(path, image_folder) for path in question.images])
        except DataError as err:
            raise DataError(f"{question.name}: {err}") from None
        prompts.append(chat_prompt(processor, question.messages))
    choices = [q.choices for q in questions]
    predictions, replies = predict_choices(model, processor, prompts, choices, images if any(images) else None,
                                           **options)  # fmt: skip
    records = []
    for question, prediction, reply in zip(questions, predictions, replies, strict=True):
        record = {**question.info, "answer": question.answer, "prediction": prediction,
                  "correct": prediction == question.answer}  # fmt: skip
        if reply is not None:
            record["output"] = reply
        records.append(record)
    return records


def evaluate_mc_items(
    model: Any,
    processor: Any,
    items: Sequence[MCItem],
    image_folder: str | os.PathLike | None = None,
    method: Method = "loglik",
    batch_size: int = 8,
    max_new_tokens: int = 8,
    normalize: Normalize = "mean",
    image_mode: ImageMode | None = None,
    answer_format: AnswerFormat = "letter",
) -> dict[str, Any]:
    """Accuracy of a model on multiple-choice pool items, each asked as a one-turn chat.

    Text items need no image processor, so a base LLM with its tokenizer is scored the same way.
    Arguments as :func:`answer_questions`.

    Returns:
        ``{"acc", "low", "high", "n"}`` (Wilson 95% interval), ``"per_subject"``: the same per
        item subject (items without one are under ``"-"``), and ``"records"``: one
        ``{"id", "subject", "answer", "prediction", "correct"}`` (+ ``"output"`` when generating)
        per item.
    """
    image_token = getattr(processor, "image_token", IMAGE_MARKER)
    questions = [
        MCQuestion(
            name=f"item {item.id!r}",
            messages=[{"role": "user", "content": format_question(
                item, answer_format == "letter", image_token=image_token, list_choices=answer_format != "cloze")}],
            images=[] if item.image is None else [item.image],
            choices=item.choices,
            answer=item.answer,
            info={"id": item.id, "subject": item.subject},
        )
        for item in items
    ]  # fmt: skip
    records = answer_questions(model, processor, questions, image_folder, method=method, answer_format=answer_format,
                               batch_size=batch_size, max_new_tokens=max_new_tokens, normalize=normalize,
                               image_mode=image_mode)  # fmt: skip
    by_subject: dict[str, list[bool]] = {}
    for record in records:
        by_subject.setdefault(record["subject"] or "-", []).append(record["correct"])
    return {
        **accuracy_with_ci([r["correct"] for r in records]),
        "per_subject": {s: accuracy_with_ci(c) for s, c in sorted(by_subject.items())},
        "records": records,
    }
