"""IIT (Interleaved Image-Text) benchmark: build, store, render and score multi-turn dialogues.

IIT (WINGS paper, section on evaluation) probes whether a multimodal LLM stays good at text
turns around images and vice versa. Each dialogue is a sequence of multiple-choice turns, text
(T, from text pools such as MMLU) or visual (V, from visual pools such as MMBench), on related
topics. A *setting* names the turn kinds, e.g. ``"T,T,V"``; the LAST turn is scored, the earlier
ones are context whose gold answers are shown as the assistant's replies.

Dialogue schema (one JSON object per line in an IIT file)::

    {"id": "T,T,V-0",                 # "<setting>-<k>", unique in the file
     "setting": "T,T,V",              # canonical: upper-case T/V joined by ","
     "turns": [                       # len(turns) == number of kinds in the setting
        {"kind": "T",                 # "T" or "V", equals the setting's kind at that position
         "item_id": "mmlu/test/17",   # id of the pool item (str or int)
         "question": "...",
         "choices": ["...", "..."],   # >= 2 strings
         "answer": 1,                 # int index into choices
         "image": null,               # image path for V turns, null for T turns
         "subject": "astronomy"},     # str or null
        ...]}                         # the last turn is the scored one

Building (:func:`build_iit`): for each setting, scored items are drawn without replacement from
the pool of the setting's last kind; each context turn is drawn, at random among the ``top_k``
most similar items of its kind not yet in the dialogue, by TF-IDF cosine similarity to the
scored item (TF-IDF fit on question + choices + subject of both pools). Randomness comes from a
generator seeded by ``(seed, setting)``, so a setting's dialogues do not change when other
settings are added, and the same inputs and seed give byte-identical files.
"""

from __future__ import annotations

import json
import logging
import math
import os
import zlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import sparse
from sklearn.feature_extraction.text import TfidfVectorizer

from ..data.images import ImageMode
from ..data.llava import IMAGE_MARKER, DataError
from ..errors import UsageError
from .multiple_choice import (
    AnswerFormat,
    MCQuestion,
    Method,
    accuracy_with_ci,
    answer_questions,
    format_question,
    gold_reply,
)
from .plots import bar_with_intervals, new_figure, save_figure
from .pools import MCItem, item_problems
from .pools import load_pool  # noqa: F401  (wings.cli and wings.lab import it from here)
from .records import PoolFormatError, checked_records, describe_location
from .scoring import Normalize

__all__ = [
    "DEFAULT_SETTINGS",
    "IIT_KINDS",
    "IITFormatError",
    "build_iit",
    "dialogue_messages",
    "dialogue_problems",
    "evaluate_iit",
    "iit_table",
    "load_iit",
    "parse_setting",
    "plot_iit",
    "summarize_iit",
    "write_iit",
]

logger = logging.getLogger(__name__)

DEFAULT_SETTINGS: tuple[str, ...] = ("T", "T,T", "T,T,T", "T,T,V", "T,V", "V")
IIT_KINDS: tuple[str, ...] = ("T", "V")
_POOL_NAMES = {"T": "text", "V": "visual"}
# Words of 2+ characters, plus every CJK ideograph as its own token: Chinese (CMMLU) has no
# spaces, and the default pattern would turn a whole sentence into one token.
_TOKEN_PATTERN = r"(?u)[\u3400-\u4dbf\u4e00-\u9fff]|\b\w\w+\b"


class IITFormatError(PoolFormatError):
    """An IIT dialogue file does not follow the dialogue schema (see the module docstring)."""


# --------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------


def parse_setting(setting: str) -> tuple[str, ...]:
    """``"T, t,V"`` -> ``("T", "T", "V")``; raise ValueError naming the bad turn."""
    if not isinstance(setting, str) or not setting.strip():
        raise UsageError(f"setting must be a non-empty string such as 'T,T,V', got {setting!r}")
    kinds = tuple(part.strip().upper() for part in setting.split(","))
    for position, kind in enumerate(kinds, start=1):
        if kind not in IIT_KINDS:
            raise UsageError(
                f"setting {setting!r}: turn {position} is {kind!r}; each turn must be "
                "'T' (text) or 'V' (visual), separated by commas"
            )
    return kinds


def _canonical(setting: str) -> str:
    return ",".join(parse_setting(setting))


# --------------------------------------------------------------------------------------------
# Topic similarity
# --------------------------------------------------------------------------------------------


