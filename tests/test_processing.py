"""WingsProcessor: <image> expansion, chat messages, save/load."""

import numpy as np
import pytest
from PIL import Image
from transformers import SiglipImageProcessorPil

from wings.data.tokenizer import train_chat_tokenizer
from wings.processing import WingsProcessor


@pytest.fixture(scope="module")
def processor():
    tok = train_chat_tokenizer(["describe the image: a red circle. hello world"] * 20, vocab_size=300)
    return WingsProcessor(SiglipImageProcessorPil(size={"height": 32, "width": 32}), tok, image_seq_length=4)


def _img(color=(255, 0, 0)):
    return Image.fromarray(np.full((20, 30, 3), color, dtype=np.uint8))


def test_chat_messages_and_expansion(processor):
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hello"},
                                             {"type": "image"}]}]
    prompt = processor.apply_chat_template(messages)
    assert prompt.count("<image>") == 2 and prompt.endswith("<|im_start|>assistant\n")
    batch = processor(prompt, images=[_img(), _img((0, 0, 255))])
    assert batch["pixel_values"].shape == (2, 3, 32, 32)
    assert int((batch["input_ids"] == processor.image_token_id).sum()) == 8


def test_marker_image_mismatch(processor):
    with pytest.raises(ValueError, match="1 '<image>' marker.*2 image"):
        processor("<image> hi", images=[_img(), _img()])


def test_batch_is_left_padded_and_round_trips(processor, tmp_path):
    batch = processor(["hello", "<image> hello world hello"], images=[_img()])
    assert batch["attention_mask"][0, 0] == 0 and batch["attention_mask"][1].all()
    processor.save_pretrained(tmp_path)
    again = WingsProcessor.from_pretrained(tmp_path)
    assert again.image_seq_length == 4
    assert again("<image> hello", images=[_img()])["input_ids"].tolist() == processor("<image> hello", images=[_img()])["input_ids"].tolist()


def test_tokenizer_without_pad_token_pads_with_eos_on_the_left():
    tok = train_chat_tokenizer(["hello world"] * 10, vocab_size=270)
    tok.pad_token = None
    tok.padding_side = "right"
    processor = WingsProcessor(SiglipImageProcessorPil(size={"height": 32, "width": 32}), tok, image_seq_length=4)
    batch = processor(["hello", "hello world hello"])
    assert batch["input_ids"][0, 0] == tok.eos_token_id and batch["attention_mask"][0, 0] == 0


def test_images_are_padded_to_square_by_default(processor):
    wide = Image.fromarray(np.full((10, 30, 3), (255, 0, 0), dtype=np.uint8))
    padded = processor("<image>", images=[wide])["pixel_values"][0]
    assert processor.image_mode == "pad"
    # Top-left corner is padding in the mean colour, which normalises to ~0; the centre stays red.
    assert padded[:, 0, 0].abs().max() < 0.05 and padded[0, 16, 16] > 0.9
    resize = WingsProcessor(processor.image_processor, processor.tokenizer, image_seq_length=4, image_mode="resize")
    assert resize("<image>", images=[wide])["pixel_values"][0][0, 0, 0] > 0.9
    with pytest.raises(ValueError, match="image_mode"):
        WingsProcessor(processor.image_processor, processor.tokenizer, image_seq_length=4, image_mode="crop")
