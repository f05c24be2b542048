"""Every user mistake found by a probe of the `wings` command ends as one `error:` line naming the thing to
fix, with exit status 1 and before any model loads; and no finished work is lost or overwritten.

The table runs each case through the CLI's `main` in this process (fast); a few run the installed
command in a subprocess to show the real exit status and the single stderr line.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tiny import make_tiny_hub, save_hub_wings
from wings import WingsForConditionalGeneration, WingsProcessor
from wings.cli import main
from wings.evaluation import forgetting


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    """A tiny hub, a saved WINGS model (no training), damaged copies of it, data files of every kind."""
    root = tmp_path_factory.mktemp("mistakes")
    save_hub_wings(make_tiny_hub(root / "hub"), root / "wings")
    weights = (root / "wings" / "model.safetensors").read_bytes()
    for name, change in {
        "empty_weights": lambda d: (d / "model.safetensors").write_bytes(b""),
        "truncated_weights": lambda d: (d / "model.safetensors").write_bytes(weights[: len(weights) // 2]),
        "bad_config": lambda d: (d / "config.json").write_text("{not json"),
        "no_config": lambda d: (d / "config.json").unlink(),  # what an interrupted save can leave
    }.items():
        shutil.copytree(root / "wings", root / name)
        change(root / name)
    # A finished run: the final model plus a checkpoint.
    shutil.copytree(root / "wings", root / "finished")
    (root / "finished" / "checkpoint-2").mkdir()
    (root / "checkpoints_only" / "checkpoint-1").mkdir(parents=True)
    (root / "a_file").write_text("not a directory")

    (root / "imgs").mkdir()
    image_rows, text_rows, pool, iit = [], [], [], []
    for i in range(4):
        Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)).save(root / "imgs" / f"{i}.png")
        image_rows.append({"id": f"v{i}", "image": f"{i}.png", "conversations": [
            {"from": "human", "value": "<image>\nwhat colour is the image?"}, {"from": "gpt", "value": "red"}]})
        text_rows.append({"id": f"t{i}", "conversations": [
            {"from": "human", "value": "hello how are you?"}, {"from": "gpt", "value": "fine"}]})
        pool.append({"id": f"p{i}", "question": f"hello {i}?", "choices": ["fine", "bad"], "answer": 0})
        iit.append({"id": f"V-{i}", "setting": "V", "turns": [{
            "kind": "V", "item_id": f"q{i}", "question": "what colour?", "choices": ["red", "blue"], "answer": 0,
            "image": f"{i}.png", "subject": "colour"}]})
    (root / "images.json").write_text(json.dumps(image_rows))
    (root / "text.json").write_text(json.dumps(text_rows))
    (root / "pool.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pool))
    (root / "iit.jsonl").write_text("".join(json.dumps(r) + "\n" for r in iit))
    (root / "empty.jsonl").write_text("")
    (root / "not.parquet").write_text("this is not parquet")
    return root


TRAIN = ["train", "wings_stage1", "--data", "{ws}/images.json", "--image-folder", "{ws}/imgs"]
STAGE1 = [*TRAIN, "--llm", "{ws}/hub/llm", "--vision", "{ws}/hub/vision", "--output", "{ws}/out"]
STAGE2 = ["train", "wings_stage2", "--data", "{ws}/images.json", "--image-folder", "{ws}/imgs", "--output",
          "{ws}/out", "--init"]
IIT_EVAL = ["iit", "eval", "--model", "{ws}/wings", "--data", "{ws}/iit.jsonl", "--image-folder", "{ws}/imgs"]
LAWS = ["laws", "--data", "{ws}/images.json", "--image-folder", "{ws}/imgs", "--output", "{ws}/laws_out"]
EVAL = ["eval", "--output", "{ws}/eval_out", "--image-folder", "{ws}/imgs"]

# (case id, argv, words the one error line must hold)
CASES = [
    # model directories, checked before anything is allocated
    ("init_missing_path", [*STAGE2, "{ws}/no/such/run"], ["--init", "no/such/run", "no such directory"]),
    ("init_missing_hub_id", [*STAGE2, "nobody/no-such-model"], ["--init", "nobody/no-such-model", "cache"]),
    ("llm_missing_relative_path", [*TRAIN, "--llm", "./no-llm", "--vision", "{ws}/hub/vision", "--output",
                                   "{ws}/out"], ["--llm", "./no-llm", "no such directory"]),
    ("llm_is_a_vision_encoder", [*TRAIN, "--llm", "{ws}/hub/vision", "--vision", "{ws}/hub/vision", "--output",
                                 "{ws}/out"], ["--llm", "siglip_vision_model", "causal LM"]),
    ("vision_is_an_llm", [*TRAIN, "--llm", "{ws}/hub/llm", "--vision", "{ws}/hub/llm", "--output", "{ws}/out"],
     ["--vision", "qwen2", "vision encoder"]),
    ("init_is_a_plain_llm", [*STAGE2, "{ws}/hub/llm"], ["--init", "qwen2", "WINGS model"]),
    ("init_empty_weights", [*STAGE2, "{ws}/empty_weights"], ["model.safetensors", "empty or truncated"]),
    ("init_truncated_weights", [*STAGE2, "{ws}/truncated_weights"], ["model.safetensors", "truncated"]),
    ("init_invalid_config", [*STAGE2, "{ws}/bad_config"], ["config.json", "not a valid JSON"]),
    ("init_interrupted_save", [*STAGE2, "{ws}/no_config"], ["--init", "no config.json"]),
    # output directories
    ("output_is_a_file", [*TRAIN, "--llm", "{ws}/hub/llm", "--vision", "{ws}/hub/vision", "--output",
                          "{ws}/a_file"], ["--output", "a_file", "is a file"]),
    ("output_holds_a_finished_run", [*TRAIN, "--llm", "{ws}/hub/llm", "--vision", "{ws}/hub/vision", "--output",
                                     "{ws}/finished"], ["finished", "previous run", "--resume", "--overwrite"]),
    ("output_holds_checkpoints", [*TRAIN, "--llm", "{ws}/hub/llm", "--vision", "{ws}/hub/vision", "--output",
                                  "{ws}/checkpoints_only"], ["checkpoint-1", "--resume", "--overwrite"]),
    ("resume_and_overwrite", [*STAGE1, "--resume", "--overwrite"], ["--resume", "--overwrite"]),
    ("max_steps_0", [*STAGE1, "--max-steps", "0"], ["--max-steps", "0"]),
    ("max_steps_negative", [*STAGE1, "--max-steps", "-5"], ["--max-steps", "-5"]),
    # recipe values, typed and range-checked when the recipe is built
    ("batch_size_abc", [*STAGE1, "optim.batch_size=abc"], ["optim.batch_size", "integer", "abc"]),
    ("batch_size_0", [*STAGE1, "optim.batch_size=0"], ["optim.batch_size", ">= 1"]),
    ("batch_size_negative", [*STAGE1, "optim.batch_size=-3"], ["optim.batch_size", "-3"]),
    ("max_length_long", [*STAGE1, "data.max_length=long"], ["data.max_length", "long"]),
    ("lr_scheduler_nope", [*STAGE1, "optim.lr_scheduler=nope"], ["optim.lr_scheduler", "nope", "cosine"]),
    ("bf16_maybe", [*STAGE1, "optim.bf16=maybe"], ["optim.bf16", "true or false", "maybe"]),
    ("model_key_typo", [*STAGE1, "model.learner_rnak=8"], ["learner_rnak", "model", "learner_rank"]),
    ("learning_rate_abc", [*STAGE1, "train.projector=abc"], ["train.projector", "abc"]),
    # evaluation arguments, checked before the first model loads
    ("iit_eval_batch_size_0", [*IIT_EVAL, "--batch-size", "0"], ["--batch-size", "0"]),
    ("iit_eval_confidence", [*IIT_EVAL, "--confidence", "95"], ["--confidence", "95"]),
    ("iit_eval_plain_llm_with_images", ["iit", "eval", "--model", "{ws}/hub/llm", "--data", "{ws}/iit.jsonl"],
     ["--model", "qwen2", "multimodal", "images"]),
    ("eval_plain_llm_with_images", [*EVAL, "--model", "{ws}/hub/llm", "--vqa", "{ws}/images.json"],
     ["--model", "qwen2", "multimodal"]),
    ("eval_vqa_text_only", [*EVAL, "--model", "{ws}/wings", "--vqa", "{ws}/text.json"],
     ["--vqa", "text.json", "no sample has an image"]),
    ("eval_second_model_missing", [*EVAL, "--model", "{ws}/wings", "{ws}/no/such/model", "--vqa",
                                   "{ws}/images.json"], ["--model", "no/such/model"]),
    ("eval_missing_data", [*EVAL, "--model", "{ws}/wings", "--text-pool", "{ws}/no-pool.jsonl"], ["no-pool.jsonl"]),
    ("eval_base_llm_is_wings", [*EVAL, "--model", "{ws}/wings", "--text-pool", "{ws}/pool.jsonl", "--base-llm",
                                "{ws}/wings"], ["--base-llm", "wings", "causal LM"]),
    ("eval_output_is_a_file", ["eval", "--output", "{ws}/a_file", "--model", "{ws}/wings", "--text-pool",
                               "{ws}/pool.jsonl"], ["--output", "a_file"]),
    ("laws_plain_llm", [*LAWS, "--model", "{ws}/hub/llm"], ["--model", "qwen2", "multimodal"]),
    ("laws_text_only_data", ["laws", "--model", "{ws}/wings", "--data", "{ws}/text.json", "--output",
                             "{ws}/laws_out"], ["--data", "text.json", "LAWS needs image samples"]),
    ("laws_limit_0", [*LAWS, "--model", "{ws}/wings", "--limit", "0"], ["--limit", "0"]),
    ("laws_compare_missing", [*LAWS, "--compare", "{ws}/wings", "{ws}/gone/model"], ["--compare", "gone/model"]),
    ("pool_convert_empty_jsonl", ["pool", "convert", "mmlu", "{ws}/empty.jsonl", "--output", "{ws}/p.jsonl"],
     ["empty.jsonl", "empty"]),
    ("pool_convert_not_parquet", ["pool", "convert", "mmlu", "{ws}/not.parquet", "--output", "{ws}/p.jsonl"],
     ["not.parquet", "parquet"]),
    ("iit_build_per_setting_0", ["iit", "build", "--text-pool", "{ws}/pool.jsonl", "--output", "{ws}/i.jsonl",
                                 "--per-setting", "0"], ["--per-setting", "0"]),
    ("iit_build_bad_setting", ["iit", "build", "--text-pool", "{ws}/pool.jsonl", "--output", "{ws}/i.jsonl",
                               "--settings", "T,X"], ["T,X", "turn 2"]),
    ("iit_build_visual_setting_without_pool", ["iit", "build", "--text-pool", "{ws}/pool.jsonl", "--output",
                                               "{ws}/i.jsonl", "--settings", "T,V"], ["T,V", "visual"]),
    ("iit_build_empty_pool", ["iit", "build", "--text-pool", "{ws}/empty.jsonl", "--output", "{ws}/i.jsonl"],
     ["empty.jsonl", "no items"]),
]
if not torch.cuda.is_available():
    CASES.append(("iit_eval_cuda_without_gpu", [*IIT_EVAL, "--device", "cuda:0"], ["--device", "cuda:0", "GPU"]))
    CASES.append(("eval_cuda_without_gpu", [*EVAL, "--model", "{ws}/wings", "--vqa", "{ws}/images.json",
                                            "--device", "cuda"], ["--device", "cuda"]))


def fill(argv: list[str], ws: Path) -> list[str]:
    return [word.replace("{ws}", str(ws)) for word in argv]


@pytest.mark.parametrize("argv, words", [pytest.param(argv, words, id=name) for name, argv, words in CASES])
def test_each_mistake_is_one_error_line_before_any_model_loads(ws, argv, words, capsys, monkeypatch):
    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded before the mistake was found")

    for target in ("from_pretrained", "from_llm_and_vision"):
        monkeypatch.setattr(WingsForConditionalGeneration, target, no_loading)
    monkeypatch.setattr("wings.evaluation.loading.load_model_and_processor", no_loading)
    monkeypatch.setattr(forgetting, "load_model_and_processor", no_loading)
    before = sorted(p.name for p in ws.iterdir())
    code = main(fill(argv, ws))
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    assert all(word in lines[0] for word in fill(words, ws)), lines[0]
    assert sorted(p.name for p in ws.iterdir()) == before  # nothing was written


def test_a_finished_run_is_left_untouched(ws, capsys):
    stamp = {p.name: p.stat().st_mtime_ns for p in (ws / "finished").iterdir()}
    argv = fill([*TRAIN, "--llm", "{ws}/hub/llm", "--vision", "{ws}/hub/vision", "--output", "{ws}/finished"], ws)
    assert main(argv) == 1
    assert {p.name: p.stat().st_mtime_ns for p in (ws / "finished").iterdir()} == stamp


def test_eval_writes_each_model_as_it_finishes(ws, tmp_path, monkeypatch):
    """`wings eval --model A B`: B fails after A is scored; A's results are on disk."""
    def evaluate_model(model_dir, name, data, output, device=None):
        if name == "second":
            raise RuntimeError("B fails half way")
        return forgetting.ModelEvaluation(name=name, text_acc=0.75)

    monkeypatch.setattr(forgetting, "evaluate_model", evaluate_model)
    shutil.copytree(ws / "wings", tmp_path / "first")
    shutil.copytree(ws / "wings", tmp_path / "second")
    with pytest.raises(RuntimeError, match="half way"):
        main(["eval", "--model", str(tmp_path / "first"), str(tmp_path / "second"), "--text-pool",
              str(ws / "pool.jsonl"), "--output", str(tmp_path / "report")])
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert [m["name"] for m in metrics["models"]] == ["first"] and metrics["models"][0]["text_acc"] == 0.75
    assert metrics["pending_models"] == ["second"]
    assert "first" in (tmp_path / "report" / "report.md").read_text()


