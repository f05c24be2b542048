"""benchmarks/data.py: the generated file has LLaVA-665k's shape and prepares without a bad sample."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "data.py"


def _module():
    spec = importlib.util.spec_from_file_location("benchmark_data", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # building the tiny hub imports most of transformers: ~10 s idle, ~40 s on a busy machine
def test_generated_file_is_shaped_like_llava_665k_and_prepares(tmp_path):
    bench = _module()
    data, images = tmp_path / "llava.json", tmp_path / "images"
    bench.generate(data, images, samples=200)
    samples = json.loads(data.read_text())
    assert len(samples) == 200
    with_image = np.mean(["image" in s for s in samples])
    assert 0.70 < with_image < 0.80
    turns = [len(s["conversations"]) // 2 for s in samples]
    assert min(turns) == 1 and max(turns) == 5
    words = [len(t["value"].replace("<image>\n", "").split()) for s in samples for t in s["conversations"]]
    assert min(words) == 5 and max(words) == 60
    assert len({s["image"] for s in samples if "image" in s}) == bench.N_IMAGES  # tiny images shared by path

    bench.make_tiny_hub(tmp_path / "hub")
    from wings.training.data import prepare_stage_data
    from wings.training.recipe import load_recipe

    [prepared] = prepare_stage_data(load_recipe("wings_stage1", [f"data.cache_dir={tmp_path / 'cache'}"]), str(data),
                                    llm=str(tmp_path / "hub" / "llm"), vision=str(tmp_path / "hub" / "vision"),
                                    image_folder=str(images))
    assert prepared.errors == [] and len(prepared.rows) == 200
