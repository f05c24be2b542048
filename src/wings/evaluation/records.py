"""Schema-checked records of pool and IIT files, with every bad record named in one error."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..data.json_records import read_json_records
from ..data.llava import DataError

__all__ = ["PoolFormatError", "checked_records", "describe_location"]

# Keep error messages readable when a whole file is broken.
_MAX_REPORTED_PROBLEMS = 20


class PoolFormatError(DataError):
    """A pool or IIT file (or a benchmark table) does not follow its schema.

    ``problems`` holds one ``"<where>: <what>"`` string per bad item.
    """

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        self.source = source
        self.problems = list(problems)
        shown = self.problems[:_MAX_REPORTED_PROBLEMS]
        more = len(self.problems) - len(shown)
        # One line (the command line prints user errors as one line), the problems separated by "; ".
        listed = "; ".join(shown) + (f"; ... and {more} more" if more else "")
        super().__init__(f"{source}: {len(self.problems)} problem(s): {listed}")


def describe_location(where: str, obj: Any) -> str:
    """``"line 3 (id 'q3')"`` when the object has an id, else ``"line 3"``."""
    if isinstance(obj, Mapping) and "id" in obj:
        return f"{where} (id {obj['id']!r})"
    return where


def checked_records(
    path: Path,
    problems_of: Callable[[Any], list[str]],
    empty: str,
    duplicate: Callable[[dict[str, Any]], str],
) -> tuple[list[dict[str, Any]], list[str]]:
    """Parse and validate every record of a JSONL/JSON file, collecting every problem.

    `problems_of(obj)` lists what is wrong with one record; ids must be unique (compared as strings:
    7 and "7" would be indistinguishable to a reader); `duplicate(obj)` words the clash and `empty`
    is the problem of a file without records. Returns the valid records and the located problems.
    """
    records: list[dict[str, Any]] = []
    problems: list[str] = []
    first_seen: dict[str, str] = {}
    for record in read_json_records(path):
        if record.problem is not None:
            problems.append(record.problem)  # the problem names its line
            continue
        location = describe_location(record.where, record.value)
        errors = problems_of(record.value)
        if errors:
            problems.extend(f"{location}: {e}" for e in errors)
            continue
        key = str(record.value["id"])
        if key in first_seen:
            problems.append(f"{location}: {duplicate(record.value)} (first seen at {first_seen[key]})")
            continue
        first_seen[key] = record.where
        records.append(record.value)
    if not records and not problems:
        problems.append(empty)
    return records, problems
