"""Serving throughput of WINGS in vLLM, as ratios measured in one run on one machine.

    .venv-serve/bin/python benchmarks/serving.py [--device cpu|cuda] [--shape small|medium|large]
        [--rounds 2] [--repeats 3] [--enforce-eager] [--output benchmarks/results/serving.json]

A random WINGS model (Qwen2 LLM, learners of rank 64 in every layer, segment router, SigLIP tower) is
saved once, together with its plain LLM (the same weights without learners, a Qwen2 checkpoint). Rows:

  vllm wings / vllm plain LLM   output tokens/s of 16 concurrent text requests, WINGS over the plain
                                LLM, both in vLLM; target >= 0.75
  vllm wings / HF generate      output tokens/s of 16 concurrent requests with one image each, WINGS in
                                vLLM over WINGS through Hugging Face `generate` (one left-padded batch
                                of 16, cached decoding); target >= 5

KV memory: the KV-cache tokens vLLM reports for each engine in the same `VLLM_CPU_KVCACHE_SPACE` (GPU: the
same memory fraction), WINGS over the plain LLM, and the analytic ratio of cached channels per token
(`wings.serving.kv_memory`) for every preset's shape, with GPU and CPU head padding and without padding (the
method's own cost). `--kv-only` starts the two engines for their KV capacity and times nothing.

Both engines run vLLM's default execution mode (the decoder compiled: inductor on CPU, plus CUDA graphs
on GPUs), as `vllm serve` does; `--enforce-eager` measures the eager mode instead. Every request decodes
exactly `--tokens` tokens (EOS ignored on both sides, no detokenization). Each vLLM engine runs in a
subprocess of its own (one engine per process); the engine start is not timed, one warm-up request is.
On a shared machine the timings are noisy, so the WINGS and plain engines run in alternating rounds
(`--rounds`), each timing its workload `--repeats` times; the first row is reported as the ratio of the
median rounds' tokens/s, with the per-round ratios (best timing of each engine in the round) beside it.
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
    # hidden, heads, kv_heads, mlp, layers, vocab (at least; the tokenizer's own is ~400): a small LLM for the
    # shared 2-core CPU box, a medium one whose layers weigh more like a real model's, a larger one for GPUs.
    "small": dict(hidden_size=512, num_attention_heads=8, num_key_value_heads=2, intermediate_size=1408,
                  num_hidden_layers=4, vocab_size=0),
    "medium": dict(hidden_size=1024, num_attention_heads=16, num_key_value_heads=4, intermediate_size=2816,
                   num_hidden_layers=4, vocab_size=8192),
    "large": dict(hidden_size=2048, num_attention_heads=16, num_key_value_heads=4, intermediate_size=5632,
                  num_hidden_layers=12, vocab_size=32000),
}
DEFAULT_SHAPE = {"cpu": "small", "cuda": "large"}
CORPUS = [f"the {s} is {c}. what colour is the {s}? hello, how are you today? fine thanks."
          for s in ("circle", "square", "triangle", "star") for c in ("red", "green", "blue", "yellow")] * 8


def build(folder: Path, shape: str) -> tuple[Path, Path]:
    """Save a random WINGS model + processor and its plain LLM + tokenizer; returns (wings_dir, llm_dir)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM, SiglipImageProcessorPil, SiglipVisionConfig, SiglipVisionModel

    from wings import WingsForConditionalGeneration, WingsProcessor
    from wings.data.tokenizer import train_chat_tokenizer

    tokenizer = train_chat_tokenizer(CORPUS, vocab_size=400)
    torch.manual_seed(0)
    sizes = dict(SHAPES[shape])
    vocab = max(sizes.pop("vocab_size"), len(tokenizer) + 1)  # + 1: room for the image token
    llm = Qwen2ForCausalLM(Qwen2Config(
        **sizes, vocab_size=vocab, max_position_embeddings=4096,
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


def vllm_worker(model_dir: str, with_images: list[bool], tokens: int, dtype: str, repeats: int,
                enforce_eager: bool) -> dict:
    """Run in a subprocess: output tokens/s of vLLM over each workload, `repeats` timings each."""
    from vllm import LLM, SamplingParams

    llm = LLM(model=model_dir, dtype=dtype, max_model_len=1024, max_num_seqs=REQUESTS, enforce_eager=enforce_eager,
              limit_mm_per_prompt={"image": 1} if any(with_images) else None)
    params = SamplingParams(temperature=0, max_tokens=tokens, ignore_eos=True, detokenize=False)
    cache = llm.llm_engine.vllm_config.cache_config
    result = {"kv_cache_tokens": cache.num_gpu_blocks * cache.block_size}  # what vLLM logs as "KV cache size"
    for images in with_images:
        requests = [{"prompt": p, **({"multi_modal_data": {"image": im}} if im else {})} for p, im in workload(images)]
        llm.generate(requests[:1], SamplingParams(temperature=0, max_tokens=4, detokenize=False), use_tqdm=False)
        rates = []
        for _ in range(repeats):
            start = time.perf_counter()
            outputs = llm.generate(requests, params, use_tqdm=False)
            seconds = time.perf_counter() - start
            rates.append(sum(len(o.outputs[0].token_ids) for o in outputs) / seconds)
        result["images" if images else "text"] = rates
    return result


def run_vllm(model_dir: Path, with_images: list[bool], tokens: int, dtype: str, repeats: int,
             enforce_eager: bool) -> dict:
    command = [sys.executable, __file__, "--worker", str(model_dir), "--tokens", str(tokens), "--dtype", dtype,
               "--repeats", str(repeats), "--workloads", ",".join("images" if i else "text" for i in with_images)]
    if enforce_eager:
        command.append("--enforce-eager")
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


def analytic_kv_rows() -> dict[str, dict[str, float]]:
    """Per preset: cached KV channels per token of WINGS over the plain LLM (GPU padding, CPU padding, none)."""
    from wings.presets import PRESETS, preset_config
    from wings.serving.attention import supported_head_size
    from wings.serving.kv_memory import kv_channels

    rows = {}
    for name in PRESETS:
        config = preset_config(name)
        text = config.text_config
        rows[name] = {"gpu": kv_channels(config).ratio, "cpu": kv_channels(config, supported_head_size).ratio,
                      "method": kv_channels(config).method_ratio,
                      "heads": f"{text.num_attention_heads}/{text.num_key_value_heads}"}
    return rows


def print_kv(measured: dict[str, int], analytic: dict[str, dict[str, float]]) -> None:
    if measured:
        print(f"KV cache tokens in the same memory: WINGS {measured['wings']}, plain LLM {measured['plain']} "
              f"(plain / WINGS = {measured['plain'] / measured['wings']:.2f})")
    print("KV channels per token, WINGS / plain LLM   (query/KV heads; GPU padding, CPU padding, no padding)")
    for name, row in analytic.items():
        print(f"  {name:20s} {row['heads']:>6s}   {row['gpu']:5.2f}  {row['cpu']:5.2f}  {row['method']:5.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--shape", choices=sorted(SHAPES), default=None,
                        help="LLM size (default: small on cpu, large on cuda)")
    parser.add_argument("--tokens", type=int, default=64, help="output tokens per request")
    parser.add_argument("--rounds", type=int, default=2, help="alternating WINGS / plain engine runs")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of the workload per engine run")
    parser.add_argument("--enforce-eager", action="store_true",
                        help="run both vLLM engines eagerly (default: vLLM's compiled default, as `vllm serve`)")
    parser.add_argument("--output", type=Path, default=None, help="write the rows as JSON here")
    parser.add_argument("--kv-only", action="store_true", help="only the KV-cache capacity rows (no timing)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--workloads", default="", help=argparse.SUPPRESS)
    parser.add_argument("--dtype", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        flags = [name == "images" for name in args.workloads.split(",") if name]
        result = vllm_worker(args.worker, flags, args.tokens, args.dtype, args.repeats, args.enforce_eager)
        print(RESULT + json.dumps(result), flush=True)
        return

    shape = args.shape or DEFAULT_SHAPE[args.device]
    dtype = "bfloat16" if args.device == "cuda" else "float32"
    analytic = analytic_kv_rows()
    wings_rates, plain_rates, image_rates = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        wings_dir, llm_dir = build(Path(tmp), shape)
        if args.kv_only:
            measured = {name: run_vllm(folder, [], args.tokens, dtype, 0, True)["kv_cache_tokens"]
                        for name, folder in (("wings", wings_dir), ("plain", llm_dir))}
            print_kv(measured, analytic)
            if args.output:
                report = {"kv_cache_tokens": measured, "kv_channels_ratio": analytic,
                          "settings": {"shape": shape, "sizes": SHAPES[shape], "dtype": dtype,
                                       "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE")}}
                args.output.parent.mkdir(parents=True, exist_ok=True)
                args.output.write_text(json.dumps(report, indent=2) + "\n")
            return
        for round_index in range(args.rounds):
            # The image workload once (first round): its row compares with HF generate, not with the plain LLM.
            wings = run_vllm(wings_dir, [False, True] if round_index == 0 else [False], args.tokens, dtype,
                             args.repeats, args.enforce_eager)
            plain = run_vllm(llm_dir, [False], args.tokens, dtype, args.repeats, args.enforce_eager)
            kv_tokens = {"wings": wings["kv_cache_tokens"], "plain": plain["kv_cache_tokens"]}
            wings_rates.append(max(wings["text"]))
            plain_rates.append(max(plain["text"]))
            image_rates += wings.get("images", [])
        hf = hf_tokens_per_second(wings_dir, args.tokens, args.device, getattr(torch, dtype))
    round_ratios = [w / p for w, p in zip(wings_rates, plain_rates)]
    rows = {
        "vllm_wings_over_vllm_plain": float(np.median(wings_rates) / np.median(plain_rates)),
        "vllm_wings_over_hf_generate": float(np.median(image_rates) / hf),
    }
    report = {
        "rows": rows,
        "targets": TARGETS,
        "vllm_wings_over_vllm_plain_per_round": round_ratios,
        "kv_cache_tokens": kv_tokens,
        "kv_channels_ratio": analytic,
        "tokens_per_second": {"vllm_wings_text": float(np.median(wings_rates)),
                              "vllm_plain_text": float(np.median(plain_rates)),
                              "vllm_wings_images": float(np.median(image_rates)), "hf_generate_images": hf},
        "settings": {"device": args.device, "dtype": dtype, "requests": REQUESTS, "tokens": args.tokens,
                     "shape": shape, "sizes": SHAPES[shape], "rounds": args.rounds, "repeats": args.repeats,
                     "vllm_mode": "eager" if args.enforce_eager else "compiled"},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "load_average": os.getloadavg(),
                    "omp": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "VLLM_CPU_OMP_THREADS_BIND")}},
    }
    for name, value in rows.items():
        print(f"{name:32s} {value:7.2f}   (target >= {TARGETS[name]})")
    print(f"  per round (min / median / max)   {min(round_ratios):.2f} / {np.median(round_ratios):.2f} / "
          f"{max(round_ratios):.2f}")
    for name, value in report["tokens_per_second"].items():
        print(f"  {name:30s} {value:9.1f} output tokens/s")
    print_kv(kv_tokens, analytic)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
