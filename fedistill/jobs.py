"""Whole jobs in parallel: one worker process per job slot, each single-threaded.

A job here is a whole pipeline — a shadow model of a membership attack (distil, then train), a
benchmark row — that draws from torch's global random state (network initialisations under
``torch.manual_seed``), so jobs cannot share a process the way the models of
:func:`fedistill.trainer.train_many` share one (threads would race on that state). Each worker
is a fresh ``spawn``-ed process running torch on ``threads`` intra-op threads (default one, for
the reason :mod:`fedistill.trainer` gives: no OpenMP barriers, each job in its core's cache), so
a job's result is bit for bit what it gives run alone in one single-threaded process, whichever
worker ran it and however many ran beside it.

``map_jobs(fn, items, shared, jobs=w)`` is ``[fn(shared, item) for item in items]``: ``shared``
(e.g. the dataset) is sent once to each worker, each item to the worker that takes it, results
come back in ``items``' order. ``fn`` must be importable (a module-level function); arguments
and results travel between this program's own processes by pickle — nothing read from outside
is ever unpickled here.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

from fedistill.errors import ConfigError
from fedistill.progress import progress_bar

S = TypeVar("S")
T = TypeVar("T")
R = TypeVar("R")

_SHARED: dict[str, Any] = {}


def default_jobs(n_items: int) -> int:
    """One worker per CPU core the process may use, at most one per item."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(n_items, cores))


def _init(shared: Any, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    _SHARED["value"] = shared


def _call(fn: Callable[[Any, Any], Any], item: Any) -> Any:
    return fn(_SHARED["value"], item)


def map_jobs(
    fn: Callable[[S, T], R],
    items: Sequence[T],
    shared: S = None,
    *,
    jobs: int | None = 1,
    threads: int = 1,
    progress: bool = False,
    description: str = "jobs",
) -> list[R]:
    """``[fn(shared, item) for item in items]`` in ``jobs`` worker processes of ``threads``
    intra-op threads each (``None``: :func:`default_jobs`). ``jobs=1`` runs in this process, in
    order, with its own thread setting (no start-up cost; results equal up to float rounding to
    the workers' when this process runs several threads). A job's exception is raised here."""
    items = list(items)
    jobs = default_jobs(len(items)) if jobs is None else jobs
    if jobs < 1 or threads < 1:
        raise ConfigError(f"jobs and threads must be ≥ 1, got {jobs} and {threads}")
    with progress_bar(description, len(items), progress) as bar:
        if jobs == 1 or len(items) <= 1:
            out = []
            for item in items:
                out.append(fn(shared, item))
                bar.advance()
            return out
        with ProcessPoolExecutor(
            min(jobs, len(items)),
            mp_context=mp.get_context("spawn"),
            initializer=_init,
            initargs=(shared, threads),
        ) as pool:
            futures = [pool.submit(_call, fn, item) for item in items]
            results = []
            for f in futures:
                results.append(f.result())
                bar.advance()
            return results