def test_chat_reports_a_bad_image_and_goes_on(ws):
    from io import StringIO

    from wings.chat import chat_loop

    out = StringIO()
    history = chat_loop(str(ws / "wings"), max_new_tokens=2, out=out,
                        lines=["/image " + str(ws / "missing.png"), "/image", "/image " + str(ws / "a_file"),
                               "hello", "/quit"])
    shown = out.getvalue()
    assert "error: cannot read image" in shown and "missing.png" in shown and "a_file" in shown
    assert "/image needs a path" in shown
    assert [m["role"] for m in history] == ["user", "assistant"]  # the conversation went on


def test_chat_with_a_plain_llm_talks_text_and_refuses_images(ws):
    from io import StringIO

    from wings.chat import chat_loop

    out = StringIO()
    history = chat_loop(str(ws / "hub" / "llm"), max_new_tokens=2, out=out,
                        lines=["/image " + str(ws / "imgs" / "0.png"), "hello"])
    assert "reads no images" in out.getvalue()
    assert [m["role"] for m in history] == ["user", "assistant"] and history[0]["content"] == "hello"


@pytest.mark.parametrize("argv, words", [
    pytest.param([*STAGE2, "{ws}/hub/llm"], ["--init", "WINGS model"], id="init_plain_llm"),
    pytest.param([*STAGE1, "optim.batch_size=abc"], ["optim.batch_size"], id="recipe_value",
                 marks=pytest.mark.slow),  # a second start of the command (~20 s here) shows nothing new
])
def test_the_installed_command_exits_1_with_one_stderr_line(ws, argv, words):
    result = subprocess.run([sys.executable, "-m", "wings.cli", *fill(argv, ws)], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert all(word in lines[0] for word in words)


FAST = ["optim.batch_size=2", "optim.save_steps=1", "optim.logging_steps=1", "model.learner_rank=4"]


@pytest.mark.slow
def test_overwrite_replaces_a_run_and_an_interrupted_final_save_leaves_no_half_model(ws, tmp_path, monkeypatch,
                                                                                    capsys):
    output = tmp_path / "run"
    shutil.copytree(ws / "finished", output)
    (output / "checkpoint-7").mkdir()
    argv = fill([*TRAIN, "--llm", "{ws}/hub/llm", "--vision", "{ws}/hub/vision", "--output", str(output),
                 "--max-steps", "1", *FAST], ws)
    old_weights = (output / "model.safetensors").read_bytes()
    assert main([*argv, "--overwrite"]) == 0
    assert not (output / "checkpoint-2").exists() and not (output / "checkpoint-7").exists()
    assert (output / "checkpoint-1").is_dir() and (output / "model.safetensors").read_bytes() != old_weights
    WingsForConditionalGeneration.from_pretrained(output)

    # A kill while the final model is written: the processor never gets saved.
    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    fresh = tmp_path / "fresh"
    monkeypatch.setattr(WingsProcessor, "save_pretrained", killed)
    argv = fill([*TRAIN, "--llm", "{ws}/hub/llm", "--vision", "{ws}/hub/vision", "--output", str(fresh),
                 "--max-steps", "1", *FAST], ws)
    assert main(argv) == 130
    monkeypatch.undo()
    assert not (fresh / "config.json").exists()  # never weights without their processor
    capsys.readouterr()
    assert main(fill([*STAGE2, str(fresh)], ws)) == 1
    assert "no config.json" in capsys.readouterr().err
    # ... and the same kill over a previous run (--overwrite) keeps the previous, complete, model.
    weights = (output / "model.safetensors").read_bytes()
    argv = fill([*TRAIN, "--llm", "{ws}/hub/llm", "--vision", "{ws}/hub/vision", "--output", str(output),
                 "--max-steps", "1", *FAST, "optim.seed=7"], ws)
    monkeypatch.setattr(WingsProcessor, "save_pretrained", killed)
    assert main([*argv, "--overwrite"]) == 130
    monkeypatch.undo()
    assert (output / "model.safetensors").read_bytes() == weights and (output / "config.json").is_file()
    WingsProcessor.from_pretrained(output)
    assert main(argv) == 1  # and it is protected again
