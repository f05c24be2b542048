"""MLLM-LAWS: layer-wise attention on the text before and after an image, and the attention shift.

WINGS (paper section on MLLM-LAWS; docs/method.md, section 2) measures, per decoder layer l, the attention mass a token span S
receives from the whole sequence:

    a^l(S) = sum over all query tokens i, sum over key tokens j in S, of attn^l[i, j]    (heads averaged)

LAWS(S) = [a^1(S), ..., a^L(S)]. For a sample with one image, three spans are measured:

- ``before``: real (non-padding) tokens before the first image token. The chat template's tokens and
  any system prompt the template renders are *text before the image* and are included, unless their
  ids are given in ``exclude_special_tokens`` (they are then left out of ``before`` and ``after``).
- ``image``: the first image's tokens. Later images of the same sample are in no span at all.
- ``after``: real tokens after the first image's last token (later images' tokens excluded).

Every real token is a query, including image tokens; padding tokens are neither queries nor keys.
The curves become the attention shift in :mod:`wings.evaluation.laws_stats`; plots and
``laws.json`` are :mod:`wings.evaluation.laws_plots`.

How the weights are obtained: a forward pre-hook on every decoder layer of the language model takes
the layer's input hidden states, RoPE tables and attention mask, recomputes that layer's main
self-attention weights from the original HF ``self_attn`` and reduces them at once to the three span
masses. Queries and keys are built as the WINGS main attention builds them for the family
(`wings.modeling.attention.project_qkv` reads the family's `AttentionLayout` in `wings.families`:
separate or fused projections, q/k norms), then RoPE (none on NoPE layers), the layer's scaling, any
logit softcap, the causal + padding (+ sliding-window) mask and a float32 softmax. At most one layer's
weights [batch, heads, T, T] exist at a time, whatever attention kernel the model runs
(``output_attentions`` is never used). For a `WingsDecoderLayer` the wrapped layer's own attention norm
and ``self_attn`` are used: LAWS measures the main attention, not the learners. Works for
`WingsForConditionalGeneration`, HF `LlavaForConditionalGeneration` and plain causal LMs of every family
in `wings.families.TEXT_FAMILIES` (Llama, Qwen2/3, Mistral, Gemma 2/3, Phi-3, OLMo 2, SmolLM3, Granite).
"""

from __future__ import annotations

import functools
import gc
import itertools
import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..data.images import ImageMode
from ..data.llava import IMAGE_MARKER, DataError, load_llava_records
from ..errors import UnsupportedModelError
from ..families import TextFamily, text_family
from ..modeling.attention import additive_mask, project_qkv, repeat_kv, uses_rope
from ..modeling.decoder_layer import check_layer
from ..modeling.rope import apply_rope
from .inputs import concat_image_inputs, image_inputs
from .inputs import prompt_ids
from .laws_plots import plot_laws_compare, write_laws
from .laws_stats import SPANS, LawsResult
from .loading import load_model_and_processor
from .report import unique_names

logger = logging.getLogger(__name__)

__all__ = [
    "SPANS",
    "LawsRecorder",
    "LawsResult",
    "attention_weights",
    "compute_laws",
    "decoder_layers",
    "find_spans",
    "layer_family",
    "laws_for_sample",
    "llava_laws_samples",
    "run_laws",
    "run_laws_compare",
]


# --------------------------------------------------------------------------------------------------
# model access
def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layers of the model's language model (WINGS, HF LLaVA, or a plain causal LM)."""
    paths = (
        ("language_model", "model", "layers"),  # WINGS: language_model is the *ForCausalLM
        ("model", "language_model", "layers"),  # HF LLaVA (transformers 5): model.model.language_model
        ("language_model", "layers"),
        ("model", "layers"),  # a plain *ForCausalLM
    )
    for path in paths:
        module = model
        for name in path:
            module = getattr(module, name, None)
            if module is None:
                break
        if isinstance(module, nn.ModuleList):
            return module
    raise TypeError(
        f"{type(model).__name__}: no decoder layers found (looked for language_model.model.layers, "
        "model.language_model.layers, language_model.layers, model.layers); LAWS needs a decoder LLM."
    )