def _document(item: MCItem) -> str:
    subject = (item.subject or "").replace("_", " ")
    return " ".join([item.question, *item.choices, subject])


class _TopicIndex:
    """TF-IDF rows of both pools; ``similarities`` gives cosine similarity of one item to a pool.

    Rows are L2-normalised by TfidfVectorizer, so a dot product is the cosine similarity.
    """

    def __init__(self, pools: Mapping[str, Sequence[MCItem]]) -> None:
        kinds = [k for k in IIT_KINDS if pools[k]]
        docs = [_document(item) for k in kinds for item in pools[k]]
        vectorizer = TfidfVectorizer(
            token_pattern=_TOKEN_PATTERN, stop_words="english", sublinear_tf=True
        )
        try:
            matrix = vectorizer.fit_transform(docs)
        except ValueError:  # empty vocabulary: every document is stop words or punctuation
            logger.warning(
                "IIT: pool texts give an empty TF-IDF vocabulary; context turns are random"
            )
            matrix = sparse.csr_matrix((len(docs), 1))
        self.rows: dict[str, Any] = {}
        start = 0
        for kind in kinds:
            self.rows[kind] = matrix[start : start + len(pools[kind])]
            start += len(pools[kind])

    def similarities(self, kind: str, index: int, target_kind: str) -> np.ndarray:
        """``[len(pool[target_kind])]`` cosine similarities of item ``(kind, index)``."""
        row = self.rows[kind][index]
        return np.asarray((self.rows[target_kind] @ row.T).todense()).ravel()


def _pick_related(
    index: _TopicIndex,
    anchor: tuple[str, int],
    kind: str,
    used: set[tuple[str, int]],
    top_k: int,
    rng: np.random.Generator,
) -> int:
    """Index of a ``kind`` item drawn uniformly among the ``top_k`` most similar unused ones."""
    sims = index.similarities(anchor[0], anchor[1], kind)
    # Stable sort: ties resolve by pool order, so results do not depend on the sort algorithm.
    order = np.argsort(-sims, kind="stable")
    candidates = [int(j) for j in order if (kind, int(j)) not in used][:top_k]
    return candidates[int(rng.integers(len(candidates)))]


# --------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------


def _turn(kind: str, item: MCItem) -> dict[str, Any]:
    return {
        "kind": kind,
        "item_id": item.id,
        "question": item.question,
        "choices": list(item.choices),
        "answer": item.answer,
        "image": item.image,
        "subject": item.subject,
    }


def _check_pool(kind: str, pool: Sequence[MCItem]) -> None:
    for position, item in enumerate(pool):
        if not isinstance(item, MCItem):
            raise TypeError(
                f"{_POOL_NAMES[kind]} pool item {position}: expected MCItem, got {type(item).__name__}"
            )
        if item.kind != kind:
            what = "has an image" if kind == "T" else "has no image"
            raise DataError(f"{_POOL_NAMES[kind]} pool item {position} (id {item.id!r}) {what}")


def _check_setting_fits(
    setting: str, kinds: tuple[str, ...], pools: Mapping[str, Sequence[MCItem]]
) -> None:
    for kind in IIT_KINDS:
        needed = kinds.count(kind)
        if needed and not pools[kind]:
            raise UsageError(
                f"setting {setting!r} needs {_POOL_NAMES[kind]} ({kind}) items but the "
                f"{_POOL_NAMES[kind]} pool is empty"
            )
        if needed > len(pools[kind]):
            raise UsageError(
                f"setting {setting!r} needs {needed} distinct {kind} items per dialogue but the "
                f"{_POOL_NAMES[kind]} pool has {len(pools[kind])}"
            )


def _setting_rng(seed: int, setting: str) -> np.random.Generator:
    # crc32, not hash(): Python's str hash is salted per process and would break determinism.
    return np.random.default_rng([seed, zlib.crc32(setting.encode("utf-8"))])


