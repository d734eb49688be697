"""Inference latency per model, backend and batch size.

    python -m bench.engines [--models NAME ...] [--backends onnxruntime tensorrt] [--batches 1 20]
                            [--runs 50] [--warmup 5] [--json OUT.json] [--markdown OUT.md]
    python -m bench.engines --smoke [--smoke-dir DIR] [--backends ...]

For every available ONNX model of the registry (exported and cached on first use), every
backend this machine has and every batch size: warm-up runs first, then ``--runs`` timed
calls of ``engine.infer`` (host arrays in, host arrays out, so copies are included);
reported as median, p95 and min in milliseconds, with per-item median. The machine and the
library versions are printed beside the numbers (JSON and a markdown table).

``--smoke`` checks that the benchmark still runs (``tests/test_bench_smoke.py``): every model,
batch 1, 1 warm-up and 3 timed calls, the reports into ``--smoke-dir`` (default a new temporary
folder, never ``bench/results/``); exit 0 only when every model and backend gave its times.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
# As in latency.py: `python bench/X.py` puts bench/ on sys.path, where bench/engines.py would
# shadow the project's `engines` package (even behind PYTHONPATH=.): drop it, the root first.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != BENCH]
sys.path.insert(0, str(ROOT))

from engines.cli import tensorrt_axes  # noqa: E402
from engines.models import registry as reg  # noqa: E402
from engines.select import create_engine, tensorrt_status  # noqa: E402

_smoke = importlib.import_module("bench._smoke")  # --smoke

#: Sizes for dynamic axes other than the batch, by input name.
SEQUENCE_LENGTH = 32


def _shape(tensor, spec, batch: int) -> list[int]:
    if spec.role == "vad":  # Silero: 64 context + 512 new samples, recurrent state, sample rate
        return {"input": [batch, 576], "state": [2, batch, 128], "sr": []}[tensor.name]
    shape = []
    for axis, dim in enumerate(tensor.shape):
        if dim is not None:
            shape.append(dim)
        elif axis == 0:
            shape.append(batch)
        elif spec.role == "clip_text":
            shape.append(int(spec.input_shape[1]))
        else:
            shape.append(SEQUENCE_LENGTH)
    return shape


def feed_for(engine, spec, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Inputs of the right names, shapes and types; a few models need meaningful values."""
    feed = {}
    for tensor in engine.inputs:
        shape = _shape(tensor, spec, batch)
        if tensor.dtype.kind == "f":
            high = 255.0 if spec.name == "emoaffectnet-resnet50" else 1.0
            array = rng.uniform(0, high, shape) if spec.role != "vad" else rng.standard_normal(shape) * 0.1
            if tensor.name == "state":
                array = np.zeros(shape)
            array = array.astype(tensor.dtype)
        elif tensor.name == "sr":
            array = np.array(16000, dtype=tensor.dtype)
        elif "mask" in tensor.name:
            array = np.ones(shape, tensor.dtype)
        else:
            array = rng.integers(1, 1000, size=shape).astype(tensor.dtype)
        feed[tensor.name] = array
    return feed


def time_engine(engine, feed, *, runs: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        engine.infer(feed)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        engine.infer(feed)
        times.append((time.perf_counter() - start) * 1000.0)
    return times


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine() -> dict:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "onnxruntime": _version("onnxruntime"),
        "onnx": _version("onnx"),
        "tensorrt": _version("tensorrt"),
        "pycuda": _version("pycuda"),
    }
    ok, reason = tensorrt_status()
    info["gpu"] = reason
    if ok:
        from engines.runtimes.tensorrt import cuda_device_name

        info["gpu"] = cuda_device_name(0)
    return info


