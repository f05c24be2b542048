"""Load and validate LLaVA-format conversation data before any compute is spent.

A LLaVA data file is a JSON list (or JSONL, one sample per line) of samples such as

    {"id": "000000033471",
     "image": "coco/train2017/000000033471.jpg",          # optional; a string or a list of strings
     "conversations": [{"from": "human", "value": "<image>\\nWhat is on the bus?"},
                       {"from": "gpt", "value": "An advertisement."}]}

Each `<image>` marker in a human turn takes the next image of `image`, in order. Samples without
`image` are text-only and may be mixed with image samples. The messages format that LLaMA-Factory,
ms-swift and Hugging Face chat data sets write is read too:

    {"messages": [{"role": "user", "content": "<image>What is on the bus?"},
                  {"role": "assistant", "content": "An advertisement."}],
     "images": ["coco/train2017/000000033471.jpg"]}

(`content` may also be a list of HF content parts, `{"type": "image"}` standing for a marker).
`load_llava_records` checks every sample up front and raises a `DataError` that names the file, the
sample and the problem, or, with `skip_bad_samples=True`, logs each bad sample and keeps the good ones.
Training prepares its data with `wings.data.prepared` instead (the same checks, in parallel, cached).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from .json_records import read_json_records
from ..errors import WingsError
from ..processing import flatten_content

logger = logging.getLogger(__name__)

IMAGE_MARKER = "<image>"
# LLaVA/ShareGPT speaker names -> Hugging Face chat roles.
ROLE_MAP = {"human": "user", "gpt": "assistant", "system": "system"}
HF_ROLES = ("system", "user", "assistant")


class DataError(WingsError, ValueError):
    """A data file or sample is unusable; the message names the file, the sample and the problem."""


class SampleTooLongError(DataError):
    """A sample does not fit `max_length` without cutting an image or losing every assistant token."""


Failure = Callable[[str], DataError]  # builds the error for one sample from a problem description


@dataclass(frozen=True)
class Turn:
    """One conversation turn with a Hugging Face role ("system", "user" or "assistant")."""

    role: str
    content: str


@dataclass(frozen=True)
class LlavaRecord:
    """One validated sample.

    Attributes:
        source: name of the data file, for messages.
        index: position of the sample in the file (0-based; the line number minus one for JSONL).
        id: the sample's "id" field (None when absent).
        turns: the conversation with HF roles; `<image>` markers only in user turns.
        images: resolved image paths, one per `<image>` marker, in marker order.
    """

    source: str
    index: int
    id: str | None
    turns: tuple[Turn, ...]
    images: tuple[Path, ...] = field(default_factory=tuple)

    @property
    def name(self) -> str:
        """`data.json: sample 12 (id 'abc')` - how errors refer to this sample."""
        return sample_name(self.source, self.index, self.id)

    @property
    def num_images(self) -> int:
        return len(self.images)

    def messages(self) -> list[dict[str, str]]:
        """HF chat messages: [{"role": ..., "content": ...}, ...] with `<image>` markers kept."""
        return [{"role": t.role, "content": t.content} for t in self.turns]

    def num_tokens_estimate(self, image_seq_length: int, chars_per_token: float = 4.0) -> int:
        """Cheap length estimate (no tokenizer) for length-grouped sampling: text chars / 4 + image tokens."""
        chars = sum(len(t.content) for t in self.turns) - len(IMAGE_MARKER) * self.num_images
        return int(chars / chars_per_token) + image_seq_length * self.num_images


def sample_name(source: str, index: int, sample_id: Any | None) -> str:
    return f"{source}: sample {index}" + (f" (id {str(sample_id)!r})" if sample_id is not None else "")


def load_llava_records(
    path: str | os.PathLike,
    image_folder: str | os.PathLike | None,
    check_images: bool = True,
    skip_bad_samples: bool = False,
) -> list[LlavaRecord]:
    """Read and validate a LLaVA-format JSON or JSONL file.

    Args:
        path: the data file; `.jsonl` files are read line by line, anything else as one JSON list.
        image_folder: folder the samples' image paths are relative to (None: data without images).
        check_images: also open every image with PIL and `verify()` it (slower; a missing file is
            always reported).
        skip_bad_samples: log each bad sample and skip it instead of raising.

    Raises:
        DataError: the file is unreadable, malformed or not a list, a sample is invalid (unless
            skipped), or no valid sample remains.
    """
    path = Path(path)
    source = path.name
    records: list[LlavaRecord] = []
    skipped = 0
    total = 0
    verified: set[Path] = set()
    for index, sample, problem in _read_samples(path):
        total += 1
        try:
            if problem is not None:
                raise DataError(f"{sample_name(source, index, None)}: {problem}")
            records.append(parse_sample(sample, source, index, image_folder, check_images, verified))
        except DataError as err:
            if not skip_bad_samples:
                raise
            skipped += 1
            logger.warning("skipping bad sample: %s", err)
    if skipped:
        logger.warning("%s: skipped %d of %d samples (skip_bad_samples=True)", source, skipped, total)
    if not records:
        raise DataError(f"{source}: no valid samples (read {total}, skipped {skipped})")
    return records


def _read_samples(path: Path) -> Iterator[tuple[int, Any, str | None]]:
    """Yield (index, sample, problem) per sample; `problem` describes a sample that failed to parse."""
    source = path.name
    try:
        records = read_json_records(path, noun="samples")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{source}: cannot read data file '{path}': {err}") from err
    for record in records:
        if record.index is None:  # the file as a whole is unusable
            raise DataError(f"{source}: {record.problem}")
        yield record.index, record.value, record.problem


def parse_sample(
    sample: Any,
    source: str,
    index: int,
    image_folder: str | os.PathLike | None,
    check_images: bool = True,
    verified: set[Path] | None = None,
) -> LlavaRecord:
    """Validate one raw sample and turn it into a `LlavaRecord`; raises `DataError` naming the sample.

    `verified` collects images already opened and verified, so that an image shared by many samples
    (VQA sets ask many questions per image) is decoded once per load.
    """
    if not isinstance(sample, dict):
        raise DataError(f"{sample_name(source, index, None)}: expected an object, got {type(sample).__name__}")
    sample_id = sample.get("id")
    where = sample_name(source, index, sample_id)

    def fail(problem: str) -> DataError:
        return DataError(f"{where}: {problem}")

    if "messages" in sample:
        turns = _parse_messages(sample["messages"], fail)
        images = _parse_image_field(sample.get("images"), fail, key="images")
    elif "conversations" in sample:
        turns = _parse_turns(sample["conversations"], fail)
        images = _parse_image_field(sample.get("image"), fail)
    else:
        raise fail(f"missing key 'conversations' (or 'messages') (keys: {sorted(sample)})")
    n_markers = sum(t.content.count(IMAGE_MARKER) for t in turns)
    if n_markers != len(images):
        key = "images" if "messages" in sample else "image"
        raise fail(
            f"{n_markers} '{IMAGE_MARKER}' marker(s) in the conversation but {len(images)} image(s) "
            f"in '{key}'; each image needs exactly one marker"
        )
    resolved = tuple(_resolve_image(rel, image_folder, check_images, fail, verified) for rel in images)
    return LlavaRecord(
        source=source,
        index=index,
        id=None if sample_id is None else str(sample_id),
        turns=turns,
        images=resolved,
    )


def _parse_turns(conversations: Any, fail: Failure) -> tuple[Turn, ...]:
    if not isinstance(conversations, list):
        raise fail(f"'conversations' must be a list of turns, got {type(conversations).__name__}")
    if not conversations:
        raise fail("empty conversations")
    turns = []
    for k, turn in enumerate(conversations):
        if not isinstance(turn, dict):
            raise fail(f"turn {k} must be an object with 'from' and 'value', got {type(turn).__name__}")
        for key in ("from", "value"):
            if key not in turn:
                raise fail(f"turn {k} is missing key '{key}'")
        speaker, value = turn["from"], turn["value"]
        if speaker not in ROLE_MAP:
            raise fail(f"turn {k} has unknown role {speaker!r} (expected one of {sorted(ROLE_MAP)})")
        if not isinstance(value, str):
            raise fail(f"turn {k} ({speaker}) has a non-string value ({type(value).__name__})")
        if not value.strip():
            raise fail(f"turn {k} ({speaker}) has an empty value")
        if speaker != "human" and IMAGE_MARKER in value:
            raise fail(f"'{IMAGE_MARKER}' marker in a {speaker} turn (turn {k}); images belong in human turns")
        turns.append(Turn(ROLE_MAP[speaker], value))
    return _check_roles(turns, fail, user="human", assistant="gpt")


def _parse_messages(messages: Any, fail: Failure) -> tuple[Turn, ...]:
    """The messages format: [{"role": "user" | "assistant" | "system", "content": str or parts}, ...]."""
    if not isinstance(messages, list):
        raise fail(f"'messages' must be a list of messages, got {type(messages).__name__}")
    if not messages:
        raise fail("empty messages")
    turns = []
    for k, message in enumerate(messages):
        if not isinstance(message, dict):
            raise fail(f"message {k} must be an object with 'role' and 'content', got {type(message).__name__}")
        for key in ("role", "content"):
            if key not in message:
                raise fail(f"message {k} is missing key '{key}'")
        role, content = message["role"], message["content"]
        if role not in HF_ROLES:
            raise fail(f"message {k} has unknown role {role!r} (expected one of {list(HF_ROLES)})")
        if isinstance(content, list):
            try:
                content = flatten_content(content)
            except (ValueError, KeyError, AttributeError, TypeError) as err:
                raise fail(f"message {k} ({role}) has malformed content parts: {err}") from None
        if not isinstance(content, str):
            raise fail(f"message {k} ({role}) has a non-string content ({type(content).__name__})")
        if not content.strip():
            raise fail(f"message {k} ({role}) has an empty content")
        if role != "user" and IMAGE_MARKER in content:
            raise fail(f"'{IMAGE_MARKER}' marker in a {role} message (message {k}); images belong in user messages")
        turns.append(Turn(role, content))
    return _check_roles(turns, fail, user="user", assistant="assistant")


def _check_roles(turns: list[Turn], fail: Failure, user: str, assistant: str) -> tuple[Turn, ...]:
    """Role order that training can use: after any system turns a user turn opens the conversation,
    and there is at least one assistant turn (`user` and `assistant` are the file's own names, for messages)."""
    if not any(t.role == "assistant" for t in turns):
        # Training labels only assistant turns: such a sample would contribute no loss at all.
        raise fail(f"no {assistant} turn (nothing to learn from)")
    first = next(k for k, t in enumerate(turns) if t.role != "system")
    if turns[first].role == "assistant":
        # Chat templates either refuse this or render a prompt the model never sees at inference.
        raise fail(f"the conversation opens with a {assistant} turn (turn {first}); it must start with a {user} turn")
    return tuple(turns)


def _parse_image_field(image: Any, fail: Failure, key: str = "image") -> list[str]:
    if image is None:
        return []
    images = [image] if isinstance(image, str) else image
    if not isinstance(images, list) or not all(isinstance(p, str) and p for p in images):
        raise fail(f"'{key}' must be a path or a list of paths, got {image!r}")
    return images


def _resolve_image(
    rel: str,
    image_folder: str | os.PathLike | None,
    check_images: bool,
    fail: Failure,
    verified: set[Path] | None = None,
) -> Path:
    if image_folder is None:
        raise fail(f"has image {rel!r} but no image folder was given")
    try:
        path = find_image(rel, image_folder)
    except DataError as err:
        raise fail(str(err)) from None
    if check_images and (verified is None or path not in verified):
        problem = image_problem(path)
        if problem is not None:
            raise fail(f"image {rel!r} under image folder '{image_folder}' is unreadable: {problem}")
        if verified is not None:
            verified.add(path)
    return path


def image_problem(path: str | os.PathLike) -> str | None:
    """Why the image file cannot be used (None: it decodes).

    The pixels are decoded, not only `verify()`-ed: `verify()` reads the headers and chunk checksums,
    so a truncated JPEG (the commonest corruption in scraped data) or a PNG whose compressed pixel
    data is damaged passes it and fails later, inside a training step. JPEGs are decoded at reduced
    scale (`draft`), which still reads every byte of the entropy-coded data.
    """
    try:
        with Image.open(path) as img:
            if img.format == "JPEG":
                img.draft(img.mode, (max(1, img.width // 8), max(1, img.height // 8)))
            img.load()
    except Exception as err:  # PIL raises many types for corrupt files
        return str(err) or type(err).__name__
    return None


def find_image(rel: str | os.PathLike, image_folder: str | os.PathLike | None) -> Path:
    """The file an image path of a data file names: under `image_folder` (absolute paths, and any
    path when no folder is given, as written); raises `DataError` when there is no such file."""
    path = Path(rel) if image_folder is None else Path(image_folder) / rel
    if not path.is_file():
        # Messages show the folder as the user spelled it, so it can be matched against their command line.
        under = f" under image folder '{os.fspath(image_folder)}'" if image_folder is not None else ""
        raise DataError(f"image {os.fspath(rel)!r} not found{under}")
    return path
