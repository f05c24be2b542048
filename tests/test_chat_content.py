"""`wings.chat_content`: which templates get content parts, and what they receive."""

import pytest

from wings.chat_content import content_format, split_markers, template_content
from wings.data.tokenizer import CHATML_TEMPLATE

STRING_TEMPLATE = "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n{% endfor %}"
LOOP_TEMPLATE = "{% for m in messages %}{% for p in m.content %}{{ p.type }}{% endfor %}{% endfor %}"
LOOP_VARIABLE_TEMPLATE = "{% for message in messages %}{% set content = message['content'] %}" \
                         "{% for p in content | list %}{{ p['type'] }}{% endfor %}{% endfor %}"


@pytest.mark.parametrize("template, fmt", [
    (CHATML_TEMPLATE, "parts"), (LOOP_TEMPLATE, "parts"), (LOOP_VARIABLE_TEMPLATE, "parts"),
    (STRING_TEMPLATE, "string"), (None, "string"),
])
def test_templates_that_loop_over_content_get_parts(template, fmt):
    assert content_format(template) == fmt


def test_content_as_each_kind_of_template_receives_it():
    content = [{"type": "text", "text": "first"}, {"type": "image", "image": object()},
               {"type": "image_url", "image_url": {"url": "data:"}}, {"type": "text", "text": "second"}]
    assert template_content(content, "parts") == [
        {"type": "text", "text": "first"}, {"type": "image"}, {"type": "image"}, {"type": "text", "text": "second"}]
    assert template_content(content, "string") == "<image>\n<image>\nfirst\nsecond"
    assert template_content("as is", "parts") == "as is"
    assert template_content("<image>\nWhat?", "string") == "<image>\nWhat?"
    with pytest.raises(ValueError, match="content part 0: unsupported type 'audio'"):
        template_content([{"type": "audio"}], "string")


def test_training_strings_reach_a_looping_template_as_parts():
    assert template_content("<image>\nWhat?", "parts") == [{"type": "image"}, {"type": "text", "text": "What?"}]
    assert split_markers("Compare <image>\nand\n<image>\n") == [
        {"type": "text", "text": "Compare "}, {"type": "image"}, {"type": "text", "text": "and\n"}, {"type": "image"}]
    assert split_markers("<image>") == [{"type": "image"}]
