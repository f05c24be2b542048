"""Test-wide setup: offline hub, and the LLM-family fixture. Tiny model builders live in `tiny.py`."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture(params=["qwen2", "llama"])
def llm_family(request) -> str:
    return request.param
