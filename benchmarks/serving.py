"""Serving throughput of WINGS in vLLM, as ratios measured in one run on one machine.

    .venv-serve/bin/python benchmarks/serving.py [--device cpu|cuda] [--output benchmarks/results/serving.json]

A random WINGS model (Qwen2 LLM, learners in every layer, segment router, SigLIP tower) is saved
once, together with its plain LLM (the same weights without learners, a Qwen2 checkpoint). Rows:

  vllm wings / vllm plain LLM   output tokens/s of 16 concurrent text requests, WINGS over the plain
                                LLM, both in vLLM; target >= 0.75
  vllm wings / HF generate      output tokens/s of 16 concurrent requests with one image each, WINGS in
                                vLLM over WINGS through Hugging Face `generate` (one left-padded batch
                                of 16, cached decoding); target >= 5

Every request decodes exactly `--tokens` tokens (EOS ignored on both sides). Each vLLM engine runs in
a subprocess of its own (one engine per process); the engine start is not timed, one warm-up request is.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

REQUESTS = 16
RESULT = "serving-benchmark-result: "  # marks the worker's result line among vLLM's log lines
TARGETS = {"vllm_wings_over_vllm_plain": 0.75, "vllm_wings_over_hf_generate": 5.0}
SHAPES = {
    # hidden, heads, kv_heads, mlp, layers: a small LLM for the shared 2-core CPU box, a larger one for GPUs.
    "cpu": dict(hidden_size=512, num_attention_heads=8, num_key_value_heads=2, intermediate_size=1408,
                num_hidden_layers=4),
    "cuda": dict(hidden_size=2048, num_attention_heads=16, num_key_value_heads=4, intermediate_size=5632,
                 num_hidden_layers=12),
}
CORPUS = [f"the {s} is {c}. what colour is the {s}? hello, how are you today? fine thanks."
          for s in ("circle", "square", "triangle", "star") for c in ("red", "green", "blue", "yellow")] * 8


def build(folder: Path, device: str) -> tuple[Path, Path]:
    """Save a random WINGS model + processor and its plain LLM + tokenizer; returns (wings_dir, llm_dir)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM, SiglipImageProcessorPil, SiglipVisionConfig, SiglipVisionModel

    from wings import WingsForConditionalGeneration, WingsProcessor
    from wings.data.tokenizer import train_chat_tokenizer

    tokenizer = train_chat_tokenizer(CORPUS, vocab_size=400)
    torch.manual_seed(0)
    llm = Qwen2ForCausalLM(Qwen2Config(
        **SHAPES[device], vocab_size=len(tokenizer), max_position_embeddings=4096,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
    ))
    vision = SiglipVisionModel(SiglipVisionConfig(
        hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2, image_size=64, patch_size=8,
    ))
    wings_dir, llm_dir = folder / "wings", folder / "llm"
    llm.save_pretrained(llm_dir)
    tokenizer.save_pretrained(llm_dir)
    model = WingsForConditionalGeneration.from_llm_and_vision(llm, vision, tokenizer=tokenizer, learner_rank=64)
    with torch.no_grad():  # non-zero learners: the same work as a trained model
        for layer in model.wings_layers:
            for part in (layer.visual_learner, layer.textual_learner):
                part.o_up.weight.normal_(std=0.02)
                for block in (part.q, part.k, part.v):
                    block.up.weight.normal_(std=0.02)
    model.save_pretrained(wings_dir)
    processor = WingsProcessor(SiglipImageProcessorPil(size={"height": 64, "width": 64}), tokenizer,
                               image_seq_length=model.config.image_seq_length)
    processor.save_pretrained(wings_dir)
    return wings_dir, llm_dir


def workload(with_images: bool) -> list[tuple[str, list]]:
    rng = np.random.default_rng(0)
    requests = []
    for i in range(REQUESTS):
        text = " ".join(CORPUS[i: i + 3])
        images = [Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))] if with_images else []
        marker = "<image>\n" if with_images else ""
        requests.append((f"<|im_start|>user\n{marker}{text}<|im_end|>\n<|im_start|>assistant\n", images))
    return requests


