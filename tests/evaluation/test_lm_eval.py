"""A saved WINGS directory runs in lm-evaluation-harness's `hf` backend (offline, a tiny local task)."""

from __future__ import annotations

import json

import pytest
from eval_fixtures import save_wings_dir

lm_eval = pytest.importorskip("lm_eval")

from lm_eval.tasks import TaskManager  # noqa: E402

import wings  # noqa: E402,F401  (registers model type "wings" with AutoModelForCausalLM)
from wings.evaluation.harness import lm_eval_accuracies, lm_eval_text_tasks  # noqa: E402
from wings.evaluation.loading import load_model_and_processor  # noqa: E402
from wings.evaluation.scoring import choice_loglikelihoods  # noqa: E402

TASK = "wings_tiny_mc"
DOCS = [
    {"question": f"Which statement is true? {topic} {k}", "choices": choices, "label": k % len(choices)}
    for k, (topic, choices) in enumerate(
        [
            ("planet", ["planet orbit", "recipe oven", "goalkeeper"]),
            ("oven", ["flour butter", "galaxy comet"]),
            ("referee", ["penalty stadium", "telescope", "garlic", "striker"]),
            ("comet", ["red", "green", "blue"]),
            ("flour", ["answer", "option letter"]),
            ("stadium", ["what colour", "shape", "text of following"]),
        ]
    )
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm_eval")
    model_dir = save_wings_dir(root / "wings-model", seed=5)
    data = root / "docs.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    tasks = root / "tasks"
    tasks.mkdir()
    (tasks / f"{TASK}.yaml").write_text(
        f"task: {TASK}\n"
        "dataset_path: json\n"
        "dataset_kwargs:\n"
        f"  data_files:\n    test: {data}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "{{question}}"\n'
        'doc_to_choice: "{{choices}}"\n'
        "doc_to_target: label\n"
        "metric_list:\n"
        "  - metric: acc\n"
        "    aggregation: mean\n"
        "    higher_is_better: true\n"
    )
    return model_dir, tasks


def test_saved_wings_dir_runs_in_the_hf_backend(setup):
    model_dir, tasks = setup
    result = lm_eval.simple_evaluate(
        model="hf",
        model_args=f"pretrained={model_dir},dtype=float32",
        tasks=[TASK],
        device="cpu",
        batch_size=2,
        limit=5,
        task_manager=TaskManager(include_path=str(tasks), include_defaults=False),
        bootstrap_iters=0,
        log_samples=True,
    )
    metrics = result["results"][TASK]
    assert 0.0 <= metrics["acc,none"] <= 1.0
    samples = result["samples"][TASK]
    assert len(samples) == 5

    # lm-eval's log-likelihoods equal our own scorer's on the same prompts: the backend loaded the
    # WINGS model (not something else) and both compute the same thing. lm-eval joins the prompt
    # and a choice with " ", and sums the continuation's log-probs.
    model, processor = load_model_and_processor(model_dir)
    docs = [s["doc"] for s in sorted(samples, key=lambda s: s["doc_id"])]
    ours = choice_loglikelihoods(
        model, processor, [d["question"] for d in docs], [[" " + c for c in d["choices"]] for d in docs],
        normalize="sum",
    )
    for sample in samples:
        theirs = [float(resp[0][0]) for resp in sample["resps"]]
        assert theirs == pytest.approx(ours[sample["doc_id"]], abs=1e-4)
    correct = [max(range(len(s)), key=s.__getitem__) == d["label"] for s, d in zip(ours, docs, strict=True)]
    assert metrics["acc,none"] == pytest.approx(sum(correct) / len(correct))


def test_backend_sees_the_llm_context_length(setup):
    from lm_eval.models.huggingface import HFLM

    model_dir, _ = setup
    lm = HFLM(pretrained=str(model_dir), dtype="float32", device="cpu", batch_size=1)
    assert isinstance(lm.model, wings.WingsForConditionalGeneration)
    assert lm.max_length == lm.model.config.text_config.max_position_embeddings == 512
    assert lm.eot_token_id == lm.tokenizer.eos_token_id


def test_lm_eval_text_tasks_wrapper(setup):
    model_dir, tasks = setup
    result = lm_eval_text_tasks(model_dir, [TASK], include_path=tasks, limit=4, batch_size=2, dtype="float32",
                                include_defaults=False, bootstrap_iters=0, log_samples=False)
    accuracies = lm_eval_accuracies(result)
    assert set(accuracies) == {TASK} and 0.0 <= accuracies[TASK] <= 1.0
    with pytest.raises(ValueError, match="does not know task.*no_such_task"):
        lm_eval_text_tasks(model_dir, ["no_such_task"], include_path=tasks, include_defaults=False)
