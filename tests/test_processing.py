"""WingsProcessor: <image> expansion, chat messages, save/load, the HF pipeline and apply_chat_template contract."""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import SiglipImageProcessorPil, pipeline

import wings  # noqa: F401  (registers the Auto classes the pipeline resolves)
from tiny import save_tiny_wings
from wings import WingsForConditionalGeneration
from wings.data.tokenizer import train_chat_tokenizer
from wings.processing import WingsProcessor, pad_to_square


@pytest.fixture(scope="module")
def processor():
    tok = train_chat_tokenizer(["describe the image: a red circle. hello world"] * 20, vocab_size=300)
    return WingsProcessor(SiglipImageProcessorPil(size={"height": 32, "width": 32}), tok, image_seq_length=4)


def _img(color=(255, 0, 0)):
    return Image.fromarray(np.full((20, 30, 3), color, dtype=np.uint8))


def test_chat_messages_and_expansion(processor):
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hello"},
                                             {"type": "image"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert prompt.count("<image>") == 2 and prompt.endswith("<|im_start|>assistant\n")
    # HF's default (no generation prompt) is kept, as ProcessorMixin has it.
    assert processor.apply_chat_template(messages).endswith("<|im_end|>\n")
    batch = processor(prompt, images=[_img(), _img((0, 0, 255))])
    assert batch["pixel_values"].shape == (2, 3, 32, 32)
    assert int((batch["input_ids"] == processor.image_token_id).sum()) == 8


def test_chat_template_renders_content_parts_as_the_processor_does(processor):
    """Tools that give the template the parts themselves (vLLM's OpenAI server) get the processor's prompt."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what colour?"},
                                             {"type": "image"}, {"type": "text", "text": "and this?"}]}]
    direct = processor.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert direct == processor.apply_chat_template(messages, add_generation_prompt=True)
    assert "<|im_start|>user\n<image>\nwhat colour?<image>\nand this?<|im_end|>" in direct


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


# ------------------------------------------------------------------------------------------------
# The HF processor contract on a saved model directory

QUESTION = "what colour is the image?"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("saved")
    model_dir = save_tiny_wings(root / "model")
    model = WingsForConditionalGeneration.from_pretrained(model_dir).eval()
    return model_dir, model, WingsProcessor.from_pretrained(model_dir), root


def _reference_reply(model, processor, image, question, max_new_tokens=6) -> list[int]:
    """Greedy reply built without the processor: ChatML by hand, <image> expanded, pixels by the image processor."""
    tok = processor.tokenizer
    text = f"<|im_start|>user\n{'<image>' * processor.image_seq_length if image is not None else ''}"
    text += f"{chr(10) if image is not None else ''}{question}<|im_end|>\n<|im_start|>assistant\n"
    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
    kwargs = {}
    if image is not None:
        square = pad_to_square(image, tuple(int(x * 255) for x in processor.image_processor.image_mean))
        kwargs["pixel_values"] = processor.image_processor(square, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, **kwargs)
    return out[0, ids.shape[1]:].tolist()


def test_pipeline_answers_chat_messages_with_images(saved):
    model_dir, model, processor, _ = saved
    pipe = pipeline("image-text-to-text", model=str(model_dir))
    for colour in ((220, 30, 30), (30, 30, 220)):
        image = _img(colour)
        messages = [{"role": "user", "content": [{"type": "image", "image": image},
                                                 {"type": "text", "text": QUESTION}]}]
        out = pipe(text=messages, max_new_tokens=6, do_sample=False, return_full_text=False)
        expected = processor.tokenizer.decode(_reference_reply(model, processor, image, QUESTION),
                                              skip_special_tokens=True)
        assert out[0]["generated_text"] == expected
        full = pipe(text=messages, max_new_tokens=6, do_sample=False)[0]["generated_text"]
        assert full[-1] == {"role": "assistant", "content": expected}


def test_generate_from_tokenized_chat_template_batch(saved):
    model_dir, model, processor, root = saved
    path = root / "blue.png"
    _img((30, 30, 220)).save(path)
    conversations = [
        [{"role": "user", "content": [{"type": "image", "path": str(path)}, {"type": "text", "text": QUESTION}]}],
        [{"role": "user", "content": "hello how are you?"}],
        [{"role": "user", "content": [{"type": "image", "url": path.as_uri()}, {"type": "text", "text": QUESTION}]}],
    ]
    inputs = processor.apply_chat_template(conversations, add_generation_prompt=True, tokenize=True, return_dict=True)
    assert inputs["pixel_values"].shape[0] == 2 and inputs["input_ids"].shape[0] == 3
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    replies = processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    blue = Image.open(path).convert("RGB")
    expected = [_reference_reply(model, processor, blue, QUESTION),
                _reference_reply(model, processor, None, "hello how are you?"),
                _reference_reply(model, processor, blue, QUESTION)]
    assert replies == processor.batch_decode(expected, skip_special_tokens=True)
    ids_only = processor.apply_chat_template(conversations, add_generation_prompt=True, tokenize=True)
    assert torch.equal(ids_only, inputs["input_ids"])


def test_chat_template_errors_name_the_part(processor, tmp_path):
    messages = [{"role": "user", "content": "hi"},
                {"role": "user", "content": [{"type": "text", "text": "look"}, {"type": "image"}]}]
    assert processor.apply_chat_template(messages).count("<image>") == 1  # rendering needs no image
    with pytest.raises(ValueError, match="message 1, content part 1: an image part without its image"):
        processor.apply_chat_template(messages, tokenize=True)
    given = processor.apply_chat_template(messages, tokenize=True, return_dict=True,
                                          processor_kwargs={"images": [_img()]})
    assert given["pixel_values"].shape[0] == 1
    missing = [{"role": "user", "content": [{"type": "image", "image": str(tmp_path / "nope.png")}]}]
    with pytest.raises(ValueError, match="message 0, content part 0: cannot read image .*nope.png"):
        processor.apply_chat_template(missing, tokenize=True)
