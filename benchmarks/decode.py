"""Decode rows: per-token time inside generate() (dynamic and static caches, batches, the shape without
grouped-query attention), the aten ops of one step, and full recompute against cached generate."""

from __future__ import annotations

import statistics
import time
from collections import Counter
from dataclasses import replace

import torch
from analytic import decode_read_ratio
from common import (
    SMALL_VOCAB,
    Settings,
    autocast,
    build_models,
    decode_rounds,
    make_batch,
    make_inputs,
    model_inputs,
    row,
    timed,
)
from transformers import CompileConfig, LogitsProcessorList


def generate_fn(name: str, model, ids, feats, mask, steps: int, device: str, **generate_kwargs):
    """fn(clock) running `steps` greedy tokens of generate() for one model, timing each step with `clock`."""
    inputs = model_inputs(name, model, ids, feats, mask)

    def run(clock):
        with torch.no_grad(), autocast(device):
            model.generate(
                **inputs, max_new_tokens=steps, min_new_tokens=steps, do_sample=False, pad_token_id=0,
                logits_processor=LogitsProcessorList([clock]), **generate_kwargs,
            )

    return run


def decode_row(name: str, per_token: dict[str, list[float]], target: float, **details) -> dict:
    """WINGS / LLM of the per-token minimum over rounds (the least-disturbed round of each model)."""
    best = {model: min(times) for model, times in per_token.items()}
    paired = statistics.median(w / p for w, p in zip(per_token["wings"], per_token["llm"]))
    extra = {"wrapper_over_llm": best["wrapper"] / best["llm"]} if "wrapper" in best else {}
    return row(name, best["wings"] / best["llm"], target, wings_ms=1000 * best["wings"], llm_ms=1000 * best["llm"],
               paired_median=paired, **extra, **details)


def bench_decode(s: Settings, device: str, vocab: int) -> list[dict]:
    """Per-token decode time inside generate() (batch 1, one image, s.prompt_length prompt) at one vocab size."""
    shape = replace(s.shape, vocab=vocab)
    models = build_models(shape, device)
    ids, feats = make_inputs(shape, s.prompt_length, s.image_start, seed=2, device=device)
    mask = torch.ones_like(ids)
    runs = {name: generate_fn(name, m, ids, feats, mask, s.decode_steps, device) for name, m in models.items()}
    per_token = decode_rounds(runs, s.decode_rounds, device)
    rows = [decode_row(f"decode per token, vocab {vocab}", per_token, 1.2,
                       read_ratio=decode_read_ratio(shape, s.prompt_length))]
    if vocab == min(s.decode_vocabs):
        rows.append(bench_decode_ops(models, ids, feats))
    return rows


def bench_decode_mha(s: Settings, device: str) -> list[dict]:
    """The decode row at `s.mha_shape`, a shape without grouped-query attention (as many KV heads as query heads),
    next to its analytic read ratio (`decode_read_ratio`: the time ratio where a step is bound by memory reads).

    With H KV heads the LLM's own cache is as large as the learners' full-width cache (H heads of d/H), so the
    learners add one cache's worth of reads; with fewer KV heads the learners' cache outweighs the LLM's.
    """
    shape = s.mha_shape
    models = build_models(shape, device, wrapper=False)
    ids, feats = make_inputs(shape, s.prompt_length, s.image_start, seed=2, device=device)
    mask = torch.ones_like(ids)
    runs = {name: generate_fn(name, m, ids, feats, mask, s.decode_steps, device) for name, m in models.items()}
    per_token = decode_rounds(runs, s.decode_rounds, device)
    name = f"decode per token, {shape.heads}/{shape.kv_heads} heads, vocab {shape.vocab}"
    return [decode_row(name, per_token, 1.2, read_ratio=decode_read_ratio(shape, s.prompt_length),
                       context=s.prompt_length, threads=torch.get_num_threads())]


# Ops that only make a view or metadata (no kernel on an accelerator).
VIEW_OPS = {
    "aten::view", "aten::reshape", "aten::_reshape_alias", "aten::unsqueeze", "aten::squeeze", "aten::expand",
    "aten::slice", "aten::select", "aten::transpose", "aten::t", "aten::permute", "aten::as_strided", "aten::alias",
    "aten::narrow", "aten::_unsafe_view", "aten::numpy_T", "aten::resolve_conj", "aten::resolve_neg",
    "aten::detach", "aten::lift_fresh", "aten::empty", "aten::empty_like", "aten::empty_strided", "aten::to",
    "aten::_to_copy", "aten::contiguous", "aten::split", "aten::chunk", "aten::unbind", "aten::view_as",
    "aten::expand_as", "aten::item", "aten::_local_scalar_dense", "aten::is_nonzero",
}


