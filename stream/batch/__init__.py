"""Whole datasets: ``cer-stream batch`` (:mod:`stream.batch.run`).

``plan`` expands the inputs and names each file's outputs, ``worker`` analyses files with one
pipeline built once, ``local`` (processes) and ``ray_backend`` (Ray actors) run workers,
``run`` ties them together: skip what is done, run the rest, write the summary.
"""

from stream.batch.plan import BatchError, BatchItem, plan
from stream.batch.run import BatchOptions, BatchResult, format_table, run_batch

__all__ = ["BatchError", "BatchItem", "BatchOptions", "BatchResult", "format_table", "plan", "run_batch"]