def layer_family(layer: nn.Module, index: int) -> TextFamily:
    """The family description of decoder layer `index` (a `WingsDecoderLayer` carries its own; a plain HF
    layer is looked up by its attention config's model type), checked against the layer's modules."""
    family = getattr(layer, "family", None)
    if not isinstance(family, TextFamily):
        model_type = getattr(getattr(getattr(layer, "self_attn", None), "config", None), "model_type", None)
        try:
            family = text_family(model_type)
        except UnsupportedModelError as error:
            raise UnsupportedModelError(f"decoder layer {index} ({type(layer).__name__}): {error}") from None
    check_layer(layer, index, family)
    return family


def image_token_id_of(model: nn.Module) -> int:
    config = model.config
    for name in ("image_token_id", "image_token_index"):
        value = getattr(config, name, None)
        if value is not None:
            return int(value)
    raise ValueError(f"{type(model).__name__}.config has no image_token_id: LAWS needs a multimodal model")


def _model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    param = next(model.parameters())
    return param.device, param.dtype


# --------------------------------------------------------------------------------------------------
# spans
def find_spans(
    input_ids: torch.Tensor,
    image_token_id: int,
    attention_mask: torch.Tensor | None = None,
    tokens_per_image: Sequence[int | None] | int | None = None,
    exclude_special_tokens: Iterable[int] | None = None,
) -> torch.Tensor:
    """Span masks of (before, image, after) per sample.

    Args:
        input_ids: [B, T]; attention_mask: [B, T] (1 = real token; None = all real).
        tokens_per_image: image tokens per image (one value, or one per row); the first image is
            the first run of consecutive image tokens, cut after this many. None: the whole run.
        exclude_special_tokens: token ids left out of ``before`` and ``after`` (e.g. template tokens).

    Returns:
        bool [B, 3, T]. Raises ValueError naming the row when a row has no image token.
    """
    batch, length = input_ids.shape
    valid = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    is_image = (input_ids == image_token_id) & valid
    text = valid & ~is_image
    if exclude_special_tokens:
        excluded = torch.tensor(sorted(set(exclude_special_tokens)), device=input_ids.device)
        text &= ~torch.isin(input_ids, excluded)
    if not isinstance(tokens_per_image, Sequence):
        tokens_per_image = [tokens_per_image] * batch
    position = torch.arange(length, device=input_ids.device)
    spans = torch.zeros(batch, 3, length, dtype=torch.bool, device=input_ids.device)
    for row in range(batch):
        flags = is_image[row].tolist()
        if not any(flags):
            raise ValueError(f"row {row}: no image token (id {image_token_id}); LAWS needs an image in every sample")
        start = flags.index(True)
        end = start  # inclusive
        limit = tokens_per_image[row]
        while end + 1 < length and flags[end + 1] and (limit is None or end + 1 - start < limit):
            end += 1
        spans[row, 0] = text[row] & (position < start)
        spans[row, 1] = (position >= start) & (position <= end)
        spans[row, 2] = text[row] & (position > end)
    return spans


# --------------------------------------------------------------------------------------------------
# attention weights of one layer, and their reduction
def _layer_mask(
    mask: torch.Tensor | None, q_len: int, kv_len: int, device: torch.device, sliding_window: int | None = None
) -> torch.Tensor:
    """The layer's attention mask as a float32 additive bias [B or 1, 1, T, S].

    Accepts what HF passes to a decoder layer: None (plain causal, e.g. SDPA without padding), a 2D
    padding mask (flash attention), a 4D bool mask (SDPA) or a 4D additive float mask (eager). A 4D mask
    already holds the layer's sliding window; for None or a 2D mask the window (a query sees the keys
    less than `sliding_window` positions back, as HF's masks do) is applied here.
    """
    if mask is not None and mask.dim() == 4:
        return additive_mask(mask, q_len, kv_len, torch.float32, device)
    bias = additive_mask(None, q_len, kv_len, torch.float32, device)
    if sliding_window is not None:
        query = torch.arange(kv_len - q_len, kv_len, device=device)[:, None]
        too_far = query - torch.arange(kv_len, device=device)[None, :] >= sliding_window
        bias = bias.masked_fill(too_far, torch.finfo(torch.float32).min)
    if mask is None:
        return bias
    return bias.masked_fill(~mask[:, None, None, -kv_len:].bool(), torch.finfo(torch.float32).min)


def _sliding_window(self_attn: nn.Module) -> int | None:
    """The layer's sliding window (per layer where the family mixes local and global layers), or None."""
    if hasattr(self_attn, "sliding_window"):
        return self_attn.sliding_window
    return getattr(getattr(self_attn, "config", None), "sliding_window", None)


