"""Prepared training data: each data file parsed, validated and tokenised once, in parallel, into an
Arrow cache on disk (Hugging Face `datasets`), which later launches, other ranks and `--resume` map.

    data.json --(scan, main process)--> raw.arrow: one JSON text per sample
              --(datasets.map, num_proc workers)--> prepared-*.arrow: per sample the token ids, the
                label spans, the image paths, the length and the verdict (`error`: None or the message)

Every sample's problems are found during preparation: malformed JSON, roles, marker/image mismatch,
missing images and images that do not decode (each image is decoded once, not only `verify()`-ed),
and samples that do not fit `max_length`. Bad samples stay in the cache with their message, so a later
launch reports or skips the same samples without decoding or tokenising anything again.

The cache directory's name is a key over everything the prepared rows depend on: the data file
(size, modification time and a hash of its bytes), the image folder, the tokenizer, the chat
template, `max_length`, the image token and `image_seq_length` (and the image layout with the
`max_image_tokens` budget, which decide each image's token count), and `FORMAT_VERSION` (bumped when
this module changes what it writes). Changing any of them prepares again into a new directory. A
directory is complete or absent: it is written under a temporary name and renamed into place.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset, Features, List, Value, concatenate_datasets

from ..processing import WingsProcessor
from .conversation import IGNORE_INDEX, resolve_chat_template, tokenize_conversation
from .images import fed_image_sizes
from .json_records import iter_json_texts
from .llava import DataError, image_problem, parse_sample, sample_name

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2
CACHE_VARIABLE = "WINGS_DATA_CACHE"
MANIFEST = "manifest.json"
# Below this many samples per worker, starting worker processes costs more than it saves.
MIN_SAMPLES_PER_PROCESS = 2000
_RAW_BATCH = 10_000

FEATURES = Features({
    "index": Value("int64"),  # position in the data file
    "id": Value("string"),
    "input_ids": List(Value("int32")),
    "label_spans": List(Value("int32")),  # [start0, end0, start1, end1, ...]: labelled token ranges
    "images": List(Value("string")),  # resolved image paths, in marker order
    # (height, width) of each image as its tokens were counted, flat [h0, w0, h1, w1, ...]: its own size, or
    # shrunk to fit `max_image_tokens`; empty for the fixed layout without a budget (the size does not matter).
    "image_sizes": List(Value("int32")),
    "length": Value("int32"),  # len(input_ids)
    "n_images": Value("int32"),
    "error": Value("string"),  # None for a good sample, else the message naming file, sample and problem
})


def default_cache_dir() -> Path:
    """`$WINGS_DATA_CACHE`, else `~/.cache/wings/data` (beside the Hugging Face caches)."""
    return Path(os.environ.get(CACHE_VARIABLE) or Path.home() / ".cache" / "wings" / "data")


def default_num_proc() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@dataclass
class PreparedSource:
    """One data file, prepared.

    Attributes:
        path: the data file.
        rows: every sample of the file, good and bad, in file order (memory-mapped Arrow).
        directory: the cache directory that holds `rows`.
        built: whether this call prepared it (False: an existing cache was reused).
    """

    path: Path
    rows: Dataset
    directory: Path
    built: bool

    @property
    def errors(self) -> list[str]:
        """The message of every bad sample, in file order."""
        column = self.rows.data.column("error")
        return [m for m in column.filter(pc.is_valid(column)).to_pylist()]

    def good(self, skip_bad_samples: bool = False) -> Dataset:
        """The good samples; raises a `DataError` naming every bad one unless `skip_bad_samples`
        (then each is logged and skipped)."""
        errors = self.errors
        if errors and not skip_bad_samples:
            more = "" if len(errors) == 1 else f"\n({len(errors) - 1} more bad sample(s):\n" + "\n".join(
                errors[1:21]) + ("\n..." if len(errors) > 21 else "") + ")"
            raise DataError(errors[0] + more)
        for message in errors:
            logger.warning("skipping bad sample: %s", message)
        if errors:
            logger.warning("%s: skipped %d of %d samples (skip_bad_samples=True)", self.path.name, len(errors),
                           len(self.rows))
        if len(errors) == len(self.rows):
            raise DataError(f"{self.path.name}: no valid samples (read {len(self.rows)}, skipped {len(errors)})")
        if not errors:
            return self.rows
        keep = pc.indices_nonzero(pc.is_null(self.rows.data.column("error"))).to_numpy()
        return self.rows.select(keep)


def cache_key(
    path: str | os.PathLike,
    processor: WingsProcessor,
    max_length: int | None,
    image_folder: str | os.PathLike | None,
    max_image_tokens: int | None = None,
) -> str:
    """A hex digest over everything the prepared rows of `path` depend on (see the module docstring)."""
    path = Path(path)
    stat = path.stat()
    content = hashlib.blake2b(digest_size=16)
    with path.open("rb") as f:
        while chunk := f.read(1 << 23):
            content.update(chunk)
    tokenizer = processor.tokenizer
    backend = getattr(tokenizer, "backend_tokenizer", None)
    parts = {
        "format": FORMAT_VERSION,
        "file": [stat.st_size, stat.st_mtime_ns, content.hexdigest()],
        "image_folder": None if image_folder is None else os.path.abspath(image_folder),
        "tokenizer": [type(tokenizer).__name__, backend.to_str() if backend is not None else repr(tokenizer),
                      sorted(map(str, tokenizer.all_special_tokens))],
        "chat_template": resolve_chat_template(processor),
        "max_length": max_length,
        "image_token": [processor.image_token, processor.image_token_id],
        "image_seq_length": processor.image_seq_length,
        "image_layout": None if processor.image_layout == "fixed" else repr(processor.layout),
        "max_image_tokens": max_image_tokens,
    }
    return hashlib.blake2b(json.dumps(parts, sort_keys=True).encode(), digest_size=16).hexdigest()


def prepare_data(
    path: str | os.PathLike,
    processor: WingsProcessor,
    max_length: int | None,
    image_folder: str | os.PathLike | None = None,
    num_proc: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    max_image_tokens: int | None = None,
) -> PreparedSource:
    """Prepare a LLaVA or messages-format JSON/JSONL file, or reuse its cache.

    Args:
        path: the data file.
        processor: tokenizer, chat template, image token and `image_seq_length`.
        max_length: longest sequence (see `tokenize_conversation`; longer samples are bad samples).
        image_folder: folder the samples' image paths are relative to.
        num_proc: worker processes (default: this machine's cores; small files use fewer).
        cache_dir: where prepared files live (default: `default_cache_dir()`).
        max_image_tokens: the most image tokens per sample (see `wings.data.images.fed_image_sizes`).

    Raises:
        DataError: the file cannot be read, or is not a JSON list / JSONL as a whole (bad samples do
            not raise here: see `PreparedSource.good`).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path.name}: data file '{path}' not found")
    key = cache_key(path, processor, max_length, image_folder, max_image_tokens)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    directory = root / f"{path.stem}-{key}"
    if (directory / MANIFEST).is_file():
        logger.info("%s: using prepared data in %s", path.name, directory)
        return PreparedSource(path, _load(directory), directory, built=False)
    logger.info("%s: preparing into %s", path.name, directory)
    started = time.perf_counter()
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{path.stem}-{key}.", dir=root))
    try:
        raw = _write_raw(path, work / "raw.arrow")
        workers = max(1, min(num_proc or default_num_proc(), len(raw) // MIN_SAMPLES_PER_PROCESS))
        prepared = raw.map(
            _prepare_batch,
            batched=True,
            batch_size=500,
            num_proc=workers if workers > 1 else None,
            remove_columns=raw.column_names,
            features=FEATURES,
            fn_kwargs={"source": path.name, "image_folder": image_folder, "processor": processor,
                       "max_length": max_length, "max_image_tokens": max_image_tokens},
            cache_file_name=str(work / "prepared.arrow"),
            new_fingerprint=key,  # the key already covers the inputs; hashing the processor is slow
            desc=f"preparing {path.name}",
        )
        files = [Path(f["filename"]).name for f in prepared.cache_files]
        del prepared, raw
        (work / "raw.arrow").unlink()
        (work / MANIFEST).write_text(json.dumps({"source": str(path), "key": key, "files": files,
                                                 "format": FORMAT_VERSION}))
        try:
            os.replace(work, directory)
        except OSError:  # another process finished first: its copy is as good as ours
            shutil.rmtree(work, ignore_errors=True)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    rows = _load(directory)
    logger.info("%s: prepared %d samples in %.1f s", path.name, len(rows), time.perf_counter() - started)
    return PreparedSource(path, rows, directory, built=True)


def _load(directory: Path) -> Dataset:
    manifest = json.loads((directory / MANIFEST).read_text())
    parts = [Dataset.from_file(str(directory / name)) for name in manifest["files"]]
    return parts[0] if len(parts) == 1 else concatenate_datasets(parts)


def _write_raw(path: Path, out: Path) -> Dataset:
    """One row per sample of `path`: index, JSONL line, its JSON text, and a problem found while reading."""
    schema = pa.schema([("index", pa.int64()), ("line", pa.int64()), ("raw", pa.large_string()),
                        ("problem", pa.string())])
    batch: dict[str, list] = {"index": [], "line": [], "raw": [], "problem": []}
    whole_file_problem = None
    with pa.OSFile(str(out), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        def flush():
            writer.write_batch(pa.record_batch(batch, schema=schema))
            for values in batch.values():
                values.clear()

        try:
            for record in iter_json_texts(path, noun="samples"):
                if record.index is None:
                    whole_file_problem = record.problem
                    break
                batch["index"].append(record.index)
                batch["line"].append(record.line)
                batch["raw"].append(record.value if record.problem is None else None)
                batch["problem"].append(record.problem)
                if len(batch["index"]) >= _RAW_BATCH:
                    flush()
        except (OSError, UnicodeDecodeError) as err:
            raise DataError(f"{path.name}: cannot read data file '{path}': {err}") from err
        flush()
    if whole_file_problem is not None:
        raise DataError(f"{path.name}: {whole_file_problem}")
    return Dataset.from_file(str(out))


# Verdicts of images already decoded by this worker process: VQA-style data asks many questions per image.
_IMAGE_VERDICTS: dict[str, str | None] = {}


def _prepare_batch(
    batch: dict[str, list], source: str, image_folder: str | None, processor: WingsProcessor, max_length: int | None,
    max_image_tokens: int | None = None,
) -> dict[str, list]:
    out: dict[str, list] = {name: [] for name in FEATURES}
    for index, line, raw, problem in zip(batch["index"], batch["line"], batch["raw"], batch["problem"]):
        row: dict[str, Any] = {"index": index, "id": None, "input_ids": [], "label_spans": [], "images": [],
                               "image_sizes": [], "length": 0, "n_images": 0, "error": None}
        try:
            if problem is not None:
                raise DataError(f"{sample_name(source, index, None)}: {problem}")
            try:
                sample = json.loads(raw)
            except json.JSONDecodeError as err:  # JSONL lines are parsed here, in parallel
                raise DataError(f"{sample_name(source, index, None)}: malformed JSON on line {line}: {err.msg} "
                                f"(column {err.colno})") from None
            record = parse_sample(sample, source, index, image_folder, check_images=False)
            row["id"] = record.id
            for path in record.images:
                key = os.fspath(path)
                if key not in _IMAGE_VERDICTS:
                    _IMAGE_VERDICTS[key] = image_problem(path)
                if _IMAGE_VERDICTS[key] is not None:
                    raise DataError(f"{record.name}: image '{key}' cannot be decoded: {_IMAGE_VERDICTS[key]}")
            sizes = fed_image_sizes(record.images, processor, max_image_tokens, record.name)
            tokens = tokenize_conversation(record, processor, max_length, sizes)
            row.update(input_ids=tokens["input_ids"], label_spans=label_spans(tokens["labels"]),
                       images=[os.fspath(p) for p in record.images], length=len(tokens["input_ids"]),
                       n_images=record.num_images, image_sizes=[side for size in sizes or () for side in size])
        except DataError as err:
            row["error"] = str(err)
        for name, value in row.items():
            out[name].append(value)
    return out


def label_spans(labels: Sequence[int]) -> list[int]:
    """Labelled token ranges of `labels` [T] as flat [start, end) pairs (labels equal the input ids there)."""
    spans, inside = [], False
    for k, label in enumerate(labels):
        if (label != IGNORE_INDEX) != inside:
            spans.append(k)
            inside = not inside
    if inside:
        spans.append(len(labels))
    return spans


def labels_from_spans(input_ids: np.ndarray, spans: Sequence[int]) -> np.ndarray:
    """The labels [T] that `label_spans` encoded: the input ids inside the spans, IGNORE_INDEX elsewhere."""
    labels = np.full_like(input_ids, IGNORE_INDEX)
    for start, end in zip(spans[::2], spans[1::2]):
        labels[start:end] = input_ids[start:end]
    return labels
