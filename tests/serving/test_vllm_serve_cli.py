"""`vllm serve OUT_DIR`, vLLM's own command with none of our flags, serves what `wings train` wrote.

From a Hub-style LLM and vision tower: stage 1, then stage 2 through the `wings train` CLI; vLLM finds the
plugin through its entry point and answers chat completions (text only, and a base64 image) with the tokens
Hugging Face `generate` gives for the same messages.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("vllm")
openai = pytest.importorskip("openai")

from tiny_serving import (  # noqa: E402
    free_port,
    image_part,
    running_server,
    sample_image,
    save_tiny_hub,
    write_llava_data,
)

N_TOKENS = 8
FAST = ["optim.batch_size=4", "optim.gradient_accumulation_steps=1", "optim.bf16=false",
        "optim.gradient_checkpointing=false", "optim.save_steps=100", "optim.logging_steps=1"]


def chat_ids(client, content) -> list[int]:
    """The greedy reply's token ids (an untrained model's text may be partial UTF-8, which detokenizers differ on)."""
    response = client.chat.completions.create(
        model=client.models.list().data[0].id, messages=[{"role": "user", "content": content}],
        max_tokens=N_TOKENS, temperature=0, logprobs=True,
        extra_body={"min_tokens": N_TOKENS, "return_tokens_as_token_ids": True},
    )
    return [int(step.token.removeprefix("token_id:")) for step in response.choices[0].logprobs.content]


def generate_ids(folder: Path, text: str, images: list) -> list[int]:
    from wings import WingsForConditionalGeneration, WingsProcessor

    model = WingsForConditionalGeneration.from_pretrained(folder).eval()
    processor = WingsProcessor.from_pretrained(folder)
    parts = [{"type": "image"} for _ in images] + [{"type": "text", "text": text}]
    prompt = processor.apply_chat_template([{"role": "user", "content": parts}], add_generation_prompt=True)
    inputs = processor(prompt, images=images or None)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=N_TOKENS, min_new_tokens=N_TOKENS, do_sample=False)
    return out[0, inputs["input_ids"].shape[1]:].tolist()


@pytest.mark.slow
def test_vllm_serve_answers_with_a_model_trained_by_wings_train(tmp_path):
    from wings.cli import main

    vllm = shutil.which("vllm", path=str(Path(sys.executable).parent))
    assert vllm, "the vllm command is not installed beside this interpreter"
    llm_dir, vision_dir = save_tiny_hub(tmp_path / "hub")
    data, images = write_llava_data(tmp_path / "data")
    stage1, stage2 = tmp_path / "stage1", tmp_path / "stage2"
    assert main(["train", "wings_stage1", "--llm", str(llm_dir), "--vision", str(vision_dir), "--data", str(data),
                 "--image-folder", str(images), "--output", str(stage1), "--max-steps", "3", *FAST,
                 "model.learner_rank=8"]) == 0
    assert main(["train", "wings_stage2", "--init", str(stage1), "--data", str(data), "--image-folder", str(images),
                 "--output", str(stage2), "--max-steps", "2", *FAST]) == 0

    command = [vllm, "serve", str(stage2), "--host", "127.0.0.1", "--port", str(free_port())]
    with running_server(command, tmp_path / "server.log") as url:
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=120)
        image = sample_image(7)
        with_image = chat_ids(client, [image_part(image), {"type": "text", "text": "what colour is the circle?"}])
        text_only = chat_ids(client, "hello, how are you?")
    assert with_image == generate_ids(stage2, "what colour is the circle?", [image])
    assert text_only == generate_ids(stage2, "hello, how are you?", [])
