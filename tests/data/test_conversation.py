"""Chat-template tokenisation: assistant-only labels, image expansion, truncation, other templates."""

from __future__ import annotations

import logging

import pytest
from llava_fixtures import IMAGE_SEQ_LENGTH, make_processor, make_tokenizer, processor  # noqa: F401

from wings.data.conversation import IGNORE_INDEX, tokenize_conversation
from wings.data.llava import DataError, LlavaRecord, SampleTooLongError, Turn
from wings.processing import flatten_content

QWEN2_TEMPLATE = (  # Qwen2-Instruct's template: a default system prompt when none is given
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LLAMA3_TEMPLATE = (  # Llama-3-Instruct's template: bos once, headers, trimmed content, <|eot_id|>
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)


def msgs(*pairs: tuple[str, str]) -> list[dict]:
    return [{"role": r, "content": c} for r, c in pairs]


def labelled_spans(out: dict) -> list[list[int]]:
    """Contiguous runs of labelled positions, as token ids (labels must equal the inputs there)."""
    spans, current = [], []
    for tok, lab in zip(out["input_ids"], out["labels"]):
        if lab == IGNORE_INDEX:
            if current:
                spans.append(current)
            current = []
        else:
            assert lab == tok, "a label must be the token at its own position (the model shifts)"
            current.append(lab)
    return spans + ([current] if current else [])


def unlabelled_text(out: dict, tokenizer) -> str:
    """The decoded runs of unlabelled positions, concatenated."""
    runs, current = [], []
    for tok, lab in zip(out["input_ids"], out["labels"]):
        if lab == IGNORE_INDEX:
            current.append(tok)
        elif current:
            runs.append(current)
            current = []
    return "".join(tokenizer.decode(r) for r in runs + ([current] if current else []))


def prefix_diff_reference(messages: list[dict], processor) -> tuple[list[int], list[int]]:
    """Naive reference for prefix-stable templates: tokenise the renderings of growing prefixes.

    An assistant message i is labelled from the end of render(messages[:i], generation prompt) to the
    last special token of render(messages[:i + 1]); image tokens are never labelled.
    """
    tok = processor.tokenizer
    messages = [{**m, "content": flatten_content(m["content"])} for m in messages]

    def encode(prefix, add_generation_prompt):
        text = processor.apply_chat_template(prefix, add_generation_prompt=add_generation_prompt)
        return tok(processor.expand_image_tokens(text), add_special_tokens=False)["input_ids"]

    ids = encode(messages, False)
    labels = [IGNORE_INDEX] * len(ids)
    specials = set(tok.all_special_ids)
    for i, m in enumerate(messages):
        if m["role"] == "assistant":
            prompt, turn = encode(messages[:i], True), encode(messages[: i + 1], False)
            assert ids[: len(prompt)] == prompt and ids[: len(turn)] == turn, "not prefix-stable"
            last = max(k for k in range(len(prompt), len(turn)) if turn[k] in specials)
            labels[len(prompt) : last + 1] = turn[len(prompt) : last + 1]
    return ids, [IGNORE_INDEX if t == processor.image_token_id else lab for t, lab in zip(ids, labels)]


def image_runs(ids: list[int], image_id: int) -> list[tuple[int, int]]:
    """(start, length) of each run of consecutive image tokens."""
    runs, k = [], 0
    while k < len(ids):
        if ids[k] == image_id:
            start = k
            while k < len(ids) and ids[k] == image_id:
                k += 1
            runs.append((start, k - start))
        else:
            k += 1
    return runs


def test_chatml_labels_only_assistant_content_and_end_token(processor):
    messages = msgs(
        ("system", "You are a helpful assistant."),
        ("user", "How many shapes are there?"),
        ("assistant", "There are three shapes."),
        ("user", "Answer briefly."),
        ("assistant", "Three."),
    )
    out = tokenize_conversation(messages, processor, max_length=512)
    tok = processor.tokenizer
    # Independent reference: the ChatML string written by hand.
    expected_text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    assert out["input_ids"] == tok(expected_text, add_special_tokens=False)["input_ids"]
    assert out["n_images"] == 0
    spans = [tok.decode(s) for s in labelled_spans(out)]
    assert spans == ["There are three shapes.<|im_end|>", "Three.<|im_end|>"]


def test_record_with_images_expands_markers_in_order(processor):
    record = LlavaRecord(
        source="data.json",
        index=0,
        id="two",
        turns=(
            Turn("user", "Compare <image> and"),
            Turn("assistant", "The first is red."),
            Turn("user", "then this:\n<image>"),
            Turn("assistant", "The second is green."),
        ),
        images=("a.png", "b.png"),
    )
    out = tokenize_conversation(record, processor, max_length=512)
    tok, image_id = processor.tokenizer, processor.image_token_id
    assert out["n_images"] == 2
    runs = image_runs(out["input_ids"], image_id)
    assert [n for _, n in runs] == [IMAGE_SEQ_LENGTH, IMAGE_SEQ_LENGTH]
    # Marker order: the text before each run is the text before its marker.
    first, second = runs[0][0], runs[1][0]
    assert tok.decode(out["input_ids"][:first]) == "<|im_start|>user\nCompare "
    assert tok.decode(out["input_ids"][first + IMAGE_SEQ_LENGTH : second]).endswith("then this:\n")
    assert all(out["labels"][s + j] == IGNORE_INDEX for s, n in runs for j in range(n))
    assert [tok.decode(s) for s in labelled_spans(out)] == [
        "The first is red.<|im_end|>",
        "The second is green.<|im_end|>",
    ]


def test_hf_content_parts_are_accepted(processor):
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A red square."}]},
    ]
    out = tokenize_conversation(messages, processor, max_length=None)
    assert out["n_images"] == 1
    assert out["input_ids"].count(processor.image_token_id) == IMAGE_SEQ_LENGTH
    assert [processor.tokenizer.decode(s) for s in labelled_spans(out)] == ["A red square.<|im_end|>"]