def _build_setting(
    setting: str,
    pools: Mapping[str, Sequence[MCItem]],
    index: _TopicIndex,
    per_setting: int,
    seed: int,
    top_k: int,
) -> list[dict[str, Any]]:
    kinds = parse_setting(setting)
    rng = _setting_rng(seed, setting)
    scored_kind = kinds[-1]
    scored_pool = pools[scored_kind]
    if per_setting > len(scored_pool):
        logger.warning(
            "IIT setting %s: asked for %d dialogues but the %s pool has %d items; building %d",
            setting,
            per_setting,
            _POOL_NAMES[scored_kind],
            len(scored_pool),
            len(scored_pool),
        )
    dialogues = []
    for k, scored in enumerate(rng.permutation(len(scored_pool))[:per_setting]):
        anchor = (scored_kind, int(scored))
        used = {anchor}
        context = []
        for kind in kinds[:-1]:
            pick = (kind, _pick_related(index, anchor, kind, used, top_k, rng))
            used.add(pick)
            context.append(pick)
        turns = [_turn(kind, pools[kind][j]) for kind, j in [*context, anchor]]
        dialogues.append({"id": f"{setting}-{k}", "setting": setting, "turns": turns})
    return dialogues


def build_iit(
    text_pool: Sequence[MCItem] | None,
    visual_pool: Sequence[MCItem] | None,
    settings: Sequence[str] = DEFAULT_SETTINGS,
    per_setting: int = 100,
    seed: int = 0,
    *,
    top_k: int = 5,
) -> list[dict[str, Any]]:
    """Build IIT dialogues (schema in the module docstring), settings in the given order.

    Args:
        text_pool: items without image (T turns); may be None/empty if no setting uses T.
        visual_pool: items with image (V turns); may be None/empty if no setting uses V.
        settings: setting strings such as ``"T,T,V"`` (any comma-separated T/V sequence).
        per_setting: dialogues per setting; capped, with a warning, by the size of the pool of
            the setting's scored kind (each scored item is used at most once per setting).
        seed: non-negative int; same inputs and seed give identical dialogues.
        top_k: each context item is drawn among this many nearest unused neighbours.

    Raises:
        ValueError: bad setting string, repeated setting, a setting needs a kind whose pool is
            empty or too small for one dialogue, wrong item kind in a pool, bad numbers.
    """
    if not isinstance(per_setting, int) or per_setting < 1:
        raise UsageError(f"per_setting must be a positive int, got {per_setting!r}")
    if not isinstance(top_k, int) or top_k < 1:
        raise UsageError(f"top_k must be a positive int, got {top_k!r}")
    if not isinstance(seed, int) or seed < 0:
        raise UsageError(f"seed must be a non-negative int, got {seed!r}")
    if isinstance(settings, str):
        settings = (settings,)  # a lone "T,V" would otherwise be iterated character by character
    canonical = [_canonical(s) for s in settings]
    repeated = sorted({s for s in canonical if canonical.count(s) > 1})
    if repeated:
        raise UsageError(f"settings repeat {repeated}; dialogue ids would collide")
    pools = {"T": list(text_pool or []), "V": list(visual_pool or [])}
    for kind in IIT_KINDS:
        _check_pool(kind, pools[kind])
    for setting in canonical:
        _check_setting_fits(setting, parse_setting(setting), pools)
    index = _TopicIndex(pools)
    dialogues: list[dict[str, Any]] = []
    for setting in canonical:
        dialogues.extend(_build_setting(setting, pools, index, per_setting, seed, top_k))
    logger.info("IIT: built %d dialogues over %d settings", len(dialogues), len(canonical))
    return dialogues


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def _turn_problems(turn: Any, expected_kind: str) -> list[str]:
    if not isinstance(turn, Mapping):
        return [f"expected a JSON object, got {type(turn).__name__}"]
    problems = [f"missing key '{key}'" for key in ("kind", "item_id", "image") if key not in turn]
    if "kind" in turn and turn["kind"] != expected_kind:
        problems.append(f"kind {turn['kind']!r} but the setting says {expected_kind!r}")
    as_item = {k: v for k, v in turn.items() if k not in ("kind", "item_id")}
    if "item_id" in turn:
        as_item["id"] = turn["item_id"]
    item_errors = item_problems(as_item, _POOL_NAMES[expected_kind])
    # item_problems speaks of 'id'; a turn calls it 'item_id'.
    return problems + [
        e.replace("'id'", "'item_id'") for e in item_errors if "missing key 'id'" not in e
    ]


