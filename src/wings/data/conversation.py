"""Tokenise a conversation with the tokenizer's own chat template; labels only on assistant turns.

The template is treated as a black box. The whole conversation is rendered once; that string is what
the model trains on. Each assistant reply is then located inside it:

    start = len(render(messages[:i], add_generation_prompt=True))  # where generation would begin
    tail  = what follows the reply when message i's content is replaced by a sentinel
    end   = len(full) - len(tail)                                   # the reply as rendered in context

The rendering of the reply in context may differ from the message's content (Llama 3 and Gemma trim
it; Qwen3 keeps the thinking block of the latest answer only and writes an empty one when there is
none), so the label is what the template wrote between `start` and `end`, whatever that is. The
template's end-of-turn token after the reply is labelled too: the reply's turn is rendered on its own
(ending with the sentinel reply), and the text that turn adds after the reply and that the full
rendering also has is labelled up to its first special token (ChatML's trailing newline and Phi-3's
end-of-text token after `<|end|>` stay unlabelled: the model never has to predict text after it has
ended its turn). Character positions become token positions through the fast tokenizer's offsets.

This works for templates that render later messages differently from earlier ones (Qwen3, Phi-3) as
well as prefix-stable ones (ChatML, Llama 3, Gemma, OLMo 2), where it gives the same labels as diffing
the renderings of growing prefixes. What it needs, and checks: the prompt up to an assistant header is
a prefix of the whole rendering (the model is prompted the same way at inference) and the template
copies assistant content without depending on it elsewhere.
"""

from __future__ import annotations

import bisect
import logging
import os
from collections.abc import Callable, Sequence
from typing import TypedDict

from ..chat_content import content_format, template_content
from ..compat import compiled_chat_template
from ..processing import WingsProcessor, flatten_content
from .images import image_size
from .llava import DataError, LlavaRecord, SampleTooLongError

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100

# Stands in for an assistant reply's content to find where the template puts it: plain lowercase
# letters and digits survive the transformations templates apply to content (trim, splitting off a
# thinking block, JSON quoting).
_REPLY_SENTINEL = "wingsreplysentinel{}x"

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
    image_sizes: Sequence[tuple[int, int]] | None = None,
) -> TokenizedConversation:
    """Render and tokenise one conversation; label only the assistant turns.

    Args:
        record_or_messages: a `LlavaRecord`, or HF chat messages whose content is a string with
            `<image>` markers or a list of content parts.
        processor: supplies the tokenizer, the chat template and `image_seq_length`.
        max_length: longest allowed sequence (None: no limit). Text may be cut at the end; a cut
            through or before an image, or one that leaves no assistant token, raises instead.
        image_sizes: (height, width) of each image, in marker order, for image layouts whose token count
            depends on the size ("anyres", "native"); default: read from a record's image files.

    Returns:
        input_ids [T] with each image's own number of image tokens (`processor.image_token_count`; for
        the fixed layout `image_seq_length`) per `<image>` marker, labels [T] (the
        assistant content and its end-of-turn token; IGNORE_INDEX elsewhere, always on image tokens)
        and n_images.

    Raises:
        SampleTooLongError: the sample does not fit `max_length` (see above).
        DataError: an assistant reply cannot be located in the rendering (see the module docstring),
            or the template drops image markers.
    """
    if isinstance(record_or_messages, LlavaRecord):
        name, messages = record_or_messages.name, record_or_messages.messages()
    else:
        name = "conversation"
        messages = [{**m, "content": flatten_content(m["content"])} for m in record_or_messages]
    n_images = sum(m["content"].count(processor.image_token) for m in messages)
    if isinstance(record_or_messages, LlavaRecord) and n_images != record_or_messages.num_images:
        raise DataError(f"{name}: {n_images} image marker(s) but {record_or_messages.num_images} image(s)")

    if processor.image_layout == "fixed":
        image_sizes = None
    elif image_sizes is None:
        if not isinstance(record_or_messages, LlavaRecord):
            raise DataError(f"{name}: image_layout={processor.image_layout!r} needs the images' sizes (image_sizes)")
        image_sizes = [image_size(path) for path in record_or_messages.images]
    input_ids, labels = _render_and_label(messages, processor, name, image_sizes)
    _check_image_tokens(input_ids, n_images, processor, name, image_sizes)
    input_ids, labels = _truncate(input_ids, labels, max_length, processor.image_token_id, name)
    return TokenizedConversation(input_ids=input_ids, labels=labels, n_images=n_images)


