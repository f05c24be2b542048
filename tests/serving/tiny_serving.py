"""A tiny saved WINGS directory for the vLLM tests: vLLM's CPU attention needs head sizes >= 32.

The learners and routers get random non-zero weights, so vLLM only matches Hugging Face `generate`
if it computes the learners exactly; layer 1 has no learners (vLLM's own decoder layer runs there).
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
    SiglipImageProcessorPil,
    SiglipVisionConfig,
    SiglipVisionModel,
)

from tiny import randomize_learners  # tests/: on the path of pytest and of the engine subprocesses below
from wings import WingsForConditionalGeneration
from wings.data.tokenizer import train_chat_tokenizer
from wings.processing import WingsProcessor, processor_image_settings

IMAGE_SIZE, PATCH = 32, 8  # 16 image tokens per image
CORPUS = [
    f"what colour is the {shape}? it is {colour}. hello, how are you? fine thanks, and you?"
    for shape in ("circle", "square", "triangle")
    for colour in ("red", "green", "blue", "yellow")
] * 5


# The LLM families the plugin serves, each with what distinguishes it switched on. Qwen3, Mistral and Ministral
# get an explicit head_dim (128, 64, 64) other than the learners' d/H of 32, so the learners need RoPE tables of
# their own, as in Qwen3-4B or Mistral Nemo. Windows of SLIDING_WINDOW tokens are shorter than the test prompts.
SLIDING_WINDOW = 12
FAMILY_LLMS = {
    "qwen2": (Qwen2Config, Qwen2ForCausalLM, {}),
    # Grouped-query attention at 8 / 2 heads of 32 channels; Qwen3's main attention at a head size of 128.
    "llama": (LlamaConfig, LlamaForCausalLM, dict(hidden_size=256, num_attention_heads=8, num_key_value_heads=2)),
    "qwen3": (Qwen3Config, Qwen3ForCausalLM, dict(head_dim=128)),
    "mistral": (MistralConfig, MistralForCausalLM, dict(head_dim=64, sliding_window=SLIDING_WINDOW)),
    "ministral": ("MinistralConfig", "MinistralForCausalLM", dict(
        head_dim=64, sliding_window=SLIDING_WINDOW, layer_types=["sliding_attention", "full_attention", "sliding_attention"])),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", {}),
    "olmo2": ("Olmo2Config", "Olmo2ForCausalLM", {}),
    "smollm3": ("SmolLM3Config", "SmolLM3ForCausalLM", dict(no_rope_layers=[1, 0, 0])),
    "gemma3_text": ("Gemma3TextConfig", "Gemma3ForCausalLM", dict(
        head_dim=64, sliding_window=SLIDING_WINDOW, query_pre_attn_scalar=20,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"])),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", dict(
        head_dim=64, sliding_window=SLIDING_WINDOW, attn_logit_softcapping=5.0, final_logit_softcapping=3.0,
        query_pre_attn_scalar=20)),
    "qwen3_moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM", dict(
        head_dim=64, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=64, mlp_only_layers=[1])),
    "granite": ("GraniteConfig", "GraniteForCausalLM", dict(
        embedding_multiplier=2.0, residual_multiplier=0.5, attention_multiplier=0.2, logits_scaling=2.0)),
}


def tiny_tower(encoder: str):
    """A tiny vision tower of `encoder` ("siglip", "clip" or "siglip2", the NaFlex model) seeing IMAGE_SIZE-pixel
    squares as (IMAGE_SIZE / PATCH)^2 patches."""
    from transformers import CLIPVisionConfig, CLIPVisionModel, Siglip2VisionConfig, Siglip2VisionModel

    common = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=2, patch_size=PATCH)
    if encoder == "siglip":
        return SiglipVisionModel(SiglipVisionConfig(image_size=IMAGE_SIZE, **common))
    if encoder == "clip":
        return CLIPVisionModel(CLIPVisionConfig(image_size=IMAGE_SIZE, **common))
    if encoder == "siglip2":
        return Siglip2VisionModel(Siglip2VisionConfig(num_patches=(IMAGE_SIZE // PATCH) ** 2, **common))
    raise ValueError(encoder)


def save_tiny_wings(folder: Path, family: str = "qwen2", learner_layers=(0, 2), encoder: str = "siglip",
                    **settings) -> Path:
    """Save model + processor (as `wings train` does) to `folder`; returns it. family: a key of FAMILY_LLMS;
    encoder: see `tiny_tower`."""
    tokenizer = train_chat_tokenizer(CORPUS, vocab_size=300)
    torch.manual_seed(0)
    common = dict(
        hidden_size=128, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=3, intermediate_size=192,
        vocab_size=len(tokenizer), max_position_embeddings=1024, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
    )
    config_class, model_class, extra = FAMILY_LLMS[family]
    if isinstance(config_class, str):
        import transformers

        config_class, model_class = getattr(transformers, config_class), getattr(transformers, model_class)
    llm = model_class(config_class(**{**common, **extra}))
    with torch.no_grad():  # norms start at the identity; random ones make a misplaced norm (q_norm, k_norm) visible
        for name, p in llm.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    torch.manual_seed(1)
    vision = tiny_tower(encoder)
    torch.manual_seed(2)
    model = WingsForConditionalGeneration.from_llm_and_vision(
        llm.eval(), vision.eval(), tokenizer=tokenizer, learner_rank=8, learner_layers=list(learner_layers), **settings
    ).eval()
    randomize_learners(model)
    processor = WingsProcessor(
        SiglipImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}), tokenizer,
        **processor_image_settings(model.config),
    )
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return Path(folder)


def rename_to_llm_keys(folder: Path) -> None:
    """Rewrite the checkpoint with the LLM's own names in layers with learners (no `.decoder_layer.`)."""
    path = Path(folder) / "model.safetensors"
    tensors = load_file(path)
    save_file({k.replace(".decoder_layer.", "."): v for k, v in tensors.items()}, path, metadata={"format": "pt"})


