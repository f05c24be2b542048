"""Scoring a model on prompts: choice log-likelihoods and greedy replies, batched.

Everything here is batched, left-padded, runs under ``torch.no_grad()`` and reports progress with
tqdm. Requests are sorted by length before batching (less padding) and results come back in the
caller's order.

``model`` is a `WingsForConditionalGeneration`, a Hugging Face LLaVA model, or any Hugging Face
causal LM (the base LLM, to measure what a WINGS model kept); ``processor`` is its processor, or a
plain tokenizer for text-only prompts. Prompts are complete strings (render chat messages with
:func:`chat_prompt`); how they and their images become model inputs is
:mod:`wings.evaluation.inputs`. ``image_mode=None`` prepares images as the processor records
(the mode the model was trained with).

Two ways to score a multiple-choice item (both used by :mod:`wings.evaluation.multiple_choice`):

- :func:`choice_loglikelihoods`: the log-likelihood of each choice as a continuation of the
  prompt (summed, or averaged over its tokens); the highest wins (:func:`best_choices`). Never unparseable, and the
  usual choice for base models.
- :func:`generate_answers`: greedy replies, read with
  :func:`wings.evaluation.multiple_choice.parse_choice`. This is how a chat model is used, and how
  the WINGS paper scores IIT.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
from tqdm.auto import tqdm

from ..data.images import ImageMode
from .inputs import (
    ImageInput,
    chat_prompt,
    concat_image_inputs,
    image_inputs,
    image_token_of,
    left_pad,
    model_device,
    pad_id_of,
    prompt_ids,
    tokenizer_of,
)

__all__ = [
    "chat_prompt",
    "choice_loglikelihoods",
    "exact_match_accuracy",
    "generate_answers",
    "best_choices",
]

logger = logging.getLogger(__name__)

Normalize = Literal["mean", "sum"]


def _max_positions(model) -> int | None:
    config = getattr(model, "config", None)
    config = getattr(config, "text_config", None) or config
    value = getattr(config, "max_position_embeddings", None)
    return int(value) if isinstance(value, int) else None


class _Pixels:
    """pixel_values per prompt, computed once (a prompt's images serve all its choices)."""

    def __init__(self, processor, images: Sequence[Sequence[ImageInput]] | None, image_mode: ImageMode | None):
        self.processor = processor
        self.images = images
        self.image_mode = image_mode
        self._cache: dict[int, dict[str, torch.Tensor] | None] = {}

    def batch(self, items: Sequence[int]) -> dict[str, torch.Tensor] | None:
        """The items' image inputs (`image_inputs`: pixel_values [n_images, 3, H, W], and image_sizes or
        spatial_shapes for sized layouts), in order, or None without images."""
        if self.images is None:
            return None
        for item in items:
            if item not in self._cache:
                self._cache[item] = image_inputs(self.processor, self.images[item], self.image_mode)
        return concat_image_inputs([self._cache[item] for item in items])


def _encode_prompts(
    processor,
    prompts: Sequence[str],
    images: Sequence[Sequence[ImageInput]] | None,
    image_mode: ImageMode | None,
) -> list[list[int]]:
    """Check that prompts and images match, then token ids per prompt."""
    if isinstance(prompts, str):
        raise TypeError("prompts must be a list of strings, got one string")
    if images is not None and len(images) != len(prompts):
        raise ValueError(f"got {len(prompts)} prompts but {len(images)} image lists; give one list per prompt")
    marker = image_token_of(processor)
    if marker is None and images is not None and any(images):
        raise ValueError(f"images were given but {type(processor).__name__} has no image token; use a WingsProcessor")
    for i, prompt in enumerate(prompts):
        given = 0 if images is None else len(images[i])
        markers = prompt.count(marker) if marker else 0
        if markers != given:
            raise ValueError(
                f"prompt {i}: {markers} '{marker}' marker(s) but {given} image(s); each image needs one marker"
            )
    return [prompt_ids(processor, p, images[i] if images else (), image_mode) for i, p in enumerate(prompts)]


def _check_length(model, length: int, where: str) -> None:
    limit = _max_positions(model)
    if limit is not None and length > limit:
        raise ValueError(f"{where}: {length} tokens exceed the model's max_position_embeddings={limit}")


def _forward_kwargs(input_ids, attention_mask, pixels, device) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "input_ids": input_ids.to(device),
        "attention_mask": attention_mask.to(device),
    }
    for key, value in (pixels or {}).items():
        kwargs[key] = value.to(device)
    return kwargs


def _continuation_ids(processor, text: str) -> list[int]:
    return list(tokenizer_of(processor)(text, add_special_tokens=False)["input_ids"])


# --------------------------------------------------------------------------------------------
# Multiple choice by log-likelihood
# --------------------------------------------------------------------------------------------


