"""Prepared data: the Arrow cache (reuse and invalidation), every bad-sample kind named and skippable,
the messages format, and items equal to tokenising the records directly."""

from __future__ import annotations

import json
import logging
import os
import re
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from llava_fixtures import (  # noqa: F401  (fixtures)
    image_folder,
    make_processor,
    processor,
    turn,
    valid_samples,
    write_json,
    write_jsonl,
)
from tiny import tiny_processor
from wings.data.collate import LlavaDataset, PreparedDataset
from wings.data.json_records import iter_json_texts, read_json_records
from wings.data.llava import DataError, load_llava_records
from wings.data.prepared import MANIFEST, label_spans, labels_from_spans, prepare_data


def _prepare(path, processor, folder, cache, max_length=256, **kwargs):
    return prepare_data(path, processor, max_length, folder, cache_dir=cache, **kwargs)


def test_items_equal_tokenising_the_records(tmp_path, image_folder, processor):
    path = write_json(tmp_path / "data.json", valid_samples())
    prepared = _prepare(path, processor, image_folder, tmp_path / "cache")
    assert prepared.built and prepared.errors == []
    ours = PreparedDataset(prepared.good(), processor)
    reference = LlavaDataset(load_llava_records(path, image_folder), processor, max_length=256)
    assert len(ours) == len(reference) == 3
    for k in range(3):
        a, b = ours[k], reference[k]
        assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], b["labels"])
        assert (a["pixel_values"] is None) == (b["pixel_values"] is None)
        if a["pixel_values"] is not None:
            assert torch.equal(a["pixel_values"], b["pixel_values"])
    assert ours.lengths.tolist() == [len(reference[k]["input_ids"]) for k in range(3)]
    assert ours.has_images.tolist() == [True, False, True]


def test_cache_is_reused_and_rebuilt_when_an_input_changes(tmp_path, image_folder, processor):
    path = write_json(tmp_path / "data.json", valid_samples())
    cache = tmp_path / "cache"
    first = _prepare(path, processor, image_folder, cache)
    again = _prepare(path, processor, image_folder, cache)
    assert first.built and not again.built and again.directory == first.directory
    assert again.rows["input_ids"][:] == first.rows["input_ids"][:]
    directories = {first.directory}

    def rebuilt(**kwargs):
        result = _prepare(path, kwargs.pop("processor", processor), image_folder, cache, **kwargs)
        assert result.built and result.directory not in directories
        directories.add(result.directory)
        return result

    assert max(rebuilt(max_length=40).rows["length"][:]) <= 40  # max_length
    other = make_processor()
    other.tokenizer.chat_template = other.tokenizer.chat_template.replace("<|im_start|>", "<|im_start|> ")
    other.chat_template = other.tokenizer.chat_template
    rebuilt(processor=other)  # chat template
    longer = tiny_processor(None, 32, 6, make_processor().tokenizer)
    assert rebuilt(processor=longer).rows[0]["length"] == first.rows[0]["length"] + 2  # image_seq_length
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    rebuilt()  # the file's modification time
    samples = valid_samples()
    samples[1]["conversations"][1]["value"] = "There are four shapes."
    write_json(path, samples)
    changed = rebuilt()  # the file's content
    assert "four" in processor.tokenizer.decode(changed.rows[1]["input_ids"])
    assert not _prepare(path, processor, image_folder, cache).built
    assert sorted(p.name for p in cache.iterdir() if not (p / MANIFEST).exists()) == []  # no half-written folders


def _jpeg_truncated(path):
    pixels = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=90)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _png_with_corrupt_pixels(path):
    """A PNG whose chunk checksums are right (so `verify()` passes) but whose compressed pixels are not."""
    pixels = np.random.default_rng(1).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    data = path.read_bytes()
    at = data.index(b"IDAT")
    size = struct.unpack(">I", data[at - 4 : at])[0]
    body = data[at + 4 : at + 4 + size]
    bad = body[:2] + bytes(b ^ 0x5A for b in body[2:])
    crc = struct.pack(">I", zlib.crc32(b"IDAT" + bad) & 0xFFFFFFFF)
    path.write_bytes(data[: at + 4] + bad + crc + data[at + 8 + size :])


def _image(name, ext="png"):
    return {"id": name, "image": f"{name}.{ext}", "conversations": [turn("human", "<image>\nWhat?"), turn("gpt", "A.")]}


BAD = {  # sample id -> (sample, what the message says)
    "missing": (_image("missing"), r"image 'missing\.png' not found under image folder"),
    "not_an_image": (_image("not_an_image"), r"image '.*not_an_image\.png' cannot be decoded"),
    "truncated_jpeg": (_image("truncated_jpeg", "jpg"),
                       r"image '.*truncated_jpeg\.jpg' cannot be decoded: image file is truncated"),
    "corrupt_png": (_image("corrupt_png"), r"image '.*corrupt_png\.png' cannot be decoded"),
    "mismatch": ({"id": "mismatch", "image": ["red.png", "green.png"],
                  "conversations": [turn("human", "<image>\nWhat?"), turn("gpt", "A.")]},
                 r"1 '<image>' marker\(s\) in the conversation but 2 image\(s\)"),
    "unknown_role": ({"id": "unknown_role", "conversations": [turn("bot", "Hi."), turn("gpt", "A.")]},
                     r"turn 0 has unknown role 'bot'"),
    "opens_with_gpt": ({"id": "opens_with_gpt", "conversations": [turn("gpt", "Hello."), turn("human", "Hi."),
                                                                  turn("gpt", "A.")]},
                       r"the conversation opens with a gpt turn \(turn 0\); it must start with a human turn"),
    "no_answer": ({"id": "no_answer", "conversations": [turn("human", "Hi.")]}, r"no gpt turn"),
    "too_long": ({"id": "too_long", "image": "red.png", "conversations": [
        turn("human", "What is in the image? " * 40 + "<image>"), turn("gpt", "A red square.")]},
        r"exceed max_length 256 and truncation would cut an image"),
}