def rename_to_decoder_layer_keys(folder: Path) -> None:
    """Rewrite the checkpoint in the layout saved before layers with learners kept the LLM's own names:
    the LLM weights of such a layer under `layers.N.decoder_layer.<key>` (a no-op on that layout)."""
    path = Path(folder) / "model.safetensors"
    tensors = load_file(path)
    with_learners = {m.group(1) for k in tensors if (m := re.search(r"\.layers\.(\d+)\.visual_learner\.", k))}

    def old(key: str) -> str:
        match = re.search(r"\.layers\.(\d+)\.(?!decoder_layer\.|visual_learner\.|textual_learner\.|router\.)", key)
        if not match or match.group(1) not in with_learners:
            return key
        return key[: match.end()] + "decoder_layer." + key[match.end():]

    save_file({old(k): v for k, v in tensors.items()}, path, metadata={"format": "pt"})


def save_tiny_hub(folder: Path) -> tuple[Path, Path]:
    """What a user starts `wings train` from: a tiny Qwen2 LLM with its tokenizer and a SigLIP tower with its
    image processor, each saved as on the Hub. Returns (llm_dir, vision_dir)."""
    tokenizer = train_chat_tokenizer(CORPUS, vocab_size=300)
    torch.manual_seed(0)
    llm = Qwen2ForCausalLM(Qwen2Config(
        hidden_size=128, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2, intermediate_size=192,
        vocab_size=len(tokenizer), max_position_embeddings=1024, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
    ))
    vision = SiglipVisionModel(SiglipVisionConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                                  num_attention_heads=2, image_size=IMAGE_SIZE, patch_size=PATCH))
    llm_dir, vision_dir = Path(folder) / "llm", Path(folder) / "vision"
    llm.save_pretrained(llm_dir)
    tokenizer.save_pretrained(llm_dir)
    vision.save_pretrained(vision_dir)
    SiglipImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}).save_pretrained(vision_dir)
    return llm_dir, vision_dir


