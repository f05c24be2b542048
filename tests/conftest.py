"""Test-wide setup: offline hub, and the LLM-family fixture. Tiny model builders live in `tiny.py`."""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Prepared training data goes to a fresh folder, not the user's cache (child processes inherit it).
if "WINGS_DATA_CACHE" not in os.environ:
    os.environ["WINGS_DATA_CACHE"] = tempfile.mkdtemp(prefix="wings-test-data-")
    atexit.register(shutil.rmtree, os.environ["WINGS_DATA_CACHE"], True)
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture(params=["qwen2", "llama"])
def llm_family(request) -> str:
    return request.param
