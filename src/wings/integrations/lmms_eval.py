"""The "wings" model of lmms-eval: generation and log-likelihood requests, images, batching.

lmms-eval finds it through the `lmms_eval.models` entry point this package declares, so once
`wings` is installed beside lmms-eval (0.7.x):

    lmms-eval --model wings --model_args pretrained=DIR[,dtype=bfloat16,device=cuda] --tasks TASK --batch_size 8

`DIR` is a saved WINGS directory (`wings train` output). Each request's context becomes one user
turn of the model's chat template; the document's images (`doc_to_visual`) go first, one `<image>`
each, unless the context already holds `<image>` markers, which then say where they go.
Log-likelihood requests get the continuation's negative log-likelihood (summed over its tokens,
which are tokenised on their own and appended to the rendered prompt): lmms-eval 0.7 scores
multiple choice with `argmin`, as its own models return a loss there. One process: requests
run in batches of `batch_size` on one device.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

import torch
from lmms_eval import utils as lmms_utils
from lmms_eval.api.instance import GenerationResult, Instance
from lmms_eval.api.model import lmms
from PIL import Image
from tqdm.auto import tqdm

from ..evaluation.loading import load_model_and_processor
from . import lmms_eval_manifest

logger = logging.getLogger(__name__)

DEFAULT_MAX_NEW_TOKENS = 256


class WingsLMMs(lmms):
    """lmms-eval adapter for a saved WINGS directory.

    Args (lmms-eval `--model_args`):
        pretrained: the saved WINGS directory (model + processor).
        device: "cpu", "cuda", "cuda:1", ...; default: cuda when available.
        dtype: e.g. "bfloat16"; default: the checkpoint's.
        batch_size: requests per forward / generate call.
        max_new_tokens: generation length when a task's generation_kwargs give none.
    """

    is_simple = True

    def __init__(
        self,
        pretrained: str,
        device: str | None = None,
        dtype: str | None = None,
        batch_size: int | str = 1,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        unknown = {k: v for k, v in kwargs.items() if v is not None}
        if unknown:
            raise ValueError(f"lmms-eval model 'wings': unknown model_args {sorted(unknown)}")
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if not str(batch_size).isdigit() or int(batch_size) < 1:
            raise ValueError(f"lmms-eval model 'wings': batch_size must be a positive number, got {batch_size!r}")
        self.batch_size_per_gpu = int(batch_size)
        self.model, self.processor = load_model_and_processor(pretrained, device=device, dtype=dtype)
        self.tokenizer = self.processor.tokenizer
        self.max_new_tokens = int(max_new_tokens)
        self._device = torch.device(device)
        eos = getattr(self.model.generation_config, "eos_token_id", None)
        self.eos_token_id = eos if eos is not None else self.tokenizer.eos_token_id
        self.pad_token_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    @property
    def device(self) -> torch.device:
        return self._device

    # ------------------------------------------------------------------------------------------
    # prompts
    def _visuals(self, doc_to_visual, task: str, split: str, doc_id: int) -> list[Image.Image]:
        visuals = doc_to_visual(self.task_dict[task][split][doc_id]) if doc_to_visual is not None else []
        images = []
        for visual in visuals or []:
            if isinstance(visual, (str, os.PathLike)) and os.fspath(visual).lower().endswith((".mp4", ".avi", ".mov", ".webm")):
                raise ValueError(f"task {task}, doc {doc_id}: WINGS reads images, not video ('{visual}')")
            if isinstance(visual, (str, os.PathLike)):
                visual = Image.open(visual)
            if not isinstance(visual, Image.Image):
                raise ValueError(f"task {task}, doc {doc_id}: doc_to_visual gave a {type(visual).__name__}, not an image")
            images.append(visual.convert("RGB"))
        return images

    def render(self, context: str, images: Sequence[Image.Image], where: str) -> str:
        """One user turn holding `context` and its images -> the prompt string with `<image>` markers."""
        marker = self.processor.image_token
        markers = context.count(marker)
        if markers and markers != len(images):
            raise ValueError(f"{where}: the prompt has {markers} '{marker}' marker(s) but doc_to_visual gave {len(images)} image(s)")
        if markers:
            content: str | list[dict] = context
        else:
            content = [{"type": "image"} for _ in images] + [{"type": "text", "text": context}]
        return self.processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)

    def _encode_prompt(self, context: str, images: list[Image.Image], where: str) -> tuple[list[int], torch.Tensor | None]:
        inputs = self.processor(text=self.render(context, images, where), images=images or None)
        return inputs["input_ids"][0].tolist(), inputs.get("pixel_values")

    # ------------------------------------------------------------------------------------------
    # log-likelihood
    def loglikelihood(self, requests: list[Instance]) -> list[GenerationResult]:
        """Per request `(nll, is_greedy)`: the continuation's negative log-likelihood after the rendered prompt
        (summed over its tokens; lower is likelier) and whether greedy decoding gives it.

        lmms-eval 0.7 picks a multiple-choice answer with `argmin` over these values, because its own
        models return a loss here; a log-probability would pick the least likely choice. Each pair travels inside a `GenerationResult`: lmms-eval 0.7 hands every
        response, log-likelihoods included, to `unwrap_generation_output`, which turns a bare tuple into
        its string and breaks multiple-choice scoring; the wrapper's payload comes back unchanged.
        """
        rows = []  # (context ids, continuation ids, pixel_values or None)
        prompts: dict[tuple, tuple[list[int], torch.Tensor | None]] = {}
        for request in requests:
            context, target, *rest = request.args
            if not rest:  # lmms-eval's unconditional requests (acc_mutual_info): no context, no images
                continuation = target
                eot = self.eos_token_id[0] if isinstance(self.eos_token_id, list) else self.eos_token_id
                context_ids, pixels = [eot], None
            else:
                doc_to_target, doc_to_visual, doc_id, task, split = target, *rest
                doc = self.task_dict[task][split][doc_id]
                continuation = doc_to_target if isinstance(doc_to_target, str) else doc_to_target(doc)
                key = (task, split, doc_id, context)
                if key not in prompts:
                    images = self._visuals(doc_to_visual, task, split, doc_id)
                    prompts[key] = self._encode_prompt(context, images, f"task {task}, doc {doc_id}")
                context_ids, pixels = prompts[key]
            continuation_ids = self.tokenizer(str(continuation), add_special_tokens=False)["input_ids"]
            if not continuation_ids:
                raise ValueError(f"request {request.idx} of doc {request.doc_id}: the continuation {continuation!r} is empty")
            rows.append((context_ids, continuation_ids, pixels))

        results: list[tuple[float, bool]] = [(0.0, False)] * len(rows)
        order = sorted(range(len(rows)), key=lambda r: -(len(rows[r][0]) + len(rows[r][1])))
        batches = [order[k : k + self.batch_size] for k in range(0, len(order), self.batch_size)]
        with torch.no_grad():
            for batch in tqdm(batches, desc="wings loglikelihood", disable=self.rank != 0):
                input_ids, attention_mask = left_pad([rows[r][0] + rows[r][1] for r in batch], self.pad_token_id)
                pixels = [rows[r][2] for r in batch if rows[r][2] is not None]
                keep = max(len(rows[r][1]) for r in batch) + 1
                logits = self.model(
                    input_ids=input_ids.to(self.device),
                    attention_mask=attention_mask.to(self.device),
                    pixel_values=torch.cat(pixels).to(self.device, self.model.dtype) if pixels else None,
                    use_cache=False,
                    logits_to_keep=keep,
                ).logits[:, -keep:]
                logprobs = torch.log_softmax(logits.float(), dim=-1)
                for b, r in enumerate(batch):
                    continuation = torch.tensor(rows[r][1], device=logprobs.device)
                    n = len(continuation)
                    # Positions keep-n-1 .. keep-2 predict the n continuation tokens (rows are left-padded).
                    predicting = logprobs[b, keep - n - 1 : keep - 1]
                    total = float(predicting.gather(-1, continuation[:, None]).sum())
                    results[r] = (-total, bool((predicting.argmax(-1) == continuation).all()))
        return [GenerationResult(text=pair) for pair in results]

    # ------------------------------------------------------------------------------------------
    # generation
    def generate_until(self, requests: list[Instance]) -> list[str]:
        """Replies to each request's prompt and images, cut at the first of its `until` strings and stripped."""

        def by_length(args):
            return -len(self.tokenizer(args[0], add_special_tokens=False)["input_ids"]), args[0]

        collator = lmms_utils.Collator([request.args for request in requests], by_length, grouping=True)
        results = []
        n_batches = -(-len(requests) // self.batch_size)
        for chunk in tqdm(collator.get_batched(n=self.batch_size), total=n_batches, desc="wings generate",
                          disable=self.rank != 0):
            contexts, all_kwargs, doc_to_visuals, doc_ids, tasks, splits = zip(*chunk, strict=True)
            prompts, images = [], []
            for context, doc_to_visual, doc_id, task, split in zip(contexts, doc_to_visuals, doc_ids, tasks, splits, strict=True):
                doc_images = self._visuals(doc_to_visual, task, split, doc_id)
                prompts.append(self.render(context, doc_images, f"task {task}, doc {doc_id}"))
                images += doc_images
            kwargs, until = generation_settings(all_kwargs[0], self.max_new_tokens)
            inputs = self.processor(text=prompts, images=images or None).to(self.device)
            if "pixel_values" in inputs:
                inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
            with torch.no_grad():
                output = self.model.generate(**inputs, pad_token_id=self.pad_token_id, eos_token_id=self.eos_token_id,
                                             **kwargs)
            texts = self.tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
            for text, args in zip(texts, chunk, strict=True):
                text = cut_at(text, until).strip()
                results.append(text)
                self.cache_hook.add_partial("generate_until", (args[0], args[1]), text)
        return collator.get_original(results)

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError("lmms-eval model 'wings' does not run multi-round generation tasks")


def generation_settings(gen_kwargs: dict, default_max_new_tokens: int) -> tuple[dict, list[str]]:
    """lmms-eval generation_kwargs -> (`generate()` kwargs, stop strings). Greedy unless temperature > 0."""
    gen_kwargs = dict(gen_kwargs)
    until = gen_kwargs.pop("until", None) or []
    if isinstance(until, str):
        until = [until]
    if not isinstance(until, list):
        raise ValueError(f"generation_kwargs 'until' must be a string or a list, got {until!r}")
    temperature = float(gen_kwargs.pop("temperature", 0) or 0)
    do_sample = bool(gen_kwargs.pop("do_sample", False)) or temperature > 0
    kwargs = {
        "max_new_tokens": int(gen_kwargs.pop("max_new_tokens", default_max_new_tokens) or default_max_new_tokens),
        "do_sample": do_sample,
        "num_beams": int(gen_kwargs.pop("num_beams", 1) or 1),
    }
    if do_sample:
        kwargs["temperature"] = temperature or 1.0
        if gen_kwargs.get("top_p") is not None:
            kwargs["top_p"] = float(gen_kwargs["top_p"])
    gen_kwargs.pop("top_p", None)
    gen_kwargs.pop("image_aspect_ratio", None)
    if gen_kwargs:
        logger.warning("lmms-eval model 'wings' ignores generation_kwargs %s", sorted(gen_kwargs))
    return kwargs, until


def cut_at(text: str, until: Sequence[str]) -> str:
    """`text` up to the first occurrence of any stop string."""
    for stop in until:
        if stop:
            text = text.split(stop, 1)[0]
    return text


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of ids -> input_ids [B, T], attention_mask [B, T], padded on the left."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, row in enumerate(rows):
        ids[b, width - len(row):] = torch.tensor(row, dtype=torch.long)
        mask[b, width - len(row):] = 1
    return ids, mask


def register() -> None:
    """Register "wings" in lmms-eval's model registry in this process (for a checkout not installed with pip)."""
    from lmms_eval.models import MODEL_REGISTRY_V2

    MODEL_REGISTRY_V2.register_manifest(lmms_eval_manifest(), overwrite=True)


def lmms_eval_main(argv: list[str]) -> int:
    """`wings lmms-eval ARGS`: lmms-eval's command line with the "wings" model registered.

    Arguments pass through unchanged, e.g.
    `wings lmms-eval --model wings --model_args pretrained=DIR --tasks mme --batch_size 8`.
    """
    from lmms_eval.cli.dispatch import main

    register()
    saved = sys.argv
    sys.argv = ["lmms-eval", *argv]
    try:
        main()
    except SystemExit as done:
        return int(done.code or 0) if not isinstance(done.code, str) else 1
    finally:
        sys.argv = saved
    return 0
