"""Loading and up-front validation of LLaVA-format JSON/JSONL data."""

from __future__ import annotations

import copy
import logging

import pytest
from llava_fixtures import image_folder, turn, valid_samples, write_json, write_jsonl  # noqa: F401

from wings.data.llava import DataError, LlavaRecord, load_llava_records


def test_valid_json_loads_with_roles_and_images_in_order(tmp_path, image_folder):
    records = load_llava_records(write_json(tmp_path / "data.json", valid_samples()), image_folder)
    assert [r.id for r in records] == ["one", "text", "two"]
    assert all(isinstance(r, LlavaRecord) for r in records)
    one, text, two = records
    assert one.images == (image_folder / "red.png",)
    assert text.images == () and text.num_images == 0
    assert two.images == (image_folder / "green.png", image_folder / "sub" / "blue_tall.png")
    assert [m["role"] for m in two.messages()] == ["system", "user", "assistant", "user", "assistant"]
    assert two.messages()[1]["content"] == "Describe the picture <image> briefly."
    assert two.name == "data.json: sample 2 (id 'two')"
    assert two.num_tokens_estimate(image_seq_length=4) > 2 * 4


def test_jsonl_loads_same_records(tmp_path, image_folder):
    from_json = load_llava_records(write_json(tmp_path / "data.json", valid_samples()), image_folder)
    from_jsonl = load_llava_records(write_jsonl(tmp_path / "data.jsonl", valid_samples()), image_folder)
    assert [(r.id, r.turns, r.images) for r in from_json] == [(r.id, r.turns, r.images) for r in from_jsonl]


def _set(key, value):
    def mutate(sample):
        sample[key] = value

    return mutate


def _set_turn(k, speaker, value):
    def mutate(sample):
        sample["conversations"][k] = turn(speaker, value)

    return mutate


def _drop(key):
    def mutate(sample):
        del sample[key]

    return mutate


BAD_SAMPLES = {
    "missing conversations": (_drop("conversations"), "missing key 'conversations'"),
    "conversations not a list": (_set("conversations", "hi"), "'conversations' must be a list"),
    "empty conversations": (_set("conversations", []), "empty conversations"),
    "unknown role": (_set_turn(1, "bot", "A red square."), "turn 1 has unknown role 'bot'"),
    "empty value": (_set_turn(1, "gpt", "  "), "turn 1 (gpt) has an empty value"),
    "non-string value": (_set_turn(1, "gpt", 42), "turn 1 (gpt) has a non-string value"),
    "marker in gpt turn": (_set_turn(1, "gpt", "It is <image>"), "'<image>' marker in a gpt turn (turn 1)"),
    "marker in system turn": (
        lambda s: s["conversations"].insert(0, turn("system", "<image>")),
        "'<image>' marker in a system turn (turn 0)",
    ),
    "more markers than images": (
        _set_turn(0, "human", "<image>\n<image>\nWhat is this?"),
        "2 '<image>' marker(s) in the conversation but 1 image(s)",
    ),
    "fewer markers than images": (
        _set("image", ["red.png", "green.png"]),
        "1 '<image>' marker(s) in the conversation but 2 image(s)",
    ),
    "image without marker": (
        _set_turn(0, "human", "What is this?"),
        "0 '<image>' marker(s) in the conversation but 1 image(s)",
    ),
    "bad image field": (_set("image", 7), "'image' must be a path or a list of paths"),
    "no gpt turn": (lambda s: s["conversations"].pop(), "no gpt turn"),
}


@pytest.mark.parametrize("case", sorted(BAD_SAMPLES))
@pytest.mark.parametrize("fmt", ["json", "jsonl"])
def test_bad_sample_error_names_file_sample_and_problem(tmp_path, image_folder, case, fmt):
    mutate, problem = BAD_SAMPLES[case]
    samples = valid_samples()
    bad = copy.deepcopy(samples[0])
    bad["id"] = "bad"
    mutate(bad)
    samples.insert(1, bad)
    writer = write_json if fmt == "json" else write_jsonl
    path = writer(tmp_path / f"data.{fmt}", samples)
    with pytest.raises(DataError) as info:
        load_llava_records(path, image_folder)
    message = str(info.value)
    assert message.startswith(f"data.{fmt}: sample 1 (id 'bad'): "), message
    assert problem in message


