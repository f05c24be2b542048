"""Images (load, pad-to-square, transform), LlavaDataset and LlavaCollator, and one model forward."""

from __future__ import annotations

import logging

import pytest
import torch
from llava_fixtures import (  # noqa: F401
    COLORS,
    IMAGE_SEQ_LENGTH,
    IMAGE_SIZE,
    image_folder,
    processor,
    valid_samples,
    write_json,
)
from PIL import Image

from wings.data.collate import LlavaCollator, LlavaDataset
from wings.data.conversation import IGNORE_INDEX, tokenize_conversation
from wings.data.images import ImageTransform, load_image, pad_to_square
from wings.data.llava import DataError, SampleTooLongError, load_llava_records


def normalized(rgb: tuple[int, int, int]) -> torch.Tensor:
    """SigLIP normalisation (mean = std = 0.5) of a 0-255 colour, as [3]."""
    return (torch.tensor(rgb, dtype=torch.float32) / 255 - 0.5) / 0.5


# ------------------------------------------------------------------------------------------------
# images
def test_pad_to_square_centres_on_the_background():
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    out = pad_to_square(img, (127, 127, 127))
    assert out.size == (40, 40)
    assert out.getpixel((0, 0)) == (127, 127, 127) and out.getpixel((39, 39)) == (127, 127, 127)
    assert out.getpixel((20, 20)) == (255, 0, 0)
    assert out.getpixel((20, 9)) == (127, 127, 127) and out.getpixel((20, 10)) == (255, 0, 0)  # (40-20)//2 = 10
    square = Image.new("RGB", (8, 8))
    assert pad_to_square(square, (0, 0, 0)) is square


def test_load_image_converts_to_rgb_and_names_bad_files(tmp_path):
    Image.new("L", (5, 5), 200).save(tmp_path / "grey.png")
    assert load_image(tmp_path / "grey.png").getpixel((0, 0)) == (200, 200, 200)
    (tmp_path / "bad.jpg").write_bytes(b"junk")
    with pytest.raises(DataError, match="cannot read image '.*bad.jpg'"):
        load_image(tmp_path / "bad.jpg")


