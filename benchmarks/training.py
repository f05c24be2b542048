"""Training rows: one optimizer step, WINGS stage 2 / LLaVA-style full finetune, and (CUDA) its MFU."""

from __future__ import annotations

import copy
import gc

import torch
from analytic import flop_ratio, forward_flops
from common import Settings, autocast, image_token_id, interleaved, make_inputs, merged_embeds, row, timed


def train_steps(models: dict, s: Settings, device: str) -> dict:
    """One optimizer step each: WINGS stage 2 (LLM, learners, routers, projector) and LLaVA-style full
    finetuning of the unwrapped LLM with the same projector."""
    ids, _ = make_inputs(s.shape, s.train_length, s.image_start, seed=3, device=device)
    gen = torch.Generator().manual_seed(4)
    tower_out = (torch.randn(1, s.shape.image_tokens, s.shape.vision_hidden, generator=gen)).to(device)
    image_id = image_token_id(s.shape)
    labels = ids.masked_fill(ids == image_id, -100)
    steps = {}
    for name in ("wings", "llm"):
        # A copy per run: training changes the weights the other rows use.
        model = copy.deepcopy(models[name]).train()
        projector = model.multi_modal_projector if name == "wings" else copy.deepcopy(
            models["wings"].multi_modal_projector).train()
        if name == "wings":
            model.vision_tower.requires_grad_(False)
        params = [p for p in model.parameters() if p.requires_grad]
        if name == "llm":
            params += list(projector.parameters())
        optimizer = torch.optim.AdamW(params, lr=1e-6, fused=True)

        def step(name=name, model=model, projector=projector, optimizer=optimizer):
            with autocast(device):
                feats = projector(tower_out)
                if name == "wings":
                    loss = model(ids, image_features=feats, labels=labels, use_cache=False).loss
                else:
                    embeds = merged_embeds(model, ids, feats.reshape(-1, feats.shape[-1]), image_id)
                    loss = model(inputs_embeds=embeds, labels=labels, use_cache=False).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        steps[name] = step
    return steps


def bench_train(models: dict, s: Settings, device: str) -> list[dict]:
    steps = train_steps(models, s, device)
    t, ratio = interleaved(steps, s.train_repeats, device)
    fr = flop_ratio(s.shape, s.train_length)
    del steps
    gc.collect()
    return [row(f"train step@{s.train_length}", ratio, 1.15 * fr, flop_ratio=fr,
                wings_s=t["wings"], llm_s=t["llm"])]


# Dense bf16 peak FLOP/s of common accelerators (for the MFU row); others report achieved FLOP/s only.
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10": 125e12}


def bench_mfu(models: dict, s: Settings, device: str) -> list[dict]:
    """Model FLOPs utilisation of one WINGS stage-2 training step (3 x forward matmul FLOPs / time / peak)."""
    step = train_steps(models, s, device)["wings"]
    step()  # warm-up
    seconds = min(timed(step, device) for _ in range(s.train_repeats))
    flops = 3 * sum(forward_flops(s.shape, s.train_length, s.shape.image_tokens, wings=True).values())
    name = torch.cuda.get_device_name()
    peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)
    achieved = flops / seconds
    return [row(f"train step@{s.train_length} MFU (bf16)", achieved / peak if peak else float("nan"), None,
                achieved_tflops=achieved / 1e12, peak_tflops=(peak or float("nan")) / 1e12, step_s=seconds, gpu=name)]