def _render_and_label(
    messages: list[dict], processor: WingsProcessor, name: str, image_sizes: Sequence[tuple[int, int]] | None = None
) -> tuple[list[int], list[int]]:
    """Token ids of the whole rendered conversation and their labels (assistant replies located in it)."""
    tokenizer = processor.tokenizer
    if not tokenizer.is_fast:
        raise DataError(
            f"{name}: assistant labels need a fast tokenizer (character offsets); "
            f"{type(tokenizer).__name__} is a slow one (load it with use_fast=True)"
        )
    # The content each message is rendered with (parts for templates that loop over them), once per sample
    # rather than once per render: the renders below differ only in which messages and one reply.
    fmt = content_format(resolve_chat_template(processor))
    messages = [{**m, "content": template_content(m["content"], fmt)} for m in messages]
    render = _chat_renderer(processor, resolve_chat_template(processor), name, messages)
    full = render(messages, False)
    replies = {
        i: _locate_reply(messages, i, full, render, name) for i, m in enumerate(messages) if m["role"] == "assistant"
    }

    # Expanding after rendering equals expanding the contents first: the template copies them verbatim.
    def expand(text: str) -> str:
        return processor.expand_image_tokens(text, image_sizes)

    encoding = tokenizer(expand(full), add_special_tokens=False, return_offsets_mapping=True)
    input_ids, offsets = encoding["input_ids"], encoding["offset_mapping"]
    token_starts = [start for start, _ in offsets]

    def token_index(char: int) -> tuple[int, int]:
        """(tokens that start before `char` of `full`, `char`'s position in the expanded text)."""
        expanded = len(expand(full[:char]))
        return bisect.bisect_left(token_starts, expanded), expanded

    labels = [IGNORE_INDEX] * len(input_ids)
    end_of_turn_ids = _special_token_ids(tokenizer)
    for i, (start, end, closing_end) in replies.items():
        first, expanded_start = token_index(start)
        if first > 0 and offsets[first - 1][1] > expanded_start:
            raise DataError(
                f"{name}: the assistant header of message {i + 1} and its reply share a token, so the reply "
                "cannot be labelled as the model would generate it after the header"
            )
        closing = range(token_index(end)[0], token_index(closing_end)[0])
        # The end-of-turn token is the first special token after the reply; what the template writes
        # after it (ChatML's newline, Phi-3's end-of-text) is not the model's to predict.
        last = next((k + 1 for k in closing if input_ids[k] in end_of_turn_ids), closing.stop)
        labels[first:last] = input_ids[first:last]
    image_id = processor.image_token_id
    return input_ids, [IGNORE_INDEX if t == image_id else lab for t, lab in zip(input_ids, labels)]


def _chat_renderer(
    processor: WingsProcessor, template: str, name: str, messages: list[dict]
) -> Callable[[list[dict], bool], str]:
    """render(prefix, add_generation_prompt) -> the prompt string `processor.apply_chat_template` gives.

    Renders `messages`' prefixes, with one assistant reply swapped for a string or not; they must
    already hold their template content (`template_content`). Locating the replies renders
    each conversation about three times per assistant turn, and most of a render through
    `apply_chat_template` is transformers copying and normalising the messages (they may be dataclasses,
    pydantic models, carry None values or reasoning under other names). Messages of plain `role` and
    `content` strings or parts need none of that, so those are rendered by transformers' own compiled
    template (cached per template string) with the arguments `apply_chat_template` gives it: the
    tokenizer's special tokens, no tools, no documents. Anything else takes `apply_chat_template`.
    """
    def slow(messages: list[dict], add_generation_prompt: bool) -> str:
        return processor.apply_chat_template(messages, add_generation_prompt=add_generation_prompt,
                                             chat_template=template)

    # A reply swapped for a string stays plain: checking the messages once covers every prefix.
    compiled = compiled_chat_template(processor.tokenizer.get_chat_template(template)) if all(
        map(_is_plain_message, messages)) else None
    special_tokens = dict(processor.tokenizer.special_tokens_map)

    def render(prefix: list[dict], add_generation_prompt: bool) -> str:
        try:
            if compiled is None:
                return slow(prefix, add_generation_prompt)
            return compiled.render(messages=prefix, tools=None, documents=None,
                                   add_generation_prompt=add_generation_prompt, **special_tokens)
        except Exception as err:  # jinja raises its own errors (e.g. role-alternation checks)
            raise DataError(f"{name}: the chat template failed to render {len(prefix)} message(s): {err}") from err

    return render


