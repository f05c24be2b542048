"""Hugging Face chat and vLLM's chat render the same prompt tokens for the same messages, whatever chat template
the directory holds: the processor hands the template what vLLM's renderer hands it (`wings.chat_content`).

Three templates: the one WINGS saves (iterates the parts, an image part is an `<image>` line), a hand-written
ChatML template that iterates the parts and writes `<image>` with no newline, and a string-content template like
Qwen2.5's (`{{ message['content'] }}`: vLLM flattens the parts, images first, one per line).
"""

from __future__ import annotations

import pytest

pytest.importorskip("vllm")

from tiny_serving import image_part, sample_image  # noqa: E402

PARTS_NO_NEWLINE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}<image>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
STRING_CONTENT = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TEMPLATES = {"saved": None, "parts_no_newline": PARTS_NO_NEWLINE, "string_content": STRING_CONTENT}
# Content as (kind, value) pairs: image parts carry the sample_image seed.
MESSAGES = {
    "text": [("text", "hello, how are you?")],
    "image_then_text": [("image", 0), ("text", "what colour is the circle?")],
    "text_image_text": [("text", "fine thanks"), ("image", 1), ("text", "what colour?")],
    "two_images": [("image", 0), ("image", 2), ("text", "and the square? it is")],
}


def hf_parts(content):
    return [{"type": "text", "text": v} if kind == "text" else {"type": "image", "image": sample_image(v)}
            for kind, v in content]


def openai_parts(content):
    return [{"type": "text", "text": v} if kind == "text" else image_part(sample_image(v)) for kind, v in content]


@pytest.mark.slow
@pytest.mark.parametrize("template", list(TEMPLATES))
def test_hf_chat_and_vllm_chat_render_the_same_tokens(llm, hf_generate, template):
    from vllm import SamplingParams

    from wings.chat_content import content_format

    processor = hf_generate.processor
    chat_template = TEMPLATES[template]
    expected_format = {"saved": "parts", "parts_no_newline": "parts", "string_content": "string"}[template]
    assert content_format(chat_template or processor.tokenizer.chat_template) == expected_format
    conversations = [[{"role": "user", "content": openai_parts(c)}] for c in MESSAGES.values()]
    outputs = llm.chat(conversations, SamplingParams(max_tokens=1), chat_template=chat_template,
                       add_generation_prompt=True, use_tqdm=False)
    for name, content, output in zip(MESSAGES, MESSAGES.values(), outputs):
        ids = processor.apply_chat_template(
            [{"role": "user", "content": hf_parts(content)}], chat_template=chat_template,
            add_generation_prompt=True, tokenize=True,
        )[0].tolist()
        assert output.prompt_token_ids == ids, f"{template}/{name}: {processor.decode(output.prompt_token_ids)!r} " \
                                               f"!= {processor.decode(ids)!r}"
