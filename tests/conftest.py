"""Test-wide setup: offline hub, the LLM-family fixture and `one_thread`. Tiny model builders live in `tiny.py`."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
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
