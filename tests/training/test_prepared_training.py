"""Training on prepared data: rank-0 preparation under 2 processes, cache reuse by a second launch and
--resume, mixtures and modality grouping from the command line."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

from wings.cli import main

REPO = Path(__file__).resolve().parents[2]
FAST = ["optim.batch_size=4", "optim.bf16=false", "optim.save_steps=2", "optim.logging_steps=1",
        "optim.dataloader_num_workers=0", "model.learner_rank=4"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_main_process_prepares_and_the_other_rank_maps_the_cache(dataset, tmp_path):
    data, images = dataset
    cache = tmp_path / "cache"
    worker = Path(__file__).with_name("prepare_worker.py")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(_free_port()), str(worker), str(data), str(images), str(tmp_path)]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "WINGS_DATA_CACHE": str(cache)}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["world"] == 2
    assert any("preparing into" in line for line in ranks[0]["log"])
    assert not any("preparing" in line for line in ranks[1]["log"])  # it waited, then mapped rank 0's cache
    assert any("using prepared data" in line for line in ranks[1]["log"])
    assert ranks[0]["lengths"] == ranks[1]["lengths"] and len(ranks[0]["lengths"]) == 16
    assert len(list(cache.iterdir())) == 1


def _train(tiny_hub, out, *extra, data=None, images=None, steps="2"):
    data_args = [] if data is None else [arg for d in data for arg in ("--data", str(d))]
    return main(["train", "wings_stage1", "--llm", str(tiny_hub / "llm"), "--vision", str(tiny_hub / "vision"),
                 *data_args, "--image-folder", str(images), "--output", str(out), "--max-steps", steps, *FAST, *extra])


def test_second_launch_and_resume_reuse_the_cache(tiny_hub, dataset, tmp_path, caplog, monkeypatch):
    data, images = dataset
    monkeypatch.setenv("WINGS_DATA_CACHE", str(tmp_path / "cache"))
    caplog.set_level("INFO", logger="wings.data.prepared")
    assert _train(tiny_hub, tmp_path / "a", data=[data], images=images) == 0
    assert sum("preparing into" in r.getMessage() for r in caplog.records) == 1
    caplog.clear()
    assert _train(tiny_hub, tmp_path / "a", "--resume", data=[data], images=images, steps="3") == 0
    assert not any("preparing into" in r.getMessage() for r in caplog.records)
    assert any("using prepared data" in r.getMessage() for r in caplog.records)


def test_mixture_and_modality_grouping_from_the_command_line(tiny_hub, dataset, tmp_path, capsys):
    data, images = dataset
    text = tmp_path / "text.jsonl"
    text.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"say {k}"},
                                                     {"role": "assistant", "content": f"{k}"}]}) + "\n"
                            for k in range(6)))
    assert _train(tiny_hub, tmp_path / "mix", "data.group_by_modality_length=true", data=[data, f"{text}:0.25"],
                  images=images) == 0
    assert "on 22 samples" in capsys.readouterr().out  # 16 + 6 samples, a quarter of them from text.jsonl
    # The recipe's data.sources is the same mixture when --data is not given.
    assert _train(tiny_hub, tmp_path / "recipe", f"data.sources=[{data}, '{text}:0.25']", images=images) == 0
    assert "on 22 samples" in capsys.readouterr().out


def test_data_prepare_fills_the_cache_train_reads_and_stats_counts(tiny_hub, dataset, tmp_path, caplog, capsys,
                                                                   monkeypatch):
    data, images = dataset
    monkeypatch.setenv("WINGS_DATA_CACHE", str(tmp_path / "cache"))
    model = ["--llm", str(tiny_hub / "llm"), "--vision", str(tiny_hub / "vision"), "--image-folder", str(images)]
    assert main(["data", "prepare", "wings_stage1", "--data", str(data), *model]) == 0
    assert "data.json: prepared, 16 good and 0 bad samples" in capsys.readouterr().out
    caplog.set_level("INFO", logger="wings.data.prepared")
    assert _train(tiny_hub, tmp_path / "out", data=[data], images=images, steps="1") == 0
    assert not any("preparing into" in r.getMessage() for r in caplog.records)  # the same key as `wings train`

    stats_dir = tmp_path / "stats"
    assert main(["data", "stats", "wings_stage1", "--data", str(data), *model, "--output", str(stats_dir)]) == 0
    assert "16 samples (0 bad), 12 with images (75%), 4 text-only, 12 images" in capsys.readouterr().out
    [stats] = json.loads((stats_dir / "stats.json").read_text())
    assert (stats["samples"], stats["image_samples"], stats["text_samples"], stats["images"]) == (16, 12, 4, 12)
    assert stats["length"]["max"] > stats["length"]["min"] >= 4 and 0 < stats["label_tokens"] < stats["tokens"]
    assert (stats_dir / "data_lengths.png").stat().st_size > 0


def test_packed_training_runs(tiny_hub, dataset, tmp_path, monkeypatch, caplog):
    data, images = dataset
    monkeypatch.setenv("WINGS_DATA_CACHE", str(tmp_path / "cache"))
    caplog.set_level("INFO", logger="wings.training.run")
    assert _train(tiny_hub, tmp_path / "packed", "data.packing=true", "data.max_length=256", "model.learner_mode=routed",
                  "train.textual_learners=1e-4", "train.router=1e-4", data=[data], images=images) == 0
    [message] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("packing:")]
    samples, rows = (int(n) for n in re.findall(r"(\d+) (?:samples|rows)", message))
    assert samples == 16 and rows < samples  # several samples per row
    assert (tmp_path / "packed" / "model.safetensors").is_file()
