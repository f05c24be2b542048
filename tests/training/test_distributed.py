"""Multi-process training on CPU (gloo, 2 processes): FSDP2 with the shipped recipe's wrap units, and
DeepSpeed ZeRO-2 / ZeRO-3 with the shipped configs (its CPU accelerator), reach the single-process losses
and weights and save one full state dict that loads with from_pretrained; FSDP2 also resumes from its
checkpoint to the same result.

The `accelerate launch` side of these recipes cannot run on CPU (docs/tools.md says why), so the
worker applies the same settings through accelerate's wrap policy, torch's `fully_shard` and
`deepspeed.initialize` directly."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import distributed_worker as worker
from tiny import tiny_wings
from wings import WingsForConditionalGeneration
from wings.modeling import WingsDecoderLayer

REPO = Path(__file__).resolve().parents[2]
STEPS, SAVE_AT = 4, 2
# fp32 on CPU; the sharded run reduces gradients in another order than one process does.
LOSS_TOL, WEIGHT_TOL = 1e-5, 1e-5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(out: Path, *args: str) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(_free_port()), str(Path(worker.__file__)), str(out), "--steps", str(STEPS), *args]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "DS_ACCELERATOR": "cpu"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads((out / "run.json").read_text())


@pytest.fixture(scope="module")
def reference():
    """One process, the whole global batch: losses per step and the final weights."""
    torch.set_num_threads(1)
    model = worker.make_model()
    losses = worker.train_steps(model, worker.make_optimizer(model), range(STEPS))
    return losses, model.state_dict()


def _assert_weights(directory: Path, expected: dict, atol: float = WEIGHT_TOL) -> dict:
    assert sorted(p.name for p in directory.glob("*.safetensors")) == ["model.safetensors"]
    loaded = WingsForConditionalGeneration.from_pretrained(directory).state_dict()
    assert loaded.keys() == expected.keys()
    for name, value in loaded.items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=atol, msg=name)
    return loaded


@pytest.mark.slow
def test_fsdp2_two_processes_match_one(tmp_path, reference):
    reference_losses, reference_weights = reference
    run = _launch(tmp_path / "fsdp", "--save-at", str(SAVE_AT))
    assert run["world"] == 2
    layers = [f"language_model.model.layers.{i}" for i in range(3)]
    assert run["units"] == layers and run["fsdp_modules"] == ["", *layers]
    assert run["losses"] == pytest.approx(reference_losses, abs=LOSS_TOL)

    # One full copy of the weights, loadable as a plain WINGS directory, equal to the single-process result.
    loaded = _assert_weights(tmp_path / "fsdp" / "final", reference_weights)

    # Resume from the step-2 checkpoint in a fresh launch: the same last losses and final weights.
    resumed = _launch(tmp_path / "resumed", "--resume", str(tmp_path / "fsdp" / f"checkpoint-{SAVE_AT}"))
    assert resumed["losses"] == pytest.approx(run["losses"][SAVE_AT:], abs=LOSS_TOL)
    _assert_weights(tmp_path / "resumed" / "final", loaded, atol=1e-6)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="deepspeed is not installed")
@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_zero_two_processes_match_one(tmp_path, reference, stage):
    reference_losses, reference_weights = reference
    run = _launch(tmp_path / f"zero{stage}", "--engine", f"zero{stage}")
    assert run["world"] == 2
    if stage == 3:
        assert run["zero_partitioned_params"] > 0  # ZeRO-3 really partitioned the parameters
    assert run["losses"] == pytest.approx(reference_losses, abs=LOSS_TOL)
    _assert_weights(tmp_path / f"zero{stage}" / "final", reference_weights)


@pytest.mark.parametrize("family", ["qwen2", "llama"])
def test_shipped_fsdp_recipe_wraps_exactly_the_wings_layers(family):
    from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy

    model = tiny_wings(family, learner_layers=[0, 2])
    policy = fsdp2_prepare_auto_wrap_policy(worker.fsdp_plugin_from_recipe(), model)
    units = [name for name, module in model.named_modules() if name and policy(module)]
    assert units == ["language_model.model.layers.0", "language_model.model.layers.2"]
    assert all(isinstance(model.get_submodule(name), WingsDecoderLayer) for name in units)
