"""Open-ended VQA: the official normalisation, and the one VQA loop on LLaVA-format data."""

from __future__ import annotations

import json

import pytest
from eval_fixtures import OracleLM, color_image, make_processor, pixels_to_color

from wings.evaluation.vqa import evaluate_vqa, normalize_answer, vqa_exact_match, vqa_score


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Two", "2"),
        ("The red one.", "red 1"),
        ("a dog", "dog"),
        ("  Yes!\n", "yes"),
        ("3.5", "3.5"),
        ("black-and-white", "black and white"),
        ("dont know", "don't know"),
        ("none", "0"),
        ("An apple, a pear", "apple pear"),
        ("1,000", "1000"),
    ],
)
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


def test_vqa_exact_match_and_score():
    assert vqa_exact_match("Two dogs.", ["2 dogs", "two"])
    assert vqa_exact_match("The Cat", "cat")
    assert not vqa_exact_match("cats", ["cat"])
    assert not vqa_exact_match("", ["cat"])
    assert vqa_score("cat", ["cat"] * 3) == 1.0
    assert vqa_score("cat", ["cat", "dog", "dog"]) == pytest.approx(1 / 3)
    ten = ["cat", "cat"] + ["dog"] * 8
    # Leave-one-out over 10 annotators: 8 subsets keep both "cat"s (2/3), 2 keep one (1/3).
    assert vqa_score("cat", ten) == pytest.approx((8 * 2 / 3 + 2 * 1 / 3) / 10)




def test_evaluate_vqa_scores_the_first_reply_with_its_images(tmp_path):
    """A rigged model answers with the colour of the image it is given: exact where the reference is
    that colour, wrong where the data's reference lies; later turns and their images are not asked."""
    processor = make_processor()
    for name in ("red", "blue", "green"):
        color_image(name).save(tmp_path / f"{name}.png")

    def sample(k, image, reference, extra=None):
        turns = [{"from": "human", "value": "<image>\nWhat colour is the shape?"}, {"from": "gpt", "value": reference}]
        images = [image]
        if extra:  # a second exchange with its own image: must not reach the first question
            turns += [{"from": "human", "value": "<image>\nAnd this one?"}, {"from": "gpt", "value": "x"}]
            images.append(extra)
        return {"id": f"s{k}", "image": images, "conversations": turns}

    data = [sample(0, "red.png", "Red."), sample(1, "blue.png", "the blue", "green.png"),
            sample(2, "green.png", "red")]  # fmt: skip
    (tmp_path / "vqa.json").write_text(json.dumps(data))
    oracle = OracleLM(processor, lambda prompt, images: pixels_to_color(images[-1]))
    result = evaluate_vqa(oracle, processor, tmp_path / "vqa.json", tmp_path, batch_size=2)
    assert [r["prediction"] for r in result["records"]] == ["red", "blue", "green"]
    assert [r["correct"] for r in result["records"]] == [True, True, False]
    assert result["acc"] == pytest.approx(2 / 3) and result["n"] == 3
    assert evaluate_vqa(oracle, processor, tmp_path / "vqa.json", tmp_path, limit=1)["n"] == 1
