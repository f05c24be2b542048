"""A stage-1 model (`learner_mode="visual_only"`: visual learners only, no router) served by vLLM gives the
Hugging Face model's greedy tokens; its checkpoint also holds untrained textual learners and routers.

Its engine runs in a subprocess of its own, since the session's engine already lives in this process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("vllm")

from tiny_serving import sample_image, save_tiny_wings  # noqa: E402

USER, END = "<|im_start|>user\n", "<|im_end|>\n<|im_start|>assistant\n"
PROMPTS = [(USER + "hello, how are you?" + END, 0), (USER + "fine <image>\nwhat colour?" + END, 1),
           (USER + "<image>\nand <image>\nit is" + END, 2)]
N_TOKENS = 10
RESULT = "stage1-result: "

ENGINE = f"""
import json, sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from tiny_serving import sample_image
from vllm import LLM, SamplingParams

if __name__ == "__main__":
    prompts = json.loads(sys.argv[2])
    llm = LLM(model=sys.argv[1], dtype="float32", enforce_eager=True, max_model_len=512, block_size=32,
              max_num_seqs=4, limit_mm_per_prompt={{"image": 2}})
    requests = [{{"prompt": p}} for p, _ in prompts]
    for request, (_, n) in zip(requests, prompts):
        if n:
            request["multi_modal_data"] = {{"image": [sample_image(i) for i in range(n)]}}
    params = SamplingParams(temperature=0, max_tokens={N_TOKENS}, min_tokens={N_TOKENS})
    outputs = llm.generate(requests, params, use_tqdm=False)
    print({RESULT!r} + json.dumps([list(o.outputs[0].token_ids) for o in outputs]), flush=True)
"""


def test_visual_only_model_matches_hf_generate(tmp_path):
    from wings import WingsForConditionalGeneration, WingsProcessor

    folder = save_tiny_wings(tmp_path / "stage1", learner_mode="visual_only")
    model = WingsForConditionalGeneration.from_pretrained(folder).eval()
    processor = WingsProcessor.from_pretrained(folder)
    want = []
    for prompt, n_images in PROMPTS:
        inputs = processor(prompt, images=[sample_image(i) for i in range(n_images)] or None)
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=N_TOKENS, min_new_tokens=N_TOKENS, do_sample=False)
        want.append(out[0, inputs["input_ids"].shape[1]:].tolist())
    script = tmp_path / "engine.py"
    script.write_text(ENGINE)
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
           "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
    done = subprocess.run([sys.executable, str(script), str(folder), json.dumps(PROMPTS)], capture_output=True,
                          text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (line,) = [line for line in done.stdout.splitlines() if line.startswith(RESULT)]
    assert json.loads(line[len(RESULT):]) == want
