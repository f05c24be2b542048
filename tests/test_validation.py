"""`wings.validation`: what the command line checks before anything loads (the CLI cases are in
test_user_errors.py; these pin the helpers' own rules)."""

from __future__ import annotations

import json
import struct

import pytest

from wings.errors import ModelPathError, OutputExistsError, UsageError
from wings.validation import (
    check_device,
    check_files,
    check_model,
    check_output_dir,
    check_positive,
    check_weights,
    looks_like_path,
    run_contents,
)


@pytest.mark.parametrize("name, is_path", [
    ("Qwen/Qwen2.5-0.5B-Instruct", False), ("gpt2", False), ("./llm", True), ("../runs/s1", True),
    ("/abs/llm", True), ("~/models/llm", True), ("runs/stage1/final", True), ("runs/", True),
])
def test_looks_like_path(name, is_path):
    assert looks_like_path(name) is is_path


def safetensors_file(path, tensors: dict[str, int], cut: int = 0):
    """A safetensors file of float32 tensors with the given element counts, `cut` bytes short."""
    header, offset = {}, 0
    for name, count in tensors.items():
        header[name] = {"dtype": "F32", "shape": [count], "data_offsets": [offset, offset + 4 * count]}
        offset += 4 * count
    blob = json.dumps(header).encode()
    data = struct.pack("<Q", len(blob)) + blob + bytes(offset)
    path.write_bytes(data[: len(data) - cut])


def model_dir(folder, model_type="qwen2", companion="tokenizer_config.json"):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": model_type}))
    (folder / companion).write_text("{}")
    safetensors_file(folder / "model.safetensors", {"a": 3, "b": 5})
    return folder


def test_check_model_reads_kind_weights_and_companions(tmp_path):
    llm = model_dir(tmp_path / "llm")
    assert check_model(llm, "--llm", "llm") == "qwen2"
    assert check_model(llm, "--model", "evaluable") == "qwen2"
    with pytest.raises(ModelPathError, match=r"--init .* 'qwen2' model, but --init takes a WINGS model \(.*\): why"):
        check_model(llm, "--init", "wings", why="why")
    vision = model_dir(tmp_path / "vision", "siglip_vision_model", "preprocessor_config.json")
    assert check_model(vision, "--vision", "vision") == "siglip_vision_model"
    no_tokenizer = model_dir(tmp_path / "bare", companion="other.json")
    with pytest.raises(ModelPathError, match="tokenizer_config.json"):
        check_model(no_tokenizer, "--llm", "llm")
    with pytest.raises(ValueError, match="unknown model kind"):
        check_model(llm, "--x", "anything")


def test_check_weights_finds_truncated_and_missing_shards(tmp_path):
    folder = model_dir(tmp_path / "m")
    check_weights(folder, "--m")
    safetensors_file(folder / "model.safetensors", {"a": 3, "b": 5}, cut=4)  # the data is one float short
    with pytest.raises(ModelPathError, match="truncated weights file"):
        check_weights(folder, "--m")
    (folder / "model.safetensors").unlink()
    with pytest.raises(ModelPathError, match="no weights"):
        check_weights(folder, "--m")
    safetensors_file(folder / "model-1.safetensors", {"a": 3})
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"a": "model-1.safetensors", "b": "model-2.safetensors"}}))
    with pytest.raises(ModelPathError, match=r"\['model-2.safetensors'\]"):
        check_weights(folder, "--m")


def test_check_model_hub_ids_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelPathError, match="not a model in the Hugging Face cache"):
        check_model("nobody/nothing", "--llm", "llm")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ModelPathError, match="not a directory"):
        check_model("afile", "--llm", "llm")


def test_check_output_dir(tmp_path):
    check_output_dir(tmp_path / "new")
    check_output_dir(tmp_path)  # empty: nothing to lose
    (tmp_path / "notes.txt").write_text("mine")
    check_output_dir(tmp_path)
    (tmp_path / "checkpoint-4").mkdir()
    (tmp_path / "config.json").write_text("{}")
    assert run_contents(tmp_path) == ["config.json", "checkpoint-4"]
    with pytest.raises(OutputExistsError, match="config.json, checkpoint-4.*--resume.*--overwrite"):
        check_output_dir(tmp_path)
    check_output_dir(tmp_path, resume=True)
    check_output_dir(tmp_path, overwrite=True)
    (tmp_path / "checkpoint-4").rmdir()
    with pytest.raises(OutputExistsError, match="no checkpoint to continue from.*--overwrite"):
        check_output_dir(tmp_path, resume=True)  # it would silently retrain the final model
    (tmp_path / "checkpoint-4").mkdir()
    with pytest.raises(UsageError, match="one of them"):
        check_output_dir(tmp_path, resume=True, overwrite=True)
    with pytest.raises(UsageError, match="is a file"):
        check_output_dir(tmp_path / "notes.txt")


def test_check_device_positive_and_files(tmp_path):
    check_device(None)
    check_device("cpu")
    with pytest.raises(UsageError, match="--device 'gpu0': not a device"):
        check_device("gpu0")
    check_positive(batch_size=1, limit=None)
    with pytest.raises(UsageError, match="--max-new-tokens must be at least 1, got 0"):
        check_positive(max_new_tokens=0)
    check_files(data=str(tmp_path), pool=None)
    with pytest.raises(UsageError, match="--text-pool '.*nope.jsonl': no such file"):
        check_files(text_pool=str(tmp_path / "nope.jsonl"))
