"""Run independent tasks in this process or in a pool of worker processes, with one progress bar.

Each task is ``fn(*args, **kwargs)``; results come back in task order. With ``jobs`` > 1 the tasks
run in ``jobs`` spawned processes, each with as many torch threads as this one. Tasks must seed all
their own randomness (every run of the kit does), so results do not depend on ``jobs``.
"""
from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm


def _worker_init(threads: int) -> None:
    torch.set_num_threads(threads)


def run_tasks(fn: Callable, tasks: Sequence[tuple[tuple, dict]], *, jobs: int, desc: str, quiet: bool,
              names: Sequence[str]) -> list:
    """[fn(*args, **kwargs) for (args, kwargs) in tasks], ``jobs`` at a time; the bar shows ``names``."""
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    with tqdm(total=len(tasks), desc=desc, unit="run", disable=quiet, dynamic_ncols=True) as bar:
        if jobs == 1:
            results = []
            for (args, kwargs), name in zip(tasks, names):
                bar.set_postfix_str(name)
                results.append(fn(*args, **kwargs))
                bar.update(1)
            return results
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(jobs, mp_context=context, initializer=_worker_init,
                                 initargs=(torch.get_num_threads(),)) as pool:
            futures = {pool.submit(fn, *args, **kwargs): name for (args, kwargs), name in zip(tasks, names)}
            for future in as_completed(futures):
                bar.set_postfix_str(f"done {futures[future]}")
                bar.update(1)
            return [f.result() for f in futures]
