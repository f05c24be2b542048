"""Two-stage training end to end on a tiny model and a tiny LLaVA-format data set (offline)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from wings import WingsForConditionalGeneration
from wings.cli import main
from wings.data.llava import DataError
from wings.training.recipe import load_recipe
from wings.training.run import train
from wings.training.trainer import NonFiniteLossError

FAST = ["optim.batch_size=4", "optim.gradient_accumulation_steps=1", "optim.bf16=false",
        "optim.gradient_checkpointing=false", "optim.save_steps=2", "optim.logging_steps=1"]


def _weights(directory):
    return load_file(str(directory / "model.safetensors"))


def _stage1(tiny_hub, data, images, out, extra=()):
    return main(["train", "wings_stage1", "--llm", str(tiny_hub / "llm"), "--vision", str(tiny_hub / "vision"),
                 "--data", str(data), "--image-folder", str(images), "--output", str(out), "--max-steps", "4",
                 *FAST, "model.learner_rank=4", *extra])


def test_stage1_then_stage2(tiny_hub, dataset, tmp_path):
    data, images = dataset
    s1, s2 = tmp_path / "s1", tmp_path / "s2"
    _stage1(tiny_hub, data, images, s1)
    w1 = _weights(s1)
    llm = load_file(str(tiny_hub / "llm" / "model.safetensors"))
    vision = load_file(str(tiny_hub / "vision" / "model.safetensors"))
    # Stage 1 trains only the projector and the visual learners: the LLM and tower are bit-identical.
    for key, value in llm.items():
        # Wrapped layers keep the LLM's own keys: the LLM part of the checkpoint is the plain LLM's.
        assert torch.equal(w1[f"language_model.{key}"], value), key
    for key, value in vision.items():
        assert torch.equal(w1[f"vision_tower.{key}"], value), key
    for key, value in w1.items():
        if "textual_learner" in key and (".up." in key or key.endswith("o_up.weight")):
            assert torch.count_nonzero(value) == 0, key  # untrained: still the zero init
    assert any(torch.count_nonzero(v) for k, v in w1.items() if "visual_learner" in k and k.endswith("o_up.weight"))
    assert (s1 / "checkpoint-4").is_dir() and not (s1 / ".staging").exists()
    assert json.loads((s1 / "config.json").read_text())["learner_mode"] == "visual_only"

    main(["train", "wings_stage2", "--init", str(s1), "--data", str(data), "--image-folder", str(images),
          "--output", str(s2), "--max-steps", "3", *FAST])
    w2 = _weights(s2)
    for key in w2:
        if key.startswith("vision_tower."):
            assert torch.equal(w2[key], w1[key]), key  # the tower is frozen in stage 2
    changed = {k for k in w2 if not torch.equal(w2[k], w1[k])}
    assert any("textual_learner" in k for k in changed) and any(".self_attn.q_proj." in k for k in changed)
    model = WingsForConditionalGeneration.from_pretrained(s2)
    assert model.config.learner_mode == "routed"
    assert (s2 / "tokenizer.json").exists() and (s2 / "processor_config.json").exists()


class _Crash(TrainerCallback):
    def __init__(self, at_step):
        self.at_step = at_step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.at_step:
            raise KeyboardInterrupt("simulated kill")


def test_resume_reaches_the_same_weights(tiny_hub, dataset, tmp_path):
    data, images = dataset
    recipe = load_recipe("wings_stage1", FAST + ["model.learner_rank=4"])
    kwargs = dict(data=str(data), image_folder=str(images), llm=str(tiny_hub / "llm"),
                  vision=str(tiny_hub / "vision"), max_steps=6)
    train(recipe, output=str(tmp_path / "straight"), **kwargs)
    with pytest.raises(KeyboardInterrupt):
        train(recipe, output=str(tmp_path / "killed"), callbacks=[_Crash(3)], **kwargs)
    assert (tmp_path / "killed" / "checkpoint-2").is_dir() and not (tmp_path / "killed" / "model.safetensors").exists()
    result = train(recipe, output=str(tmp_path / "killed"), resume=True, **kwargs)
    assert result.global_step == 6
    straight, resumed = _weights(tmp_path / "straight"), _weights(tmp_path / "killed")
    for key, value in straight.items():
        torch.testing.assert_close(resumed[key], value, rtol=0, atol=1e-6, msg=key)


@pytest.mark.parametrize("second", ["llava_stage2", "lora_stage2"])
def test_llava_and_lora_baselines(tiny_hub, dataset, tmp_path, second):
    data, images = dataset
    s1, s2 = tmp_path / "s1", tmp_path / "s2"
    main(["train", "llava_stage1", "--llm", str(tiny_hub / "llm"), "--vision", str(tiny_hub / "vision"),
          "--data", str(data), "--image-folder", str(images), "--output", str(s1), "--max-steps", "2", *FAST])
    model = WingsForConditionalGeneration.from_pretrained(s1)
    assert model.wings_layers == []  # the LLaVA baseline has no learners
    overrides = ["lora.r=4", "lora.alpha=8"] if second == "lora_stage2" else []
    main(["train", second, "--init", str(s1), "--data", str(data), "--image-folder", str(images),
          "--output", str(s2), "--max-steps", "2", *FAST, *overrides])
    w1, w2 = _weights(s1), _weights(s2)
    assert set(w1) == set(w2)  # LoRA adapters were merged: same keys as a plain model
    changed = [k for k in w1 if not torch.equal(w1[k], w2[k])]
    assert any(k.startswith("language_model.") and "q_proj" in k for k in changed)
    assert not any(k.startswith("vision_tower.") for k in changed)


def test_nan_loss_stops_with_the_step(tiny_hub, dataset, tmp_path):
    data, images = dataset
    with pytest.raises(NonFiniteLossError, match="training step"):
        _stage1(tiny_hub, data, images, tmp_path / "nan", extra=["train.projector=1e30", "optim.max_grad_norm=0"])


def test_bad_data_is_reported_before_training(tiny_hub, dataset, tmp_path, capsys):
    data, images = dataset
    (images / "img3.png").unlink()
    # `wings train` names the problem in one line (exit status 1); --debug raises it with its traceback.
    assert _stage1(tiny_hub, data, images, tmp_path / "bad") == 1
    assert "error: data.json: sample 3 (id 'v3'): image 'img3.png' not found" in capsys.readouterr().err
    with pytest.raises(DataError, match=r"sample 3 \(id 'v3'\): image 'img3.png' not found"):
        _stage1(tiny_hub, data, images, tmp_path / "bad", extra=["--debug"])
    assert not (tmp_path / "bad").exists()
    _stage1(tiny_hub, data, images, tmp_path / "skip", extra=["--skip-bad-samples"])
    assert (tmp_path / "skip" / "model.safetensors").exists()


@pytest.mark.slow
def test_two_process_cpu_run(tiny_hub, dataset, tmp_path):
    """The same command under torchrun with 2 CPU processes (gloo) trains and saves one model."""
    import os
    import subprocess
    import sys

    data, images = dataset
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           "-m", "wings.cli", "train", "wings_stage1", "--llm", str(tiny_hub / "llm"), "--vision",
           str(tiny_hub / "vision"), "--data", str(data), "--image-folder", str(images), "--output", str(out),
           "--max-steps", "3", *FAST, "optim.batch_size=2", "model.learner_rank=4"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "[wings train] wings_stage1: 3 steps" in done.stdout
    model = WingsForConditionalGeneration.from_pretrained(out)
    assert model.wings_layers
