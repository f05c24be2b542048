"""benchmarks/images.py: its token table is the layouts' counts, and its forward rows run (no timing asserted)."""

import importlib.util
import sys
from pathlib import Path

import pytest

from wings import ImageLayout, image_token_count

IMAGES_PY = Path(__file__).resolve().parents[1] / "benchmarks" / "images.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("wings_benchmarks_images", IMAGES_PY)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_token_table_rows(bench):
    rows = {(r["encoder"], r["layout"]): r["tokens"] for r in bench.token_table()}
    clip = "CLIP ViT-L/14-336 (LLaVA-NeXT)"
    assert set(rows[(clip, "fixed")].values()) == {576}
    pinpoints = ((336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008))
    assert rows[(clip, "anyres")]["480x640"] == image_token_count(480, 640, ImageLayout("anyres", 336, 14, pinpoints))
    assert all(rows[(clip, "anyres, 2x2 pooling")][k] < v for k, v in rows[(clip, "anyres")].items())
    assert max(rows[("SigLIP 2 NaFlex/16, 256 patches", "native")].values()) <= 256


@pytest.mark.slow
def test_forward_rows_run(bench):
    rows = bench.forward_table("cpu", rounds=1)
    by_layout = {r["layout"]: r for r in rows}
    assert by_layout["fixed"]["over_fixed"] == 1.0 and all(r["seconds"] > 0 for r in rows)
    assert by_layout["fixed"]["image_tokens"] < by_layout["anyres, 2x2 pooling"]["image_tokens"] < by_layout["anyres"]["image_tokens"]
