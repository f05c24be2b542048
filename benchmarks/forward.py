"""Forward rows: one no-grad forward WINGS / LLM beside the FLOP ratio, and the positional router's cost."""

from __future__ import annotations

import torch
from analytic import flop_ratio
from common import Settings, autocast, interleaved, make_inputs, model_inputs, ratio_of, row


def bench_forward(models: dict, s: Settings, device: str) -> list[dict]:
    rows = []
    for length in s.forward_lengths:
        ids, feats = make_inputs(s.shape, length, s.image_start, device=device)

        def run(name):
            with torch.no_grad(), autocast(device):
                models[name](**model_inputs(name, models[name], ids, feats), use_cache=False)

        t, ratio = interleaved(
            {name: (lambda name=name: run(name)) for name in ("wings", "llm", "wrapper")},
            s.repeats,
            device,
            warmup=1 if length == s.forward_lengths[0] else 0,
        )
        fr = flop_ratio(s.shape, length)
        rows.append(
            row(
                f"forward@{length}",
                ratio,
                1.15 * fr,
                flop_ratio=fr,
                wings_s=t["wings"],
                llm_s=t["llm"],
                wrapper_over_llm=t["wrapper"] / t["llm"],
            )
        )
    return rows


def bench_router(models: dict, s: Settings, peaks: dict[str, float], device: str) -> list[dict]:
    ids, feats = make_inputs(s.shape, s.memory_length, s.image_start, device=device)

    def run(model):
        with torch.no_grad(), autocast(device):
            model(ids, image_features=feats, use_cache=False)

    if s.router_repeats > 1:
        run(models["positional"])  # warm-up (the segment model ran in earlier rows); --quick skips it
    t, ratio = interleaved(
        {"positional": lambda: run(models["positional"]), "segment": lambda: run(models["wings"])},
        s.router_repeats,
        device,
        warmup=0,
    )
    return [
        row(f"router time@{s.memory_length} positional/segment", ratio, None,
            positional_s=t["positional"], segment_s=t["segment"]),
        row(f"router memory@{s.memory_length} positional/segment", ratio_of(peaks["positional"], peaks["wings"]), None,
            positional_mib=peaks["positional"] / 2**20, segment_mib=peaks["wings"] / 2**20),
    ]