def choice_loglikelihoods(
    model,
    processor,
    prompts: Sequence[str],
    choices: Sequence[Sequence[str]],
    images: Sequence[Sequence[ImageInput]] | None = None,
    batch_size: int = 8,
    normalize: Normalize = "mean",
    image_mode: ImageMode | None = None,
) -> list[list[float]]:
    """Log-likelihood of every choice as a continuation of its prompt.

    Prompt and choice are tokenised separately and concatenated (so the choice's tokens are the
    same for every prompt); put any separator, e.g. a leading space, into the choices.

    Args:
        prompts: one string per item.
        choices: per item, the continuations to score (>= 1, non-empty strings).
        images: per item, the images of its ``<image>`` markers (PIL images or paths); repeated
            for each choice.
        normalize: "sum" of the choice's token log-probs, or their "mean" (per token).
        image_mode: "pad" (to a square) or "resize"; None: the processor's own (the training mode).

    Returns:
        ``scores[i][j]`` for item i, choice j.
    """
    if normalize not in ("mean", "sum"):
        raise ValueError(f"normalize must be 'mean' or 'sum', got {normalize!r}")
    if len(choices) != len(prompts):
        raise ValueError(f"got {len(prompts)} prompts but {len(choices)} choice lists")
    contexts = _encode_prompts(processor, prompts, images, image_mode)
    marker = image_token_of(processor)
    requests = []  # (item, choice index, context ids, continuation ids)
    for i, (context, options) in enumerate(zip(contexts, choices, strict=True)):
        if isinstance(options, str) or not options:
            raise ValueError(f"item {i}: choices must be a non-empty list of strings, got {options!r}")
        for j, option in enumerate(options):
            if marker and marker in option:
                raise ValueError(f"item {i}: choice {j} contains the image marker {marker!r}")
            continuation = _continuation_ids(processor, option)
            if not continuation:
                raise ValueError(f"item {i}: choice {j} ({option!r}) tokenises to nothing")
            _check_length(model, len(context) + len(continuation), f"item {i}, choice {j}")
            requests.append((i, j, context, continuation))
    scores = [[math.nan] * len(options) for options in choices]
    if not requests:
        return scores
    # Longest first: similar lengths share a batch, and an out-of-memory error shows up at once.
    order = sorted(range(len(requests)), key=lambda r: -(len(requests[r][2]) + len(requests[r][3])))
    pixel_cache = _Pixels(processor, images, image_mode)
    pad_id, device = pad_id_of(processor), model_device(model)
    batches = [order[k : k + batch_size] for k in range(0, len(order), batch_size)]
    with torch.no_grad():
        for batch in tqdm(batches, desc="scoring choices", leave=False):
            rows = [requests[r][2] + requests[r][3] for r in batch]
            input_ids, attention_mask = left_pad(rows, pad_id)
            pixels = pixel_cache.batch([requests[r][0] for r in batch])
            keep = max(len(requests[r][3]) for r in batch) + 1
            logits = model(
                **_forward_kwargs(input_ids, attention_mask, pixels, device),
                use_cache=False,
                logits_to_keep=keep,
            ).logits[:, -keep:]
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            for b, r in enumerate(batch):
                item, choice, _, continuation = requests[r]
                n = len(continuation)
                # Logits at kept positions keep-n-1 .. keep-2 predict the n continuation tokens.
                predicting = logprobs[b, keep - n - 1 : keep - 1]
                target = torch.tensor(continuation, device=predicting.device)
                token_lp = predicting.gather(-1, target[:, None]).squeeze(-1)
                total = float(token_lp.sum())
                scores[item][choice] = total / n if normalize == "mean" else total
    return scores


def best_choices(scores: Sequence[Sequence[float]]) -> list[int]:
    """Index of the highest score per item (ties: the first), e.g. of :func:`choice_loglikelihoods`."""
    return [max(range(len(s)), key=s.__getitem__) for s in scores]


# --------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------


def generate_answers(
    model,
    processor,
    prompts: Sequence[str],
    images: Sequence[Sequence[ImageInput]] | None = None,
    batch_size: int = 8,
    max_new_tokens: int = 32,
    image_mode: ImageMode | None = None,
) -> list[str]:
    """Greedy replies to ``prompts`` (batched, left padding); only the new tokens, decoded and stripped."""
    encoded = _encode_prompts(processor, prompts, images, image_mode)
    for i, ids in enumerate(encoded):
        _check_length(model, len(ids) + max_new_tokens, f"prompt {i} (+ max_new_tokens={max_new_tokens})")
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
    pixel_cache = _Pixels(processor, images, image_mode)
    pad_id, device = pad_id_of(processor), model_device(model)
    tokenizer = tokenizer_of(processor)
    answers: list[str] = [""] * len(prompts)
    batches = [order[k : k + batch_size] for k in range(0, len(order), batch_size)]
    with torch.no_grad():
        for batch in tqdm(batches, desc="generating", leave=False):
            input_ids, attention_mask = left_pad([encoded[i] for i in batch], pad_id)
            output = model.generate(
                **_forward_kwargs(input_ids, attention_mask, pixel_cache.batch(batch), device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                num_beams=1,
                pad_token_id=pad_id,
                # A model whose generation config names no eos (e.g. one built from a config) stops at the
                # tokenizer's end-of-turn token.
                eos_token_id=getattr(getattr(model, "generation_config", None), "eos_token_id", None)
                or tokenizer.eos_token_id,
            )
            new_tokens = output[:, input_ids.shape[1] :]
            texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
            for i, text in zip(batch, texts, strict=True):
                answers[i] = text.strip()
    return answers


def exact_match_accuracy(predictions: Sequence[Any], golds: Sequence[Any]) -> float:
    """Fraction of predictions equal to their gold (strings compared stripped; None never counts).

    Works for choice indices (``score_choices_*`` output vs item answers) and short texts.
    NaN for empty input.
    """
    if len(predictions) != len(golds):
        raise ValueError(f"got {len(predictions)} predictions but {len(golds)} golds")
    if not predictions:
        return math.nan

    def same(p, g) -> bool:
        if p is None:
            return False
        if isinstance(p, str) and isinstance(g, str):
            return p.strip() == g.strip()
        return p == g

    return sum(same(p, g) for p, g in zip(predictions, golds, strict=True)) / len(predictions)
