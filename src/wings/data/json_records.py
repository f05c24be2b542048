"""Reading records from JSON and JSONL files: one reader for training data, pools and IIT files.

Files are read as UTF-8 (a byte-order mark is tolerated). A ``.jsonl`` file holds one JSON value
per line (blank lines are skipped); any other file holds one JSON list, except that a file whose
text is not a single JSON value is read as JSONL too (a pool written as ``pool.json`` one object a
line). Bad records do not stop the reading: each comes back with the problem, so that callers can
report every bad line at once.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["JsonRecord", "iter_json_texts", "read_json_records"]

_WHITESPACE = re.compile(r"[ \t\n\r]*")


@dataclass(frozen=True)
class JsonRecord:
    """One record of a JSON/JSONL file, or one problem with the file as a whole.

    Attributes:
        index: 0-based position among the records (blank JSONL lines do not count); None for a
            problem with the whole file (malformed JSON list, or a value that is not a list).
        line: 1-based line of the record in a JSONL file; None for items of a JSON list.
        value: the parsed value (None when ``problem`` is set).
        problem: why the record (or the file) could not be parsed, naming the line.
    """

    index: int | None
    line: int | None
    value: Any = None
    problem: str | None = None

    @property
    def where(self) -> str:
        """``"line 3"`` (JSONL), ``"item 3"`` (JSON list, 0-based) or ``"file"``."""
        if self.index is None:
            return "file"
        return f"line {self.line}" if self.line is not None else f"item {self.index}"


def _jsonl_records(text: str) -> list[JsonRecord]:
    records = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        index = len(records)
        try:
            records.append(JsonRecord(index, line_number, json.loads(line)))
        except json.JSONDecodeError as err:
            problem = f"malformed JSON on line {line_number}: {err.msg} (column {err.colno})"
            records.append(JsonRecord(index, line_number, problem=problem))
    return records


def read_json_records(path: str | os.PathLike, noun: str = "records") -> list[JsonRecord]:
    """Every record of a JSON list or JSONL file, in file order (see the module docstring).

    Args:
        path: the file.
        noun: what the records are, for the message about a file that holds no list
            (``"expected a JSON list of samples, got dict"``).

    Raises:
        OSError, UnicodeDecodeError: the file cannot be read as UTF-8 text.
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".jsonl":
        return _jsonl_records(text)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        if not text.lstrip().startswith("["):
            return _jsonl_records(text)
        problem = f"malformed JSON at line {err.lineno}, column {err.colno}: {err.msg}"
        return [JsonRecord(None, err.lineno, problem=problem)]
    if not isinstance(data, list):
        problem = f"expected a JSON list of {noun}, got {type(data).__name__} (use .jsonl for one per line)"
        return [JsonRecord(None, None, problem=problem)]
    return [JsonRecord(index, None, value) for index, value in enumerate(data)]


def iter_json_texts(path: str | os.PathLike, noun: str = "records") -> Iterator[JsonRecord]:
    """Every record of a JSON list or JSONL file as its JSON text (``value`` is a str), in file order.

    The same records as `read_json_records`, without holding the parsed file: a JSON list is scanned
    one item at a time, so a file of hundreds of thousands of samples costs its text and not a tree
    of Python objects. Parse each ``value`` with `json.loads`; a JSONL line is not checked here (the
    caller parses lines, possibly in parallel, and reports a malformed one with its ``line``), while
    a malformed JSON list ends the records with a whole-file problem (``index`` None).
    """
    path = Path(path)
    if path.suffix.lower() == ".jsonl":
        with path.open(encoding="utf-8-sig") as lines:
            index = 0
            for line_number, line in enumerate(lines, start=1):
                if line.strip():
                    yield JsonRecord(index, line_number, line)
                    index += 1
        return
    text = path.read_text(encoding="utf-8-sig")
    start = _WHITESPACE.match(text).end()
    if not text.startswith("[", start):  # one object, or JSONL under another name: the general reader decides
        for record in read_json_records(path, noun):
            value = record.value if record.problem is not None or record.index is None else json.dumps(record.value)
            yield JsonRecord(record.index, record.line, value, record.problem)
        return
    decoder = json.JSONDecoder()
    pos = _WHITESPACE.match(text, start + 1).end()
    index = 0
    try:
        if text.startswith("]", pos):
            pos += 1
        else:
            while True:
                _, end = decoder.raw_decode(text, pos)
                yield JsonRecord(index, None, text[pos:end])
                index += 1
                pos = _WHITESPACE.match(text, end).end()
                if text.startswith("]", pos):
                    pos += 1
                    break
                if not text.startswith(",", pos):
                    raise json.JSONDecodeError("Expecting ',' delimiter", text, pos)
                pos = _WHITESPACE.match(text, pos + 1).end()
        pos = _WHITESPACE.match(text, pos).end()
        if pos != len(text):
            raise json.JSONDecodeError("Extra data", text, pos)
    except json.JSONDecodeError as err:
        problem = f"malformed JSON at line {err.lineno}, column {err.colno}: {err.msg}"
        yield JsonRecord(None, err.lineno, problem=problem)
