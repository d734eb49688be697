"""The local backend: a pool of worker processes on this machine.

``concurrent.futures.ProcessPoolExecutor`` with ``spawn`` (no state inherited from the caller)
and an initializer that builds each process's :class:`~stream.batch.worker.BatchWorker`, so
models load once per process.  Each process has at most one file in flight, so a file waits in
this process, not in a worker's queue.

A worker process that dies (killed, out of memory, a crash in native code) breaks the pool:
the files that were in flight are put back (each at most ``retries`` times; which process died
cannot be told, so every file in flight counts a try) and the pool is made again.
"""

from __future__ import annotations

import multiprocessing as mp
import signal
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from stream.batch.plan import BatchItem
from stream.batch.worker import BatchWorker, WorkerConfig, summary_row

_WORKER: BatchWorker | None = None


def _init(config: WorkerConfig) -> None:
    """A worker process's start: Ctrl-C is the parent's business; models load now."""
    global _WORKER
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from stream.core.logs import setup_logging, silence_native

    silence_native()
    setup_logging(config.log_level)
    _WORKER = BatchWorker(config)


def _analyse(item: BatchItem) -> dict[str, Any]:
    assert _WORKER is not None, "the worker process was not initialised"
    return _WORKER.analyse(item)


def _stop(pool: ProcessPoolExecutor) -> None:
    """Stop a pool now: queued files are cancelled, running ones end with their process."""
    procs = list((getattr(pool, "_processes", None) or {}).values())  # no public way to reach them
    for proc in procs:
        if proc.is_alive():
            proc.terminate()
    pool.shutdown(wait=True, cancel_futures=True)


def run_local(
    items: Sequence[BatchItem], config: WorkerConfig, *, workers: int = 1, retries: int = 1
) -> Iterator[dict]:
    """Analyse ``items`` in ``workers`` processes; yields each file's summary as it is done.
    Closing the iterator (or an exception in the caller, Ctrl-C) stops the processes."""
    workers = max(1, min(workers, len(items)))
    todo = deque(items)
    tries: dict[str, int] = {}
    ctx = mp.get_context("spawn")
    pool: ProcessPoolExecutor | None = None
    running: dict[Future, BatchItem] = {}
    try:
        while todo or running:
            if pool is None:
                pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init, initargs=(config,))
            while todo and len(running) < workers:
                item = todo.popleft()
                running[pool.submit(_analyse, item)] = item
            done, _ = wait(list(running), return_when=FIRST_COMPLETED)
            lost: list[BatchItem] = []
            for fut in done:
                item = running.pop(fut)
                try:
                    yield fut.result()
                except BrokenProcessPool:
                    lost.append(item)
            if lost:  # the pool is gone: every file still in flight is lost with it
                lost += running.values()
                running.clear()
                _stop(pool)
                pool = None
                for item in reversed(lost):
                    tries[item.name] = tries.get(item.name, 0) + 1
                    if tries[item.name] > retries:
                        yield summary_row(
                            item,
                            status="failed",
                            error=f"a worker process died while analysing it ({tries[item.name]} tries)",
                        )
                    else:
                        todo.appendleft(item)
    finally:
        if pool is not None:
            if running or todo:
                _stop(pool)
            else:
                pool.shutdown(wait=True)


__all__ = ["run_local"]
