"""Tokenise a conversation with the tokenizer's own chat template; labels only on assistant turns.

The template is treated as a black box: the conversation is rendered for growing prefixes of its
messages, and the tokens each assistant message adds are found by diffing token prefixes. This works
for ChatML (Qwen2), Llama 3 and any template whose rendering of `messages[:k]` is a prefix of the
rendering of `messages` - a property that is checked, not assumed.

For an assistant message i:
    prompt = render(messages[:i], add_generation_prompt=True)    # ends with the assistant header
    turn   = render(messages[:i+1], add_generation_prompt=False) # ends after its end-of-turn token
The tokens between the two are the assistant content plus the template's end-of-turn token (and
whatever follows it, such as ChatML's trailing newline, which stays unlabelled: the model never has
to predict text after it has ended its turn).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TypedDict

from ..processing import WingsProcessor, flatten_content
from .llava import DataError, LlavaRecord, SampleTooLongError

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100

# Used only when neither the processor nor the tokenizer has a chat template. Plain-text headers on
# their own line keep token boundaries stable (a header never merges with the content after it);
# the eos token ends assistant turns so the model learns to stop.
GENERIC_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ message['role'] | capitalize + ':\n' + message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token or '' }}{% endif %}"
    "{{ '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:\n' }}{% endif %}"
)


class TokenizedConversation(TypedDict):
    """input_ids [T] and labels [T] (IGNORE_INDEX outside assistant turns); n_images images in order."""

    input_ids: list[int]
    labels: list[int]
    n_images: int


def resolve_chat_template(processor: WingsProcessor) -> str:
    """The processor's template, else the tokenizer's, else `GENERIC_CHAT_TEMPLATE`."""
    return getattr(processor, "chat_template", None) or processor.tokenizer.chat_template or GENERIC_CHAT_TEMPLATE


def tokenize_conversation(
    record_or_messages: LlavaRecord | Sequence[dict],
    processor: WingsProcessor,
    max_length: int | None,
) -> TokenizedConversation:
    """Render and tokenise one conversation; label only the assistant turns.

    Args:
        record_or_messages: a `LlavaRecord`, or HF chat messages whose content is a string with
            `<image>` markers or a list of content parts.
        processor: supplies the tokenizer, the chat template and `image_seq_length`.
        max_length: longest allowed sequence (None: no limit). Text may be cut at the end; a cut
            through or before an image, or one that leaves no assistant token, raises instead.

    Returns:
        input_ids [T] with `image_seq_length` image tokens per `<image>` marker, labels [T] (the
        assistant content and its end-of-turn token; IGNORE_INDEX elsewhere, always on image tokens)
        and n_images.

    Raises:
        SampleTooLongError: the sample does not fit `max_length` (see above).
        DataError: the template is not prefix-stable, or drops image markers.
    """
    if isinstance(record_or_messages, LlavaRecord):
        name, messages = record_or_messages.name, record_or_messages.messages()
    else:
        name = "conversation"
        messages = [{**m, "content": flatten_content(m["content"])} for m in record_or_messages]
    n_images = sum(m["content"].count(processor.image_token) for m in messages)
    if isinstance(record_or_messages, LlavaRecord) and n_images != record_or_messages.num_images:
        raise DataError(f"{name}: {n_images} image marker(s) but {record_or_messages.num_images} image(s)")

    input_ids, labels = _render_and_label(messages, processor, name)
    _check_image_tokens(input_ids, n_images, processor, name)
    input_ids, labels = _truncate(input_ids, labels, max_length, processor.image_token_id, name)
    return TokenizedConversation(input_ids=input_ids, labels=labels, n_images=n_images)


def _render_and_label(messages: list[dict], processor: WingsProcessor, name: str) -> tuple[list[int], list[int]]:
    """Full token ids and their labels; the assistant spans come from diffing rendered prefixes."""
    template = resolve_chat_template(processor)

    def encode(prefix: list[dict], add_generation_prompt: bool) -> list[int]:
        try:
            text = processor.apply_chat_template(
                prefix, add_generation_prompt=add_generation_prompt, chat_template=template
            )
        except Exception as err:  # jinja raises its own errors (e.g. role-alternation checks)
            raise DataError(f"{name}: the chat template failed to render {len(prefix)} message(s): {err}") from err
        # Expanding after rendering equals expanding the contents first: the template copies them verbatim.
        return processor.tokenizer(processor.expand_image_tokens(text), add_special_tokens=False)["input_ids"]

    input_ids = encode(messages, add_generation_prompt=False)
    labels = [IGNORE_INDEX] * len(input_ids)
    end_of_turn_ids = _special_token_ids(processor.tokenizer)
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = len(_checked_prefix(encode(messages[:i], True), input_ids, name, i, "the assistant header"))
        end = len(_checked_prefix(encode(messages[: i + 1], False), input_ids, name, i + 1, "the assistant turn"))
        span = input_ids[start:end]
        # Label up to the last special token of the turn (its end-of-turn token): what follows it, such
        # as ChatML's newline, belongs to the template, not to the answer.
        last_special = max((k for k, t in enumerate(span) if t in end_of_turn_ids), default=len(span) - 1)
        labels[start : start + last_special + 1] = span[: last_special + 1]
    image_id = processor.image_token_id
    return input_ids, [IGNORE_INDEX if t == image_id else lab for t, lab in zip(input_ids, labels)]


def _checked_prefix(prefix: list[int], full: list[int], name: str, k: int, what: str) -> list[int]:
    if full[: len(prefix)] != prefix:
        raise DataError(
            f"{name}: the chat template is not prefix-stable: rendering the first {k} message(s) (up to "
            f"{what}) does not give a token prefix of the whole conversation, so assistant labels cannot be "
            "located. Use a template that renders earlier messages independently of later ones."
        )
    return prefix


def _special_token_ids(tokenizer) -> set[int]:
    ids = set(tokenizer.all_special_ids)
    ids.update(i for i, tok in tokenizer.added_tokens_decoder.items() if tok.special)
    return ids


def _check_image_tokens(input_ids: list[int], n_images: int, processor: WingsProcessor, name: str) -> None:
    found = sum(1 for t in input_ids if t == processor.image_token_id)
    expected = n_images * processor.image_seq_length
    if found != expected:
        raise DataError(
            f"{name}: expected {expected} image tokens ({n_images} image(s) x {processor.image_seq_length}) "
            f"after tokenisation, found {found}; the chat template or tokenizer altered '{processor.image_token}'"
        )


def _truncate(
    input_ids: list[int], labels: list[int], max_length: int | None, image_token_id: int, name: str
) -> tuple[list[int], list[int]]:
    """Cut text at the end to `max_length`; refuse cuts that lose image tokens or every label."""
    length = len(input_ids)
    if max_length is None or length <= max_length:
        return input_ids, labels
    if image_token_id in input_ids[max_length:]:
        # Image tokens are consecutive per image; any image token past the cut means an image is
        # split or dropped, and the model requires all of an image's tokens with its pixel_values.
        raise SampleTooLongError(
            f"{name}: {length} tokens exceed max_length {max_length} and truncation would cut an image; "
            "dropping the sample (raise max_length or shorten the conversation)"
        )
    if all(lab == IGNORE_INDEX for lab in labels[:max_length]):
        raise SampleTooLongError(
            f"{name}: {length} tokens exceed max_length {max_length} and no assistant token would remain "
            "after truncation; dropping the sample"
        )
    logger.warning("%s: truncated from %d to max_length %d tokens", name, length, max_length)
    return input_ids[:max_length], labels[:max_length]