def dialogue_problems(obj: Any) -> list[str]:
    """Everything wrong with one dialogue object (empty list = valid)."""
    if not isinstance(obj, Mapping):
        return [f"expected a JSON object, got {type(obj).__name__}"]
    problems = [f"missing key '{key}'" for key in ("id", "setting", "turns") if key not in obj]
    if "id" in obj and not (isinstance(obj["id"], str) and obj["id"]):
        problems.append(f"'id' must be a non-empty string, got {obj['id']!r}")
    kinds: tuple[str, ...] | None = None
    if "setting" in obj:
        try:
            kinds = parse_setting(obj["setting"])
        except ValueError as err:
            problems.append(str(err))
        else:
            if obj["setting"] != ",".join(kinds):
                problems.append(
                    f"setting {obj['setting']!r} is not canonical ({','.join(kinds)!r})"
                )
    turns = obj.get("turns")
    if "turns" in obj and not isinstance(turns, list):
        problems.append(f"'turns' must be a list, got {type(turns).__name__}")
    elif kinds is not None and turns is not None:
        if len(turns) != len(kinds):
            problems.append(f"{len(turns)} turns but setting {obj['setting']!r} has {len(kinds)}")
        for position, (turn, kind) in enumerate(zip(turns, kinds, strict=False), start=1):
            problems.extend(f"turn {position}: {e}" for e in _turn_problems(turn, kind))
    return problems


def write_iit(dialogues: Iterable[Mapping[str, Any]], path: str | Path) -> Path:
    """Validate and write dialogues as JSONL (UTF-8, ``\\n`` line ends, keys in schema order)."""
    dialogues = list(dialogues)
    problems = [
        f"{describe_location(f'dialogue {i}', d)}: {e}"
        for i, d in enumerate(dialogues)
        for e in dialogue_problems(d)
    ]
    if problems:
        raise IITFormatError(f"write_iit({str(path)!r})", problems)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for dialogue in dialogues:
            f.write(json.dumps(dialogue, ensure_ascii=False) + "\n")
    return path


