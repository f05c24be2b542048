"""Images at their own size: token counts per layout against transformers' LLaVA-NeXT and SigLIP 2 references,
the packing of tiles against LLaVA-NeXT's `pack_image_features`, and variable counts through the model
(mixed-size batches = one at a time, cached = uncached generation, beams)."""

from __future__ import annotations

import types

import pytest
import torch
from PIL import Image
from transformers import LlavaNextConfig
from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil
from transformers.models.llava_next.modeling_llava_next import LlavaNextModel
from transformers.models.llava_next.processing_llava_next import LlavaNextProcessor
from transformers.models.siglip2.image_processing_pil_siglip2 import Siglip2ImageProcessorPil

from tiny import IMAGE_TOKEN_ID, SAVED_CORPUS, randomize_learners, tiny_llm, tiny_processor, tiny_siglip2, tiny_wings
from wings import ImageLayout, WingsConfig, WingsForConditionalGeneration, WingsProcessor, image_layout_of, image_token_count
from wings.image_layout import anyres_tile_grid, default_grid_pinpoints
from wings.modeling.vision import pack_anyres_features
from wings.processing import processor_image_settings

SIZES = [(336, 336), (480, 640), (768, 1024), (200, 1200), (1500, 300), (720, 1280), (50, 60)]


def llava_next_reference(tile: int, patch: int, pinpoints) -> LlavaNextProcessor:
    image_processor = LlavaNextImageProcessorPil(
        image_grid_pinpoints=pinpoints, size={"shortest_edge": tile}, crop_size={"height": tile, "width": tile}
    )
    tokenizer = tiny_processor(SAVED_CORPUS).tokenizer
    # As LLaVA-NeXT's CLIP checkpoints: one CLS token, dropped by the "default" feature selection (as WINGS does).
    return LlavaNextProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=patch,
                              vision_feature_select_strategy="default", num_additional_image_tokens=1)


@pytest.mark.parametrize("tile,patch", [(336, 14), (384, 16)])
def test_anyres_counts_match_llava_next(tile, patch):
    pinpoints = default_grid_pinpoints(tile)
    layout = ImageLayout("anyres", tile, patch, tuple(map(tuple, pinpoints)))
    reference = llava_next_reference(tile, patch, pinpoints)
    expected = reference._get_num_multimodal_tokens(image_sizes=SIZES).num_image_tokens
    assert [image_token_count(h, w, layout) for h, w in SIZES] == expected


def test_anyres_pooling_and_newline_counts_by_hand():
    layout = ImageLayout("anyres", 336, 14, ((336, 672), (672, 336), (672, 672)), pooling=2, newline=False)
    # 336 x 672: one row of two tiles, a 24 x 48 feature map, pooled to 12 x 24, no padding to cut.
    assert image_token_count(336, 672, layout) == 576 + 12 * 24
    with_newline = ImageLayout("anyres", 336, 14, ((336, 672),), pooling=2, newline=True)
    assert image_token_count(336, 672, with_newline) == 576 + 12 * 24 + 12
    # 27 patches per tile side pool to 14 (the last window is partial).
    odd = ImageLayout("anyres", 378, 14, ((378, 378),), pooling=2, newline=False)
    assert image_token_count(378, 378, odd) == 729 + 14 * 14


def test_fixed_counts_ignore_the_size():
    layout = ImageLayout("fixed", 384, 16)
    assert {image_token_count(h, w, layout) for h, w in SIZES} == {576}


@pytest.mark.parametrize("max_num_patches", [64, 256])
def test_native_counts_match_the_siglip2_processor(max_num_patches):
    layout = ImageLayout("native", 256, 16, max_num_patches=max_num_patches)
    reference = Siglip2ImageProcessorPil(patch_size=16, max_num_patches=max_num_patches)
    images = [Image.new("RGB", (w, h)) for h, w in SIZES]
    shapes = reference(images, return_tensors="pt")["spatial_shapes"]
    assert [image_token_count(h, w, layout) for h, w in SIZES] == shapes.prod(-1).tolist()
    assert max(image_token_count(h, w, layout) for h, w in SIZES) <= max_num_patches