def test_text_is_truncated_at_the_end_when_an_answer_remains(processor, caplog):
    messages = msgs(("user", "Describe it."), ("assistant", "There is a green circle and a blue triangle."))
    full = tokenize_conversation(messages, processor, max_length=None)
    cut = len(full["input_ids"]) - 5
    with caplog.at_level(logging.WARNING, logger="wings.data.conversation"):
        out = tokenize_conversation(messages, processor, max_length=cut)
    assert out["input_ids"] == full["input_ids"][:cut] and out["labels"] == full["labels"][:cut]
    assert any("truncated from" in r.getMessage() for r in caplog.records)


def test_truncation_that_loses_every_answer_token_raises(processor):
    messages = msgs(("user", "Describe the picture. " * 5), ("assistant", "Three."))
    with pytest.raises(SampleTooLongError, match="no assistant token would remain"):
        tokenize_conversation(messages, processor, max_length=10)


@pytest.mark.parametrize("keep_image_tokens", [0, 2])  # image dropped entirely / split in two
def test_truncation_never_cuts_an_image(processor, keep_image_tokens):
    record = LlavaRecord(
        source="data.json",
        index=7,
        id="long",
        turns=(Turn("user", "What is in the image? <image>"), Turn("assistant", "A red square.")),
        images=("a.png",),
    )
    full = tokenize_conversation(record, processor, max_length=None)
    start = full["input_ids"].index(processor.image_token_id)
    with pytest.raises(SampleTooLongError) as info:
        tokenize_conversation(record, processor, max_length=start + keep_image_tokens)
    assert str(info.value).startswith(f"data.json: sample 7 (id 'long'): {len(full['input_ids'])} tokens exceed")
    assert "would cut an image" in str(info.value)


def test_qwen2_style_template():
    tok = make_tokenizer()
    tok.chat_template = QWEN2_TEMPLATE
    processor = make_processor(tok)
    messages = msgs(("user", "<image>\nWhat is in the image?"), ("assistant", "A red square."))
    out = tokenize_conversation(messages, processor, max_length=512)
    expected_text = (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n" + "<image>" * IMAGE_SEQ_LENGTH + "\nWhat is in the image?<|im_end|>\n"
        "<|im_start|>assistant\nA red square.<|im_end|>\n"
    )
    assert out["input_ids"] == tok(expected_text, add_special_tokens=False)["input_ids"]
    assert [tok.decode(s) for s in labelled_spans(out)] == ["A red square.<|im_end|>"]


