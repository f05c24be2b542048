"""Train a small byte-level BPE chat tokenizer offline.

Tests and the offline lab cannot download a tokenizer, so they train one in well under a second.
The result is an ordinary `PreTrainedTokenizerFast` with a ChatML chat template and an `<image>`
special token; it saves and reloads through `AutoTokenizer`.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

PAD_TOKEN = "<|pad|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
IMAGE_TOKEN = "<image>"
SPECIAL_TOKENS = (PAD_TOKEN, IM_START, IM_END, IMAGE_TOKEN)

# ChatML, as Qwen uses it. `content` may be a string or a list of HF content parts
# ({"type": "text", "text": ...} / {"type": "image"}); each image part renders as an <image> marker on its
# own line, as in training data ("<image>\nquestion") and as `WingsProcessor` flattens parts. vLLM and other
# tools that hand the parts to the template directly get the same prompt.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<image>\n' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def train_chat_tokenizer(
    texts: Iterable[str], vocab_size: int = 512, min_frequency: int = 2, split_digits: bool = True
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on `texts` and wrap it as a chat tokenizer.

    Digits are split one per token by default so that small models can learn arithmetic.
    Token ids 0..3 are `<|pad|>`, `<|im_start|>`, `<|im_end|>`, `<image>`.
    """
    tok = Tokenizer(models.BPE())
    pieces = [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    if split_digits:
        pieces.insert(0, pre_tokenizers.Digits(individual_digits=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence(pieces)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD_TOKEN,
        eos_token=IM_END,
        bos_token=None,
        unk_token=None,
        additional_special_tokens=[IM_START, IMAGE_TOKEN],
        padding_side="left",
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast
