"""The processor and the training data path with each family's chat template structure."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from family_templates import END_OF_TURN, FAMILY_TEMPLATES, family_tokenizer
from llava_fixtures import CORPUS, IMAGE_SEQ_LENGTH, make_processor
from test_conversation import labelled_spans, prefix_diff_reference, unlabelled_text

from wings.data.conversation import IGNORE_INDEX, tokenize_conversation
from wings.data.llava import DataError

ONE_TURN = [
    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in the image?"}]},
    {"role": "assistant", "content": "A red square."},
]
WITH_SYSTEM = [{"role": "system", "content": "You are a helpful assistant."}, *ONE_TURN]
TWO_TURNS = [*ONE_TURN, {"role": "user", "content": "And the shape?"}, {"role": "assistant", "content": "A square."}]


def _processor(family):
    return make_processor(family_tokenizer(family, CORPUS))


@pytest.mark.parametrize("family", list(FAMILY_TEMPLATES))
def test_one_turn_with_an_image_labels_the_answer(family):
    processor = _processor(family)
    out = tokenize_conversation(WITH_SYSTEM, processor, max_length=None)
    tok = processor.tokenizer
    assert out["n_images"] == 1 and out["input_ids"].count(processor.image_token_id) == IMAGE_SEQ_LENGTH
    spans = [tok.decode(s) for s in labelled_spans(out)]
    assert len(spans) == 1 and spans[0].endswith(END_OF_TURN[family]) and "A red square." in spans[0]
    assert all(lab == IGNORE_INDEX for t, lab in zip(out["input_ids"], out["labels"]) if t == processor.image_token_id)
    # The processor's generation prompt is the rendered conversation up to the answer.
    image = Image.new("RGB", (32, 32), (255, 0, 0))
    prompt = processor(text=processor.apply_chat_template(WITH_SYSTEM[:-1], add_generation_prompt=True), images=[image])["input_ids"][0]
    first_label = next(i for i, lab in enumerate(out["labels"]) if lab != IGNORE_INDEX)
    assert prompt.tolist() == out["input_ids"][:first_label]


def test_qwen3_answers_carry_the_thinking_block():
    processor = _processor("qwen3")
    out = tokenize_conversation(ONE_TURN, processor, max_length=None)
    assert [processor.tokenizer.decode(s) for s in labelled_spans(out)] == [
        "<think>\n\n</think>\n\nA red square.<|im_end|>"
    ]
    text = processor.apply_chat_template(ONE_TURN[:1], add_generation_prompt=True, enable_thinking=False)
    assert text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")


def test_gemma_folds_the_system_prompt_into_the_first_user_turn():
    processor = _processor("gemma3_text")
    out = tokenize_conversation(WITH_SYSTEM, processor, max_length=None)
    text = processor.tokenizer.decode(out["input_ids"])
    assert text.startswith("<bos><start_of_turn>user\nYou are a helpful assistant.\n\n")
    assert "system" not in text
    assert [processor.tokenizer.decode(s) for s in labelled_spans(out)] == ["A red square.<end_of_turn>"]
    with pytest.raises(DataError, match="roles must alternate"):
        tokenize_conversation([ONE_TURN[0], ONE_TURN[0], ONE_TURN[1]], processor, max_length=None)


@pytest.mark.parametrize("family", list(FAMILY_TEMPLATES))
def test_multi_turn_labels_every_answer(family):
    processor = _processor(family)
    out = tokenize_conversation(TWO_TURNS, processor, max_length=None)
    spans = [processor.tokenizer.decode(s) for s in labelled_spans(out)]
    assert len(spans) == 2 and "A red square." in spans[0] and "A square." in spans[1]
    assert spans[0].endswith(END_OF_TURN[family]) and spans[1].endswith(END_OF_TURN[family])


def _expanded(text: str) -> str:
    return text.replace("<image>", "<image>" * IMAGE_SEQ_LENGTH)


def _check_labels(out, processor, expected_text: str, expected_replies: list[str]) -> None:
    """The ids are `expected_text` (written by hand); exactly `expected_replies` are labelled, in order."""
    tok = processor.tokenizer
    assert out["input_ids"] == tok(_expanded(expected_text), add_special_tokens=False)["input_ids"]
    assert [tok.decode(s) for s in labelled_spans(out)] == expected_replies
    # Everything else - system and user turns, headers, what follows an end-of-turn token - is unlabelled.
    rest = _expanded(expected_text)
    for reply in expected_replies:
        assert rest.count(reply) == 1
        rest = rest.replace(reply, "")
    assert unlabelled_text(out, tok) == rest


QWEN3_THINKING = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in the image?"}]},
    {"role": "assistant", "content": "<think>\nThe image is red.\n</think>\n\nA red square."},
    {"role": "user", "content": "And the shape?"},
    {"role": "assistant", "content": "A square."},
    {"role": "user", "content": "How many shapes are there?"},
    {"role": "assistant", "content": "<think>\nOnly one is drawn.\n</think>\n\nThere is one shape."},
]


def test_qwen3_multi_turn_labels_the_answers_as_rendered():
    """Past answers lose their thinking block in the rendering; the latest keeps its own."""
    processor = _processor("qwen3")
    out = tokenize_conversation(QWEN3_THINKING, processor, max_length=None)
    expected = (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<image>What is in the image?<|im_end|>\n"
        "<|im_start|>assistant\nA red square.<|im_end|>\n"
        "<|im_start|>user\nAnd the shape?<|im_end|>\n"
        "<|im_start|>assistant\nA square.<|im_end|>\n"
        "<|im_start|>user\nHow many shapes are there?<|im_end|>\n"
        "<|im_start|>assistant\n<think>\nOnly one is drawn.\n</think>\n\nThere is one shape.<|im_end|>\n"
    )
    _check_labels(out, processor, expected, [
        "A red square.<|im_end|>",
        "A square.<|im_end|>",
        "<think>\nOnly one is drawn.\n</think>\n\nThere is one shape.<|im_end|>",
    ])
    assert out["n_images"] == 1


def test_qwen3_multi_turn_latest_answer_gets_the_empty_thinking_block():
    processor = _processor("qwen3")
    out = tokenize_conversation(TWO_TURNS, processor, max_length=None)
    expected = (
        "<|im_start|>user\n<image>What is in the image?<|im_end|>\n"
        "<|im_start|>assistant\nA red square.<|im_end|>\n"
        "<|im_start|>user\nAnd the shape?<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n\n</think>\n\nA square.<|im_end|>\n"
    )
    _check_labels(out, processor, expected, ["A red square.<|im_end|>", "<think>\n\n</think>\n\nA square.<|im_end|>"])


def test_phi3_multi_turn_labels_each_answer_and_its_end_token():
    processor = _processor("phi3")
    out = tokenize_conversation([WITH_SYSTEM[0], *TWO_TURNS], processor, max_length=None)
    expected = (
        "<|system|>\nYou are a helpful assistant.<|end|>\n"
        "<|user|>\n<image>What is in the image?<|end|>\n"
        "<|assistant|>\nA red square.<|end|>\n"
        "<|user|>\nAnd the shape?<|end|>\n"
        "<|assistant|>\nA square.<|end|>\n<|endoftext|>"
    )
    _check_labels(out, processor, expected, ["A red square.<|end|>", "A square.<|end|>"])


THREE_TURNS = [
    WITH_SYSTEM[0],
    *TWO_TURNS,
    {"role": "user", "content": "Is it  red?\n"},
    {"role": "assistant", "content": " Yes, it is red. "},
]


@pytest.mark.parametrize("family", ["gemma3_text", "olmo2", "chatml"])
@pytest.mark.parametrize(
    "messages", [ONE_TURN, WITH_SYSTEM, TWO_TURNS, THREE_TURNS], ids=["one", "system", "two", "three"]
)
def test_prefix_stable_templates_label_as_prefix_diffing_does(family, messages):
    """Where renderings of growing prefixes are prefixes of each other, the labels are their diffs."""
    processor = make_processor() if family == "chatml" else _processor(family)
    out = tokenize_conversation(messages, processor, max_length=None)
    ids, labels = prefix_diff_reference(messages, processor)
    assert out["input_ids"] == ids and out["labels"] == labels
    assert len(labelled_spans(out)) == sum(m["role"] == "assistant" for m in messages)


def test_collated_batch_of_a_family_template_trains_a_family_model():
    """Qwen3-templated samples, collated, give a finite loss on a tiny Qwen3 WINGS model."""
    from tiny import tiny_family_wings
    from wings.data.collate import LlavaCollator

    processor = _processor("qwen3")
    samples = [tokenize_conversation(m, processor, max_length=None) for m in (ONE_TURN, WITH_SYSTEM)]
    vocab = len(processor.tokenizer)
    model = tiny_family_wings("qwen3")
    model.language_model.resize_token_embeddings(vocab)
    model.config.image_token_id = processor.image_token_id
    collator = LlavaCollator(pad_token_id=processor.tokenizer.pad_token_id)
    batch = collator([{**s, "pixel_values": torch.randn(s["n_images"], 3, 32, 32)} for s in samples])
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                pixel_values=batch["pixel_values"], labels=batch["labels"])
    assert torch.isfinite(out.loss)
