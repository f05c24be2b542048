"""IIT evaluator: context turns with gold replies, the last turn scored, per-setting summaries, table, plot."""

from __future__ import annotations

import random

import pytest
from eval_fixtures import COLORS, OracleLM, color_image, last_user_message, make_processor, make_wings, pixels_to_color

from wings.data.llava import DataError
from wings.evaluation.iit import build_iit, evaluate_iit, iit_table, plot_iit
from wings.evaluation.pools import MCItem

SETTINGS = ("T", "T,T", "T,V", "V", "V,V", "T,T,V")
TOPICS = ["planet orbit telescope", "recipe oven flour", "goalkeeper referee penalty"]
COLOR_QUESTION = "What colour is the shape?"


@pytest.fixture(scope="module")
def processor():
    return make_processor()


@pytest.fixture(scope="module")
def iit(tmp_path_factory):
    """Dialogues over all SETTINGS, their image folder, and the gold letter of each text question."""
    folder = tmp_path_factory.mktemp("iit")
    rng = random.Random(0)
    words = "planet orbit telescope galaxy comet recipe oven flour butter garlic".split()
    text_pool, gold_letters = [], {}
    for k in range(9):
        question = f"Which statement is true? {TOPICS[k % 3]} {k}"
        choices = tuple(" ".join(rng.sample(words, 2)) for _ in range(rng.choice([3, 4])))
        answer = rng.randrange(len(choices))
        text_pool.append(MCItem(id=f"t{k}", question=question, choices=choices, answer=answer))
        gold_letters[question] = "ABCD"[answer]
    visual_pool = []
    for k in range(6):
        color = list(COLORS)[k % 4]
        color_image(color, (30 + 4 * k, 24)).save(folder / f"img{k}.png")
        choices = tuple(rng.sample(list(COLORS), 4))
        visual_pool.append(MCItem(id=f"v{k}", question=COLOR_QUESTION, choices=choices,
                                  answer=choices.index(color), image=f"img{k}.png"))
    dialogues = build_iit(text_pool, visual_pool, SETTINGS, per_setting=3, seed=0)
    return dialogues, folder, gold_letters


def iit_oracle(processor, gold_letters):
    """Answers the last turn's gold letter: from the question for T turns, from the image for V turns."""

    def answer(prompt, row_images):
        lines = last_user_message(prompt).splitlines()
        if lines[0] == COLOR_QUESTION:
            color = pixels_to_color(row_images[-1])  # the scored turn's image is the row's last one
            return next(line[0] for line in lines if line.endswith(f". {color}"))
        return gold_letters[lines[0]]

    return OracleLM(processor, answer)


@pytest.mark.parametrize("method", ["generate", "loglik"])
def test_rigged_model_scores_every_setting_perfectly(processor, iit, method):
    dialogues, folder, gold_letters = iit
    result = evaluate_iit(iit_oracle(processor, gold_letters), processor, dialogues, folder, batch_size=4,
                          method=method)
    assert result["method"] == method
    assert list(result["settings"]) == list(SETTINGS)
    for stats in result["settings"].values():
        assert set(stats) == {"acc", "low", "high", "n"}
        assert stats["n"] == 3 and stats["acc"] == 1.0 and 0.0 < stats["low"] < 1.0 == stats["high"]
    assert [r["id"] for r in result["records"]] == [d["id"] for d in dialogues]
    record = result["records"][0]
    assert set(record) >= {"id", "setting", "item_id", "answer", "prediction", "correct"}
    assert ("output" in record) == (method == "generate")


def test_context_images_do_not_stand_in_for_the_scored_one(processor, iit):
    """In V,V dialogues an oracle reading the FIRST image is wrong whenever the colours differ."""
    dialogues, folder, _ = iit
    vv = [d for d in dialogues if d["setting"] == "V,V"]

    def first_image(prompt, row_images):
        color = pixels_to_color(row_images[0])
        return next(line[0] for line in last_user_message(prompt).splitlines() if line.endswith(f". {color}"))

    result = evaluate_iit(OracleLM(processor, first_image), processor, vv, folder, method="loglik")
    differ = [d["turns"][0]["choices"][d["turns"][0]["answer"]] != d["turns"][1]["choices"][d["turns"][1]["answer"]]
              for d in vv]
    assert [not r["correct"] for r in result["records"]] == differ


def test_real_model_runs_every_setting(processor, iit):
    dialogues, folder, _ = iit
    model = make_wings(processor, seed=4)
    result = evaluate_iit(model, processor, dialogues[::2], folder, batch_size=4, method="generate", max_new_tokens=3)
    assert sum(s["n"] for s in result["settings"].values()) == len(dialogues[::2])
    assert all(isinstance(r["output"], str) for r in result["records"])
    result = evaluate_iit(model, processor, dialogues[::3], folder, batch_size=4, method="loglik")
    assert all(r["prediction"] in range(4) for r in result["records"])


def test_missing_image_is_named_before_any_compute(processor, iit):
    dialogues, folder, gold_letters = iit
    oracle = iit_oracle(processor, gold_letters)
    v_dialogue = next(d for d in dialogues if d["setting"] == "V")
    with pytest.raises(DataError, match=r"IIT dialogue 'V-0': image 'img\d.png' not found under image folder"):
        evaluate_iit(oracle, processor, [v_dialogue], folder / "nowhere")
    assert oracle.calls == 0
    with pytest.raises(ValueError, match="method"):
        evaluate_iit(oracle, processor, [v_dialogue], folder, method="vote")


def test_table_and_plot(tmp_path):
    summary = {
        "T": {"acc": 0.5, "low": 0.3, "high": 0.7, "n": 20},
        "T,V": {"acc": 0.25, "low": 0.1, "high": 0.45, "n": 20},
        "V": {"acc": float("nan"), "low": 0.0, "high": 1.0, "n": 0},
    }
    table = iit_table({"settings": summary, "records": []})
    lines = table.splitlines()
    assert lines[0].startswith("| setting | accuracy")
    assert "| T | 0.500 | [0.300, 0.700] | 20 |" in lines
    assert "| T,V | 0.250 | [0.100, 0.450] | 20 |" in lines
    assert "| V | - | [0.000, 1.000] | 0 |" in lines
    path = plot_iit(summary, tmp_path / "plots" / "iit.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000


@pytest.mark.parametrize("answer_format", ["text", "cloze"])
@pytest.mark.parametrize("method", ["generate", "loglik"])
def test_text_answer_formats(processor, iit, method, answer_format):
    """Options answered by their text: listed ("text") or not shown at all ("cloze")."""
    dialogues, folder, gold_letters = iit
    by_question = {t["question"]: t for d in dialogues for t in d["turns"]}

    def answer(prompt, row_images):
        lines = last_user_message(prompt).splitlines()
        assert not any(line[:3] in ("A. ", "B. ") for line in lines)  # no letters in these formats
        assert any(line.startswith("- ") for line in lines) == (answer_format == "text")
        if lines[0] == COLOR_QUESTION:
            return pixels_to_color(row_images[-1])
        turn = by_question[lines[0]]
        return turn["choices"][turn["answer"]]

    result = evaluate_iit(OracleLM(processor, answer), processor, dialogues, folder, batch_size=4, method=method,
                          answer_format=answer_format)
    assert all(stats["acc"] == 1.0 for stats in result["settings"].values())
