"""The frontier study's multimodal task and data files, checked against easy-vqa's own labels."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("easy_vqa")

from wings.lab.mm_task import (
    CORNERS,
    MM_KINDS,
    LabelledImage,
    MMItem,
    heldout_addends,
    interleaved_dialogue,
    labelled_images,
    mm_task_items,
    write_study_data,
)
from wings.lab.text_world import TextSample, fact_table
from wings.lab.vision_world import load_easy_vqa


@pytest.fixture(scope="module")
def test_images() -> list[LabelledImage]:
    return labelled_images(load_easy_vqa("test"))


def test_labelled_images_agree_with_easy_vqa_answers(test_images):
    by_path = {i.path: i for i in test_images}
    checked = 0
    for sample in load_easy_vqa("test"):
        image = by_path.get(sample.image_path)
        if image and sample.question.startswith("what color is the") and sample.answer != "yes":
            assert sample.answer == image.colour, sample
            checked += 1
    assert checked > 50


def test_items_follow_their_rules(test_images):
    items = mm_task_items(300, seed=0, split="test", images=test_images)
    assert items == mm_task_items(300, seed=0, split="test", images=test_images)
    assert [i.kind for i in items[:6]] == [*MM_KINDS, *MM_KINDS]
    labels = {i.path: i for i in test_images}
    facts = fact_table()
    held = heldout_addends()
    yes = 0
    for item in items:
        assert item.question.count("<image>") == len(item.images)
        if item.kind == "add_corners":
            n = int(item.question.split("What is ")[1].split(" +")[0])
            assert n in held and item.answer == str(n + CORNERS[labels[item.images[0]].shape])
        elif item.kind == "colour_fact":
            name = item.question.rstrip("?").split()[-1]
            assert item.answer == ("yes" if facts[(name, "colour")] == labels[item.images[0]].colour else "no")
            yes += item.answer == "yes"
        else:
            first, second = (labels[p] for p in item.images)
            attribute = "colour" if "colour" in item.question else "shape"
            assert item.answer == getattr(second, attribute) != getattr(first, attribute)
    assert 30 <= yes <= 70  # about half of the 100 colour_fact items


def test_train_split_never_adds_a_heldout_number():
    items = mm_task_items(600, seed=3, split="train", kinds=("add_corners",))
    used = {int(i.question.split("What is ")[1].split(" +")[0]) for i in items}
    assert used and not used & heldout_addends()
    with pytest.raises(ValueError, match="unknown multimodal task kind"):
        mm_task_items(3, seed=0, split="train", kinds=("count",))


def test_interleaved_dialogue_shape_is_checked():
    chat = TextSample("hi", "hello", "chat")
    visual = MMItem("<image>\nWhat shape is in the image?", "circle", ("/r/a.png",), "easy_vqa")
    row = interleaved_dialogue("d", "T,T,V", [chat, chat], visual, "/r")
    assert [c["from"] for c in row["conversations"]] == ["human", "gpt"] * 3 and row["image"] == ["a.png"]
    with pytest.raises(ValueError, match="needs T turns then one V"):
        interleaved_dialogue("d", "T,V", [chat, chat], visual, "/r")


def test_study_data_files_load_as_llava_records(tmp_path):
    from wings.data.llava import load_llava_records

    data = write_study_data(tmp_path, n_stage2=200, n_mm_test_per_kind=5, n_vqa_test=20, text_items=16,
                            text_share=0.1)
    stage2 = load_llava_records(data.stage2, data.image_folder, check_images=False)
    assert len(stage2) == 200 and all(r.num_images >= 1 for r in stage2)
    assert data.mix["task"] == 80 and data.mix["interleaved"] == 50 and data.mix["easy_vqa"] == 70
    mixed = load_llava_records(data.stage2_text_share, data.image_folder, check_images=False)
    assert sum(r.num_images == 0 for r in mixed) == data.mix["text_share_samples"] == 22
    mm = json.loads(open(data.mm_test).read())
    assert len(mm) == 15 and all(row["image"][0].startswith("test/") for row in mm)