def test_llama3_style_template():
    tok = make_tokenizer()
    specials = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    tok.add_special_tokens({"additional_special_tokens": specials}, replace_extra_special_tokens=False)
    tok.bos_token = "<|begin_of_text|>"
    tok.chat_template = LLAMA3_TEMPLATE
    processor = make_processor(tok)
    messages = msgs(
        ("system", "Answer briefly."),
        ("user", "<image>\nWhat is in the image?"),
        ("assistant", " A red square. "),
        ("user", "And the shapes?"),
        ("assistant", "Three shapes."),
    )
    out = tokenize_conversation(messages, processor, max_length=512)
    ids = out["input_ids"]
    assert ids[0] == tok.convert_tokens_to_ids("<|begin_of_text|>") and out["labels"][0] == IGNORE_INDEX
    assert ids.count(processor.image_token_id) == IMAGE_SEQ_LENGTH
    # The template trims content; the label covers exactly what the template wrote.
    assert [tok.decode(s) for s in labelled_spans(out)] == ["A red square.<|eot_id|>", "Three shapes.<|eot_id|>"]


def test_generic_template_when_tokenizer_has_none():
    tok = make_tokenizer()
    tok.chat_template = None
    processor = make_processor(tok)
    out = tokenize_conversation(msgs(("user", "How many?"), ("assistant", "Three.")), processor, max_length=None)
    assert tok.decode(out["input_ids"]) == "User:\nHow many?\nAssistant:\nThree.<|im_end|>\n"
    assert [tok.decode(s) for s in labelled_spans(out)] == ["Three.<|im_end|>"]  # eos ends the turn


def test_template_that_is_not_prefix_stable_is_rejected():
    tok = make_tokenizer()
    # Renders the last message differently from earlier ones (like templates that strip reasoning).
    tok.chat_template = (
        "{% for m in messages %}{{ m['role'] + ': ' }}{% if loop.last %}{{ m['content'] }}"
        "{% else %}{{ m['content'][:3] }}{% endif %}{{ '\n' }}{% endfor %}"
    )
    processor = make_processor(tok)
    record = LlavaRecord(
        source="data.json",
        index=3,
        id="cut",
        turns=(
            Turn("user", "How many shapes?"), Turn("assistant", "Three."), Turn("user", "Sure?"), Turn("assistant", "Yes.")
        ),
        images=(),
    )
    with pytest.raises(DataError, match="not prefix-stable up to the assistant header of message 2 of 4") as info:
        tokenize_conversation(record, processor, max_length=None)
    assert str(info.value).startswith("data.json: sample 3 (id 'cut'): ")


def test_template_that_rewrites_replies_is_rejected():
    tok = make_tokenizer()
    tok.chat_template = (
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' }}"
        "{% if m['role'] == 'assistant' %}{{ m['content'] | upper }}{% else %}{{ m['content'] }}{% endif %}"
        "{{ '<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )
    processor = make_processor(tok)
    with pytest.raises(DataError, match="does not copy the content of message 2 of 2 verbatim"):
        tokenize_conversation(msgs(("user", "How many?"), ("assistant", "Three.")), processor, max_length=None)


def test_template_whose_later_turns_depend_on_a_reply_is_rejected():
    tok = make_tokenizer()
    # Echoes the previous answer's length into the next user turn: the reply's extent is ambiguous.
    tok.chat_template = (
        "{% set ns = namespace(prev='') %}{% for m in messages %}{{ m['role'] + ': ' + m['content'] }}"
        "{% if m['role'] == 'user' and ns.prev %}{{ ' (after ' + ns.prev|length|string + ' chars)' }}{% endif %}"
        "{% if m['role'] == 'assistant' %}{% set ns.prev = m['content'] %}{% endif %}{{ '\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
    )
    processor = make_processor(tok)
    messages = msgs(("user", "How many?"), ("assistant", "Three."), ("user", "Sure?"), ("assistant", "Yes."))
    with pytest.raises(DataError, match="reply of message 2 of 4 cannot be located"):
        tokenize_conversation(messages, processor, max_length=None)