@pytest.fixture
def bad_file(tmp_path, image_folder):
    (image_folder / "not_an_image.png").write_text("plain text")
    _jpeg_truncated(image_folder / "truncated_jpeg.jpg")
    _png_with_corrupt_pixels(image_folder / "corrupt_png.png")
    for name in ("truncated_jpeg.jpg", "corrupt_png.png"):  # what the old check let through
        with Image.open(image_folder / name) as img:
            img.verify()
    good = valid_samples()
    samples = [good[0], *(sample for sample, _ in BAD.values()), good[1]]
    path = write_jsonl(tmp_path / "data.jsonl", samples)
    with path.open("a") as f:
        f.write("{not json\n")
    return path


def test_every_bad_sample_is_named_with_file_and_sample(tmp_path, image_folder, processor, bad_file):
    prepared = _prepare(bad_file, processor, image_folder, tmp_path / "cache")
    errors = prepared.errors
    assert len(errors) == len(BAD) + 1
    for k, (name, (_, problem)) in enumerate(BAD.items(), start=1):
        assert errors[k - 1].startswith(f"data.jsonl: sample {k} (id '{name}'): "), errors[k - 1]
        assert re.search(problem, errors[k - 1]), (name, errors[k - 1])
    assert errors[-1].startswith(f"data.jsonl: sample {len(BAD) + 2}: malformed JSON on line {len(BAD) + 3}")
    with pytest.raises(DataError) as raised:
        prepared.good()
    message = str(raised.value)
    assert message.startswith(errors[0]) and all(e in message for e in errors)
    # The verdicts are cached with the data: a second launch reports the same without decoding again.
    again = _prepare(bad_file, processor, image_folder, tmp_path / "cache")
    assert not again.built and again.errors == errors


def test_skip_bad_samples_skips_each_kind(tmp_path, image_folder, processor, bad_file, caplog):
    prepared = _prepare(bad_file, processor, image_folder, tmp_path / "cache")
    with caplog.at_level(logging.WARNING):
        good = prepared.good(skip_bad_samples=True)
    assert good["id"][:] == ["one", "text"]
    skipped = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipping bad sample")]
    assert len(skipped) == len(BAD) + 1
    assert any(f"of {len(BAD) + 3} samples" in r.getMessage() for r in caplog.records)


def test_messages_format_gives_the_same_tokens(tmp_path, image_folder, processor):
    def as_messages(sample):
        roles = {"human": "user", "gpt": "assistant", "system": "system"}
        out = {"messages": [{"role": roles[t["from"]], "content": t["value"]} for t in sample["conversations"]]}
        if "image" in sample:
            out["images"] = [sample["image"]] if isinstance(sample["image"], str) else sample["image"]
        return out

    llava = _prepare(write_json(tmp_path / "llava.json", valid_samples()), processor, image_folder, tmp_path / "c")
    messages = [as_messages(s) for s in valid_samples()]
    # Content parts as HF chat data sets write them: an image part stands for a marker.
    messages[0]["messages"][0]["content"] = [{"type": "image"}, {"type": "text", "text": "What is in the image?"}]
    chat = _prepare(write_jsonl(tmp_path / "chat.jsonl", messages), processor, image_folder, tmp_path / "c")
    assert chat.errors == []
    assert chat.rows["input_ids"][:] == llava.rows["input_ids"][:] and chat.rows["images"][:] == llava.rows["images"][:]
    bad = [{"messages": [{"role": "assistant", "content": "Hi."}, {"role": "user", "content": "Q?"},
                         {"role": "assistant", "content": "A."}]}]
    errors = _prepare(write_jsonl(tmp_path / "bad.jsonl", bad), processor, image_folder, tmp_path / "c").errors
    assert errors == ["bad.jsonl: sample 0: the conversation opens with a assistant turn (turn 0); it must start "
                      "with a user turn"]


def test_label_spans_round_trip():
    ids = np.array([7, 8, 9, 10, 11, 12])
    labels = [-100, 8, 9, -100, -100, 12]
    spans = label_spans(labels)
    assert spans == [1, 3, 5, 6]
    assert labels_from_spans(ids, spans).tolist() == labels


def test_streamed_json_texts_match_the_reader(tmp_path):
    samples = [{"a": [1, {"b": "x, y]"}]}, "text", 3, {"c": None}]
    for path in (write_json(tmp_path / "d.json", samples), write_jsonl(tmp_path / "d.jsonl", samples)):
        streamed = list(iter_json_texts(path))
        parsed = read_json_records(path)
        assert [json.loads(r.value) for r in streamed] == [r.value for r in parsed]
        assert [(r.index, r.line) for r in streamed] == [(r.index, r.line) for r in parsed]
    (tmp_path / "bad.json").write_text('[{"a": 1},\n {"b": 2]')
    *_, last = iter_json_texts(tmp_path / "bad.json")
    assert last.index is None and last.problem == read_json_records(tmp_path / "bad.json")[0].problem
