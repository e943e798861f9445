"""The local executor: :class:`concurrent.futures.ProcessPoolExecutor` (the standard library's bounded pool of
worker processes), each worker executing one run notebook at a time with its share of the cores."""

from __future__ import annotations

import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed

from .execute import end_descendants, error_text, execute_run
from .sweep import RunNotebook


def cpu_count() -> int:
    """The cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def local_workers(runs: int, base_channels: int, image_size: int, device: str, cores: int | None = None) -> tuple[int, int]:
    """How many runs train at once here, and with how many threads each.

    A run of the quick budget's size (base 16 at 64×64) keeps one core busy and gains little from a second:
    on the 2-core CPU two such runs at once, one thread each, trained 1.26× more images per second than one
    run with two threads; a run of base 32 scales better by itself (two at once gained 1.07×). So a run
    gets about one thread per 16 base channels at 64×64 (scaled with the pixels), and the cores are shared
    among as many runs as that leaves room for. On a GPU the runs share it one at a time.
    """
    if device not in ("cpu", "auto") or _has_accelerator(device):
        return 1, 0
    cores = cores or cpu_count()
    per_run = max(1, min(cores, round(base_channels / 16 * (image_size / 64) ** 2)))
    workers = max(1, min(runs, cores // per_run))
    return workers, max(1, cores // workers)


def _has_accelerator(device: str) -> bool:
    import torch

    return device == "auto" and (torch.cuda.is_available() or torch.backends.mps.is_available())


def tail_threads(threads: int, workers: int, tail: int) -> int:
    """The threads of each of the ``tail`` runs of a last round that trains fewer runs than there are workers:
    the cores the idle workers leave. (On the 2-core AMD EPYC the ninth run of the default report trained alone
    on one thread for 84 s while the other core idled.)"""
    return max(threads, threads * workers // tail) if tail else threads


def run_local(tasks: list[RunNotebook], workers: int, threads: int) -> list[str]:
    """Train ``tasks`` on ``workers`` processes of ``threads`` threads each; one worker trains in this process,
    as a single run always did. Returns one line per failed run (its error and its notebook); the others finish."""
    failures: list[str] = []
    started = time.perf_counter()
    if workers <= 1:
        for i, task in enumerate(tasks, 1):
            print(f"== run {i} of {len(tasks)}, {task.spec.label}: notebooks/run.ipynb -> {task.out}", flush=True)
            try:
                execute_run(task)
            except Exception as e:  # a failed notebook or a dead kernel, as the pool records them: the rest go on
                failures.append(f"{task.spec.label}: {error_text(e)} (notebook {task.out})")
                print(f"== run {task.spec.label} failed: {error_text(e)}", flush=True)
        return failures
    import multiprocessing

    tail = len(tasks) % workers if len(tasks) > workers else 0
    print(f"== training {len(tasks)} runs, {workers} at a time with {threads} thread{'s' if threads > 1 else ''} "
          "each" + (f" (the last {tail}, trained once the others end, with {tail_threads(threads, workers, tail)} "
                    "threads)" if tail else "") + "; each line starts with its run", flush=True)
    failed: dict[int, str] = {}
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        futures = {pool.submit(execute_run, task, f"[{task.name.removesuffix('.ipynb')}] ",
                               tail_threads(threads, workers, tail) if i >= len(tasks) - tail else threads): task
                   for i, task in enumerate(tasks)}
        for done, future in enumerate(as_completed(futures), 1):
            task = futures[future]
            try:
                seconds = future.result()
                print(f"== {done} of {len(tasks)} finished: {task.spec.label} in {seconds:.0f} s -> {task.out}",
                      flush=True)
            except Exception as e:  # a failed notebook (PapermillExecutionError), or a worker that died
                failed[tasks.index(task)] = f"{task.spec.label}: {error_text(e)} (notebook {task.out})"
                print(f"== {done} of {len(tasks)} failed: {task.spec.label}: {error_text(e)}", flush=True)
    except KeyboardInterrupt:
        pool.shutdown(wait=False, cancel_futures=True)
        ended = end_descendants()
        print(f"interrupted: the runs being trained stop ({ended} worker and kernel processes ended); their last "
              "checkpoints stay and resume next time", file=sys.stderr, flush=True)
        raise
    pool.shutdown()
    failures += [failed[i] for i in sorted(failed)]  # in the sweep's order
    print(f"== {len(tasks) - len(failures)} of {len(tasks)} runs trained in {time.perf_counter() - started:.0f} s",
          flush=True)
    return failures


