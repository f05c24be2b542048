"""WINGS cost benchmarks: ratios WINGS / the unwrapped LLM, measured in one run on one machine.

    python benchmarks/run.py [--quick] [--device cpu|cuda] [--output benchmarks/results/latest.json] [--only ROW ...]

A random Qwen2 model of a realistic shape (see `REALISTIC`) is built once; WINGS wraps a copy of it
(learners in every layer, segment router) and the baseline is what a user would otherwise run: the plain
Hugging Face `Qwen2ForCausalLM` with the same weights (`WingsForConditionalGeneration.to_llm()`), fed the
same multimodal prompt as `inputs_embeds` with the image features scattered into the image-token slots
(what LLaVA does). The WINGS wrapper with `learner_layers=[]` is timed beside them as a diagnostic
(`wrapper_over_llm`: what the wrapping alone costs). Images enter as precomputed `image_features`
[n_images, image_seq_length, d] so the vision tower does not dominate the timings (the training step runs
the projector on random tower features so that the projector trains). Every row is a ratio of two numbers
measured in this run, so the machine's speed cancels (the machine is shared: see the README).

This file is the driver; the rows live with what they measure: memory.py, forward.py (and the router),
decode.py, training.py; common.py holds the shapes, settings, models and timing, analytic.py the FLOP and
decode-read counts. `--only decode decode-mha` runs some groups of rows (see GROUPS).

Rows:
  memory@T        peak memory of a forward, WINGS / LLM (fresh subprocess each); target 1.3
  forward@T       forward time WINGS / LLM, next to the analytic matmul-FLOP ratio; target 1.15 x FLOP ratio
  decode ops      aten ops of one cached decode step (torch.profiler), WINGS / LLM; target 1.6
  decode          per-token time inside generate(), WINGS / LLM, at two vocab sizes; target 1.2
  decode no GQA   the same at 16 query and 16 KV heads, vocab 2000, beside its analytic read ratio; target 1.2
  decode static   the same with cache_implementation="static", eager and torch.compile'd; target 1.2
  decode batch B  left-padded batches with 0-2 images per row; target 1.3
  generate        full recompute (use_cache=False, the released code's method) / cached generate(); target 10
  router          positional router (eager attention) / segment router: forward time and memory; no target
  train           forward+backward+AdamW step, WINGS stage 2 / LLaVA-style full finetune; target 1.15 x FLOP ratio
  mfu (cuda)      model FLOPs utilisation of the WINGS stage-2 training step; no target
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path

from common import PRESETS, QWEN15_7B, Settings, build_base, build_models, wrap  # first: sets the offline env

import torch  # noqa: E402
import transformers  # noqa: E402
from analytic import decode_read_ratio, flop_ratio  # noqa: E402
from decode import bench_decode, bench_decode_batch, bench_decode_mha, bench_decode_static, bench_generate  # noqa: E402
from forward import bench_forward, bench_router  # noqa: E402
from memory import bench_memory, peak_forward_memory  # noqa: E402
from training import bench_mfu, bench_train  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

# ------------------------------------------------------------------------------------------------
# driver


def machine_info(device: str) -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": device,
    }
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
        info["dtype"] = "bf16 autocast"
    else:
        info["dtype"] = "float32"
    return info


# Groups of rows `--only` can pick, in the order they run (the router's memory row needs the memory group).
GROUPS = ("memory", "forward", "decode", "decode-mha", "static", "batch", "generate", "router", "train")


def run(
    settings: Settings, device: str = "cpu", preset: str = "custom", log=print, only: Sequence[str] | None = None,
    on_rows=None,
) -> dict:
    """Run every row (or the groups in `only`, see GROUPS); returns {"rows": [...], "flops_7b": ..., "settings": ...}.

    on_rows(rows), if given, is called with the rows measured so far after each group (so that a run that
    fails later, as the first CUDA run did, still keeps what it measured)."""
    s = settings
    unknown = set(only or ()) - set(GROUPS)
    if unknown:
        raise ValueError(f"--only: unknown row group(s) {sorted(unknown)}; groups: {', '.join(GROUPS)}")
    want = set(GROUPS if only is None else only)
    if "router" in want:
        want.add("memory")
    rows, peaks, models = [], {}, {}

    def add(new_rows: list[dict]) -> None:
        rows.extend(new_rows)
        if on_rows is not None:
            on_rows(rows)

    if "memory" in want:
        log("memory (fresh processes) ...")
        memory_rows, peaks = bench_memory(s, preset, device)
        add(memory_rows)
    if want & {"forward", "generate", "router", "train"}:
        log("building models ...")
        models = build_models(s.shape, device)
    if "forward" in want:
        log("forward ...")
        add(bench_forward(models, s, device))
    if "decode" in want:
        for vocab in s.decode_vocabs:
            log(f"decode, vocab {vocab} ...")
            add(bench_decode(s, device, vocab))
    if "decode-mha" in want:
        log(f"decode, {s.mha_shape.heads} heads and {s.mha_shape.kv_heads} KV heads, vocab {s.mha_shape.vocab} ...")
        add(bench_decode_mha(s, device))
    if "static" in want:
        log("decode, static cache (eager and compiled) ...")
        add(bench_decode_static(s, device, min(s.decode_vocabs)))
    if "batch" in want:
        for batch in s.batch_sizes:
            log(f"decode, batch {batch} ...")
            add(bench_decode_batch(s, device, batch))
    if "generate" in want:
        log("generate ...")
        add(bench_generate(models, s, device))
    if "router" in want:
        log("router ...")
        llm, vision = build_base(s.shape)
        models["positional"] = wrap(llm, vision, s.shape, learners=True, router="positional").to(device)
        del llm, vision
        add(bench_router(models, s, peaks, device))
        del models["positional"]
    if "train" in want:
        models.pop("wrapper", None)
        log("train ...")
        add(bench_train(models, s, device))
        if device == "cuda":
            log("train MFU ...")
            add(bench_mfu(models, s, device))
    seven_b = {f"qwen1.5-7b@{t}": flop_ratio(QWEN15_7B, t) for t in (1024, 2048, 4096)}
    reads = {f"benchmark, vocab {v}, context {s.prompt_length}": decode_read_ratio(replace(s.shape, vocab=v), s.prompt_length)
             for v in s.decode_vocabs}
    # The learners cache a full-width key and value per token (H heads); the LLM caches its KV heads only.
    mha = s.mha_shape
    for kv_heads in sorted({mha.kv_heads, max(1, mha.heads // 8)}, reverse=True):
        shape = replace(mha, kv_heads=kv_heads)
        reads[f"{mha.heads}/{kv_heads} heads, vocab {mha.vocab}, context {s.prompt_length}"] = decode_read_ratio(
            shape, s.prompt_length)
    reads.update({f"qwen1.5-7b, context {t}": decode_read_ratio(QWEN15_7B, t) for t in (1024, 4096)})
    return {
        "rows": rows,
        "flop_ratio_released_7b": seven_b,
        "decode_read_ratio": reads,
        "settings": asdict(s),
        "shapes": {"benchmark": asdict(s.shape), "released_7b": asdict(QWEN15_7B)},
    }


def format_table(result: dict) -> str:
    lines = [f"{'row':<44} {'measured':>9} {'target':>10} {'pass':>5}  details"]
    for r in result["rows"]:
        target = "" if r["target"] is None else (">= " if r["higher_is_better"] else "<= ") + f"{r['target']:.3f}"
        ok = "" if r["pass"] is None else ("PASS" if r["pass"] else "FAIL")
        details = ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in r.items()
            if k not in ("name", "measured", "target", "higher_is_better", "pass")
        )
        lines.append(f"{r['name']:<44} {r['measured']:>9.3f} {target:>10} {ok:>5}  {details}")
    lines.append("analytic FLOP ratio WINGS / plain, released Qwen1.5-7B shape (729 image tokens, rank 64):")
    for name, value in result["flop_ratio_released_7b"].items():
        lines.append(f"  {name}: {value:.4f}")
    lines.append("analytic values read per decode step WINGS / plain (the decode time ratio where memory-bound):")
    for name, value in result["decode_read_ratio"].items():
        lines.append(f"  {name}: {value:.4f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds, sampled full recompute")
    parser.add_argument("--preset", choices=sorted(PRESETS), help="settings preset (overrides --quick)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--output", type=Path, default=None, help="JSON file for the results")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads (default 1 on CPU: on a shared machine a busy core stalls every multi-threaded "
        "kernel and timings swing several-fold; 0 keeps torch's default)",
    )
    parser.add_argument("--only", nargs="+", choices=GROUPS, metavar="ROW",
                        help=f"run only these groups of rows: {', '.join(GROUPS)}")
    parser.add_argument("--memory-child", choices=("llm", "wings", "positional"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    preset = args.preset or ("quick" if args.quick else "full")
    settings = PRESETS[preset]
    hf_logging.set_verbosity_error()
    threads = args.threads if args.threads is not None else (1 if args.device == "cpu" else 0)
    if threads > 0:
        torch.set_num_threads(threads)
    if args.memory_child:
        print(peak_forward_memory(args.memory_child, settings, args.device))
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device")
    start = time.perf_counter()

    def write_partial(rows: list[dict]) -> None:
        if args.output:
            args.output.parent.mkdir(parents=True, exist_ok=True)
            args.output.write_text(json.dumps({"rows": rows, "partial": True, "preset": preset}, indent=2) + "\n")

    result = run(settings, args.device, preset, log=lambda msg: print(msg, file=sys.stderr, flush=True), only=args.only,
                 on_rows=write_partial)
    result["machine"] = machine_info(args.device)
    result["preset"] = preset
    if args.only:
        result["only"] = args.only
    result["wall_s"] = time.perf_counter() - start
    print(format_table(result))
    print(f"({preset}, {args.device}, {result['wall_s']:.0f} s, {result['machine']['cpu']}, "
          f"{result['machine']['torch_threads']} threads, torch {torch.__version__})")
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
