"""The Ray backend: the same work as Ray actors, on one machine or a cluster.

Each worker is an actor wrapping a :class:`~stream.batch.worker.BatchWorker`: it loads the
models once, when it starts, and analyses one file at a time.  An actor whose process dies
(killed, out of memory, its node lost) is restarted by Ray (``max_restarts=-1``: models are
loaded again) and the file it had is retried on it (``max_task_retries``); a file that killed its
worker more often than that is reported as failed and the batch goes on.

Ray is an extra (``pip install 'cer-stream[ray]'``), imported only here and only when used.
On a cluster every node needs cer-stream (same version, models fetched) and sees the inputs
and the output folder at the same paths (a shared filesystem): workers read and write them
directly, nothing travels through the object store but the per-file summaries.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any

from stream.batch.plan import BatchError, BatchItem
from stream.batch.worker import BatchWorker, WorkerConfig, one_line, summary_row

#: The one line for a machine without Ray.
RAY_MISSING = "--ray needs Ray, which is not installed: pip install 'cer-stream[ray]'"


def import_ray() -> Any:
    """The ``ray`` module; :class:`BatchError` (one line) when it is not installed."""
    try:
        import ray  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        raise BatchError(RAY_MISSING) from None
    return ray


class RayBatchWorker:
    """The actor's class (made remote at run time, so that this module imports without Ray)."""

    def __init__(self, config: WorkerConfig) -> None:
        from stream.core.logs import setup_logging, silence_native

        silence_native()
        setup_logging(config.log_level)
        self.worker = BatchWorker(config)

    def analyse(self, item: BatchItem) -> dict[str, Any]:
        return self.worker.analyse(item)

    def pid(self) -> int:
        return os.getpid()


def connect(address: str) -> bool:
    """Join the Ray cluster at ``address`` (``auto``: the one this machine belongs to;
    ``HOST:PORT``; ``ray://HOST:10001``; ``local``: start one here), unless this process is
    already connected.  True when this call connected (and so should disconnect)."""
    ray = import_ray()
    if ray.is_initialized():
        return False
    try:
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise BatchError(f"cannot connect to the Ray cluster at {address}: {one_line(exc)}") from None
    return True


def cluster_workers(cpus: float, gpus: float) -> int:
    """How many workers of ``cpus`` CPUs and ``gpus`` GPUs the connected cluster holds."""
    ray = import_ray()
    res = ray.cluster_resources()
    n = int(res.get("CPU", 1) // cpus) if cpus > 0 else 1
    if gpus > 0:
        n = min(n, int(res.get("GPU", 0) // gpus))
    return max(1, n)


def run_ray(
    items: Sequence[BatchItem],
    config: WorkerConfig,
    *,
    workers: int,
    retries: int = 1,
    cpus: float = 1.0,
    gpus: float = 0.0,
) -> Iterator[dict]:
    """Analyse ``items`` on ``workers`` actors of the connected cluster; yields each file's
    summary as it is done.  Closing the iterator kills the actors."""
    ray = import_ray()
    from ray.exceptions import RayError  # type: ignore[import-not-found,unused-ignore]

    actor_class = ray.remote(RayBatchWorker).options(
        num_cpus=cpus,
        num_gpus=gpus,
        max_restarts=-1,
        max_task_retries=retries,
    )
    actors = [actor_class.remote(config) for _ in range(max(1, min(workers, len(items))))]
    todo = deque(items)
    idle = list(actors)
    running: dict[Any, tuple[Any, BatchItem]] = {}
    try:
        while todo or running:
            while todo and idle:
                actor, item = idle.pop(), todo.popleft()
                running[actor.analyse.remote(item)] = (actor, item)
            ready, _ = ray.wait(list(running), num_returns=1)
            for ref in ready:
                actor, item = running.pop(ref)
                idle.append(actor)
                try:
                    row = ray.get(ref)
                except RayError as exc:
                    row = summary_row(
                        item, status="failed", error=f"its worker died ({retries + 1} tries): {one_line(exc)}"
                    )
                yield row
    finally:
        for actor in actors:
            try:
                ray.kill(actor, no_restart=True)
            except Exception:  # already gone, or the cluster with it
                pass


def disconnect() -> None:
    import_ray().shutdown()


__all__ = ["RAY_MISSING", "RayBatchWorker", "cluster_workers", "connect", "disconnect", "import_ray", "run_ray"]