def test_packing_matches_llava_next_pack_image_features():
    torch.manual_seed(0)
    tile, patch = 64, 16
    pinpoints = default_grid_pinpoints(tile)
    config = LlavaNextConfig(image_grid_pinpoints=pinpoints,
                             vision_config=dict(model_type="clip_vision_model", image_size=tile, patch_size=patch))
    layout = ImageLayout("anyres", tile, patch, tuple(map(tuple, pinpoints)))
    newline = torch.randn(8)
    for h, w in [(64, 128), (100, 40), (150, 170), (30, 200)]:
        rows, cols = anyres_tile_grid(h, w, layout)
        features = torch.randn(1 + rows * cols, (tile // patch) ** 2, 8)
        ours = pack_anyres_features(features, (h, w), layout, newline)
        theirs, lens = LlavaNextModel.pack_image_features(
            types.SimpleNamespace(config=config), [features], torch.tensor([[h, w]]), "default", newline
        )
        theirs = theirs[0] if isinstance(theirs, (list, tuple)) else theirs  # a list per image in newer versions
        torch.testing.assert_close(ours, theirs)
        assert ours.shape[0] == image_token_count(h, w, layout) == lens[0]


def test_config_checks_and_saved_processor_follows_config(tmp_path):
    model = tiny_wings(image_layout="anyres", image_pooling=2)
    assert model.config.image_grid_pinpoints == [[32, 64], [64, 32], [64, 64], [96, 32], [32, 96]]
    with pytest.raises(ValueError, match="native"):
        tiny_wings(image_layout="native")
    with pytest.raises(ValueError, match="image_grid_pinpoints"):
        tiny_wings(image_layout="anyres", image_grid_pinpoints=[[48, 64]])
    with pytest.raises(ValueError, match="image_layout"):
        tiny_wings(image_layout="tiles")
    base = tiny_processor(SAVED_CORPUS)
    processor = WingsProcessor(base.image_processor, base.tokenizer, **processor_image_settings(model.config))
    processor.save_pretrained(tmp_path)
    model.save_pretrained(tmp_path)
    loaded = WingsProcessor.from_pretrained(tmp_path)
    assert loaded.layout == image_layout_of(WingsConfig.from_pretrained(tmp_path))
    reloaded = WingsForConditionalGeneration.from_pretrained(tmp_path)
    torch.testing.assert_close(reloaded.image_newline, model.image_newline)
    assert any(p is model.image_newline for _, p in model.parameter_groups()["projector"])


# ---------------------------------------------------------------------------------------------------------------
# through the model

IMAGES = [Image.new("RGB", (64, 32), (200, 30, 30)), Image.new("RGB", (30, 90), (20, 200, 40)),
          Image.new("RGB", (50, 50), (20, 40, 220))]


def build(layout: str) -> tuple[WingsForConditionalGeneration, WingsProcessor]:
    if layout == "native":
        torch.manual_seed(2)
        model = WingsForConditionalGeneration.from_llm_and_vision(
            tiny_llm(), tiny_siglip2(), image_token_id=IMAGE_TOKEN_ID, learner_rank=8, image_layout="native",
            max_num_patches=12,
        ).eval()
    else:
        model = tiny_wings(image_layout="anyres", image_pooling=2 if layout == "anyres-pooled" else 1)
    randomize_learners(model)
    base = tiny_processor(SAVED_CORPUS)
    processor = WingsProcessor(base.image_processor, base.tokenizer, **processor_image_settings(model.config))
    return model, processor


def rows_for(processor, images_per_row: list[list[Image.Image]]) -> list[list[int]]:
    """Hand-built ids: some text, each image's own number of image tokens, more text (text set by the images)."""
    rows = []
    for images in images_per_row:
        i = IMAGES.index(images[0]) + 3 * len(images)
        row = [10 + i, 11]
        for image in images:
            row += [IMAGE_TOKEN_ID] * processor.image_token_count(image) + [12 + i]
        rows.append(row + [20, 21 + i])
    return rows


def batch(processor, images_per_row):
    rows = rows_for(processor, images_per_row)
    width = max(map(len, rows))
    ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    images = processor.prepare_images([image for row in images_per_row for image in row])
    return dict(input_ids=ids, attention_mask=mask, **images)


ROWS = [[IMAGES[0]], [IMAGES[1], IMAGES[2]], [IMAGES[2]]]


@pytest.mark.parametrize("layout", ["anyres", "anyres-pooled", "native"])
def test_processor_tokens_and_model_features_agree(layout):
    model, processor = build(layout)
    counts = [processor.image_token_count(image) for image in IMAGES]
    assert len(set(counts)) == (2 if layout == "anyres-pooled" else 3)  # three shapes: different counts
    inputs = processor(text=["a <image> b", "<image> c <image>"], images=IMAGES)
    per_row = (inputs["input_ids"] == processor.image_token_id).sum(1).tolist()
    assert per_row == [counts[0], counts[1] + counts[2]]
    image_inputs = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}
    with torch.no_grad():
        features = model.get_image_features(**image_inputs)
    assert features.shape == (sum(counts), model.config.text_config.hidden_size)


@pytest.mark.parametrize("layout", ["anyres", "anyres-pooled", "native"])
def test_mixed_size_batch_equals_one_at_a_time(layout):
    model, processor = build(layout)
    together = batch(processor, ROWS)
    with torch.no_grad():
        logits = model(**together).logits[:, -1]
        for i, row in enumerate(ROWS):
            alone = model(**batch(processor, [row])).logits[:, -1]
            torch.testing.assert_close(logits[i : i + 1], alone, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("layout", ["anyres", "native"])
def test_generation_cached_uncached_beams_and_batch(layout):
    model, processor = build(layout)
    inputs = batch(processor, ROWS)
    kwargs = dict(max_new_tokens=5, min_new_tokens=5, do_sample=False)  # no early stop: rows compare whole
    cached = model.generate(**inputs, **kwargs)
    uncached = model.generate(**inputs, use_cache=False, **kwargs)
    assert torch.equal(cached, uncached)
    width = inputs["input_ids"].shape[1]
    beams = model.generate(**inputs, num_beams=3, **kwargs)[:, width:]
    for i, row in enumerate(ROWS):
        alone = batch(processor, [row])  # no padding
        single = model.generate(**alone, **kwargs)[:, alone["input_ids"].shape[1] :]
        assert torch.equal(single, cached[i : i + 1, width:])
        single_beams = model.generate(**alone, num_beams=3, **kwargs)[:, alone["input_ids"].shape[1] :]
        assert torch.equal(single_beams, beams[i : i + 1])


def test_fixed_layout_is_todays_model_and_the_overview_is_its_square():
    model = tiny_wings()
    assert model.config.image_layout == "fixed" and model.image_newline is None
    assert "image_newline" not in model.state_dict()
    base = tiny_processor(SAVED_CORPUS)
    fixed = WingsProcessor(base.image_processor, base.tokenizer, **processor_image_settings(model.config))
    tiled = WingsProcessor(base.image_processor, base.tokenizer,
                           **processor_image_settings(tiny_wings(image_layout="anyres").config))
    for image in IMAGES:
        square = base(text="<image>", images=[image])["pixel_values"]  # the processor as it was: no layout settings
        torch.testing.assert_close(fixed.prepare_images([image])["pixel_values"], square)
        torch.testing.assert_close(tiled.prepare_images([image])["pixel_values"][:1], square)  # the overview first
