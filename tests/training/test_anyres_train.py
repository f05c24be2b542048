"""The any-resolution recipes end to end (stage 1 at the base resolution, stage 2 tiled) on images of several
shapes, and the per-sample image-token budget."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from tiny import tiny_processor, SAVED_CORPUS
from wings import WingsForConditionalGeneration, WingsProcessor, image_token_count
from wings.cli import main
from wings.data.collate import LlavaCollator, LlavaDataset
from wings.data.llava import SampleTooLongError, load_llava_records
from wings.image_layout import ImageLayout, fit_image_token_budget

FAST = ["optim.batch_size=3", "optim.gradient_accumulation_steps=1", "optim.bf16=false",
        "optim.gradient_checkpointing=false", "optim.save_steps=100", "optim.logging_steps=1"]
SHAPES = [(24, 40), (64, 20), (50, 50), (30, 90), (100, 70), (16, 16)]  # (height, width)


def write_shapes_dataset(folder):
    (folder / "images").mkdir(parents=True, exist_ok=True)
    samples = []
    for i, (h, w) in enumerate(SHAPES):
        Image.fromarray(np.full((h, w, 3), (40 * i, 200 - 30 * i, 90), dtype=np.uint8)).save(folder / "images" / f"{i}.png")
        samples.append({"id": f"s{i}", "image": f"{i}.png", "conversations": [
            {"from": "human", "value": "<image>\nwhat shape is the image?"}, {"from": "gpt", "value": f"shape {i}"}]})
    samples.append({"id": "t", "conversations": [{"from": "human", "value": "hello how are you?"},
                                                 {"from": "gpt", "value": "fine thanks."}]})
    (folder / "data.json").write_text(json.dumps(samples))
    return folder / "data.json", folder / "images"


def test_anyres_recipes_train_both_stages(tiny_hub, tmp_path):
    data, images = write_shapes_dataset(tmp_path)
    s1, s2 = tmp_path / "s1", tmp_path / "s2"
    common = ["--data", str(data), "--image-folder", str(images), *FAST, "model.learner_rank=4"]
    main(["train", "wings_anyres_stage1", "--llm", str(tiny_hub / "llm"), "--vision", str(tiny_hub / "vision"),
          "--output", str(s1), "--max-steps", "2", *common])
    assert json.loads((s1 / "config.json").read_text())["image_layout"] == "fixed"
    assert "image_newline" not in load_file(str(s1 / "model.safetensors"))
    main(["train", "wings_anyres_stage2", "--init", str(s1), "--output", str(s2), "--max-steps", "3",
          "data.max_image_tokens=40", *common])
    config = json.loads((s2 / "config.json").read_text())
    assert config["image_layout"] == "anyres" and config["image_grid_pinpoints"]
    weights = load_file(str(s2 / "model.safetensors"))
    assert weights["image_newline"].shape == (config["text_config"]["hidden_size"],)
    changed = [k for k in weights if k.startswith("vision_tower.")
               and not torch.equal(weights[k], load_file(str(s1 / "model.safetensors"))[k])]
    assert changed  # stage 2 tunes the tower, as LLaVA-NeXT

    model = WingsForConditionalGeneration.from_pretrained(s2).eval()
    processor = WingsProcessor.from_pretrained(s2)
    assert processor.image_layout == "anyres" and processor.layout.grid_pinpoints
    wide = Image.new("RGB", (90, 30), (10, 120, 200))
    inputs = processor(text=["<image>\nwhat shape is the image?"], images=[wide])
    n_image = int((inputs["input_ids"] == model.config.image_token_id).sum())
    assert n_image == image_token_count(30, 90, processor.layout) > model.config.image_seq_length
    out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 3 or out[0, -1] == processor.tokenizer.eos_token_id


def test_budget_shrinks_images_until_they_fit():
    layout = ImageLayout("anyres", 32, 16, ((32, 64), (64, 32), (64, 64), (96, 32), (32, 96)))
    sizes = [(100, 300), (64, 64)]
    full = sum(image_token_count(h, w, layout) for h, w in sizes)
    fitted = fit_image_token_budget(sizes, layout, full - 1)
    assert sum(image_token_count(h, w, layout) for h, w in fitted) <= full - 1
    ratios = [w / h for h, w in fitted]
    assert ratios[0] == pytest.approx(3, rel=0.05) and ratios[1] == pytest.approx(1)
    assert fit_image_token_budget(sizes, layout, full) == sizes and fit_image_token_budget(sizes, layout, None) == sizes
    with pytest.raises(ValueError, match="max_image_tokens=3"):
        fit_image_token_budget(sizes, layout, 3)  # two overviews alone are 8 tokens


def test_dataset_feeds_anyres_samples_within_the_budget(tmp_path):
    data, images = write_shapes_dataset(tmp_path)
    records = load_llava_records(str(data), str(images))
    base = tiny_processor(SAVED_CORPUS)
    settings = dict(image_seq_length=4, image_layout="anyres", patch_size=16, tile_size=32,
                    image_grid_pinpoints=[[32, 64], [64, 32], [64, 64], [96, 32], [32, 96]])
    processor = WingsProcessor(base.image_processor, base.tokenizer, **settings)
    dataset = LlavaDataset(records, processor, max_length=512, max_image_tokens=12)
    items = [dataset[i] for i in range(len(records))]
    shrunk = 0
    for record, item, length in zip(records, items, dataset.lengths):
        n_image = int((item["input_ids"] == processor.image_token_id).sum())
        assert length == record.num_tokens_estimate(0) + n_image  # lengths count each image's own tokens
        if record.images:
            h, w = item["image_sizes"][0].tolist()
            assert n_image == image_token_count(h, w, processor.layout) <= 12
            shrunk += (h, w) != SHAPES[records.index(record)]
    assert shrunk  # some images were over the budget at their own size
    batch = LlavaCollator(pad_token_id=0)(items[:4])
    assert batch["image_sizes"].shape == (4, 2) and batch["pixel_values"].shape[0] > 4
    with pytest.raises(SampleTooLongError, match="max_image_tokens=3"):
        LlavaDataset(records, processor, max_length=512, max_image_tokens=3)[0]


def test_prepared_data_counts_each_image_at_its_fed_size(tmp_path):
    from wings.data.collate import PreparedDataset
    from wings.data.prepared import prepare_data

    data, images = write_shapes_dataset(tmp_path)
    base = tiny_processor(SAVED_CORPUS)
    processor = WingsProcessor(base.image_processor, base.tokenizer, image_seq_length=4, image_layout="anyres",
                               patch_size=16, tile_size=32,
                               image_grid_pinpoints=[[32, 64], [64, 32], [64, 64], [96, 32], [32, 96]])
    prepared = prepare_data(data, processor, 512, images, cache_dir=tmp_path / "cache", max_image_tokens=12)
    unbounded = prepare_data(data, processor, 512, images, cache_dir=tmp_path / "cache")
    assert prepared.directory != unbounded.directory  # the budget is part of the cache key
    dataset = PreparedDataset(prepared.good(), processor)
    for i, row in enumerate(prepared.good()):
        n_image = sum(t == processor.image_token_id for t in row["input_ids"])
        sizes = list(zip(row["image_sizes"][::2], row["image_sizes"][1::2]))
        assert n_image == sum(processor.image_token_count(s) for s in sizes) <= 12
        item = dataset[i]
        if sizes:
            assert item["image_sizes"].tolist() == [list(s) for s in sizes]
    assert any(sum(processor.image_token_count(s) for s in zip(r["image_sizes"][::2], r["image_sizes"][1::2])) > 12
               for r in unbounded.good())
