"""Data at the paper's size: preparation, launch to the first optimizer step, memory, loader throughput.

    .venv/bin/python benchmarks/data.py --samples 665000          # the LLaVA-1.5 mixture's size
    .venv/bin/python benchmarks/data.py --samples 100000 --output benchmarks/results/data_100k.json

Generates a file shaped like LLaVA-665k (3/4 of the samples with an image, 1-5 turns, 5-60 words a
turn; 16 tiny generated images shared by path) and a tiny model (Qwen2 LLM, SigLIP tower, a tokenizer
trained on the benchmark's words), then measures, each in a fresh process:

- `first_launch_s`: `wings train ... --max-steps 1` with an empty data cache, from launch to the end
  of step 1 (it prepares the data, builds the model, takes one optimizer step and saves the tiny
  model); `prepare_samples_per_s` is the preparation's own rate (from its log line);
- `second_launch_s`: the same command again (the cache is reused), into a new output folder;
- `peak_rss_gb`: the largest resident set of any process of the first launch (data workers included);
- `loader_samples_per_s`: `PreparedDataset` + collator through a `DataLoader` with 0 and 2 workers.

Targets on the 2-core development machine: 665k samples prepared in <= 5 min, second launch <= 30 s,
peak RSS <= 3 GB (and at 100k: first launch <= 2 min, second <= 45 s). A benchmark, not a test: the
numbers depend on the machine and on what else runs on it (the load average is recorded).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
N_IMAGES = 16
WORDS = ("the a an of to in on at with by for from is are was were be this that these those it its what "
         "which who where when why how image picture photo man woman child dog cat car bus train street "
         "table chair window door red green blue yellow white black small large left right top bottom "
         "front back standing sitting holding looking wearing playing walking riding eating next near "
         "behind two three several many people person group tree sky water road building sign shirt hat "
         "there can you describe please answer question briefly detail scene object color shape number").split()


def generate(path: Path, images: Path, samples: int, seed: int = 0) -> None:
    """A LLaVA-665k-shaped JSON list: 3/4 with an image, 1-5 turns of 5-60 words each."""
    import numpy as np
    from PIL import Image

    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for k in range(N_IMAGES):
        colour = tuple(int(c) for c in rng.integers(0, 255, 3))
        Image.new("RGB", (48, 32), colour).save(images / f"img{k}.png")
    words = np.array(WORDS)

    def text() -> str:
        return " ".join(words[rng.integers(0, len(words), rng.integers(5, 61))])

    with path.open("w") as f:
        f.write("[")
        for i in range(samples):
            has_image = rng.random() < 0.75
            turns = []
            for t in range(rng.integers(1, 6)):
                question = ("<image>\n" if has_image and t == 0 else "") + text()
                turns += [{"from": "human", "value": question}, {"from": "gpt", "value": text()}]
            sample = {"id": str(i), "conversations": turns}
            if has_image:
                sample["image"] = f"img{rng.integers(0, N_IMAGES)}.png"
            f.write(("," if i else "") + json.dumps(sample))
        f.write("]")


def make_tiny_hub(root: Path) -> None:
    """A tiny Qwen2 LLM with a tokenizer that knows the benchmark's words, and a 4-patch SigLIP tower."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM, SiglipImageProcessorPil, SiglipVisionConfig, \
        SiglipVisionModel

    from wings.data.tokenizer import train_chat_tokenizer

    tokenizer = train_chat_tokenizer([" ".join(WORDS)] * 4, vocab_size=1000, min_frequency=1)
    torch.manual_seed(0)
    llm = Qwen2ForCausalLM(Qwen2Config(
        hidden_size=32, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2, intermediate_size=64,
        vocab_size=len(tokenizer), max_position_embeddings=4096, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id))
    llm.save_pretrained(root / "llm")
    tokenizer.save_pretrained(root / "llm")
    SiglipVisionModel(SiglipVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, image_size=32, patch_size=16)).save_pretrained(
        root / "vision")
    SiglipImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(root / "vision")


# Runs a command (its output to a log file) and prints its wall time and the largest resident set among
# its processes (KiB on Linux).
_MEASURE = ("import resource, subprocess, sys, time; t = time.perf_counter(); log = open(sys.argv[1], 'w'); "
            "r = subprocess.run(sys.argv[2:], stdout=log, stderr=subprocess.STDOUT); "
            "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, r.returncode)")