def test_missing_image_names_path_and_folder(tmp_path, image_folder):
    samples = valid_samples()
    samples[2]["image"][1] = "sub/missing.jpg"
    with pytest.raises(DataError) as info:
        load_llava_records(write_json(tmp_path / "data.json", samples), str(image_folder) + "/")
    assert str(info.value) == (
        f"data.json: sample 2 (id 'two'): image 'sub/missing.jpg' not found under image folder '{image_folder}/'"
    )


def test_corrupt_image_is_reported_unless_checks_are_off(tmp_path, image_folder):
    (image_folder / "red.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    path = write_json(tmp_path / "data.json", valid_samples())
    with pytest.raises(DataError, match=r"data\.json: sample 0 \(id 'one'\): image 'red.png' .* is unreadable"):
        load_llava_records(path, image_folder)
    # check_images=False skips decoding (fast for big sets) but still reports missing files.
    assert len(load_llava_records(path, image_folder, check_images=False)) == 3


def test_image_sample_without_image_folder(tmp_path):
    with pytest.raises(DataError, match="sample 0 \\(id 'one'\\): has image 'red.png' but no image folder"):
        load_llava_records(write_json(tmp_path / "data.json", valid_samples()), None)


def test_sample_without_id_is_named_by_index(tmp_path, image_folder):
    samples = valid_samples()
    del samples[1]["id"]
    samples[1]["conversations"] = []
    with pytest.raises(DataError, match=r"^data\.json: sample 1: empty conversations$"):
        load_llava_records(write_json(tmp_path / "data.json", samples), image_folder)


def test_malformed_json_names_line(tmp_path, image_folder):
    path = tmp_path / "data.json"
    path.write_text('[\n {"id": "a",\n  "conversations": [}\n]')
    with pytest.raises(DataError, match=r"^data\.json: malformed JSON at line 3"):
        load_llava_records(path, image_folder)


def test_malformed_jsonl_line_names_line_and_sample(tmp_path, image_folder):
    path = write_jsonl(tmp_path / "data.jsonl", valid_samples())
    lines = path.read_text().splitlines()
    lines.insert(1, "")  # blank lines are allowed and do not count as samples
    lines.insert(2, '{"id": "broken", "conversations": [')
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"^data\.jsonl: sample 1: malformed JSON on line 3"):
        load_llava_records(path, image_folder)
    records = load_llava_records(path, image_folder, skip_bad_samples=True)
    assert [r.id for r in records] == ["one", "text", "two"]
    assert [r.index for r in records] == [0, 2, 3]


def test_not_a_list(tmp_path, image_folder):
    path = write_json(tmp_path / "data.json", {"conversations": []})
    with pytest.raises(DataError, match=r"^data\.json: expected a JSON list of samples, got dict"):
        load_llava_records(path, image_folder)


def test_skip_bad_samples_logs_each_and_the_total(tmp_path, image_folder, caplog):
    samples = valid_samples()
    samples[0]["image"] = "nowhere.png"
    samples[1]["conversations"][0]["from"] = "robot"
    path = write_json(tmp_path / "data.json", samples)
    with caplog.at_level(logging.WARNING, logger="wings.data.llava"):
        records = load_llava_records(path, image_folder, skip_bad_samples=True)
    assert [r.id for r in records] == ["two"]
    messages = [r.getMessage() for r in caplog.records]
    assert any("data.json: sample 0 (id 'one'): image 'nowhere.png' not found" in m for m in messages)
    assert any("data.json: sample 1 (id 'text'): turn 0 has unknown role 'robot'" in m for m in messages)
    assert any("skipped 2 of 3 samples" in m for m in messages)


def test_all_samples_bad_raises_even_when_skipping(tmp_path, image_folder):
    path = write_json(tmp_path / "data.json", [{"id": "x"}])
    with pytest.raises(DataError, match="no valid samples"):
        load_llava_records(path, image_folder, skip_bad_samples=True)
