"""Multiple-choice item pools: the schema, its validation, and pool files.

A *pool* is a list of multiple-choice items that the IIT builder (:mod:`wings.evaluation.iit`)
draws dialogue turns from: a text pool (T turns) and a visual pool (V turns).

Pool file format: JSONL (one object per line) or a JSON list of objects::

    {"id": "mmlu/test/17",            # str or int, unique within the pool
     "question": "What is ...?",      # non-empty str
     "choices": ["...", "...", ...],  # >= 2 strings
     "answer": 2,                     # int index into choices
     "image": "imgs/17.png",          # visual items only (required there, absent/null for text)
     "subject": "astronomy"}          # optional str; helps group related turns

``load_pool(path, kind)`` validates every item and raises :class:`PoolFormatError` listing every
bad item by file, line (JSONL) or index (JSON list), id, and problem. ``write_pool`` writes JSONL.
Standard benchmark sets become pool files with :func:`wings.evaluation.converters.convert_pool`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .records import PoolFormatError, checked_records

__all__ = [
    "LETTERS",
    "POOL_KINDS",
    "MCItem",
    "PoolFormatError",
    "PoolKind",
    "check_kind",
    "is_int",
    "item_problems",
    "load_pool",
    "write_pool",
]

logger = logging.getLogger(__name__)

PoolKind = Literal["text", "visual"]
POOL_KINDS: tuple[str, ...] = ("text", "visual")
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


@dataclass(frozen=True)
class MCItem:
    """One multiple-choice question.

    ``image`` is a path (as written in the pool, not resolved) for visual items, None for text.
    """

    id: str | int
    question: str
    choices: tuple[str, ...]
    answer: int
    image: str | None = None
    subject: str | None = None

    @property
    def kind(self) -> str:
        """Turn kind: "V" for visual items, "T" for text items."""
        return "V" if self.image is not None else "T"

    def to_dict(self) -> dict[str, Any]:
        """The pool-file object; ``image``/``subject`` are omitted when None."""
        out: dict[str, Any] = {
            "id": self.id,
            "question": self.question,
            "choices": list(self.choices),
            "answer": self.answer,
        }
        if self.image is not None:
            out["image"] = self.image
        if self.subject is not None:
            out["subject"] = self.subject
        return out

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> MCItem:
        """Build from an already validated pool object (see :func:`item_problems`)."""
        return cls(
            id=obj["id"],
            question=obj["question"],
            choices=tuple(obj["choices"]),
            answer=obj["answer"],
            image=obj.get("image"),
            subject=obj.get("subject"),
        )


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


def is_int(value: Any) -> bool:
    # bool is an int subclass; `true` as an answer is a data bug, not index 1.
    return isinstance(value, int) and not isinstance(value, bool)


def item_problems(obj: Any, kind: str) -> list[str]:
    """Everything wrong with one pool object, as short phrases (empty list = valid).

    ``kind`` is "text" or "visual": visual items need a non-empty ``image`` path, text items
    must not carry one (a text turn with an image would silently become a visual turn).
    """
    if not isinstance(obj, Mapping):
        return [f"expected a JSON object, got {type(obj).__name__}"]
    problems: list[str] = []
    for key in ("id", "question", "choices", "answer"):
        if key not in obj:
            problems.append(f"missing key '{key}'")
    if "id" in obj and not ((is_int(obj["id"])) or (isinstance(obj["id"], str) and obj["id"])):
        problems.append(f"'id' must be a non-empty string or an int, got {obj['id']!r}")
    if "question" in obj and not (isinstance(obj["question"], str) and obj["question"].strip()):
        problems.append(f"'question' must be a non-empty string, got {obj['question']!r}")
    choices = obj.get("choices")
    choices_ok = False
    if "choices" in obj:
        if not isinstance(choices, list):
            problems.append(f"'choices' must be a list of strings, got {type(choices).__name__}")
        elif len(choices) == 0:
            problems.append("'choices' is empty (need at least 2)")
        elif len(choices) < 2:
            problems.append(f"'choices' has {len(choices)} entry (need at least 2)")
        elif len(choices) > len(LETTERS):
            problems.append(f"'choices' has {len(choices)} entries (at most {len(LETTERS)})")
        else:
            bad = [i for i, c in enumerate(choices) if not isinstance(c, str)]
            if bad:
                problems.append(f"'choices[{bad[0]}]' is not a string: {choices[bad[0]]!r}")
            else:
                choices_ok = True
    if "answer" in obj:
        answer = obj["answer"]
        if not is_int(answer):
            problems.append(
                f"'answer' must be an int index into choices, got {type(answer).__name__} {answer!r}"
            )
        elif choices_ok and not 0 <= answer < len(choices):
            problems.append(
                f"'answer' {answer} out of range for {len(choices)} choices (valid 0..{len(choices) - 1})"
            )
    image = obj.get("image")
    if kind == "visual":
        if image is None:
            problems.append("visual item without 'image'")
        elif not (isinstance(image, str) and image):
            problems.append(f"'image' must be a non-empty path string, got {image!r}")
    elif image is not None:
        problems.append(
            f"text item has an 'image' ({image!r}); visual items belong in the visual pool"
        )
    subject = obj.get("subject")
    if subject is not None and not isinstance(subject, str):
        problems.append(f"'subject' must be a string or absent, got {subject!r}")
    return problems


def check_kind(kind: str) -> None:
    """Raise ValueError unless ``kind`` is "text" or "visual"."""
    if kind not in POOL_KINDS:
        raise ValueError(f"pool kind must be one of {POOL_KINDS}, got {kind!r}")


# --------------------------------------------------------------------------------------------
# Pool files
# --------------------------------------------------------------------------------------------


def load_pool(path: str | Path, kind: PoolKind) -> list[MCItem]:
    """Read and validate a pool file (JSONL or JSON list) of ``kind`` "text" or "visual".

    Raises:
        FileNotFoundError: the file does not exist.
        PoolFormatError: any item is invalid (all bad items are listed), ids repeat, or the file
            holds no items.
    """
    check_kind(kind)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{kind} pool file not found: {path}")
    records, problems = checked_records(
        path, lambda obj: item_problems(obj, kind), "no items", lambda obj: f"duplicate id {obj['id']!r}"
    )
    items = [MCItem.from_dict(obj) for obj in records]
    if problems:
        raise PoolFormatError(str(path), problems)
    logger.info("loaded %d %s items from %s", len(items), kind, path)
    return items


def write_pool(items: Iterable[MCItem], path: str | Path) -> Path:
    """Write items as JSONL (UTF-8, one object per line) readable by :func:`load_pool`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for item in items:
            f.write(json.dumps(item.to_dict(), ensure_ascii=False) + "\n")
    return path
