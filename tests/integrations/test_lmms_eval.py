"""lmms-eval runs a saved WINGS directory as `--model wings` (found through our entry point), offline,
on local tasks in lmms-eval's own format; its scores equal our scorer's on the same items."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("lmms_eval")

from tiny import save_tiny_wings  # noqa: E402
from wings.evaluation.loading import load_model_and_processor  # noqa: E402
from wings.evaluation.scoring import choice_loglikelihoods, generate_answers  # noqa: E402
from wings.integrations.lmms_eval import cut_at, generation_settings  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
COLORS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 230, 20)}
QUESTION = "what colour is the image?"
MAX_NEW_TOKENS = 5
UNTIL = "\n"

TASK_UTILS = """from PIL import Image


def doc_to_visual(doc):
    return [Image.open(doc["image"]).convert("RGB")]
"""


def _task_yaml(name: str, docs: Path, body: str) -> str:
    return (
        f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {docs}\ntest_split: test\n"
        "doc_to_visual: !function utils.doc_to_visual\n" + body
    )


def _entry_point_dir(root: Path) -> Path:
    """A dist-info holding pyproject.toml's `lmms_eval.models` entry points, as `pip install wings` writes it."""
    entry_points = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["entry-points"]["lmms_eval.models"]
    dist = root / "site" / "wings_lmms_plugin-0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: wings-lmms-plugin\nVersion: 0\n")
    lines = "".join(f"{name} = {target}\n" for name, target in entry_points.items())
    (dist / "entry_points.txt").write_text(f"[lmms_eval.models]\n{lines}")
    return root / "site"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("lmms")
    model_dir = save_tiny_wings(root / "model", seed=4)
    model, processor = load_model_and_processor(model_dir)
    (root / "images").mkdir()
    docs = []
    names = list(COLORS)
    for i in range(6):
        colour = names[i % 4]
        path = root / "images" / f"{i}.png"
        Image.fromarray(np.full((24, 40, 3), COLORS[colour], dtype=np.uint8)).save(path)
        choices = names[i % 4:] + names[: i % 4]  # the gold choice moves around
        docs.append({"image": str(path), "question": QUESTION, "choices": choices})
    # Half of the labels and answers are what the model picks and says (by our scorer), so accuracy and
    # exact match are 0.5 when lmms-eval routes prompts, images, choices and replies as our scorer does.
    prompts = [_prompt(processor) for _ in docs]
    images = [[d["image"]] for d in docs]
    scores = choice_loglikelihoods(model, processor, prompts, [[" " + c for c in d["choices"]] for d in docs],
                                   images, batch_size=3, normalize="sum")
    said = generate_answers(model, processor, prompts, images, batch_size=3, max_new_tokens=MAX_NEW_TOKENS)
    for i, doc in enumerate(docs):
        best = max(range(4), key=scores[i].__getitem__)
        doc["label"] = best if i % 2 == 0 else (best + 1) % 4
        doc["answer"] = cut_at(said[i], [UNTIL]).strip() if i % 2 == 0 else "purple"
    data = root / "docs.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in docs))
    tasks = root / "tasks"
    tasks.mkdir()
    (tasks / "utils.py").write_text(TASK_UTILS)
    (tasks / "wings_tiny_mc.yaml").write_text(_task_yaml("wings_tiny_mc", data, (
        'doc_to_text: "{{question}}"\noutput_type: multiple_choice\ndoc_to_choice: "{{choices}}"\n'
        "doc_to_target: label\nmetric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
    )))
    (tasks / "wings_tiny_vqa.yaml").write_text(_task_yaml("wings_tiny_vqa", data, (
        'doc_to_text: "{{question}}"\noutput_type: generate_until\ndoc_to_target: answer\n'
        f"generation_kwargs:\n  max_new_tokens: {MAX_NEW_TOKENS}\n  until: [{json.dumps(UNTIL)}]\n"
        "metric_list:\n  - metric: exact_match\n    aggregation: mean\n    higher_is_better: true\n"
    )))
    return root, model_dir, tasks, docs, model, processor


def _prompt(processor) -> str:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True)


