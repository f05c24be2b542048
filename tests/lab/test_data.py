"""The default lab's data files (`write_lab_data`), written by the writer the frontier study shares."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("easy_vqa")

from wings.data.llava import load_llava_records  # noqa: E402
from wings.evaluation.pools import load_pool  # noqa: E402
from wings.lab.data import write_lab_data  # noqa: E402
from wings.lab.text_world import heldout_text_items  # noqa: E402
from wings.lab.vision_world import COLOURS, SHAPES  # noqa: E402


def test_lab_data_files_load_as_llava_records_and_pools(tmp_path):
    data = write_lab_data(tmp_path, heldout_text_items(16, seed=0), n_vqa_test=20, text_share=0.2, n_stage2=120)
    stage2 = load_llava_records(data.stage2, data.image_folder)  # every image exists under image_folder
    assert len(stage2) == 120 and all(r.num_images == 1 for r in stage2)
    mixed = load_llava_records(data.stage2_text_share, data.image_folder, check_images=False)
    assert len(mixed) == 150 and sum(r.num_images == 0 for r in mixed) == 30  # 30 / 150 = text_share
    captions = json.loads(open(data.stage1).read())
    assert captions and all(row["conversations"][0]["value"] == "<image>\nDescribe the image." for row in captions)
    colour, shape = captions[0]["conversations"][1]["value"].split()[1:]
    assert colour in COLOURS and shape in SHAPES
    vqa_test = load_llava_records(data.vqa_test, data.image_folder)
    assert len(vqa_test) == 20 and all(str(r.images[0]).startswith(data.image_folder) for r in vqa_test)
    visual = load_pool(data.visual_pool, "visual")
    assert len(visual) == 20 and all(item.image and 0 <= item.answer < len(item.choices) for item in visual)
    assert len(load_pool(data.text_pool, "text")) > 0
    # deterministic for a seed
    again = write_lab_data(tmp_path / "again", heldout_text_items(16, seed=0), n_vqa_test=20, text_share=0.2,
                           n_stage2=120)
    assert open(again.stage2_text_share).read() == open(data.stage2_text_share).read()
