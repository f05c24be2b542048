"""Smoke test of benchmarks/run.py on a micro shape (seconds, no timing assertions) and its FLOP accounting."""

import importlib
import json
import math
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    """The driver (run.py) and the modules it imports as siblings (`python benchmarks/run.py` puts benchmarks/
    first on the path), as one namespace."""
    sys.path.insert(0, str(BENCHMARKS))
    modules = [importlib.import_module(name) for name in ("common", "analytic", "decode", "run")]
    return SimpleNamespace(**{k: v for m in modules for k, v in vars(m).items() if not k.startswith("__")})


def test_every_row_runs_on_a_micro_shape(bench, tmp_path):
    result = bench.run(bench.MICRO_SETTINGS, device="cpu", preset="micro", log=lambda msg: None)
    names = [row["name"] for row in result["rows"]]
    for prefix in ("memory@", "forward@48", "forward@96", "decode per token, vocab 128", "decode per token, vocab 96",
                   "decode per token, 4/4 heads, vocab 96", "decode ops per step", "decode static per token, vocab 96, eager",
                   "decode batch 3 per step", "generate ", "router time@", "router memory@", "train step@"):
        assert any(name.startswith(prefix) for name in names), prefix
    for row in result["rows"]:
        if row["name"].startswith(("memory@", "router memory@")):
            # A micro model's peak can fall below RSS resolution (0 or NaN): the row exists, its value is noise.
            assert math.isnan(row["measured"]) or row["measured"] >= 0, row
            continue
        assert math.isfinite(row["measured"]) and row["measured"] > 0, row
    mha = next(row for row in result["rows"] if row["name"] == "decode per token, 4/4 heads, vocab 96")
    assert mha["read_ratio"] == bench.decode_read_ratio(bench.MICRO_SETTINGS.mha_shape, bench.MICRO_SETTINGS.prompt_length)
    table = bench.format_table(result)
    assert "qwen1.5-7b@2048" in table and "qwen1.5-7b, context 1024" in table
    assert "4/4 heads, vocab 96, context 40" in table and "4/1 heads, vocab 96, context 40" in table
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


def test_only_runs_the_groups_asked_for(bench):
    seen = []
    result = bench.run(bench.MICRO_SETTINGS, device="cpu", preset="micro", log=lambda msg: None, only=["decode-mha"],
                       on_rows=lambda rows: seen.append([row["name"] for row in rows]))
    assert [row["name"] for row in result["rows"]] == ["decode per token, 4/4 heads, vocab 96"]
    assert seen == [["decode per token, 4/4 heads, vocab 96"]]  # each finished group is reported as it ends
    with pytest.raises(ValueError, match="unknown row group"):
        bench.run(bench.MICRO_SETTINGS, device="cpu", only=["decoding"])


def test_read_accounting_of_the_cache_follows_the_kv_heads(bench):
    """Without grouped-query attention the LLM's cache is as large as the learners' full-width cache."""
    mha = bench.MHA_DECODE
    assert (mha.heads, mha.kv_heads, mha.hidden, mha.layers, mha.vocab) == (16, 16, 1024, 4, 2000)
    plain = bench.decode_reads(mha, 512, 256, wings=False)
    wings = bench.decode_reads(mha, 512, 256, wings=True)
    assert wings["learner_cache"] == plain["kv_cache"]
    gqa = replace(mha, kv_heads=2)
    assert bench.decode_reads(gqa, 512, 256, wings=True)["learner_cache"] == 8 * bench.decode_reads(
        gqa, 512, 256, wings=False)["kv_cache"]
    assert bench.decode_read_ratio(gqa, 512) > bench.decode_read_ratio(mha, 512)
