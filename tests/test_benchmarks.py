"""Smoke test of benchmarks/run.py on a micro shape (seconds, no timing assertions) and its FLOP accounting."""

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

RUN_PY = Path(__file__).resolve().parents[1] / "benchmarks" / "run.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("wings_benchmarks_run", RUN_PY)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


def test_every_row_runs_on_a_micro_shape(bench, tmp_path):
    result = bench.run(bench.MICRO_SETTINGS, device="cpu", preset="micro", log=lambda msg: None)
    names = [row["name"] for row in result["rows"]]
    for prefix in ("memory@", "forward@48", "forward@96", "decode per token, vocab 128", "decode per token, vocab 96",
                   "decode ops per step", "decode static per token, vocab 96, eager",
                   "decode batch 3 per step", "generate ", "router time@", "router memory@", "train step@"):
        assert any(name.startswith(prefix) for name in names), prefix
    for row in result["rows"]:
        if row["name"].startswith(("memory@", "router memory@")):
            # A micro model's peak can fall below RSS resolution (0 or NaN): the row exists, its value is noise.
            assert math.isnan(row["measured"]) or row["measured"] >= 0, row
            continue
        assert math.isfinite(row["measured"]) and row["measured"] > 0, row
    table = bench.format_table(result)
    assert "qwen1.5-7b@2048" in table and "qwen1.5-7b, context 1024" in table
    json.dumps(result)  # the --output file is plain JSON


def test_flop_accounting(bench):
    shape = bench.REALISTIC
    plain = bench.forward_flops(shape, 1024, 256, wings=False)
    wings = bench.forward_flops(shape, 1024, 256, wings=True)
    assert set(plain) < set(wings) and all(plain[k] == wings[k] for k in plain)
    d, r, layers = shape.hidden, shape.rank, shape.layers
    assert wings["learner_k_v"] == layers * 2 * 1024 * 4 * d * r  # K and V once per key token, both learners
    assert wings["learner_attention"] == layers * 4 * 1024 * 1024 * d  # T x N_img + T x N_text = T x T
    assert plain["attn_scores_values"] == layers * 4 * (1024 * 1025 / 2) * d  # causal half
    ratios = [bench.flop_ratio(bench.QWEN15_7B, t) for t in (1024, 2048, 4096)]
    assert 1.0 < ratios[0] < ratios[1] < ratios[2] < 1.3  # learner attention grows with T


def test_decode_read_accounting_matches_the_models_parameters(bench):
    shape = bench.MICRO
    models = bench.build_models(shape, "cpu", wrapper=False)
    llm, wings = models["llm"], models["wings"]
    plain = bench.decode_reads(shape, 40, 16, wings=False)
    with_learners = bench.decode_reads(shape, 40, 16, wings=True)
    assert plain["layer_weights"] == sum(p.numel() for p in llm.model.layers.parameters())
    assert plain["head"] == llm.lm_head.weight.numel() + llm.model.norm.weight.numel() + shape.hidden
    assert plain["kv_cache"] == shape.layers * 2 * 40 * shape.kv_heads * shape.head_dim
    # A decode step reads every learner weight except the visual learner's k/v (image keys are cached).
    unused = sum(p.numel() for layer in wings.wings_layers
                 for p in (*layer.visual_learner.k.parameters(), *layer.visual_learner.v.parameters()))
    learner = sum(p.numel() for layer in wings.wings_layers
                  for m in (layer.visual_learner, layer.textual_learner, layer.router) for p in m.parameters())
    assert with_learners["learner_weights"] == learner - unused
    assert with_learners["learner_cache"] == shape.layers * 2 * 40 * shape.hidden
    assert 1.0 < bench.decode_read_ratio(bench.QWEN15_7B, 1024) < bench.decode_read_ratio(bench.QWEN15_7B, 4096)
