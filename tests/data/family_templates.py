"""Chat templates with the structure of the released ones of each LLM family (written for these tests).

Each keeps what makes its family's template special for the data path: Qwen3's thinking block (an
empty `<think>` block on the latest answer, earlier answers rendered without theirs, an
`enable_thinking` switch), Gemma's missing system role (a system message is folded into the first
user turn; roles must alternate; the assistant is "model"), Phi-3's end token after the last message
when no generation prompt is asked for, OLMo 2's end token inside assistant turns. Image content parts
render as `<image>` (the WINGS processor's marker) where the released multimodal templates write their
own image tokens.
"""

from __future__ import annotations

from wings.data.tokenizer import train_chat_tokenizer

# Content may be a string or HF content parts; image parts become <image> (no line break: training data reaches
# a template that loops over parts as parts, so its "<image>\n" prompts render as this template writes them).
_CONTENT = (
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}{{- '<image>' -}}"
    "{%- elif part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
)

QWEN3_TEMPLATE = (
    "{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) -%}"
    "{%- for message in messages[::-1] -%}{%- set index = (messages|length - 1) - loop.index0 -%}"
    "{%- if ns.multi_step_tool and message['role'] == 'user' -%}"
    "{%- set ns.multi_step_tool = false -%}{%- set ns.last_query_index = index -%}{%- endif -%}{%- endfor -%}"
    "{%- for message in messages -%}"
    "{%- set text -%}" + _CONTENT + "{%- endset -%}"
    "{%- if message['role'] in ('system', 'user') -%}"
    "{{- '<|im_start|>' + message['role'] + '\n' + text + '<|im_end|>\n' -}}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{%- set content = text -%}{%- set reasoning = '' -%}"
    "{%- if '</think>' in text -%}"
    "{%- set content = text.split('</think>')[-1].lstrip('\n') -%}"
    "{%- set reasoning = text.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') -%}"
    "{%- endif -%}"
    "{%- if loop.index0 > ns.last_query_index and (loop.last or reasoning) -%}"
    "{{- '<|im_start|>assistant\n<think>\n' + reasoning.strip('\n') + '\n</think>\n\n' + content.lstrip('\n') -}}"
    "{%- else -%}{{- '<|im_start|>assistant\n' + content -}}{%- endif -%}"
    "{{- '<|im_end|>\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n' -}}"
    "{%- if enable_thinking is defined and enable_thinking is false -%}{{- '<think>\n\n</think>\n\n' -}}{%- endif -%}"
    "{%- endif -%}"
)

GEMMA_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set first_user_prefix = '' -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') -}}{%- endif -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{%- set text -%}" + _CONTENT + "{%- endset -%}"
    "{{- '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') + text | trim + '<end_of_turn>\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<start_of_turn>model\n' -}}{%- endif -%}"
)

PHI3_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- set text -%}" + _CONTENT + "{%- endset -%}"
    "{{- '<|' + message['role'] + '|>\n' + text + '<|end|>\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|assistant|>\n' -}}{%- else -%}{{- eos_token -}}{%- endif -%}"
)

OLMO2_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{%- set text -%}" + _CONTENT + "{%- endset -%}"
    "{%- if message['role'] in ('system', 'user') -%}{{- '<|' + message['role'] + '|>\n' + text + '\n' -}}"
    "{%- elif loop.last -%}{{- '<|assistant|>\n' + text + eos_token -}}"
    "{%- else -%}{{- '<|assistant|>\n' + text + eos_token + '\n' -}}{%- endif -%}"
    "{%- if loop.last and add_generation_prompt -%}{{- '<|assistant|>\n' -}}{%- endif -%}"
    "{%- endfor -%}"
)

# family -> (template, special tokens the family's tokenizer has, its end-of-turn/eos token, bos token)
FAMILY_TEMPLATES = {
    "qwen3": (QWEN3_TEMPLATE, ["<think>", "</think>"], "<|im_end|>", None),
    "gemma3_text": (GEMMA_TEMPLATE, ["<start_of_turn>", "<end_of_turn>", "<bos>"], "<end_of_turn>", "<bos>"),
    "phi3": (PHI3_TEMPLATE, ["<|user|>", "<|assistant|>", "<|system|>", "<|end|>", "<|endoftext|>"], "<|endoftext|>", None),
    "olmo2": (OLMO2_TEMPLATE, ["<|user|>", "<|assistant|>", "<|system|>", "<|endoftext|>"], "<|endoftext|>", None),
}

# family -> the token that ends an assistant turn (Phi-3 ends a turn with <|end|>; its eos token only
# closes the whole rendering)
END_OF_TURN = {"qwen3": "<|im_end|>", "gemma3_text": "<end_of_turn>", "phi3": "<|end|>", "olmo2": "<|endoftext|>"}


def family_tokenizer(family: str, corpus: list[str]):
    """An offline tokenizer carrying `family`'s chat template and special tokens."""
    template, specials, eos, bos = FAMILY_TEMPLATES[family]
    tokenizer = train_chat_tokenizer(corpus, vocab_size=400)
    tokenizer.add_special_tokens({"additional_special_tokens": specials}, replace_extra_special_tokens=False)
    tokenizer.eos_token = eos
    if bos is not None:
        tokenizer.bos_token = bos
    tokenizer.chat_template = template
    return tokenizer
