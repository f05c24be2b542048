"""`wings demo`: a tiny WINGS model, built and trained offline in about a minute, then a chat about a new image.

It runs the real stack end to end: an offline tokenizer, a tiny Qwen2 LLM and SigLIP tower saved as
local "hub" directories, LLaVA-format data on disk, `wings train` stage 1 and stage 2 from the shipped
recipes (learning rates scaled up for the tiny size), and `generate()` with the learner cache.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import torch
from tqdm.auto import tqdm
from PIL import Image, ImageDraw
from transformers import Qwen2Config, Qwen2ForCausalLM, SiglipImageProcessorPil, SiglipVisionConfig, SiglipVisionModel

from .data.tokenizer import train_chat_tokenizer
from .modeling.model import WingsForConditionalGeneration
from .processing import WingsProcessor
from .training.recipe import load_recipe
from .training.run import train

logger = logging.getLogger(__name__)

COLOURS = {"red": (220, 40, 40), "green": (40, 190, 60), "blue": (40, 70, 220), "yellow": (235, 220, 40)}
QUESTION = "What colour is the shape?"
GREETINGS = [("hello", "hello! how can I help?"), ("how are you?", "fine, thanks."), ("who are you?", "a tiny wings model.")]


def draw_shape(colour: str, rng: random.Random, size: int = 32) -> Image.Image:
    img = Image.new("RGB", (size, size), (245, 245, 245))
    x0, y0 = rng.randint(0, size // 3), rng.randint(0, size // 3)
    x1, y1 = x0 + rng.randint(size // 2, size - 1 - x0), y0 + rng.randint(size // 2, size - 1 - y0)
    draw = ImageDraw.Draw(img)
    (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=COLOURS[colour])
    return img


def write_demo_data(folder: Path, n: int, seed: int) -> Path:
    rng = random.Random(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    samples = []
    for i in range(n):
        colour = rng.choice(list(COLOURS))
        draw_shape(colour, rng).save(folder / "images" / f"{i}.png")
        samples.append({"id": i, "image": f"{i}.png", "conversations": [
            {"from": "human", "value": f"<image>\n{QUESTION}"}, {"from": "gpt", "value": colour}]})
    for i, (question, answer) in enumerate(GREETINGS * 10):
        samples.append({"id": f"t{i}", "conversations": [
            {"from": "human", "value": question}, {"from": "gpt", "value": answer}]})
    path = folder / "data.json"
    path.write_text(json.dumps(samples))
    return path


def build_tiny_hub(folder: Path, seed: int) -> None:
    corpus = [f"{QUESTION} {c}" for c in COLOURS] + [f"{q} {a}" for q, a in GREETINGS]
    tokenizer = train_chat_tokenizer(corpus * 20, vocab_size=320)
    torch.manual_seed(seed)
    llm = Qwen2ForCausalLM(Qwen2Config(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=len(tokenizer), max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id))
    llm.save_pretrained(folder / "llm")
    tokenizer.save_pretrained(folder / "llm")
    vision = SiglipVisionModel(SiglipVisionConfig(
        hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, image_size=32,
        patch_size=8))
    vision.save_pretrained(folder / "vision")
    SiglipImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(folder / "vision")


def run_demo(seed: int = 0, steps: int = 150, output: str = "runs/demo") -> str:
    """Build, train (stage 1 then stage 2) and chat; returns the model's answer."""
    root = Path(output)
    torch.set_num_threads(1)
    build_tiny_hub(root / "hub", seed)
    data = write_demo_data(root / "data", n=200, seed=seed)
    common = ["optim.batch_size=16", "optim.bf16=false", "optim.gradient_checkpointing=false",
              "optim.gradient_accumulation_steps=1", "optim.save_steps=100000", "optim.logging_steps=50",
              f"optim.seed={seed}", "model.learner_rank=8"]
    s1, s2 = root / "stage1", root / "stage2"
    tqdm.write(f"[demo] stage 1: projector + visual learners, {steps // 2} steps")
    train(load_recipe("wings_stage1", common + ["train.projector=3e-3", "train.visual_learners=3e-3"]),
          data=str(data), image_folder=str(root / "data" / "images"), llm=str(root / "hub" / "llm"),
          vision=str(root / "hub" / "vision"), output=str(s1), max_steps=steps // 2)
    tqdm.write(f"[demo] stage 2: LLM + learners + router, {steps} steps")
    stage2 = [c for c in common if not c.startswith("model.")]
    train(load_recipe("wings_stage2", stage2 + ["train.llm=1e-3", "train.visual_learners=3e-3",
                                                "train.textual_learners=1e-3", "train.router=3e-3",
                                                "train.projector=3e-3"]),
          data=str(data), image_folder=str(root / "data" / "images"), init=str(s1), output=str(s2), max_steps=steps)

    model = WingsForConditionalGeneration.from_pretrained(s2).eval()
    processor = WingsProcessor.from_pretrained(s2)
    rng = random.Random(seed + 1)
    colour = rng.choice(list(COLOURS))
    image = draw_shape(colour, rng)
    image.save(root / "chat_image.png")
    answer = ""
    chats = (
        ([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}], [image]),
        ([{"role": "user", "content": "how are you?"}], None),  # text-only: what WINGS must not forget
    )
    for messages, images in chats:
        inputs = processor(processor.apply_chat_template(messages, add_generation_prompt=True), images=images)
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=12, do_sample=False)
        reply = processor.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
        content = messages[0]["content"]
        text = content if isinstance(content, str) else f"<image of a {colour} shape> {QUESTION}"
        tqdm.write(f"[demo] user: {text}\n[demo] wings: {reply}")
        answer = answer or reply
    tqdm.write(f"[demo] the image ({root / 'chat_image.png'}) shows a {colour} shape; the model said '{answer}'.")
    return answer