def attention_weights(
    layer: nn.Module,
    hidden_states: torch.Tensor,
    position_embeddings: tuple[torch.Tensor, torch.Tensor],
    attention_mask: torch.Tensor | None,
    family: TextFamily | None = None,
) -> torch.Tensor:
    """Recompute a decoder layer's self-attention weights from its inputs, as HF eager attention does.

    Args:
        layer: an HF decoder layer of a family in `wings.families.TEXT_FAMILIES`, or a `WingsDecoderLayer`.
        hidden_states: the layer's input [B, T, d] (before its attention norm, where it has one).
        position_embeddings: RoPE (cos, sin), each [B or 1, T, d_h] (unused on a layer without RoPE).
        attention_mask: what the layer received (None, [B, T], or [B, 1, T, S]).
        family: the layer's family description; None: `layer_family(layer)`.

    Returns:
        float32 weights [B, H, T, T] (rows sum to 1).
    """
    family = layer_family(layer, getattr(layer.self_attn, "layer_idx", -1)) if family is None else family
    attn, layout = layer.self_attn, family.attention
    norm = family.layout.attention_norm
    x = hidden_states if norm is None else getattr(layer, norm)(hidden_states)
    q, k, _ = project_qkv(attn, x, layout)
    if uses_rope(attn, layout):
        cos, sin = position_embeddings
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    q, k = q.float(), repeat_kv(k.float(), q.shape[1] // k.shape[1])
    scores = torch.matmul(q, k.transpose(2, 3)) * attn.scaling
    softcap = getattr(attn, layout.softcap, None) if layout.softcap else None
    if softcap is not None:  # Gemma 2 caps the logits before the mask
        scores = torch.tanh(scores / softcap) * softcap
    length = x.shape[1]
    scores = scores + _layer_mask(attention_mask, length, k.shape[2], x.device, _sliding_window(attn))
    return F.softmax(scores, dim=-1, dtype=torch.float32)


def reduce_to_spans(weights: torch.Tensor, spans: torch.Tensor, query_mask: torch.Tensor) -> torch.Tensor:
    """weights [B, H, T, S], spans bool [B, 3, S], query_mask [B, T] -> span masses [B, 3] (float64).

    Sum over the real queries, sum over the span's keys, mean over heads.
    """
    per_key = torch.einsum("bhts,bt->bs", weights, query_mask.to(weights.dtype)) / weights.shape[1]
    return torch.einsum("bs,bks->bk", per_key.double(), spans.double())


class LawsRecorder:
    """Forward pre-hooks on every decoder layer that turn the layer's attention into span masses.

    Use as a context manager around forward passes; before each forward, `prepare` the span masks.
    Between layers only the reduced masses ([B, 3] per layer) are kept:

        with LawsRecorder(model) as recorder:
            recorder.prepare(spans, query_mask)
            model(input_ids=..., pixel_values=..., attention_mask=...)
            masses = recorder.masses()            # [B, L, 3]
    """

    def __init__(self, model: nn.Module):
        self.layers = decoder_layers(model)
        self.families = [layer_family(layer, index) for index, layer in enumerate(self.layers)]
        self.records: list[torch.Tensor | None] = [None] * len(self.layers)
        self._spans: torch.Tensor | None = None
        self._query_mask: torch.Tensor | None = None
        self._handles: list[Any] = []

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def __enter__(self) -> LawsRecorder:
        for index, layer in enumerate(self.layers):
            hook = functools.partial(self._hook, index)
            self._handles.append(layer.register_forward_pre_hook(hook, with_kwargs=True))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._spans = self._query_mask = None

    def prepare(self, spans: torch.Tensor, query_mask: torch.Tensor) -> None:
        """spans bool [B, 3, T] (see `find_spans`), query_mask [B, T] (1 = real token) for the next forward."""
        self._spans, self._query_mask = spans, query_mask
        self.records = [None] * len(self.layers)

    def masses(self) -> np.ndarray:
        """[B, L, 3] span masses of the last forward."""
        missing = [i for i, r in enumerate(self.records) if r is None]
        if missing:
            raise RuntimeError(f"LAWS: decoder layers {missing} did not run in the last forward")
        return torch.stack(self.records, dim=1).numpy()

    def _hook(self, index: int, layer: nn.Module, args: tuple, kwargs: dict) -> None:
        if self._spans is None:
            raise RuntimeError("LawsRecorder: call prepare(spans, query_mask) before the forward")
        hidden = args[0] if args else kwargs["hidden_states"]
        position_embeddings = kwargs.get("position_embeddings")
        if position_embeddings is None and uses_rope(layer.self_attn, self.families[index].attention):
            raise TypeError(
                f"decoder layer {index} ({type(layer).__name__}) was called without position_embeddings; "
                "LAWS recomputes attention from the RoPE tables the decoder passes to its layers."
            )
        if hidden.shape[1] != self._spans.shape[-1]:
            raise RuntimeError(
                f"decoder layer {index}: got {hidden.shape[1]} tokens but spans cover {self._spans.shape[-1]}; "
                "LAWS runs one full forward per batch (no cache)"
            )
        with torch.no_grad():
            weights = attention_weights(
                layer, hidden, position_embeddings, kwargs.get("attention_mask"), self.families[index]
            )
            masses = reduce_to_spans(weights, self._spans.to(hidden.device), self._query_mask.to(hidden.device))
            del weights  # only [B, 3] leaves the hook
        self.records[index] = masses.cpu()


# --------------------------------------------------------------------------------------------------
# computing
@dataclass
class _Prepared:
    name: str
    input_ids: torch.Tensor  # [T]
    attention_mask: torch.Tensor  # [T]
    pixel_values: torch.Tensor | None  # [n_images, 3, H, W]
    # Sized image layouts ("anyres", "native"): image_sizes or spatial_shapes [n_images, 2], one row per image.
    image_extras: dict[str, torch.Tensor] = field(default_factory=dict)


def _as_1d(value: Any, what: str, name: str) -> torch.Tensor:
    tensor = torch.as_tensor(value)
    if tensor.dim() == 2 and tensor.shape[0] == 1:
        tensor = tensor[0]
    if tensor.dim() != 1:
        raise ValueError(f"{name}: {what} must hold one sequence, got shape {tuple(tensor.shape)}")
    return tensor


def _prepare(sample: Mapping[str, Any], index: int, processor: Any, image_mode: ImageMode | None) -> _Prepared:
    name = str(sample.get("id", f"sample {index}"))
    if "input_ids" in sample:
        ids = _as_1d(sample["input_ids"], "input_ids", name).long()
        mask = sample.get("attention_mask")
        mask = torch.ones_like(ids) if mask is None else _as_1d(mask, "attention_mask", name).long()
        pixel_values = sample.get("pixel_values")
        return _Prepared(name, ids, mask, None if pixel_values is None else torch.as_tensor(pixel_values))
    if "text" not in sample:
        raise ValueError(f"{name}: a LAWS sample needs 'input_ids' (+ 'pixel_values') or 'text' (+ 'images')")
    if processor is None:
        raise ValueError(f"{name}: has 'text'; pass a processor (WingsProcessor / LlavaProcessor) to render it")
    images = sample.get("images") or []
    ids = torch.tensor(prompt_ids(processor, sample["text"], images, image_mode), dtype=torch.long)
    inputs = image_inputs(processor, images, image_mode) or {}
    return _Prepared(name, ids, torch.ones_like(ids), inputs.pop("pixel_values", None), inputs)


def _tokens_per_image(ids: torch.Tensor, n_images: int, image_token_id: int, default: int | None) -> int | None:
    count = int((ids == image_token_id).sum())
    if n_images and count % n_images == 0:
        return count // n_images
    return default


def _run_batch(
    model: nn.Module,
    recorder: LawsRecorder,
    batch: list[_Prepared],
    exclude_special_tokens: Iterable[int] | None,
) -> tuple[np.ndarray, np.ndarray]:
    """One forward over right-padded samples -> masses [B, L, 3] and span sizes [B, 3]."""
    device, dtype = _model_device_dtype(model)
    image_token_id = image_token_id_of(model)
    pad_id = 0 if image_token_id != 0 else 1
    length = max(int(p.input_ids.shape[0]) for p in batch)
    input_ids = torch.full((len(batch), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), length), dtype=torch.long)
    for row, prepared in enumerate(batch):
        n = prepared.input_ids.shape[0]
        input_ids[row, :n], attention_mask[row, :n] = prepared.input_ids, prepared.attention_mask
    default_per_image = getattr(model.config, "image_seq_length", None)
    per_image = [
        # Sized layouts: the first image's own token count (the images of a sample may differ).
        model.image_token_counts(1, **{k: v[:1] for k, v in p.image_extras.items() if k != "pixel_attention_mask"})[0]
        if p.image_extras else
        _tokens_per_image(
            p.input_ids[p.attention_mask.bool()],
            0 if p.pixel_values is None else int(p.pixel_values.shape[0]),
            image_token_id,
            default_per_image,
        )
        for p in batch
    ]
    for prepared in batch:
        if not bool(((prepared.input_ids == image_token_id) & prepared.attention_mask.bool()).any()):
            raise ValueError(
                f"{prepared.name}: no image token (id {image_token_id}); LAWS needs an image in every sample"
            )
    spans = find_spans(input_ids, image_token_id, attention_mask, per_image, exclude_special_tokens)
    pixels = [p.pixel_values for p in batch if p.pixel_values is not None]
    pixel_values = torch.cat(pixels).to(device=device, dtype=dtype) if pixels else None
    extras = {k: v.to(device) for k, v in (concat_image_inputs([p.image_extras for p in batch]) or {}).items()}
    recorder.prepare(spans.to(device), attention_mask.to(device))
    with torch.no_grad():
        model(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            pixel_values=pixel_values,
            **extras,
            use_cache=False,
            logits_to_keep=1,
        )
    return recorder.masses(), spans.sum(-1).numpy()