def vllm_worker(model_dir: str, with_images: list[bool], tokens: int, dtype: str) -> dict:
    """Run in a subprocess: output tokens/s of vLLM over each workload."""
    from vllm import LLM, SamplingParams

    llm = LLM(model=model_dir, dtype=dtype, max_model_len=1024, max_num_seqs=REQUESTS, enforce_eager=True,
              limit_mm_per_prompt={"image": 1} if any(with_images) else None)
    params = SamplingParams(temperature=0, max_tokens=tokens, ignore_eos=True)
    result = {}
    for images in with_images:
        requests = [{"prompt": p, **({"multi_modal_data": {"image": im}} if im else {})} for p, im in workload(images)]
        llm.generate(requests[:1], SamplingParams(temperature=0, max_tokens=4), use_tqdm=False)  # warm-up
        start = time.perf_counter()
        outputs = llm.generate(requests, params, use_tqdm=False)
        seconds = time.perf_counter() - start
        produced = sum(len(o.outputs[0].token_ids) for o in outputs)
        result["images" if images else "text"] = produced / seconds
    return result


def run_vllm(model_dir: Path, with_images: list[bool], tokens: int, dtype: str) -> dict:
    command = [sys.executable, __file__, "--worker", str(model_dir), "--tokens", str(tokens), "--dtype", dtype,
               "--workloads", ",".join("images" if i else "text" for i in with_images)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"vLLM worker failed:\n{done.stderr[-4000:]}")
    (line,) = [line for line in done.stdout.splitlines() if line.startswith(RESULT)]
    return json.loads(line[len(RESULT):])


def hf_tokens_per_second(wings_dir: Path, tokens: int, device: str, dtype: torch.dtype) -> float:
    from wings import WingsForConditionalGeneration, WingsProcessor

    model = WingsForConditionalGeneration.from_pretrained(wings_dir, dtype=dtype).to(device).eval()
    processor = WingsProcessor.from_pretrained(wings_dir)
    requests = workload(True)
    batch = processor([p for p, _ in requests], images=[im for _, ims in requests for im in ims]).to(device)
    kwargs = dict(max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
    with torch.no_grad():
        model.generate(**processor(requests[0][0], images=requests[0][1]).to(device), max_new_tokens=4)  # warm-up
        start = time.perf_counter()
        out = model.generate(**batch, **kwargs)
        if device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    produced = (out.shape[1] - batch["input_ids"].shape[1]) * out.shape[0]
    return produced / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--tokens", type=int, default=64, help="output tokens per request")
    parser.add_argument("--output", type=Path, default=None, help="write the rows as JSON here")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--workloads", default="", help=argparse.SUPPRESS)
    parser.add_argument("--dtype", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        flags = [name == "images" for name in args.workloads.split(",")]
        print(RESULT + json.dumps(vllm_worker(args.worker, flags, args.tokens, args.dtype)), flush=True)
        return

    dtype = "bfloat16" if args.device == "cuda" else "float32"
    with tempfile.TemporaryDirectory() as tmp:
        wings_dir, llm_dir = build(Path(tmp), args.device)
        wings = run_vllm(wings_dir, [False, True], args.tokens, dtype)
        plain = run_vllm(llm_dir, [False], args.tokens, dtype)
        hf = hf_tokens_per_second(wings_dir, args.tokens, args.device, getattr(torch, dtype))
    rows = {
        "vllm_wings_over_vllm_plain": wings["text"] / plain["text"],
        "vllm_wings_over_hf_generate": wings["images"] / hf,
    }
    report = {
        "rows": rows,
        "targets": TARGETS,
        "tokens_per_second": {"vllm_wings_text": wings["text"], "vllm_plain_text": plain["text"],
                              "vllm_wings_images": wings["images"], "hf_generate_images": hf},
        "settings": {"device": args.device, "dtype": dtype, "requests": REQUESTS, "tokens": args.tokens,
                     "shape": SHAPES[args.device]},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "load_average": os.getloadavg()},
    }
    for name, value in rows.items():
        print(f"{name:32s} {value:7.2f}   (target >= {TARGETS[name]})")
    for name, value in report["tokens_per_second"].items():
        print(f"  {name:30s} {value:9.1f} output tokens/s")
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
