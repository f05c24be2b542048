"""Converters from standard benchmark sets to pool files (see :mod:`wings.evaluation.pools`).

Each loader (``load_mmlu`` ... ``load_ai2d``, also in ``POOL_LOADERS``) reads a set the user
already has on disk (a local dataset directory or a parquet/json/jsonl/csv/tsv file) with
``datasets.load_dataset`` and converts its upstream columns into :class:`MCItem` objects. Nothing
is downloaded. Images that come embedded (PIL images, bytes, base64) are written as PNG files under
``image_dir``; images given as paths are resolved against ``image_root``.

:func:`convert_pool` is the entry point behind ``wings pool convert``: one loader, its items
written as a pool file.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .pools import LETTERS, POOL_KINDS, MCItem, PoolKind, check_kind, is_int, item_problems, write_pool
from ..data.llava import DataError
from .records import PoolFormatError


class ConversionError(DataError):
    """A benchmark set on disk cannot be converted: the message names the file, row and problem."""

__all__ = [
    "POOL_FORMATS",
    "POOL_LOADERS",
    "POOL_LOADER_KINDS",
    "ImageStore",
    "answer_index",
    "convert_pool",
    "letter_columns",
    "load_ai2d",
    "load_cmmlu",
    "load_hellaswag",
    "load_mmbench",
    "load_mmlu",
    "load_openbookqa",
    "load_scienceqa",
    "load_seedbench",
    "load_table",
    "require_columns",
]

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Benchmark loaders: shared helpers
# --------------------------------------------------------------------------------------------

_BUILDERS = {
    ".parquet": "parquet",
    ".json": "json",
    ".jsonl": "json",
    ".csv": "csv",
    ".tsv": "csv",
}


_KNOWN_SPLITS = ("train", "validation", "valid", "val", "dev", "test")


def _data_files(folder: Path) -> list[Path]:
    """Loadable data files under ``folder``, sorted, hidden folders (caches) skipped."""
    return [
        file
        for file in sorted(folder.rglob("*"))
        if file.is_file()
        and file.suffix.lower() in _BUILDERS
        and not any(part.startswith(".") for part in file.relative_to(folder).parts)
    ]


def _names_split(folder: Path, file: Path, split: str) -> bool:
    """Whether the file's path names ``split`` as a word: ``test-00000-of-00001.parquet``,
    ``dev/x.csv``, ``MMBench_DEV_EN.tsv``."""
    word = re.compile(rf"(^|[-._ /]){re.escape(split.lower())}([-._ /0-9]|$)")
    return bool(word.search(file.relative_to(folder).with_suffix("").as_posix().lower()))


def _load_files(datasets: Any, files: list[Path], split: str, kwargs: dict[str, Any]) -> Any:
    suffixes = {f.suffix.lower() for f in files}
    builders = {_BUILDERS[s] for s in suffixes}
    if len(builders) != 1 or suffixes == {".csv", ".tsv"}:
        raise ConversionError(f"files for split {split!r} mix formats: {[str(f) for f in files]}")
    if suffixes == {".tsv"}:
        kwargs = {**kwargs, "delimiter": "\t"}
    for file in files:
        if file.stat().st_size < 4096 and not file.read_bytes().strip():
            raise ConversionError(f"{file}: empty file")
    data_files = {split: [str(f) for f in files]}
    builder = builders.pop()
    import pyarrow
    import pyarrow.parquet

    if builder == "parquet":  # checked here: `datasets` would also log its own error line for a bad file
        for file in files:
            try:
                pyarrow.parquet.read_schema(file)
            except pyarrow.ArrowException as err:
                raise ConversionError(f"{file}: cannot be read as parquet ({type(err).__name__}: {err})") from err
    try:
        return datasets.load_dataset(builder, data_files=data_files, split=split, **kwargs)
    except (pyarrow.ArrowException, datasets.exceptions.DatasetGenerationError) as err:
        # A file that is not what its suffix says: name it and the reader's own reason, in one line.
        cause = err.__cause__ or err
        reason = " ".join(str(cause).split())[:300]
        where = files[0] if len(files) == 1 else f"{len(files)} {builder} files of split {split!r}"
        raise ConversionError(f"{where}: cannot be read as {builder} ({type(cause).__name__}: {reason})") from err


def load_table(
    path: str | Path,
    split: str,
    *,
    cache_dir: str | Path | None = None,
    json_field: str | None = None,
) -> Any:
    """Load one split of a local dataset as a ``datasets.Dataset``.

    ``path`` is a single data file (parquet/json/jsonl/csv/tsv: the split name is then only a
    label) or a local folder. In a folder, the data files whose path names the split as a word
    (``test-00000-of-00001.parquet``, ``dev/*.csv``) are loaded. We pick them ourselves rather
    than use ``datasets``' split inference, because it folds "dev" files into "validation" and
    MMLU has both. A folder whose file names name no split at all is loaded whole, with a
    warning.
    ``json_field`` selects the list inside a JSON object file (SEED-Bench's ``"questions"``).
    """
    import datasets  # deferred: importing datasets costs ~1 s and most callers never load a set

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"dataset path not found: {path}")
    kwargs: dict[str, Any] = {"cache_dir": str(cache_dir) if cache_dir else None}
    if json_field is not None:
        kwargs["field"] = json_field
    if path.is_file():
        if path.suffix.lower() not in _BUILDERS:
            raise ConversionError(
                f"{path}: unsupported file type {path.suffix!r}; expected one of {sorted(_BUILDERS)}"
            )
        return _load_files(datasets, [path], split, kwargs)
    all_files = _data_files(path)
    if not all_files:
        raise FileNotFoundError(f"{path}: no data files ({', '.join(sorted(_BUILDERS))})")
    files = [f for f in all_files if _names_split(path, f, split)]
    if files:
        return _load_files(datasets, files, split, kwargs)
    named = sorted({s for s in _KNOWN_SPLITS for f in all_files if _names_split(path, f, s)})
    if named:
        raise ConversionError(f"{path}: no split {split!r}; available splits: {named}")
    logger.warning(
        "%s: file names name no split; using all %d data files as %r", path, len(all_files), split
    )
    return _load_files(datasets, all_files, split, kwargs)


def require_columns(table: Any, columns: Iterable[str], source: str, benchmark: str) -> None:
    """Raise a ValueError naming every upstream column the table lacks."""
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise ConversionError(
            f"{source}: not in {benchmark} format: missing column(s) {missing}; "
            f"found {table.column_names}"
        )


def _is_missing(value: Any) -> bool:
    # CSV/TSV readers turn empty option cells into None or NaN (MMBench rows with 2-3 options).
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and value.strip() in ("", "nan")


def _text(value: Any) -> str:
    # Some upstream option cells are numbers (e.g. "12" parsed as int by the CSV reader).
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def answer_index(value: Any, n_choices: int, where: str) -> int:
    """Map an upstream answer (int index, digit string, or letter "A".."Z") to an index."""
    if is_int(value):
        index = value
    elif isinstance(value, str) and value.strip().isdigit():
        index = int(value.strip())
    elif isinstance(value, str) and len(value.strip()) == 1 and value.strip().upper() in LETTERS:
        index = LETTERS.index(value.strip().upper())
    else:
        raise ConversionError(f"{where}: cannot read answer {value!r} (expected an index or a letter)")
    if not 0 <= index < n_choices:
        raise ConversionError(f"{where}: answer {value!r} out of range for {n_choices} choices")
    return index


def letter_columns(row: Mapping[str, Any], names: Sequence[str]) -> list[str]:
    """Options spread over columns (A, B, C, D / choice_a ...), stopping at the first empty one."""
    choices: list[str] = []
    for name in names:
        value = row.get(name)
        if _is_missing(value):
            break
        choices.append(_text(value))
    return choices


def _safe_name(value: Any) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(value)).strip("._") or "item"


class ImageStore:
    """Turns an upstream image cell into a file path.

    Embedded images (PIL image, ``{"bytes": ..., "path": ...}`` dict, raw bytes, base64 string)
    are saved as PNG under ``image_dir``; path strings are resolved against ``image_root``.
    """

    def __init__(self, benchmark: str, image_dir: str | Path | None, image_root: str | Path | None):
        self.benchmark = benchmark
        self.image_dir = Path(image_dir) if image_dir is not None else None
        self.image_root = Path(image_root) if image_root is not None else None

    def path_for(self, value: Any, item_id: Any, where: str) -> str:
        """Return the image path for one row; raise ValueError saying what is wrong."""
        if isinstance(value, str):
            return self._from_string(value, item_id, where)
        if isinstance(value, Mapping):
            if value.get("bytes"):
                return self._save_bytes(value["bytes"], item_id, where)
            if value.get("path"):
                return self._from_string(value["path"], item_id, where)
            raise ConversionError(f"{where}: empty image cell")
        if isinstance(value, (bytes, bytearray)):
            return self._save_bytes(bytes(value), item_id, where)
        if hasattr(value, "save") and hasattr(value, "mode"):  # a PIL image
            return self._save_pil(value, item_id, where)
        raise ConversionError(f"{where}: unsupported image value of type {type(value).__name__}")

    def _from_string(self, value: str, item_id: Any, where: str) -> str:
        candidate = self.image_root / value if self.image_root is not None else Path(value)
        if len(value) < 256 and candidate.is_file():
            return str(candidate)
        # MMBench TSV files carry base64 PNG/JPEG data in the image column (JPEG's starts "/9j/",
        # so a slash does not tell a path from data; decoding does).
        image = _decode_base64_image(value) if len(value) >= 64 else None
        if image is not None:
            return self._save_pil(image, item_id, where)
        root = f" under image_root {str(self.image_root)!r}" if self.image_root else ""
        shown = value if len(value) <= 80 else value[:77] + "..."
        raise ConversionError(f"{where}: image {shown!r} not found{root} (nor is it base64 image data)")

    def _save_bytes(self, raw: bytes, item_id: Any, where: str) -> str:
        from PIL import Image, UnidentifiedImageError

        try:
            image = Image.open(io.BytesIO(raw))
            image.load()
        except (UnidentifiedImageError, OSError) as err:
            raise ConversionError(f"{where}: image data cannot be decoded ({err})") from err
        return self._save_pil(image, item_id, where)

    def _save_pil(self, image: Any, item_id: Any, where: str) -> str:
        if self.image_dir is None:
            raise ConversionError(
                f"{where}: {self.benchmark} rows carry embedded images; pass image_dir= to save them"
            )
        self.image_dir.mkdir(parents=True, exist_ok=True)
        target = self.image_dir / f"{_safe_name(self.benchmark)}_{_safe_name(item_id)}.png"
        if image.mode not in ("RGB", "RGBA", "L", "LA", "P", "1", "I", "I;16"):
            image = image.convert("RGB")  # e.g. CMYK JPEGs cannot be written as PNG
        image.save(target, format="PNG")
        return str(target)


def _decode_base64_image(value: str) -> Any | None:
    """The PIL image encoded in a base64 string, or None if it is not one."""
    from PIL import Image, UnidentifiedImageError

    try:
        raw = base64.b64decode(value, validate=True)
        image = Image.open(io.BytesIO(raw))
        image.load()
    except (binascii.Error, ValueError, UnidentifiedImageError, OSError):
        return None
    return image


def _with_hint(hint: Any, question: str) -> str:
    # ScienceQA and MMBench put needed context in "hint"; LLaVA's evaluation prompts prepend it.
    if _is_missing(hint):
        return question
    return f"Context: {_text(hint)}\n{question}"


def _source(path: str | Path, split: str) -> str:
    return f"{path} [{split}]"


def _log_loaded(benchmark: str, items: list[MCItem], skipped: int, source: str) -> None:
    """Check the converted items against the pool schema (e.g. a row with a single option),
    so a bad row fails here, naming the set, rather than later in ``load_pool``."""
    problems = [
        f"item {i} (id {item.id!r}): {e}"
        for i, item in enumerate(items)
        for e in item_problems(item.to_dict(), "visual" if item.image is not None else "text")
    ]
    if problems:
        raise PoolFormatError(f"{source} ({benchmark})", problems)
    if skipped:
        logger.warning("%s: skipped %d row(s) of %s (see debug log)", source, skipped, benchmark)
    logger.info("%s: %d %s items", source, len(items), benchmark)


# --------------------------------------------------------------------------------------------
# Text sets
# --------------------------------------------------------------------------------------------


def load_mmlu(
    path: str | Path, split: str = "test", *, cache_dir: str | Path | None = None
) -> list[MCItem]:
    """MMLU (cais/mmlu layout): columns ``question, subject, choices, answer`` (int 0-3).

    Item ids are ``"mmlu/<split>/<row>"``.
    """
    table = load_table(path, split, cache_dir=cache_dir)
    source = _source(path, split)
    require_columns(table, ("question", "subject", "choices", "answer"), source, "MMLU")
    items = []
    for i, row in enumerate(table):
        where = f"{source}: row {i}"
        choices = [_text(c) for c in row["choices"]]
        items.append(
            MCItem(
                id=f"mmlu/{split}/{i}",
                question=row["question"].strip(),
                choices=tuple(choices),
                answer=answer_index(row["answer"], len(choices), where),
                subject=row["subject"] or None,
            )
        )
    _log_loaded("MMLU", items, 0, source)
    return items


def _cmmlu_files(path: Path, split: str) -> list[Path]:
    for folder in (path / split, path):
        files = sorted(folder.glob("*.csv"))
        if files:
            return files
    return []


def load_cmmlu(
    path: str | Path, split: str = "test", *, cache_dir: str | Path | None = None
) -> list[MCItem]:
    """CMMLU (haonan-li/cmmlu layout): one CSV per subject with columns
    ``Question, A, B, C, D, Answer`` (letter), e.g. ``cmmlu/test/agronomy.csv``.

    ``path`` is the CMMLU root (``<path>/<split>/*.csv``), a folder of subject CSVs, or one CSV /
    parquet file. The subject is the file stem unless the table has a ``subject`` column.
    Item ids are ``"cmmlu/<split>/<subject>/<row>"``.
    """
    path = Path(path)
    files = _cmmlu_files(path, split) if path.is_dir() else [path]
    if not files:
        raise FileNotFoundError(f"{path}: no CMMLU CSV files under {path / split} or {path}")
    items: list[MCItem] = []
    for file in files:
        table = load_table(file, split, cache_dir=cache_dir)
        source = _source(file, split)
        require_columns(table, ("Question", "A", "B", "C", "D", "Answer"), source, "CMMLU")
        for i, row in enumerate(table):
            subject = row.get("subject") or file.stem
            choices = letter_columns(row, "ABCD")
            items.append(
                MCItem(
                    id=f"cmmlu/{split}/{subject}/{i}",
                    question=_text(row["Question"]),
                    choices=tuple(choices),
                    answer=answer_index(row["Answer"], len(choices), f"{source}: row {i}"),
                    subject=subject,
                )
            )
    _log_loaded("CMMLU", items, 0, str(path))
    return items


def load_openbookqa(
    path: str | Path, split: str = "test", *, cache_dir: str | Path | None = None
) -> list[MCItem]:
    """OpenbookQA (allenai/openbookqa layout): ``id, question_stem, choices{text,label}, answerKey``."""
    table = load_table(path, split, cache_dir=cache_dir)
    source = _source(path, split)
    require_columns(table, ("id", "question_stem", "choices", "answerKey"), source, "OpenbookQA")
    items = []
    for i, row in enumerate(table):
        where = f"{source}: row {i} (id {row['id']!r})"
        texts, labels = list(row["choices"]["text"]), list(row["choices"]["label"])
        if row["answerKey"] not in labels:
            raise ConversionError(f"{where}: answerKey {row['answerKey']!r} not among labels {labels}")
        items.append(
            MCItem(
                id=row["id"],
                question=row["question_stem"].strip(),
                choices=tuple(_text(t) for t in texts),
                answer=labels.index(row["answerKey"]),
            )
        )
    _log_loaded("OpenbookQA", items, 0, source)
    return items


def _hellaswag_clean(text: str) -> str:
    # WikiHow contexts carry markup such as "[title]" and "[step]"; lm-eval strips it the same way.
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ").strip()


HELLASWAG_INSTRUCTION = "Which ending is the most plausible continuation of the text?"


def load_hellaswag(
    path: str | Path, split: str = "validation", *, cache_dir: str | Path | None = None
) -> list[MCItem]:
    """HellaSwag (Rowan/hellaswag layout): ``ind, activity_label, ctx, endings, label`` (digit str).

    The question is :data:`HELLASWAG_INSTRUCTION` followed by the cleaned context, since a chat
    model answering with a letter needs to be told what the options are. Rows without a label
    (the public test split) are skipped with a warning. Subject = ``activity_label``.
    """
    table = load_table(path, split, cache_dir=cache_dir)
    source = _source(path, split)
    require_columns(table, ("ctx", "endings", "label"), source, "HellaSwag")
    items, skipped = [], 0
    for i, row in enumerate(table):
        item_id = row.get("ind", i)
        if _is_missing(row["label"]):
            logger.debug("%s: row %d: no label, skipped", source, i)
            skipped += 1
            continue
        endings = [_hellaswag_clean(e) for e in row["endings"]]
        items.append(
            MCItem(
                id=f"hellaswag/{split}/{item_id}",
                question=f"{HELLASWAG_INSTRUCTION}\n{_hellaswag_clean(row['ctx'])}",
                choices=tuple(endings),
                answer=answer_index(row["label"], len(endings), f"{source}: row {i}"),
                subject=row.get("activity_label") or None,
            )
        )
    _log_loaded("HellaSwag", items, skipped, source)
    return items


# --------------------------------------------------------------------------------------------
# Visual sets
# --------------------------------------------------------------------------------------------


def load_scienceqa(
    path: str | Path,
    split: str = "test",
    *,
    kind: PoolKind | None = "visual",
    image_dir: str | Path | None = None,
    image_root: str | Path | None = None,
    cache_dir: str | Path | None = None,
) -> list[MCItem]:
    """ScienceQA (derek-thomas/ScienceQA layout): ``image, question, choices, answer, hint, subject,
    topic``; ``image`` is None for text-only rows.

    ``kind="visual"`` keeps rows with an image, ``"text"`` rows without, None keeps both. The hint
    is prepended as "Context: ...". Subject = ``topic`` (finer than ``subject``, better for
    grouping), falling back to ``subject``. Item ids are ``"scienceqa/<split>/<row>"``.
    """
    if kind is not None:
        check_kind(kind)
    table = load_table(path, split, cache_dir=cache_dir)
    source = _source(path, split)
    require_columns(table, ("image", "question", "choices", "answer"), source, "ScienceQA")
    store = ImageStore("scienceqa", image_dir, image_root)
    items, skipped = [], 0
    for i, row in enumerate(table):
        item_id = f"scienceqa/{split}/{i}"
        has_image = not _is_missing(row["image"])
        if (kind == "visual" and not has_image) or (kind == "text" and has_image):
            skipped += 1
            continue
        where = f"{source}: row {i}"
        choices = [_text(c) for c in row["choices"]]
        items.append(
            MCItem(
                id=item_id,
                question=_with_hint(row.get("hint"), row["question"].strip()),
                choices=tuple(choices),
                answer=answer_index(row["answer"], len(choices), where),
                image=store.path_for(row["image"], item_id, where) if has_image else None,
                subject=row.get("topic") or row.get("subject") or None,
            )
        )
    if skipped:
        logger.info("%s: kept %d %s rows, left out %d", source, len(items), kind, skipped)
    _log_loaded("ScienceQA", items, 0, source)
    return items


def load_mmbench(
    path: str | Path,
    split: str = "dev",
    *,
    image_dir: str | Path | None = None,
    image_root: str | Path | None = None,
    cache_dir: str | Path | None = None,
) -> list[MCItem]:
    """MMBench (opencompass TSV / lmms-lab/MMBench layout): ``index, question, hint, A, B, C, D,
    answer`` (letter), ``category``, ``image`` (base64 string in the TSV, PIL image in parquet, or
    a path under ``image_root``).

    Rows have 2-4 options (empty trailing cells); rows without an answer (test split) are
    skipped. Subject = ``category``. Item ids are the upstream ``index``.
    """
    table = load_table(path, split, cache_dir=cache_dir)
    source = _source(path, split)
    require_columns(table, ("index", "question", "A", "B", "answer", "image"), source, "MMBench")
    store = ImageStore("mmbench", image_dir, image_root)
    items, skipped = [], 0
    for i, row in enumerate(table):
        where = f"{source}: row {i} (index {row['index']!r})"
        if _is_missing(row["answer"]):
            logger.debug("%s: no answer, skipped", where)
            skipped += 1
            continue
        choices = letter_columns(row, "ABCDEFGHI")
        items.append(
            MCItem(
                id=row["index"],
                question=_with_hint(row.get("hint"), _text(row["question"])),
                choices=tuple(choices),
                answer=answer_index(row["answer"], len(choices), where),
                image=store.path_for(row["image"], row["index"], where),
                subject=row.get("category") or None,
            )
        )
    _log_loaded("MMBench", items, skipped, source)
    return items


def _seedbench_json_types(path: Path) -> dict[int, str] | None:
    """For the upstream ``SEED-Bench.json`` (an object with ``"questions"``), its dimension names
    by id (from the top-level ``"question_type": {name: id}``); None for any other file."""
    if not (path.is_file() and path.suffix.lower() == ".json"):
        return None
    with path.open(encoding="utf-8") as f:
        if not f.read(64).lstrip().startswith("{"):
            return None  # JSON lines: one question per line
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None  # JSON lines whose first object starts the file; datasets will read it
    if not (isinstance(data, dict) and "questions" in data):
        return None
    return {int(v): str(k) for k, v in data.get("question_type", {}).items()}


def load_seedbench(
    path: str | Path,
    split: str = "test",
    *,
    image_dir: str | Path | None = None,
    image_root: str | Path | None = None,
    cache_dir: str | Path | None = None,
) -> list[MCItem]:
    """SEED-Bench: the upstream ``SEED-Bench.json`` (``{"questions": [...], "question_type":
    {name: id}}``) or the lmms-lab parquet. Columns ``question_id, question, choice_a..choice_d,
    answer`` (letter), ``data_type``, ``data_id`` (image file under ``image_root``) or ``image``.

    Only ``data_type == "image"`` rows are kept (video questions are not single-image turns).
    Subject = the evaluation dimension name when known, else ``"question_type_<id>"``.
    """
    path = Path(path)
    type_names = _seedbench_json_types(path)
    json_field = "questions" if type_names is not None else None
    type_names = type_names or {}
    table = load_table(path, split, cache_dir=cache_dir, json_field=json_field)
    source = _source(path, split)
    require_columns(
        table, ("question_id", "question", "choice_a", "choice_b", "answer"), source, "SEED-Bench"
    )
    if "image" not in table.column_names and "data_id" not in table.column_names:
        raise ConversionError(
            f"{source}: not in SEED-Bench format: needs an 'image' or 'data_id' column"
        )
    store = ImageStore("seedbench", image_dir, image_root)
    items, skipped = [], 0
    for i, row in enumerate(table):
        where = f"{source}: row {i} (question_id {row['question_id']!r})"
        if row.get("data_type", "image") != "image":
            skipped += 1
            continue
        image = row.get("image")
        if isinstance(image, list):  # lmms-lab stores a list of frames/images per row
            if len(image) != 1:
                logger.debug("%s: %d images, skipped", where, len(image))
                skipped += 1
                continue
            image = image[0]
        if _is_missing(image):
            image = row.get("data_id")
        choices = letter_columns(row, ("choice_a", "choice_b", "choice_c", "choice_d"))
        type_id = row.get("question_type_id")
        subject = None
        if type_id is not None:
            subject = type_names.get(int(type_id), f"question_type_{type_id}")
        items.append(
            MCItem(
                id=str(row["question_id"]),
                question=_text(row["question"]),
                choices=tuple(choices),
                answer=answer_index(row["answer"], len(choices), where),
                image=store.path_for(image, row["question_id"], where),
                subject=subject,
            )
        )
    if skipped:
        logger.info("%s: left out %d non-image (video / multi-image) rows", source, skipped)
    _log_loaded("SEED-Bench", items, 0, source)
    return items


def load_ai2d(
    path: str | Path,
    split: str = "test",
    *,
    image_dir: str | Path | None = None,
    image_root: str | Path | None = None,
    cache_dir: str | Path | None = None,
) -> list[MCItem]:
    """AI2D (lmms-lab/ai2d layout): ``question, options`` (list), ``answer`` (index as a string),
    ``image``. Item ids are ``"ai2d/<split>/<row>"``.
    """
    table = load_table(path, split, cache_dir=cache_dir)
    source = _source(path, split)
    require_columns(table, ("question", "options", "answer", "image"), source, "AI2D")
    store = ImageStore("ai2d", image_dir, image_root)
    items = []
    for i, row in enumerate(table):
        where = f"{source}: row {i}"
        item_id = f"ai2d/{split}/{i}"
        choices = [_text(c) for c in row["options"]]
        items.append(
            MCItem(
                id=item_id,
                question=_text(row["question"]),
                choices=tuple(choices),
                answer=answer_index(row["answer"], len(choices), where),
                image=store.path_for(row["image"], item_id, where),
            )
        )
    _log_loaded("AI2D", items, 0, source)
    return items


PoolLoader = Callable[..., list[MCItem]]

#: name -> loader; every loader takes ``(path, split=..., *, cache_dir=None)``, visual ones also
#: ``image_dir`` and ``image_root``.
POOL_LOADERS: dict[str, PoolLoader] = {
    "mmlu": load_mmlu,
    "cmmlu": load_cmmlu,
    "openbookqa": load_openbookqa,
    "hellaswag": load_hellaswag,
    "scienceqa": load_scienceqa,
    "mmbench": load_mmbench,
    "seedbench": load_seedbench,
    "ai2d": load_ai2d,
}

#: name -> the pool kind each loader produces by default.
POOL_LOADER_KINDS: dict[str, str] = {
    "mmlu": "text",
    "cmmlu": "text",
    "openbookqa": "text",
    "hellaswag": "text",
    "scienceqa": "visual",
    "mmbench": "visual",
    "seedbench": "visual",
    "ai2d": "visual",
}

#: The benchmark formats :func:`convert_pool` reads (the keys of ``POOL_LOADERS``).
POOL_FORMATS: tuple[str, ...] = tuple(POOL_LOADERS)


def convert_pool(
    format: str,
    source: str | os.PathLike,
    output: str | os.PathLike,
    *,
    split: str | None = None,
    kind: PoolKind | None = None,
    image_dir: str | os.PathLike | None = None,
    image_root: str | os.PathLike | None = None,
    limit: int | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Path:
    """Convert a benchmark set on disk into a pool file (JSONL) that ``wings iit build`` reads.

    Args:
        format: the benchmark: one of ``POOL_FORMATS`` (mmlu, cmmlu, openbookqa, hellaswag: text
            pools; scienceqa, mmbench, seedbench, ai2d: visual pools).
        source: the set as downloaded: a dataset folder or one parquet/json/jsonl/csv/tsv file.
        output: the pool file to write.
        split: which split to read; None: the benchmark's usual evaluation split (MMLU "test",
            HellaSwag "validation", MMBench "dev", ...).
        kind: ScienceQA only: "visual" (rows with an image, the default), "text" (rows without).
        image_dir: visual sets: where embedded images are written as PNG files; None: a folder
            ``<output name>_images`` beside ``output``. Pool image paths are absolute, so the
            pool works from any folder without an image folder.
        image_root: visual sets whose image column holds paths: the folder they are relative to.
        limit: keep only the first ``limit`` items (a quick subset); None keeps all.
        cache_dir: where ``datasets`` keeps its cache; None: its default.

    Returns:
        the path of the written pool.

    Raises:
        ValueError: an unknown format, an option the format does not take, or upstream rows
            that do not fit the format (naming the file and row).
        FileNotFoundError: ``source`` does not exist.
    """
    if format not in POOL_LOADERS:
        raise ConversionError(f"unknown pool format {format!r}; choose one of {', '.join(POOL_FORMATS)}")
    if limit is not None and limit < 1:
        raise ConversionError(f"limit must be a positive number of items, got {limit}")
    output = Path(output)
    visual = POOL_LOADER_KINDS[format] == "visual"
    options: dict[str, Any] = {"cache_dir": cache_dir}
    if split is not None:
        options["split"] = split
    if kind is not None:
        if format != "scienceqa":
            raise ConversionError(f"{format}: kind= only applies to scienceqa (which has text and visual rows)")
        if kind not in POOL_KINDS:
            raise ConversionError(f"kind must be one of {POOL_KINDS}, got {kind!r}")
        options["kind"] = kind
    if visual:
        folder = Path(image_dir) if image_dir is not None else output.with_name(f"{output.stem}_images")
        options["image_dir"] = folder.resolve()
        options["image_root"] = None if image_root is None else Path(image_root).resolve()
    elif image_dir is not None or image_root is not None:
        raise ConversionError(f"{format} is a text benchmark: image_dir and image_root do not apply")
    items = POOL_LOADERS[format](source, **options)
    if limit is not None:
        items = items[:limit]
    path = write_pool(items, output)
    logger.info("%s: wrote %d %s items to %s", format, len(items), POOL_LOADER_KINDS[format], path)
    return path
