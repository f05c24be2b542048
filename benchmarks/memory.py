"""Memory rows: peak memory of one forward, WINGS / LLM, each model in a fresh process (`run.py --memory-child`)."""

from __future__ import annotations

import gc
import os
import resource
import subprocess
import sys
from pathlib import Path

import torch
from common import Settings, autocast, build_base, make_inputs, model_inputs, ratio_of, row, wrap

RUN_PY = Path(__file__).with_name("run.py")  # the child runs the driver with --memory-child


def _rss_kib(field_name: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field_name}")


def peak_forward_memory(kind: str, s: Settings, device: str) -> float:
    """Peak memory (bytes) of one no-grad forward at s.memory_length above the memory held before it.

    kind: "llm" (the unwrapped LLM), "wings" (segment router) or "positional". CUDA: max_memory_allocated.
    CPU: peak RSS (VmHWM, reset through /proc/self/clear_refs) minus RSS before the forward; run it in a
    fresh process (`--memory-child`) so other rows' allocations do not blur it.
    """
    llm, vision = build_base(s.shape)
    router = "positional" if kind == "positional" else "segment"
    model = wrap(llm, vision, s.shape, learners=True, router=router)
    if kind == "llm":
        model = model.to_llm().eval()
    del llm, vision
    model.to(device)
    small_length = s.shape.image_tokens + s.image_start + 8
    small_ids, small_feats = make_inputs(s.shape, small_length, s.image_start, device=device)
    ids, feats = make_inputs(s.shape, s.memory_length, s.image_start, device=device)
    name = "llm" if kind == "llm" else "wings"
    with torch.no_grad(), autocast(device):
        model(**model_inputs(name, model, small_ids, small_feats), use_cache=False)  # load kernels, thread pools
    inputs = model_inputs(name, model, ids, feats)
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        with torch.no_grad(), autocast(device):
            out = model(**inputs, use_cache=False)
        torch.cuda.synchronize()
        del out
        return float(torch.cuda.max_memory_allocated() - before)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
        before = _rss_kib("VmRSS")
        peak_of = lambda: _rss_kib("VmHWM")  # noqa: E731
    except OSError:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak_of = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # noqa: E731
    with torch.no_grad():
        out = model(**inputs, use_cache=False)
    peak = peak_of()
    del out
    return 1024.0 * (peak - before)


def measure_memory(kind: str, s: Settings, preset: str, device: str) -> float:
    if not s.memory_in_subprocess:
        return peak_forward_memory(kind, s, device)
    # Fixed mmap threshold: large tensors are mmapped and given back on free, so RSS follows live tensors.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
    cmd = [sys.executable, str(RUN_PY), "--memory-child", kind, "--preset", preset, "--device", device,
           "--threads", str(torch.get_num_threads())]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])


def bench_memory(s: Settings, preset: str, device: str) -> tuple[list[dict], dict[str, float]]:
    peaks = {kind: measure_memory(kind, s, preset, device) for kind in ("llm", "wings", "positional")}
    rows = [
        row(
            f"memory@{s.memory_length}",
            ratio_of(peaks["wings"], peaks["llm"]),
            1.3,
            wings_mib=peaks["wings"] / 2**20,
            llm_mib=peaks["llm"] / 2**20,
        )
    ]
    return rows, peaks