def _is_plain_message(message: dict) -> bool:
    """Only `role` and `content`, a string or parts of plain strings: what transformers would pass on unchanged."""
    if message.keys() != {"role", "content"} or type(message["role"]) is not str:
        return False
    content = message["content"]
    if type(content) is str:
        return True
    return type(content) is list and all(
        type(part) is dict and all(type(k) is str and type(v) is str for k, v in part.items()) for part in content
    )


def _locate_reply(messages: list[dict], i: int, full: str, render, name: str) -> tuple[int, int, int]:
    """(start, end, closing_end): character positions of assistant message i's reply in `full`.

    full[start:end] is the reply as the template rendered it in context; full[end:closing_end] is the
    text its turn ends with (when rendered alone) that `full` also has.
    """
    where = f"message {i + 1} of {len(messages)}"
    prompt = render(messages[:i], True)
    if not full.startswith(prompt):
        raise DataError(
            f"{name}: the chat template is not prefix-stable up to the assistant header of {where}: rendering "
            "the messages before it with the generation prompt does not give a prefix of the whole "
            "conversation, so the model would be trained on a different prompt than it is given at inference"
        )
    sentinel = _REPLY_SENTINEL.format(i)
    if sentinel in full:
        raise DataError(f"{name}: the conversation contains the reserved text {sentinel!r}")
    swapped = [*messages[:i], {**messages[i], "content": sentinel}]
    tail = _text_after(render(swapped + messages[i + 1 :], False), sentinel, name, where)
    closing = tail if i == len(messages) - 1 else _text_after(render(swapped, False), sentinel, name, where)
    end = len(full) - len(tail)
    if not full.endswith(tail) or end < len(prompt):
        raise DataError(
            f"{name}: the reply of {where} cannot be located in the rendered conversation: the template renders "
            "the messages after it differently depending on its content"
        )
    return len(prompt), end, end + len(os.path.commonprefix([closing, tail]))


def _text_after(text: str, sentinel: str, name: str, where: str) -> str:
    if text.count(sentinel) != 1:
        raise DataError(
            f"{name}: the chat template does not copy the content of {where} verbatim (it appears "
            f"{text.count(sentinel)} times), so its reply cannot be located"
        )
    return text[text.index(sentinel) + len(sentinel) :]


def _special_token_ids(tokenizer) -> set[int]:
    ids = set(tokenizer.all_special_ids)
    ids.update(i for i, tok in tokenizer.added_tokens_decoder.items() if tok.special)
    return ids


def _check_image_tokens(
    input_ids: list[int], n_images: int, processor: WingsProcessor, name: str,
    image_sizes: Sequence[tuple[int, int]] | None = None,
) -> None:
    found = sum(1 for t in input_ids if t == processor.image_token_id)
    if image_sizes is None:
        expected = n_images * processor.image_seq_length
        counted = f"{n_images} image(s) x {processor.image_seq_length}"
    else:
        expected = sum(processor.image_token_count(size) for size in image_sizes[:n_images])
        counted = f"{n_images} image(s) at their own sizes, {processor.image_layout} layout"
    if found != expected:
        raise DataError(
            f"{name}: expected {expected} image tokens ({counted}) "
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
