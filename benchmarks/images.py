"""What images at their own size cost: image tokens per image, and prefill time next to the fixed layout.

    .venv/bin/python benchmarks/images.py [--quick] [--device cpu|cuda] [--output benchmarks/results/images.json]

Two tables:

  tokens    image tokens of common image sizes under each layout of common encoders (exact, from
            `wings.image_token_count`): fixed (one square), anyres (LLaVA-NeXT tiling, with and without 2x2
            pooling of the tiles) and native (SigLIP 2 NaFlex at 256 and 1024 patches).
  forward   one prefill (no grad) of a random WINGS model with one 640x480 photo and a 64-token question:
            seconds, and the ratio to the fixed layout measured in the same run (the baseline a user has today).
            The encoder and the LLM are small (see SHAPE); the tower runs on every tile.

Rounds alternate the layouts; each row reports the median over rounds. Results go to `--output` as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from PIL import Image  # noqa: E402
from transformers import (  # noqa: E402
    Qwen2Config,
    Qwen2ForCausalLM,
    Siglip2VisionConfig,
    Siglip2VisionModel,
    SiglipImageProcessorPil,
    SiglipVisionConfig,
    SiglipVisionModel,
)

from wings import ImageLayout, WingsForConditionalGeneration, image_token_count  # noqa: E402
from wings.image_layout import default_grid_pinpoints  # noqa: E402
from wings.processing import WingsProcessor, processor_image_settings  # noqa: E402

SIZES = [(336, 336), (480, 640), (720, 1280), (1080, 1920), (1024, 768), (400, 1600), (2000, 1000)]
ENCODERS = {  # name: (tile side, patch side)
    "CLIP ViT-L/14-336 (LLaVA-NeXT)": (336, 14),
    "SigLIP so400m/14-384": (384, 14),
}
NAFLEX = {"SigLIP 2 NaFlex/16, 256 patches": 256, "SigLIP 2 NaFlex/16, 1024 patches": 1024}
SHAPE = dict(hidden_size=512, num_attention_heads=8, num_key_value_heads=2, intermediate_size=1408,
             num_hidden_layers=4, vocab_size=1024)
TOWER = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4)
IMAGE_TOKEN_ID = 1023


def token_table() -> list[dict]:
    rows = []
    for name, (tile, patch) in ENCODERS.items():
        pinpoints = tuple(map(tuple, default_grid_pinpoints(tile)))
        layouts = {
            "fixed": ImageLayout("fixed", tile, patch),
            "anyres": ImageLayout("anyres", tile, patch, pinpoints),
            "anyres, 2x2 pooling": ImageLayout("anyres", tile, patch, pinpoints, pooling=2),
        }
        for label, layout in layouts.items():
            rows.append({"encoder": name, "layout": label,
                         "tokens": {f"{h}x{w}": image_token_count(h, w, layout) for h, w in SIZES}})
    for name, patches in NAFLEX.items():
        layout = ImageLayout("native", 256, 16, max_num_patches=patches)
        rows.append({"encoder": name, "layout": "native",
                     "tokens": {f"{h}x{w}": image_token_count(h, w, layout) for h, w in SIZES}})
    return rows


def build(layout: str) -> tuple[WingsForConditionalGeneration, WingsProcessor]:
    torch.manual_seed(0)
    llm = Qwen2ForCausalLM(Qwen2Config(**SHAPE)).eval()
    torch.manual_seed(1)
    if layout == "native":
        tower = Siglip2VisionModel(Siglip2VisionConfig(**TOWER, patch_size=16, num_patches=256)).eval()
        settings = dict(image_layout="native", max_num_patches=1024)
    else:
        tower = SiglipVisionModel(SiglipVisionConfig(**TOWER, image_size=224, patch_size=14)).eval()
        settings = dict(image_layout="anyres" if layout.startswith("anyres") else "fixed",
                        image_pooling=2 if layout == "anyres, 2x2 pooling" else 1)
    model = WingsForConditionalGeneration.from_llm_and_vision(
        llm, tower, image_token_id=IMAGE_TOKEN_ID, learner_rank=64, **settings).eval()
    side = 224 if layout != "native" else 256
    image_processor = SiglipImageProcessorPil(size={"height": side, "width": side})
    from wings.data.tokenizer import train_chat_tokenizer

    tokenizer = train_chat_tokenizer(["a photo of a cat on a mat. what is in the image?"] * 4, vocab_size=300)
    processor = WingsProcessor(image_processor, tokenizer, **processor_image_settings(model.config))
    return model, processor


def forward_inputs(model, processor, image: Image.Image, text_tokens: int = 64) -> dict:
    n_image = processor.image_token_count(image)
    ids = torch.tensor([[3] * 8 + [IMAGE_TOKEN_ID] * n_image + [4] * (text_tokens - 8)])
    return dict(input_ids=ids, attention_mask=torch.ones_like(ids), **processor.prepare_images([image]))


def forward_table(device: str, rounds: int) -> list[dict]:
    image = Image.new("RGB", (640, 480), (120, 80, 40))
    layouts = ["fixed", "anyres", "anyres, 2x2 pooling", "native"]
    built = {name: build(name) for name in layouts}
    inputs = {name: {k: v.to(device) for k, v in forward_inputs(m, p, image).items()} for name, (m, p) in built.items()}
    times: dict[str, list[float]] = {name: [] for name in layouts}
    with torch.no_grad():
        for name in layouts:  # warm-up
            built[name][0].to(device)(**inputs[name], use_cache=False, logits_to_keep=1)
        for r in range(rounds):
            for name in layouts[r % len(layouts):] + layouts[: r % len(layouts)]:
                model = built[name][0]
                if device == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                model(**inputs[name], use_cache=False, logits_to_keep=1)
                if device == "cuda":
                    torch.cuda.synchronize()
                times[name].append(time.perf_counter() - start)
    base = statistics.median(times["fixed"])
    return [{"layout": name, "image_tokens": int((inputs[name]["input_ids"] == IMAGE_TOKEN_ID).sum()),
             "seconds": statistics.median(times[name]), "over_fixed": statistics.median(times[name]) / base}
            for name in layouts]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds instead of 10")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (0: torch's default)")
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    if args.device == "cpu" and args.threads:
        torch.set_num_threads(args.threads)
    tokens = token_table()
    sizes = [f"{h}x{w}" for h, w in SIZES]
    print("image tokens per image (height x width)")
    print("| encoder | layout | " + " | ".join(sizes) + " |")
    print("|---|---|" + "---:|" * len(sizes))
    for row in tokens:
        print(f"| {row['encoder']} | {row['layout']} | " + " | ".join(str(row["tokens"][s]) for s in sizes) + " |")
    forward = forward_table(args.device, 3 if args.quick else 10)
    print(f"\nprefill, one 640x480 image + 64 text tokens ({args.device}, {SHAPE['num_hidden_layers']}-layer LLM "
          f"d={SHAPE['hidden_size']}, {TOWER['num_hidden_layers']}-layer tower)")
    print("| layout | image tokens | seconds | / fixed |")
    print("|---|---:|---:|---:|")
    for row in forward:
        print(f"| {row['layout']} | {row['image_tokens']} | {row['seconds']:.4f} | {row['over_fixed']:.2f} |")
    if args.output:
        machine = {"platform": platform.platform(), "processor": platform.processor(), "device": args.device,
                   "threads": torch.get_num_threads(), "torch": torch.__version__}
        with open(args.output, "w") as f:
            json.dump({"machine": machine, "tokens": tokens, "forward": forward}, f, indent=2)


if __name__ == "__main__":
    main()