def write_llava_data(folder: Path, n_image: int = 12, n_text: int = 4) -> tuple[Path, Path]:
    """A LLaVA-format data file (image questions about random images, text-only chat); returns (json, image folder)."""
    import json

    images = Path(folder) / "images"
    images.mkdir(parents=True, exist_ok=True)
    samples = []
    for i in range(n_image):
        sample_image(100 + i).save(images / f"img{i}.png")
        samples.append({"id": f"v{i}", "image": f"img{i}.png", "conversations": [
            {"from": "human", "value": "<image>\nwhat colour is the circle?"},
            {"from": "gpt", "value": ("red", "green", "blue", "yellow")[i % 4]},
        ]})
    for i in range(n_text):
        samples.append({"id": f"t{i}", "conversations": [
            {"from": "human", "value": "hello, how are you?"}, {"from": "gpt", "value": "fine thanks, and you?"},
        ]})
    data = Path(folder) / "data.json"
    data.write_text(json.dumps(samples))
    return data, images


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_healthy(process, port: int, log_path: Path, seconds: int = 300) -> None:
    """Block until the server answers /health; raises with the log's tail if it exits or takes too long."""
    import time
    import urllib.request

    deadline = time.time() + seconds
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}:\n{log_path.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise RuntimeError(f"the server did not come up in {seconds} s:\n{log_path.read_text()[-4000:]}")


@contextmanager
def running_server(command: list[str], log_path: Path):
    """Start an OpenAI-compatible server (`command` must bind 127.0.0.1:port); yields its base URL and
    stops it on exit. VLLM_CPU_KVCACHE_SPACE defaults to 1 GiB, enough for the tiny models."""
    import os
    import subprocess

    port = command[command.index("--port") + 1]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        wait_until_healthy(process, int(port), log_path)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def chat(client, content, n_tokens: int, token_ids: bool = False) -> str | list[int]:
    """The reply to one user message through an `openai` client: greedy, exactly n_tokens long. token_ids: return
    the reply's token ids instead of its text (an untrained model's text may be partial UTF-8, which detokenizers
    differ on)."""
    extra_body = {"min_tokens": n_tokens}
    if token_ids:
        extra_body["return_tokens_as_token_ids"] = True
    response = client.chat.completions.create(
        model=client.models.list().data[0].id,
        messages=[{"role": "user", "content": content}],
        max_tokens=n_tokens, temperature=0, logprobs=token_ids, extra_body=extra_body,
    )
    if token_ids:
        return [int(step.token.removeprefix("token_id:")) for step in response.choices[0].logprobs.content]
    return response.choices[0].message.content


def user_prompt(processor, text: str, n_images: int) -> str:
    """The prompt a processor's chat template makes of one user message: n_images images, then the text."""
    parts = [{"type": "image"}] * n_images + [{"type": "text", "text": text}]
    return processor.apply_chat_template([{"role": "user", "content": parts}], add_generation_prompt=True)


def image_part(image: Image.Image) -> dict:
    """An OpenAI chat content part carrying `image` as a base64 PNG data URL."""
    import base64
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    data = base64.b64encode(buffer.getvalue()).decode()
    return {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}"}}


def sample_image(seed: int, size: tuple[int, int] = (40, 28)) -> Image.Image:
    """A small random RGB image (not square, so 'pad' mode matters)."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


USER, END = "<|im_start|>user\n", "<|im_end|>\n<|im_start|>assistant\n"
# (prompt, number of images) for engines in their own process: text only, one image after text, two images.
ENGINE_PROMPTS = [
    (USER + "hello, how are you?" + END, 0),
    (USER + "fine thanks <image>\nwhat colour is the circle?" + END, 1),
    (USER + "<image>\nand <image>\nwhat colour is the square? it is" + END, 2),
]

ENGINE_SCRIPT = """
import gc, json, sys
sys.path[:0] = [{here!r}, {tests!r}]  # tests/serving (tiny_serving) and tests/ (tiny, which it imports)
from tiny_serving import sample_image
from vllm import LLM, SamplingParams

if __name__ == "__main__":
    folders, prompts, n_tokens = json.loads(sys.argv[1]), json.loads(sys.argv[2]), int(sys.argv[3])
    enforce_eager, tp_size = sys.argv[4] == "1", int(sys.argv[5])
    # image (width, height) per prompt and image (default: sample_image's), and further LLM(...) options
    sizes, options = json.loads(sys.argv[6]), json.loads(sys.argv[7])
    results = []
    for folder in folders:  # one engine after the other: the process starts (imports vLLM) once
        llm = LLM(model=folder, dtype="float32", enforce_eager=enforce_eager, max_model_len=512, block_size=32,
                  max_num_seqs=4, limit_mm_per_prompt={{"image": 2}}, tensor_parallel_size=tp_size,
                  distributed_executor_backend="mp" if tp_size > 1 else None, **options)
        requests = [{{"prompt": p}} for p, _ in prompts]
        for k, (request, (_, n)) in enumerate(zip(requests, prompts)):
            if n:
                request["multi_modal_data"] = {{"image": [sample_image(i, *([tuple(sizes[k][i])] if sizes else []))
                                                          for i in range(n)]}}
        params = SamplingParams(temperature=0, max_tokens=n_tokens, min_tokens=n_tokens, logprobs=0)
        outputs = [o.outputs[0] for o in llm.generate(requests, params, use_tqdm=False)]
        results.append([[list(o.token_ids), [step[t].logprob for step, t in zip(o.logprobs, o.token_ids)]]
                        for o in outputs])
        llm.llm_engine.engine_core.shutdown()
        del llm, outputs
        gc.collect()
    print("engine-result: " + json.dumps(results), flush=True)
"""


def greedy_with_logprobs(model, processor, prompt: str, images: list, n_tokens: int) -> tuple[list[int], torch.Tensor]:
    """Greedy ids of Hugging Face `generate` (exactly n_tokens) and each step's log-softmax row [n_tokens, V],
    with the image token suppressed in the rows as vLLM suppresses it."""
    inputs = processor(prompt, images=list(images) or None)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=n_tokens, min_new_tokens=n_tokens, do_sample=False,
                             output_logits=True, return_dict_in_generate=True)
    ids = out.sequences[0, inputs["input_ids"].shape[1]:].tolist()
    logits = torch.stack(out.logits)[:, 0].float()
    logits[:, model.config.image_token_id] = float("-inf")
    return ids, torch.log_softmax(logits, dim=-1)


def hf_greedy(folder: Path, prompts: list[tuple[str, int]], n_tokens: int,
              with_logprobs: bool = False) -> list[list[int]] | list[tuple[list[int], list[float]]]:
    """Greedy ids of the saved model through Hugging Face `generate`; prompt i carries images sample_image(0..n-1).

    with_logprobs: also each chosen token's log-probability (the image token suppressed, as in vLLM).
    """
    model = WingsForConditionalGeneration.from_pretrained(folder).eval()
    processor = WingsProcessor.from_pretrained(folder)
    results = []
    for prompt, n_images in prompts:
        ids, rows = greedy_with_logprobs(model, processor, prompt, [sample_image(i) for i in range(n_images)], n_tokens)
        logprobs = rows[torch.arange(len(ids)), ids].tolist()
        results.append((ids, logprobs) if with_logprobs else ids)
    return results


def engine_greedy(folder: Path, prompts: list[tuple[str, int]], n_tokens: int, workdir: Path,
                  enforce_eager: bool = True, tensor_parallel_size: int = 1,
                  with_logprobs: bool = False) -> list[list[int]] | list[tuple[list[int], list[float]]]:
    """Greedy ids (and with_logprobs, each chosen token's log-probability) from a vLLM engine in a subprocess
    of its own (a test session's engine lives in-process).

    enforce_eager=False runs vLLM's default compiled path (the decoder traced once and compiled by inductor).
    tensor_parallel_size > 1 starts one worker process per rank, each bound to one of this process's CPUs.
    """
    (results,) = engines_greedy([folder], prompts, n_tokens, workdir, enforce_eager, tensor_parallel_size)
    return [tuple(r) for r in results] if with_logprobs else [ids for ids, _ in results]


def engines_greedy(folders: list[Path], prompts: list[tuple[str, int]], n_tokens: int, workdir: Path,
                   enforce_eager: bool = True, tensor_parallel_size: int = 1, image_sizes=None,
                   **llm_options) -> list[list[tuple[list[int], list[float]]]]:
    """`engine_greedy` for several saved models, one engine after the other in one subprocess (vLLM is imported
    once): per folder, per prompt, (greedy ids, their log-probabilities).

    image_sizes: per prompt, the (width, height) of each of its images (default: `sample_image`'s size);
    llm_options: further `vllm.LLM` arguments (e.g. max_num_batched_tokens)."""
    import json
    import os
    import subprocess
    import sys

    script = Path(workdir) / "engine.py"
    here = Path(__file__).parent
    script.write_text(ENGINE_SCRIPT.format(here=str(here), tests=str(here.parent)))
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
           "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
    if tensor_parallel_size > 1:
        # vLLM binds each CPU worker's threads to a NUMA node; a one-node machine needs explicit per-rank CPUs.
        cpus = sorted(os.sched_getaffinity(0))[:tensor_parallel_size]
        env["VLLM_CPU_OMP_THREADS_BIND"] = "|".join(str(c) for c in cpus)
    args = [sys.executable, str(script), json.dumps([str(f) for f in folders]), json.dumps(prompts), str(n_tokens),
            "1" if enforce_eager else "0", str(tensor_parallel_size), json.dumps(image_sizes), json.dumps(llm_options)]
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=900 * len(folders))
    assert done.returncode == 0, done.stderr[-3000:]
    (line,) = [line for line in done.stdout.splitlines() if line.startswith("engine-result: ")]
    return [[tuple(r) for r in per_folder] for per_folder in json.loads(line[len("engine-result: "):])]