@pytest.mark.slow
def test_lmms_eval_cli_scores_equal_our_scorer(setup):
    root, model_dir, tasks, docs, model, processor = setup
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(_entry_point_dir(root))]),
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_DATASETS_CACHE": str(root / "hf_cache")}
    out = root / "out"
    command = [sys.executable, "-c", "from lmms_eval.cli.dispatch import main; main()",
               "--model", "wings", "--model_args", f"pretrained={model_dir},device=cpu",
               "--tasks", "wings_tiny_mc,wings_tiny_vqa", "--include_path", str(tasks), "--batch_size", "4",
               "--output_path", str(out), "--log_samples"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads(next(out.rglob("*_results.json")).read_text())["results"]
    samples = {task: sorted((json.loads(line) for line in next(out.rglob(f"*_samples_{task}.jsonl")).open()),
                            key=lambda s: s["doc_id"])
               for task in ("wings_tiny_mc", "wings_tiny_vqa")}
    assert [s["doc_id"] for s in samples["wings_tiny_mc"]] == list(range(len(docs)))

    # Multiple choice: lmms-eval's per-choice log-likelihoods and accuracy equal our scorer's.
    prompts = [_prompt(processor) for _ in docs]
    images = [[d["image"]] for d in docs]
    ours = choice_loglikelihoods(model, processor, prompts, [[" " + c for c in d["choices"]] for d in docs],
                                 images, batch_size=3, normalize="sum")
    for sample, scores in zip(samples["wings_tiny_mc"], ours, strict=True):
        # lmms-eval takes a loss here (it picks the argmin): the negative log-likelihood.
        theirs = [-float(resp[0]) for resp in sample["filtered_resps"]]
        assert theirs == pytest.approx(scores, abs=1e-4)
    correct = [max(range(4), key=s.__getitem__) == d["label"] for s, d in zip(ours, docs, strict=True)]
    assert results["wings_tiny_mc"]["acc,none"] == pytest.approx(sum(correct) / len(docs)) == 0.5

    # Generation: the same replies as our scorer's greedy decoding, so exact match is exactly 0.5.
    said = generate_answers(model, processor, prompts, images, batch_size=2, max_new_tokens=MAX_NEW_TOKENS)
    for sample, reply in zip(samples["wings_tiny_vqa"], said, strict=True):
        theirs = sample["filtered_resps"]
        assert (theirs if isinstance(theirs, str) else theirs[0]) == cut_at(reply, [UNTIL]).strip()
    assert results["wings_tiny_vqa"]["exact_match,none"] == pytest.approx(0.5)


def test_generation_settings_follow_lmms_eval_kwargs():
    kwargs, until = generation_settings({"until": "###", "max_new_tokens": 7, "temperature": 0}, 99)
    assert kwargs == {"max_new_tokens": 7, "do_sample": False, "num_beams": 1} and until == ["###"]
    kwargs, until = generation_settings({"temperature": 0.5, "top_p": 0.9}, 99)
    assert kwargs == {"max_new_tokens": 99, "do_sample": True, "num_beams": 1, "temperature": 0.5, "top_p": 0.9}
    assert until == []
    with pytest.raises(ValueError, match="until"):
        generation_settings({"until": 3}, 9)
    assert cut_at("blue.\nmore###", ["###", "\n"]) == "blue."


@pytest.mark.slow
def test_wings_lmms_eval_passes_arguments_through(setup, monkeypatch):
    from wings.integrations.lmms_eval import lmms_eval_main

    root, model_dir, tasks, *_ = setup
    monkeypatch.setenv("HF_DATASETS_CACHE", str(root / "hf_cache"))
    out = root / "passthrough"
    code = lmms_eval_main(["--model", "wings", "--model_args", f"pretrained={model_dir},device=cpu",
                           "--tasks", "wings_tiny_mc", "--include_path", str(tasks), "--limit", "2",
                           "--batch_size", "2", "--output_path", str(out)])
    assert code == 0
    results = json.loads(next(out.rglob("*_results.json")).read_text())
    assert results["results"]["wings_tiny_mc"]["acc,none"] in (0.0, 0.5, 1.0)


def test_unknown_model_args_are_named(setup):
    from wings.integrations.lmms_eval import WingsLMMs

    with pytest.raises(ValueError, match="unknown model_args.*'max_lenght'"):
        WingsLMMs(pretrained=str(setup[1]), max_lenght=4)
    with pytest.raises(ValueError, match="batch_size must be a positive number, got 'auto'"):
        WingsLMMs(pretrained=str(setup[1]), batch_size="auto")


def test_loglikelihood_requests_in_process(setup):
    """Conditional requests (with images) and lmms-eval's unconditional ones, batched across documents."""
    import torch
    from lmms_eval.api.instance import Instance

    from wings.integrations.lmms_eval import WingsLMMs

    root, model_dir, tasks, docs, model, processor = setup
    lm = WingsLMMs(pretrained=str(model_dir), device="cpu", batch_size=3)
    lm.task_dict = {"t": {"test": docs}}

    def visual(doc):
        return [Image.open(doc["image"])]

    requests = [Instance("loglikelihood", (QUESTION, " " + c, visual, d, "t", "test"), idx=j,
                         metadata={"task": "t", "doc_id": d, "repeats": 1})
                for d in range(3) for j, c in enumerate(docs[d]["choices"][:2])]
    requests.append(Instance("loglikelihood", ("", " red"), idx=0, metadata={"task": "t", "doc_id": 0, "repeats": 1}))
    results = [r.text for r in lm.loglikelihood(requests)]
    ours = choice_loglikelihoods(model, processor, [_prompt(processor)] * 3,
                                 [[" " + c for c in d["choices"][:2]] for d in docs[:3]],
                                 [[d["image"]] for d in docs[:3]], normalize="sum")
    assert [-nll for nll, _ in results[:-1]] == pytest.approx([s for row in ours for s in row], abs=1e-4)
    # No context: the continuation follows the end-of-text token, as in lm-eval.
    ids = processor.tokenizer(" red", add_special_tokens=False)["input_ids"]
    row = torch.tensor([[lm.eos_token_id, *ids]])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=row).logits[0, :-1].float(), -1)
    expected = -float(logprobs[torch.arange(len(ids)), torch.tensor(ids)].sum())
    assert results[-1][0] == pytest.approx(expected, abs=1e-4)
    assert all(isinstance(greedy, bool) for _, greedy in results)