def test_image_transform_pad_uses_the_processor_mean_colour(processor, image_folder):
    pixel_values = ImageTransform(processor, "pad")(image_folder / "red.png")  # 48 x 32, wide
    assert pixel_values.shape == (3, IMAGE_SIZE, IMAGE_SIZE)
    # SigLIP mean 0.5 -> LLaVA background int(0.5 * 255) = 127, which normalises to about 0.
    torch.testing.assert_close(pixel_values[:, 0, 0], normalized((127, 127, 127)), atol=1e-2, rtol=0)
    torch.testing.assert_close(pixel_values[:, IMAGE_SIZE // 2, IMAGE_SIZE // 2], normalized(COLORS["red"]))


def test_image_transform_resize_keeps_no_padding(processor, image_folder):
    pixel_values = ImageTransform(processor, "resize")(load_image(image_folder / "red.png"))
    assert pixel_values.shape == (3, IMAGE_SIZE, IMAGE_SIZE)
    torch.testing.assert_close(pixel_values[:, 0, 0], normalized(COLORS["red"]))
    with pytest.raises(ValueError, match="'pad' or 'resize'"):
        ImageTransform(processor, "crop")


# ------------------------------------------------------------------------------------------------
# dataset + collator
@pytest.fixture
def records(tmp_path, image_folder):
    return load_llava_records(write_json(tmp_path / "data.json", valid_samples()), image_folder)


def test_dataset_items(records, processor):
    dataset = LlavaDataset(records, processor, max_length=256)
    assert len(dataset) == 3
    one, text, two = (dataset[i] for i in range(3))
    assert one["pixel_values"].shape == (1, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert text["pixel_values"] is None
    assert two["pixel_values"].shape == (2, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert one["input_ids"].dtype == torch.long and one["input_ids"].shape == one["labels"].shape
    assert (two["input_ids"] == processor.image_token_id).sum() == 2 * IMAGE_SEQ_LENGTH
    assert len(dataset.lengths) == 3


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_collator_shapes_padding_and_image_order(records, processor, padding_side):
    dataset = LlavaDataset(records, processor, max_length=256)
    items = [dataset[i] for i in (2, 1, 0)]  # images: green, blue (sample 0); none; red (sample 2)
    batch = LlavaCollator(pad_token_id=0, padding_side=padding_side)(items)
    lengths = [len(item["input_ids"]) for item in items]
    B, T = 3, max(lengths)
    assert batch["input_ids"].shape == batch["attention_mask"].shape == batch["labels"].shape == (B, T)
    assert batch["attention_mask"].sum(1).tolist() == lengths
    for row, item in enumerate(items):
        real = batch["attention_mask"][row].bool()
        assert torch.equal(batch["input_ids"][row][real], item["input_ids"])
        assert torch.equal(batch["labels"][row][real], item["labels"])
        assert (batch["input_ids"][row][~real] == 0).all() and (batch["labels"][row][~real] == IGNORE_INDEX).all()
        if padding_side == "right":
            assert real[: lengths[row]].all()
        else:
            assert real[T - lengths[row] :].all()

    # The k-th image in pixel_values belongs to the k-th run of image tokens in the flattened batch.
    pixel_values = batch["pixel_values"]
    assert pixel_values.shape == (3, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert (batch["input_ids"] == processor.image_token_id).sum() == 3 * IMAGE_SEQ_LENGTH
    centre = pixel_values[:, :, IMAGE_SIZE // 2, IMAGE_SIZE // 2]
    for k, colour in enumerate(["green", "blue", "red"]):
        torch.testing.assert_close(centre[k], normalized(COLORS[colour]))


def test_text_only_batch_has_no_pixel_values(records, processor):
    dataset = LlavaDataset(records, processor, max_length=256)
    batch = LlavaCollator(pad_token_id=0, pad_to_multiple_of=8)([dataset[1], dataset[1]])
    assert "pixel_values" not in batch
    assert batch["input_ids"].shape[1] % 8 == 0


def test_too_long_samples_raise_or_are_dropped_up_front(records, processor, caplog):
    lengths = [len(tokenize_conversation(r, processor, max_length=None)["input_ids"]) for r in records]
    # Cut one token from sample 'one' (its trailing newline): 'one' and 'text' are truncated,
    # 'two' (whose second image lies past the cut) cannot be.
    max_length = lengths[0] - 1
    last_image = tokenize_conversation(records[2], processor, None)["input_ids"][::-1].index(processor.image_token_id)
    assert lengths[2] - 1 - last_image >= max_length and lengths[1] > max_length
    dataset = LlavaDataset(records, processor, max_length=max_length)
    with pytest.raises(SampleTooLongError, match="sample 2 \\(id 'two'\\): .* would cut an image"):
        dataset[2]
    with caplog.at_level(logging.WARNING, logger="wings.data.collate"):
        dataset = LlavaDataset(records, processor, max_length=max_length, drop_too_long=True)
    assert [r.id for r in dataset.records] == ["one", "text"]
    messages = [r.getMessage() for r in caplog.records]
    assert any("sample 2 (id 'two')" in m for m in messages)
    assert any("dropped 1 of 3 samples" in m for m in messages)
    assert [len(dataset[i]["input_ids"]) for i in range(2)] == [max_length, max_length]


def test_batch_runs_through_the_model(records, processor):
    """The collated batch satisfies WingsForConditionalGeneration's input contract."""
    from tiny import IMAGE_SIZE as MODEL_IMAGE_SIZE
    from tiny import PATCH, tiny_vision
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from wings import WingsForConditionalGeneration

    assert (MODEL_IMAGE_SIZE // PATCH) ** 2 == IMAGE_SEQ_LENGTH and MODEL_IMAGE_SIZE == IMAGE_SIZE
    torch.manual_seed(0)
    llm = Qwen2ForCausalLM(
        Qwen2Config(
            hidden_size=32,
            num_attention_heads=4,
            num_key_value_heads=2,
            num_hidden_layers=2,
            intermediate_size=64,
            vocab_size=len(processor.tokenizer),
            pad_token_id=0,
        )
    )
    model = WingsForConditionalGeneration.from_llm_and_vision(
        llm, tiny_vision(), image_token_id=processor.image_token_id, learner_rank=4
    )
    dataset = LlavaDataset(records, processor, max_length=256)
    batch = LlavaCollator(pad_token_id=0)([dataset[i] for i in range(3)])
    loss = model(**batch).loss
    assert torch.isfinite(loss)