def laws_for_sample(
    model: nn.Module,
    input_ids: torch.Tensor,
    pixel_values: torch.Tensor | None,
    attention_mask: torch.Tensor | None = None,
    exclude_special_tokens: Iterable[int] | None = None,
) -> np.ndarray:
    """LAWS of one sample: input_ids [T] or [1, T], pixel_values [n_images, 3, H, W] -> [L, 3] (SPANS order)."""
    prepared = _Prepared(
        "sample",
        _as_1d(input_ids, "input_ids", "sample").long(),
        torch.ones(torch.as_tensor(input_ids).shape[-1], dtype=torch.long)
        if attention_mask is None
        else _as_1d(attention_mask, "attention_mask", "sample").long(),
        pixel_values,
    )
    was_training = model.training
    model.eval()
    try:
        with LawsRecorder(model) as recorder:
            masses, _ = _run_batch(model, recorder, [prepared], exclude_special_tokens)
    finally:
        model.train(was_training)
    return masses[0]


def compute_laws(
    model: nn.Module,
    processor: Any | None,
    samples: Iterable[Mapping[str, Any]],
    batch_size: int = 1,
    limit: int | None = None,
    progress: bool = True,
    exclude_special_tokens: Iterable[int] | None = None,
    image_mode: ImageMode | None = None,
) -> LawsResult:
    """LAWS of every sample.

    Args:
        samples: dicts with `input_ids` ([T]) and `pixel_values` ([n, 3, H, W]), optionally
            `attention_mask`; or with `text` (prompt with `<image>` markers) and `images` (PIL images
            or paths), encoded as scoring does (`wings.evaluation.inputs`). An optional `id` names the sample.
        batch_size: samples per forward (right-padded; padding is neither query nor key).
        limit: use only the first `limit` samples.
        exclude_special_tokens: token ids left out of the before/after spans.
        image_mode: for `images`: "pad" pads each to a square with the processor's mean colour
            first (as LLaVA-1.5 trains), "resize" leaves them to the image processor; None: the
            processor's own mode (the one the model was trained with).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    total = len(samples) if hasattr(samples, "__len__") else None
    if limit is not None:
        samples = itertools.islice(samples, limit)
        total = limit if total is None else min(total, limit)
    curves, names, sizes = [], [], []
    was_training = model.training
    model.eval()
    try:
        with LawsRecorder(model) as recorder, tqdm(total=total, desc="LAWS", disable=not progress) as bar:
            batch: list[_Prepared] = []
            for index, sample in enumerate(samples):
                batch.append(_prepare(sample, index, processor, image_mode))
                if len(batch) == batch_size:
                    _collect(model, recorder, batch, exclude_special_tokens, curves, names, sizes, bar)
                    batch = []
            if batch:
                _collect(model, recorder, batch, exclude_special_tokens, curves, names, sizes, bar)
    finally:
        model.train(was_training)
    if not curves:
        raise ValueError("compute_laws: no samples")
    result = LawsResult(np.concatenate(curves), names, np.concatenate(sizes))
    if result.n_skipped:
        logger.warning(
            "LAWS: %d of %d samples have a constant before or after curve (an empty span?) and no Pearson "
            "correlation; they are left out of the attention shift",
            result.n_skipped,
            result.n_samples,
        )
    return result


def _collect(model, recorder, batch, exclude, curves, names, sizes, bar) -> None:
    masses, span_sizes = _run_batch(model, recorder, batch, exclude)
    curves.append(masses)
    sizes.append(span_sizes)
    names.extend(p.name for p in batch)
    bar.update(len(batch))


# --------------------------------------------------------------------------------------------------
# end to end: saved model + LLaVA-format data
def llava_laws_samples(
    data_file: str | os.PathLike,
    image_folder: str | os.PathLike | None,
    processor: Any,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """LAWS samples from LLaVA-format data: the conversation up to the first assistant reply, rendered
    with `processor.apply_chat_template(..., add_generation_prompt=True)`, with its images.

    Samples without images, or whose images only appear after the first assistant reply, are
    skipped (and counted in the log). Returns dicts with `id`, `text` and `images` (paths).
    """
    records = load_llava_records(data_file, image_folder)
    samples, late = [], 0
    for record in records:
        if record.num_images == 0:
            continue
        messages = record.messages()
        first_reply = next((i for i, m in enumerate(messages) if m["role"] == "assistant"), len(messages))
        prompt = messages[:first_reply]
        text = processor.apply_chat_template(prompt, add_generation_prompt=True) if prompt else ""
        n_markers = text.count(IMAGE_MARKER)
        if n_markers == 0:
            late += 1
            continue
        samples.append({"id": record.name, "text": text, "images": list(record.images[:n_markers])})
        if limit is not None and len(samples) >= limit:
            break
    n_text = sum(1 for r in records if r.num_images == 0)
    logger.info("LAWS: %d image samples from %s (%d text-only skipped)", len(samples), data_file, n_text)
    if late:
        logger.warning("LAWS: %d samples have no image before the first assistant reply; skipped", late)
    if not samples:
        raise DataError(f"{data_file}: no sample with an image in its first user turn(s); LAWS needs image samples")
    return samples


def run_laws(
    model_dir: str | os.PathLike,
    data_file: str | os.PathLike,
    image_folder: str | os.PathLike | None,
    output_dir: str | os.PathLike,
    limit: int | None = None,
    batch_size: int = 1,
    image_mode: ImageMode | None = None,
    exclude_special_tokens: Iterable[int] | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> LawsResult:
    """Load a saved model + processor, compute LAWS on LLaVA-format data, write laws.json and laws.png.

    Args:
        model_dir: a saved WINGS or Hugging Face LLaVA directory.
        data_file, image_folder: LLaVA-format data with images (see `llava_laws_samples`).
        output_dir: where laws.json and laws.png go.
        limit: use only the first ``limit`` image samples.
        batch_size, image_mode, exclude_special_tokens: see `compute_laws`.
        device: where to run; None: cuda when available, else cpu.
        progress: show a progress bar.
    """
    model, processor = load_model_and_processor(model_dir, device)
    samples = llava_laws_samples(data_file, image_folder, processor, limit)
    result = compute_laws(
        model, processor, samples, batch_size=batch_size, progress=progress,
        exclude_special_tokens=exclude_special_tokens, image_mode=image_mode,
    )
    write_laws(result, output_dir, title=Path(model_dir).name)
    return result


def run_laws_compare(
    model_dirs: Sequence[str | os.PathLike],
    data_file: str | os.PathLike,
    image_folder: str | os.PathLike | None,
    output_dir: str | os.PathLike,
    **options: Any,
) -> dict[str, LawsResult]:
    """LAWS of several saved models on the same data: `run_laws` for each (its laws.json and laws.png go to
    ``output_dir/<name>/``), then laws_compare.json ({name: summary}) and laws_compare.png overlaid in
    ``output_dir``. Models are loaded one at a time; each renders the prompts with its own processor; each is
    named by its folder (made unique with -2, -3, ...). options: the keyword arguments of `run_laws`.
    """
    names = unique_names(model_dirs)
    output_dir = Path(output_dir)
    results: dict[str, LawsResult] = {}
    for name, model_dir in zip(names, model_dirs):
        results[name] = run_laws(model_dir, data_file, image_folder, output_dir / name, **options)
        gc.collect()  # the model run_laws loaded is garbage now: free it before the next one loads
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    summary = {name: {"model_dir": str(d), **r.to_json()} for (name, r), d in zip(results.items(), model_dirs)}
    (output_dir / "laws_compare.json").write_text(json.dumps(summary, indent=2))
    plot_laws_compare(results, output_dir / "laws_compare.png")
    return results
