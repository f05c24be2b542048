"""`vllm serve OUT_DIR`, vLLM's own command with none of our flags (only `--dtype float32`, for exact parity),
serves what `wings train` wrote.

From a Hub-style LLM and vision tower: stage 1, then stage 2 through the `wings train` CLI; vLLM finds the
plugin through its entry point and answers chat completions (text only, and a base64 image) with the tokens
Hugging Face `generate` gives for the same messages.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

pytest.importorskip("vllm")
openai = pytest.importorskip("openai")

from tiny import FAST_TRAINING  # noqa: E402
from tiny_serving import (  # noqa: E402
    chat,
    free_port,
    hf_greedy,
    image_part,
    running_server,
    sample_image,
    save_tiny_hub,
    user_prompt,
    write_llava_data,
)

N_TOKENS = 8


@pytest.mark.slow
def test_vllm_serve_answers_with_a_model_trained_by_wings_train(tmp_path):
    from wings import WingsProcessor
    from wings.cli import main

    vllm = shutil.which("vllm", path=str(Path(sys.executable).parent))
    assert vllm, "the vllm command is not installed beside this interpreter"
    llm_dir, vision_dir = save_tiny_hub(tmp_path / "hub")
    data, images = write_llava_data(tmp_path / "data")
    stage1, stage2 = tmp_path / "stage1", tmp_path / "stage2"
    assert main(["train", "wings_stage1", "--llm", str(llm_dir), "--vision", str(vision_dir), "--data", str(data),
                 "--image-folder", str(images), "--output", str(stage1), "--max-steps", "3", *FAST_TRAINING,
                 "model.learner_rank=8"]) == 0
    assert main(["train", "wings_stage2", "--init", str(stage1), "--data", str(data), "--image-folder", str(images),
                 "--output", str(stage2), "--max-steps", "2", *FAST_TRAINING]) == 0

    # float32 for exact parity: vLLM on CPU otherwise runs a float32 checkpoint in bfloat16.
    command = [vllm, "serve", str(stage2), "--host", "127.0.0.1", "--port", str(free_port()), "--dtype", "float32"]
    with running_server(command, tmp_path / "server.log") as url:
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=120)
        question = {"type": "text", "text": "what colour is the circle?"}
        with_image = chat(client, [image_part(sample_image(0)), question], N_TOKENS, token_ids=True)
        text_only = chat(client, "hello, how are you?", N_TOKENS, token_ids=True)
    # hf_greedy gives prompt i the images sample_image(0), ...: the one above.
    processor = WingsProcessor.from_pretrained(stage2)
    prompts = [(user_prompt(processor, "what colour is the circle?", 1), 1),
               (user_prompt(processor, "hello, how are you?", 0), 0)]
    assert [with_image, text_only] == hf_greedy(stage2, prompts, N_TOKENS)
