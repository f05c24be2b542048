"""Run independent lab steps side by side in worker processes.

Each lab step is a module-level function writing into its own folder (`pipeline.cached_step`), so
steps that do not read each other's outputs can run in parallel. Workers are spawned (not forked:
a forked torch process inherits the parent's thread pools) and set their own torch thread count.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

Call = tuple[Callable[..., Any], ...]  # (function, *args); the function must be importable (module level)


def run_calls(calls: Sequence[Call], jobs: int = 1) -> list[Any]:
    """``[f(*args) for f, *args in calls]``, in up to `jobs` worker processes when jobs > 1.

    Results come back in the order of `calls`; the first exception of a call is raised here. Spawned
    workers import the caller's main module: a script must call this under
    ``if __name__ == "__main__":``.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    if jobs == 1 or len(calls) <= 1:
        return [call[0](*call[1:]) for call in calls]
    with ProcessPoolExecutor(max_workers=min(jobs, len(calls)), mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(*call) for call in calls]
        return [future.result() for future in futures]