def load_iit(path: str | Path) -> list[dict[str, Any]]:
    """Read and validate an IIT file (JSONL, or a JSON list).

    Raises:
        FileNotFoundError: no such file.
        IITFormatError: lists every bad line as ``"line N (id '...'): turn 2: problem"``,
            duplicate dialogue ids, or an empty file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IIT file not found: {path}")
    dialogues, problems = checked_records(path, dialogue_problems, "no dialogues", lambda obj: "duplicate dialogue id")
    if problems:
        raise IITFormatError(str(path), problems)
    return dialogues


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


def dialogue_messages(
    dialogue: Mapping[str, Any],
    with_letters: bool = True,
    *,
    image_token: str = IMAGE_MARKER,
    list_choices: bool = True,
) -> tuple[list[dict[str, str]], list[str], dict[str, Any]]:
    """Chat messages for a dialogue, ending with the scored user turn.

    Returns:
        messages: ``[{"role": "user"|"assistant", "content": str}, ...]``, user/assistant
            alternating, ``2 * len(turns) - 1`` entries; context turns carry their gold reply.
        images: image paths of the V turns, in the order their ``image_token`` markers appear.
        scored_turn: the last turn (its ``answer`` is the gold index).
    """
    turns = dialogue["turns"]
    messages: list[dict[str, str]] = []
    images: list[str] = []
    for position, turn in enumerate(turns):
        messages.append(
            {
                "role": "user",
                "content": format_question(turn, with_letters, image_token=image_token, list_choices=list_choices),
            }
        )
        if turn["kind"] == "V":
            images.append(turn["image"])
        if position < len(turns) - 1:
            messages.append({"role": "assistant", "content": gold_reply(turn, with_letters)})
    return messages, images, turns[-1]


# --------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------


def summarize_iit(
    results: Iterable[tuple[str, bool]], confidence: float = 0.95
) -> dict[str, dict[str, float | int]]:
    """``[(setting, correct), ...]`` -> ``{setting: {"acc", "low", "high", "n"}}``.

    Settings are canonicalised (``"t, v"`` counts as ``"T,V"``) and listed in first-seen order.
    """
    by_setting: dict[str, list[bool]] = {}
    for setting, correct in results:
        by_setting.setdefault(_canonical(setting), []).append(correct)
    return {s: accuracy_with_ci(c, confidence) for s, c in by_setting.items()}


# --------------------------------------------------------------------------------------------
# Evaluating a model
# --------------------------------------------------------------------------------------------


def _per_setting(summary: Mapping[str, Any]) -> Mapping[str, Mapping[str, float | int]]:
    """Accept an :func:`evaluate_iit` result or its ``"settings"`` part."""
    return summary["settings"] if "settings" in summary else summary


def evaluate_iit(
    model: Any,
    processor: Any,
    dialogues: Iterable[Mapping[str, Any]],
    image_folder: str | os.PathLike | None = None,
    batch_size: int = 8,
    method: Method = "generate",
    *,
    answer_format: AnswerFormat = "letter",
    max_new_tokens: int = 8,
    normalize: Normalize = "mean",
    image_mode: ImageMode | None = None,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Score a model on IIT dialogues: earlier turns are context with their gold replies, the
    last turn is asked and scored.

    Args:
        model: a WINGS or LLaVA model, or any HF causal LM (text-only settings only, with a tokenizer).
        processor: its processor (or a tokenizer with a chat template, for text-only dialogues).
        dialogues: as :func:`load_iit` returns them.
        image_folder: where relative image paths of V turns are resolved; every image is checked
            before any compute.
        method: "generate" (greedy reply, read with `parse_choice`; the paper's protocol) or
            "loglik" (the most likely option as the reply).
        answer_format: "letter" (the paper's format), "text" or "cloze"; see
            :mod:`wings.evaluation.multiple_choice`.
        max_new_tokens, normalize, image_mode: see :mod:`wings.evaluation.scoring`.
        confidence: of the Wilson interval per setting.

    Returns:
        ``{"method": str, "settings": {setting: {"acc", "low", "high", "n"}}, "records": [...]}``;
        one record per dialogue: ``{"id", "setting", "item_id", "answer", "prediction",
        "correct"}`` plus ``"output"`` (the reply) with ``method="generate"``.
    """
    dialogues = list(dialogues)
    if not dialogues:
        raise ValueError("evaluate_iit: no dialogues")
    problems = [
        f"{describe_location(f'dialogue {i}', d)}: {e}" for i, d in enumerate(dialogues) for e in dialogue_problems(d)
    ]
    if problems:
        raise IITFormatError("evaluate_iit", problems)
    image_token = getattr(processor, "image_token", IMAGE_MARKER)
    questions = []
    for dialogue in dialogues:
        messages, paths, turn = dialogue_messages(
            dialogue, answer_format == "letter", image_token=image_token, list_choices=answer_format != "cloze"
        )
        info = {"id": dialogue["id"], "setting": dialogue["setting"], "item_id": turn["item_id"]}
        questions.append(MCQuestion(f"IIT dialogue {dialogue['id']!r}", messages, paths, tuple(turn["choices"]),
                                    turn["answer"], info))  # fmt: skip
    records = answer_questions(model, processor, questions, image_folder, method=method, answer_format=answer_format,
                               batch_size=batch_size, max_new_tokens=max_new_tokens, normalize=normalize,
                               image_mode=image_mode)  # fmt: skip
    summary = summarize_iit(((r["setting"], r["correct"]) for r in records), confidence)
    for setting, stats in summary.items():
        logger.info("IIT %s: acc %.3f [%.3f, %.3f] (n=%d)", setting, stats["acc"], stats["low"], stats["high"], stats["n"])
    return {"method": method, "settings": summary, "records": records}


def iit_table(summary: Mapping[str, Any]) -> str:
    """Markdown table of per-setting accuracy with its interval (an :func:`evaluate_iit` result,
    or its ``"settings"`` part)."""
    lines = ["| setting | accuracy | interval | n |", "|---|---|---|---|"]
    for setting, stats in _per_setting(summary).items():
        acc = "-" if math.isnan(stats["acc"]) else f"{stats['acc']:.3f}"
        lines.append(f"| {setting} | {acc} | [{stats['low']:.3f}, {stats['high']:.3f}] | {stats['n']} |")
    return "\n".join(lines)


def plot_iit(summary: Mapping[str, Any], path: str | Path, title: str | None = "IIT accuracy by setting") -> Path:
    """Bar plot of per-setting accuracy with interval error bars and n above each bar; writes ``path``."""
    per_setting = _per_setting(summary)
    if not per_setting:
        raise ValueError("plot_iit: the summary has no settings")
    settings = list(per_setting)
    stats = [per_setting[s] for s in settings]
    fig, ax = new_figure(max(4.0, 1.0 + 0.9 * len(settings)), 3.5)
    bar_with_intervals(
        ax,
        [f"({s})" for s in settings],
        [float(s["acc"]) for s in stats],
        [float(s["low"]) for s in stats],
        [float(s["high"]) for s in stats],
        annotations=[f"n={s['n']}" for s in stats],
    )
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("accuracy (last turn)")
    ax.set_xlabel("setting")
    if title:
        ax.set_title(title)
    return save_figure(fig, path)