def markdown(results: list[dict], info: dict, args) -> str:
    lines = [
        f"Machine: {info['cpu']} ({info['cpus']} CPUs), {info['platform']}; GPU: {info['gpu']}",
        f"Python {info['python']}, numpy {info['numpy']}, onnxruntime {info['onnxruntime']}, "
        f"tensorrt {info['tensorrt']}; {args.warmup} warm-up + {args.runs} timed runs each.",
        "",
        "| model | backend | batch | median ms | p95 ms | min ms | median ms/item |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['backend']} | {r['batch']} | {r['error']} | | | |")
            continue
        lines.append(
            f"| {r['model']} | {r['backend']} | {r['batch']} | {r['median_ms']:.3f} | {r['p95_ms']:.3f} | "
            f"{r['min_ms']:.3f} | {r['median_ms'] / r['batch']:.3f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.engines", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", metavar="NAME", help="registry names (default: every available ONNX model)")
    p.add_argument(
        "--backends",
        nargs="+",
        choices=["onnxruntime", "tensorrt"],
        help="default: onnxruntime, plus tensorrt where usable",
    )
    p.add_argument("--batches", nargs="+", type=int, default=[1, 20])
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (default: the engine's choice)")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--markdown", type=Path, help="write the table here")
    _smoke.add_args(p, "batch 1, 1 warm-up and 3 timed calls per model and backend")
    args = p.parse_args(argv)
    folder = None
    if args.smoke:
        _smoke.refuse_outputs(p, args, ("json", "markdown"))
        try:
            folder = _smoke.out_dir("engines", args.smoke_dir)
        except ValueError as exc:
            p.error(str(exc))
        args.batches, args.runs, args.warmup = [1], 3, 1
        args.json, args.markdown = folder / "engines.json", folder / "engines.md"

    ok, _ = tensorrt_status()
    backends = args.backends or (["onnxruntime", "tensorrt"] if ok else ["onnxruntime"])
    specs = (
        [reg.get(n) for n in args.models]
        if args.models
        else [s for s in reg.registry().values() if s.format == "onnx" and reg.available(s)[0]]
    )
    rng = np.random.default_rng(0)
    results = []
    for spec in specs:
        try:
            path = reg.export(spec)
        except Exception as exc:  # a model that cannot be exported here is reported, not fatal
            results.append({"model": spec.name, "backend": "-", "batch": 0, "error": f"export: {exc}"})
            continue
        for backend in backends:
            kw = {"intra_op_threads": args.threads} if args.threads else {}
            kw.update(batch=(1, max(args.batches), max(args.batches)))
            axes = tensorrt_axes(spec)
            if axes:
                kw["fixed_axes"] = axes
            try:
                engine = create_engine(
                    path, backend=backend, device="cpu" if backend == "onnxruntime" else "cuda", **kw
                )
                engine.load()
            except Exception as exc:
                results.append({"model": spec.name, "backend": backend, "batch": 0, "error": str(exc)})
                continue
            try:
                for batch in args.batches:
                    times = time_engine(engine, feed_for(engine, spec, batch, rng), runs=args.runs, warmup=args.warmup)
                    ordered = sorted(times)
                    results.append(
                        {
                            "model": spec.name,
                            "backend": backend,
                            "batch": batch,
                            "runs": len(times),
                            "median_ms": statistics.median(times),
                            "p95_ms": ordered[int(round(0.95 * (len(ordered) - 1)))],
                            "min_ms": ordered[0],
                            "threads": getattr(engine, "intra_op_threads", None),
                            "providers": getattr(engine, "providers", None),
                        }
                    )
                    print(
                        f"{spec.name:24s} {backend:12s} batch {batch:3d}: median {results[-1]['median_ms']:8.3f} ms",
                        file=sys.stderr,
                    )
            finally:
                engine.close()
    info = machine()
    table = markdown(results, info, args)
    print(table)
    if args.json:
        args.json.write_text(
            json.dumps({"machine": info, "runs": args.runs, "warmup": args.warmup, "results": results}, indent=2)
        )
    if args.markdown:
        args.markdown.write_text(table + "\n")
    if folder is None:
        return 0
    failed = [f"{r['model']} on {r['backend']}: {r['error']}" for r in results if "error" in r]
    if failed:
        _smoke.say("engines", f"FAILED: {'; '.join(failed)}")
        return 1
    # every row's time (no row at all: "0/median_ms" is missing)
    paths = [f"{i}/median_ms" for i in range(len(results))] or ["0/median_ms"]
    return _smoke.finish("engines", results, paths, folder)


if __name__ == "__main__":
    sys.exit(main())
