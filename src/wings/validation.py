"""Checks of what the user hands the command line, made before anything large is loaded or allocated.

A model argument is a local directory or a hub id. `check_model` tells the two apart (a path that
does not exist is an error naming it, never a hub id), reads the directory's `config.json`, checks
that the model is of the kind the option expects (an LLM for `--llm`, a WINGS output for `--init`,
...) and that its safetensors files are whole, so that a wrong or damaged directory is named in one
line instead of failing deep inside `from_pretrained` or, worse, building a default-sized model.
`check_output_dir` keeps a finished run from being silently overwritten; `check_device` and
`check_positive` check evaluation arguments before the first model loads.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

from .errors import ModelPathError, OutputExistsError, UsageError

# What each kind of model argument accepts (by config.json's model_type); see `check_model`.
VISION_MODEL_TYPES = ("siglip", "siglip_vision_model", "siglip2", "siglip2_vision_model", "clip", "clip_vision_model")
MULTIMODAL_MODEL_TYPES = ("wings", "llava")
KIND_NAMES = {
    "llm": "a causal LM",
    "vision": "a vision encoder (SigLIP, SigLIP 2 or CLIP)",
    "wings": "a WINGS model (`wings train` output)",
    "multimodal": "a multimodal model (WINGS or Hugging Face LLaVA)",
    "evaluable": "a WINGS, Hugging Face LLaVA or causal LM model",
}
# Files beside the weights that each kind needs (any one of them): tokenizer, image processor, or both.
COMPANION_FILES = {
    "llm": ("tokenizer_config.json", "tokenizer.json"),
    "vision": ("preprocessor_config.json", "processor_config.json"),
    "wings": ("processor_config.json", "tokenizer_config.json"),
    "multimodal": ("processor_config.json", "tokenizer_config.json"),
    "evaluable": ("processor_config.json", "tokenizer_config.json", "tokenizer.json"),
}
# Files a finished `wings train` run or a Trainer checkpoint leaves in its output directory.
FINISHED_RUN_FILES = ("config.json", "model.safetensors", "model.safetensors.index.json")
CHECKPOINT_PREFIX = "checkpoint-"


def _is_causal_lm(model_type: str) -> bool:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and model_type not in MULTIMODAL_MODEL_TYPES


def _kind_accepts(kind: str, model_type: str) -> bool:
    if kind == "llm":
        return _is_causal_lm(model_type)
    if kind == "vision":
        return model_type in VISION_MODEL_TYPES
    if kind == "wings":
        return model_type == "wings"
    if kind == "multimodal":
        return model_type in MULTIMODAL_MODEL_TYPES
    if kind == "evaluable":
        return model_type in MULTIMODAL_MODEL_TYPES or _is_causal_lm(model_type)
    raise ValueError(f"unknown model kind {kind!r} (one of {sorted(KIND_NAMES)})")


def looks_like_path(name: str) -> bool:
    """True for a name that can only be a local path: absolute, `./`, `../`, `~`, or more than one `/`
    (a hub id is `name` or `owner/name`)."""
    return (
        os.path.isabs(name) or name.startswith((".", "~")) or name.count("/") > 1 or name.endswith("/")
        or os.sep in name.replace("/", "") or (os.altsep is not None and os.altsep in name)
    )


def _hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")


def check_model(name: str | os.PathLike, option: str, kind: str, why: str | None = None) -> str | None:
    """Check a model argument; returns its `model_type` (None for a hub id left to the hub to resolve).

    Args:
        name: a local directory or a hub id.
        option: the option it came from, for the message (e.g. "--llm").
        kind: what the option needs: "llm", "vision", "wings", "multimodal" or "evaluable".
        why: the reason for the kind, added to the message (e.g. "the dialogues hold images").

    Raises:
        ModelPathError: a path-like name that does not exist, a hub id that is not in the cache while the
            hub is offline, a directory without a readable config.json or whole weights, or a model of
            another kind.
    """
    text = os.fspath(name)
    path = Path(text).expanduser()
    if not path.exists():
        if looks_like_path(text):
            raise ModelPathError(f"{option} '{text}': no such directory")
        if _hub_offline():
            from huggingface_hub import try_to_load_from_cache

            if not isinstance(try_to_load_from_cache(text, "config.json"), str):
                raise ModelPathError(
                    f"{option} '{text}': no such directory, and not a model in the Hugging Face cache "
                    "(HF_HUB_OFFLINE is set)"
                )
        return None
    if not path.is_dir():
        raise ModelPathError(f"{option} '{text}': not a directory (a saved model is a directory with config.json)")
    model_type = read_model_type(path, option)
    if not _kind_accepts(kind, model_type):
        reason = f": {why}" if why else ""
        raise ModelPathError(
            f"{option} '{text}': a '{model_type}' model, but {option} takes {KIND_NAMES[kind]}{reason}"
        )
    check_weights(path, option)
    if not any((path / name).is_file() for name in COMPANION_FILES[kind]):
        raise ModelPathError(
            f"{option} '{text}': a model without its {' or '.join(COMPANION_FILES[kind])} (save the "
            "tokenizer or processor beside it)"
        )
    return model_type


def read_model_type(path: Path, option: str) -> str:
    """The model_type in `path`/config.json, or a `ModelPathError` saying why there is none."""
    config = path / "config.json"
    if not config.is_file():
        raise ModelPathError(
            f"{option} '{path}': no config.json, so not a saved model (an interrupted save leaves none)"
        )
    try:
        model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as err:
        raise ModelPathError(f"{option} '{config}': not a valid JSON object ({err})") from err
    if not isinstance(model_type, str):
        raise ModelPathError(f"{option} '{config}': no model_type")
    return model_type


def check_weights(path: Path, option: str) -> None:
    """Every safetensors file in `path` (or listed by its index) has a readable header and all its bytes."""
    files = sorted(path.glob("*.safetensors"))
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (json.JSONDecodeError, KeyError, AttributeError, TypeError) as err:
            raise ModelPathError(f"{option} '{index}': not a safetensors index ({err})") from err
        missing = sorted(s for s in shards if not (path / s).is_file())
        if missing:
            raise ModelPathError(f"{option} '{path}': weight file(s) {missing} named in {index.name} are missing")
    if not files and not any(path.glob("*.bin")):
        raise ModelPathError(f"{option} '{path}': no weights (model.safetensors) in it")
    for file in files:
        _check_safetensors(file, option)


def _check_safetensors(file: Path, option: str) -> None:
    # The format: an 8-byte little-endian header length, a JSON header giving each tensor's byte range
    # in the data that follows. Checking the ranges against the file size catches a truncated copy.
    size = file.stat().st_size
    with file.open("rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise ModelPathError(f"{option} '{file}': empty or truncated weights file ({size} bytes)")
        (length,) = struct.unpack("<Q", head)
        if 8 + length > size:
            raise ModelPathError(f"{option} '{file}': truncated weights file (its header alone needs {8 + length} "
                                 f"bytes, the file has {size})")
        try:
            header = json.loads(handle.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ModelPathError(f"{option} '{file}': not a safetensors file ({err})") from err
    ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
    if 8 + length + max(ends, default=0) > size:
        raise ModelPathError(f"{option} '{file}': truncated weights file ({size} bytes, its header describes "
                             f"{8 + length + max(ends)})")


def run_contents(output: Path) -> list[str]:
    """What in `output` belongs to a previous run: its final model files and checkpoint folders."""
    if not output.is_dir():
        return []
    found = [name for name in FINISHED_RUN_FILES if (output / name).exists()]
    found += sorted(p.name for p in output.glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir())
    return found


def check_output_dir(output: str | os.PathLike, resume: bool = False, overwrite: bool = False) -> None:
    """Refuse an output that is a file, or one holding a previous run unless `resume` or `overwrite`.

    Raises:
        UsageError: `output` is a file, or both `resume` and `overwrite` were given.
        OutputExistsError: `output` holds a finished run or checkpoints and neither flag was given, or
            `resume` was given for a final model without checkpoints (resuming would retrain it).
    """
    path = Path(output)
    if path.exists() and not path.is_dir():
        raise UsageError(f"--output '{output}' is a file; give a directory")
    if resume and overwrite:
        raise UsageError("--resume continues the run in --output and --overwrite replaces it: pass one of them")
    found = run_contents(path)
    if resume and found and not any(name.startswith(CHECKPOINT_PREFIX) for name in found):
        raise OutputExistsError(
            f"--resume: --output '{output}' holds a final model but no checkpoint to continue from; pass "
            "--overwrite to train it again from scratch"
        )
    if found and not (resume or overwrite):
        shown = ", ".join(found[:4]) + (", ..." if len(found) > 4 else "")
        raise OutputExistsError(
            f"--output '{output}' holds a previous run ({shown}); pass --resume to continue it or --overwrite "
            "to replace it"
        )


def check_device(device: str | None, option: str = "--device") -> None:
    """A torch device string that names a device this machine has (None: the default, always fine)."""
    if device is None:
        return
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError) as err:
        raise UsageError(f"{option} '{device}': not a device (e.g. cpu, cuda, cuda:0): {err}") from err
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"{option} '{device}': no CUDA GPU is visible on this machine (use --device cpu)")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise UsageError(f"{option} '{device}': this machine has {torch.cuda.device_count()} GPU(s)")


def check_positive(**values: int | float | None) -> None:
    """Each given value (None: not given) must be >= 1, e.g. `check_positive(batch_size=0)` fails naming
    `--batch-size`."""
    for name, value in values.items():
        if value is not None and value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {value}")


def check_files(**files: str | os.PathLike | None) -> None:
    """Each given input file (None: not given) exists; the error names the option."""
    for name, file in files.items():
        if file is not None and not Path(file).exists():
            raise UsageError(f"--{name.replace('_', '-')} '{file}': no such file")