def measured(command: list[str], env: dict, log: Path) -> tuple[float, float, str]:
    """(seconds, peak RSS in GB, output) of `command` in a fresh process (output also left in `log`, to
    follow a long run); raises when it fails."""
    done = subprocess.run([sys.executable, "-c", _MEASURE, str(log), *command], env=env, capture_output=True,
                          text=True)
    seconds, rss_kib, code = done.stdout.split()
    output = log.read_text()
    if int(code) != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{output[-3000:]}")
    return float(seconds), int(rss_kib) / 2**20, output


def loader_throughput(cache_env: dict, data: Path, hub: Path, images: Path, workers: int, batches: int) -> float:
    """Samples per second through PreparedDataset + LlavaCollator + DataLoader (`workers` processes)."""
    from torch.utils.data import DataLoader

    from wings.data.collate import LlavaCollator, PreparedDataset
    from wings.training.data import prepare_stage_data, stage_processor
    from wings.training.recipe import load_recipe

    os.environ.update(cache_env)
    recipe = load_recipe("wings_stage1")
    processor = stage_processor(recipe, str(hub / "llm"), str(hub / "vision"), None)
    [prepared] = prepare_stage_data(recipe, str(data), llm=str(hub / "llm"), vision=str(hub / "vision"),
                                    image_folder=str(images))
    dataset = PreparedDataset(prepared.good(), processor)
    loader = DataLoader(dataset, batch_size=16, shuffle=True, num_workers=workers,
                        collate_fn=LlavaCollator(processor.tokenizer.pad_token_id))
    start, seen = None, 0
    for k, batch in enumerate(loader):
        if k == 2:  # workers started and warm
            start, seen = time.perf_counter(), 0
        seen += batch["input_ids"].shape[0]
        if k == batches + 2:
            break
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=665_000)
    parser.add_argument("--workdir", default="/tmp/wings-bench-data")
    parser.add_argument("--output", default=str(REPO / "benchmarks" / "results" / "data.json"))
    parser.add_argument("--loader-batches", type=int, default=100)
    args = parser.parse_args()

    work = Path(args.workdir)
    load_before = os.getloadavg()
    data, images, hub = work / f"llava_{args.samples}.json", work / "images", work / "hub"
    if not data.exists():
        start = time.perf_counter()
        generate(data, images, args.samples)
        print(f"generated {data} ({data.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - start:.0f}s")
    if not (hub / "vision").exists():
        make_tiny_hub(hub)
    cache = work / f"cache_{args.samples}_{time.time_ns()}"
    cache.mkdir(parents=True)
    env = {**os.environ, "WINGS_DATA_CACHE": str(cache), "PYTHONPATH": str(REPO / "src")}
    train = [sys.executable, "-m", "wings.cli", "-v", "train", "wings_stage1", "--llm", str(hub / "llm"),
             "--vision", str(hub / "vision"), "--data", str(data), "--image-folder", str(images), "--max-steps", "1",
             "optim.batch_size=4", "optim.gradient_accumulation_steps=1", "optim.bf16=false", "optim.save_steps=1000",
             "optim.logging_steps=1", "model.learner_rank=4"]

    first_s, first_rss, log = measured([*train, "--output", str(cache / "out_first")], env, cache / "first.log")
    match = re.search(r"prepared (\d+) samples in ([\d.]+) s", log)
    prepare_s = float(match.group(2)) if match else float("nan")
    print(f"first launch: {first_s:.1f}s (preparation {prepare_s:.1f}s), peak RSS {first_rss:.2f} GB")
    second_s, second_rss, _ = measured([*train, "--output", str(cache / "out_second")], env, cache / "second.log")
    print(f"second launch: {second_s:.1f}s, peak RSS {second_rss:.2f} GB")
    loader = {f"workers_{w}": loader_throughput({"WINGS_DATA_CACHE": str(cache)}, data, hub, images, w,
                                                args.loader_batches) for w in (0, 2)}
    print(f"loader samples/s: {loader}")

    result = {
        "samples": args.samples,
        "file_mib": round(data.stat().st_size / 2**20, 1),
        "prepare_s": round(prepare_s, 1),
        "prepare_samples_per_s": round(args.samples / prepare_s, 0),
        "first_launch_s": round(first_s, 1),
        "second_launch_s": round(second_s, 1),
        "peak_rss_gb": round(max(first_rss, second_rss), 2),
        "loader_samples_per_s": {k: round(v, 1) for k, v in loader.items()},
        "targets": {"prepare_665k_s": 300, "second_launch_665k_s": 30, "peak_rss_gb": 3,
                    "first_launch_100k_s": 120, "second_launch_100k_s": 45},
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "load_average_before": load_before, "load_average_after": os.getloadavg(),
                    "python": platform.python_version()},
    }
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