def count_ops(fn) -> tuple[int, int, Counter]:
    """(all aten ops, ops that run a kernel, counts by name) recorded by torch.profiler while fn runs.

    All ops include nested ones (linear -> t -> mm) and views; "kernel ops" are the leaves that are not
    views/metadata (roughly the kernel launches of an accelerator, where decoding is launch-bound).
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    events = [e for e in prof.events() if e.name.startswith("aten::")]
    parents = {id(e.cpu_parent) for e in events if e.cpu_parent is not None}
    kernels = [e for e in events if id(e) not in parents and e.name not in VIEW_OPS]
    return len(events), len(kernels), Counter(e.name for e in events)


def decode_step_ops(name: str, model, ids, feats) -> tuple[int, int, Counter]:
    """Ops of one cached decode step (after the prompt and one warm-up step)."""
    with torch.no_grad():
        out = model(**model_inputs(name, model, ids, feats), use_cache=True, logits_to_keep=1)
        cache, token = out.cache, out.logits[:, -1:].argmax(-1)
        mask = torch.ones(1, ids.shape[1] + 1, dtype=torch.long, device=ids.device)
        out = model(token, cache=cache, attention_mask=mask, use_cache=True)
        token = out.logits[:, -1:].argmax(-1)
        mask = torch.ones(1, ids.shape[1] + 2, dtype=torch.long, device=ids.device)
        return count_ops(lambda: model(token, cache=cache, attention_mask=mask, use_cache=True))


def bench_decode_ops(models: dict, ids, feats) -> dict:
    counts = {name: decode_step_ops(name, m, ids, feats) for name, m in models.items()}
    (w_all, w_kernels, _), (l_all, l_kernels, _) = counts["wings"], counts["llm"]
    return row("decode ops per step", w_all / l_all, 1.6, wings_ops=w_all, llm_ops=l_all,
               wings_kernel_ops=w_kernels, llm_kernel_ops=l_kernels, kernel_ops_ratio=w_kernels / l_kernels,
               wrapper_ops=counts["wrapper"][0])


def compile_config(device: str) -> CompileConfig:
    """What generate() compiles a static-cache decode step with: inductor, one graph; CUDA graphs on GPUs."""
    if device == "cuda":
        return CompileConfig(fullgraph=True, mode="reduce-overhead")  # CUDA graphs
    config = CompileConfig(fullgraph=True, backend="inductor")
    config._compile_all_devices = True  # generate() compiles only on accelerators unless told
    return config


def bench_decode_static(s: Settings, device: str, vocab: int) -> list[dict]:
    """Per-token decode time with cache_implementation="static", eager and compiled, WINGS / LLM."""
    shape = replace(s.shape, vocab=vocab)
    models = build_models(shape, device, wrapper=False)
    ids, feats = make_inputs(shape, s.prompt_length, s.image_start, seed=2, device=device)
    mask = torch.ones_like(ids)
    rows = []
    variants = {"eager": dict(cache_implementation="static", disable_compile=True)}
    if s.compile:
        variants["compiled"] = dict(cache_implementation="static", compile_config=compile_config(device))
    for variant, kwargs in variants.items():
        runs = {name: generate_fn(name, m, ids, feats, mask, s.decode_steps, device, **kwargs)
                for name, m in models.items()}
        start = time.perf_counter()
        per_token = decode_rounds(runs, s.decode_rounds, device)
        label = {"eager": "eager", "compiled": "CUDA graphs" if device == "cuda" else "inductor"}[variant]
        rows.append(decode_row(f"decode static per token, vocab {vocab}, {label}", per_token, 1.2,
                               wall_s=time.perf_counter() - start))
    return rows


def bench_decode_batch(s: Settings, device: str, batch: int) -> list[dict]:
    """Per-token (per step) decode time of a left-padded batch with 0-2 images per row, WINGS / LLM."""
    image_side = int(round(s.batch_image_tokens**0.5))
    shape = replace(s.shape, vocab=SMALL_VOCAB, image_tokens=image_side * image_side)
    models = build_models(shape, device, wrapper=False)
    ids, mask, feats = make_batch(shape, batch, shape.image_tokens, seed=5, device=device)
    runs = {name: generate_fn(name, m, ids, feats, mask, s.batch_steps, device) for name, m in models.items()}
    per_token = decode_rounds(runs, s.decode_rounds, device)
    return [decode_row(f"decode batch {batch} per step, vocab {SMALL_VOCAB}", per_token, 1.3,
                       prompt_width=ids.shape[1], images=feats.shape[0])]


def bench_generate(models: dict, s: Settings, device: str) -> list[dict]:
    """Full recompute (use_cache=False) / cached generate() of s.new_tokens after an s.prompt_length prompt."""
    model = models["wings"]
    ids, feats = make_inputs(s.shape, s.prompt_length, s.image_start, seed=1, device=device)
    kwargs = dict(
        image_features=feats,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=s.new_tokens,
        min_new_tokens=s.new_tokens,
        do_sample=False,
        pad_token_id=0,
    )

    def generate(use_cache: bool):
        with torch.no_grad(), autocast(device):
            return model.generate(ids, use_cache=use_cache, **kwargs)

    # The forward and decode rows ran before this one: no separate warm-up.
    outputs = []
    cached_s = statistics.median(
        timed(lambda: outputs.append(generate(True)), device) for _ in range(s.generate_repeats)
    )
    full = outputs[0]
    details = {}
    if s.recompute_samples == 0:
        recompute_s = timed(lambda: generate(False), device)
        details["recompute"] = "generate(use_cache=False), all steps"
    else:
        # generate(use_cache=False) runs one forward over prompt + i tokens for i = 0..new-1 (last logits only):
        # time k of them, spread evenly, and integrate (trapezoid) over i.
        steps = sorted({round(i * (s.new_tokens - 1) / (s.recompute_samples - 1)) for i in range(s.recompute_samples)})
        seconds = []
        for i in steps:
            prefix = full[:, : s.prompt_length + i]

            def step(prefix=prefix):
                with torch.no_grad(), autocast(device):
                    mask = torch.ones_like(prefix)
                    model(prefix, image_features=feats, attention_mask=mask, use_cache=False, logits_to_keep=1)

            seconds.append(timed(step, device))
        recompute_s = sum(
            (seconds[j] + seconds[j + 1]) / 2 * (steps[j + 1] - steps[j]) for j in range(len(steps) - 1)
        ) + (seconds[0] + seconds[-1]) / 2
        details["recompute"] = f"integrated from {len(steps)} timed forwards at steps {steps}"
    return [
        row(
            f"generate {s.new_tokens} after {s.prompt_length}",
            recompute_s / cached_s,
            10.0,
            higher_is_better=True,
            recompute_s=recompute_s,
            cached_s=cached_s,
            **details,
        )
    ]
