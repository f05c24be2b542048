"""Test-wide setup: offline hub, the LLM-family fixture and `one_thread`. Tiny model builders live in `tiny.py`."""

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


@pytest.fixture
def one_thread():
    """torch on one thread for the test: the lab's tiny trainings are deterministic and fastest that way on a
    shared machine (a busy core stalls every multi-threaded kernel). Use with `pytest.mark.usefixtures`."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
