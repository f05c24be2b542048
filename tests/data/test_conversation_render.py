"""The direct chat-template render of data preparation against `apply_chat_template` (the slow path)."""

from __future__ import annotations

import random

import pytest
from family_templates import FAMILY_TEMPLATES, family_tokenizer
from llava_fixtures import CORPUS, make_processor, make_tokenizer

from wings.data import conversation
from wings.data.conversation import tokenize_conversation
from wings.data.llava import DataError

WORDS = " ".join(CORPUS).replace(".", "").replace("?", "").replace(":", "").replace(",", "").split()


def _processor(family: str):
    if family == "chatml":
        return make_processor()
    if family == "generic":
        tokenizer = make_tokenizer()
        tokenizer.chat_template = None
        return make_processor(tokenizer)
    return make_processor(family_tokenizer(family, CORPUS))


def _conversations(seed: int, count: int) -> list[list[dict]]:
    """Varied chats: a system turn or not, 1-4 exchanges, an image as a marker or a part, padded and
    empty replies, thinking blocks."""
    rng = random.Random(seed)

    def text() -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12)))

    chats = []
    for _ in range(count):
        chat = [{"role": "system", "content": text()}] if rng.random() < 0.3 else []
        for k in range(rng.randint(1, 4)):
            question = text()
            if k == 0 and rng.random() < 0.4:
                question = "<image>\n" + question
            elif k == 0 and rng.random() < 0.3:
                question = [{"type": "image"}, {"type": "text", "text": question}]
            reply = rng.choice([text(), "  " + text() + "\n", f"<think>\n{text()}\n</think>\n\n{text()}", ""])
            chat += [{"role": "user", "content": question}, {"role": "assistant", "content": reply}]
        chats.append(chat)
    return chats


def _tokenized(chat, processor):
    try:
        return tokenize_conversation(chat, processor, max_length=None)
    except DataError as err:
        return str(err)


@pytest.mark.parametrize("family", ["chatml", "generic", *FAMILY_TEMPLATES])
def test_direct_render_gives_the_ids_and_labels_of_apply_chat_template(family, monkeypatch):
    processor = _processor(family)
    chats = _conversations(seed=len(family), count=40)
    fast = [_tokenized(chat, processor) for chat in chats]
    monkeypatch.setattr(conversation, "compiled_chat_template", lambda template: None)  # every render: slow path
    slow = [_tokenized(chat, processor) for chat in chats]
    assert fast == slow
    assert sum(isinstance(out, dict) for out in fast) >= 20  # most chats tokenise (Gemma refuses a few)


@pytest.mark.parametrize("family", ["chatml", "generic", *FAMILY_TEMPLATES])
def test_renderer_matches_apply_chat_template(family):
    processor = _processor(family)
    template = conversation.resolve_chat_template(processor)
    chats = _conversations(seed=7, count=10)
    # Not plain (an extra key): transformers' own path, which hands the reasoning to the template.
    chats.append([{"role": "user", "content": "How many?"},
                  {"role": "assistant", "content": "Three.", "reasoning_content": "count them"}])
    for chat in chats:
        chat = [{**m, "content": conversation.template_content(m["content"], conversation.content_format(template))}
                for m in chat]
        render = conversation._chat_renderer(processor, template, "test", chat)
        for end in range(1, len(chat) + 1):
            for prompt in (False, True):
                try:
                    expected = processor.apply_chat_template(chat[:end], add_generation_prompt=prompt,
                                                             chat_template=template)
                except Exception as err:
                    with pytest.raises(DataError, match=str(err)[:20]):
                        render(chat[:end], prompt)
                    continue
                assert render(chat[:end], prompt) == expected


def test_only_plain_messages_take_the_direct_render():
    assert conversation._is_plain_message({"role": "user", "content": "hi"})
    assert conversation._is_plain_message({"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "x"}]})
    assert not conversation._is_plain_message({"role": "user", "content": None})
    assert not conversation._is_plain_message({"role": "assistant", "content": "x", "reasoning_content": "y"})
    assert not conversation._is_plain_message({"role": "user", "content": [{"type": "text", "text": None}]})
