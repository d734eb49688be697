#!/usr/bin/env python3
"""What it costs to get a frame to the model host and its results back (issue 22: "measure the
alternatives"), beside what the face path's models cost per frame.

    nice -n 10 PYTHONPATH=. python bench/host_transport.py [--requests N] [--warmup N] [--clients N]
                                                          [--json OUT] [--md OUT] [--allow-dirty]
    python bench/host_transport.py --smoke [--smoke-dir DIR]

Three ways for a stream's analyzer to hand its frames (RGB uint8) to the models, each timed per
request (one frame of 640x480, one of 1280x720, and a batch of ten 640x480 frames, what half a
window brings) for round-trip latency and CPU time (client and server, ``time.process_time`` of
each process: every thread of it, ZeroMQ's I/O thread and the kernel's copies included):

* ``threads``: all streams in one process; a request is the frames' list put on a queue to a
  worker thread, which answers on another. No copy, no isolation: the floor.
* ``zmq``: what ``cer-stream serve`` runs (:mod:`stream.serve.model_host`): the request packed by
  :func:`stream.core.wire.pack` (pickle protocol 5, the frames out of band) on a DEALER socket to
  a ROUTER in another process over ``ipc://``, unpacked there by :func:`stream.core.wire.unpack`.
* ``shm``: the frames copied by the client into a slot of a shared-memory ring
  (:class:`multiprocessing.shared_memory.SharedMemory`, two slots per client), and only a small
  ZeroMQ message (same wire, same sockets) naming the segment, the slot and the shapes; the server
  maps the slot as NumPy arrays. The copy into the slot is part of the request.

Every server answers as the model host does: one :class:`stream.modalities.face.FaceResult` a
frame with 8-float ``basic`` and ``raw`` arrays, packed the same way. The client stamps each
request's number into the first and last byte of every frame and the server reads them back, so a
frame that did not arrive whole is an error, not a fast figure. ``zmq`` and ``shm`` run with one
client process, then with ``--clients`` processes at once against the one server (``threads``:
one client; its server is a thread of the client's process). Every client warms up, waits for
the others, and then makes its ``--requests`` requests back to back.

The face path's own cost per analysed frame comes from ``bench/results/tracking.json`` (its
``faces_dev`` sequences, following on and off), so the report can say what share of a frame's
cost the transport is. The report names the command, the machine, its load average before and
after, and the git revision; a tree whose measured files (the wire and this script) differ from
it is refused unless ``--allow-dirty`` (recorded).
"""

from __future__ import annotations

import argparse
import importlib
import json
import multiprocessing as mp
import os
import platform
import queue
import resource
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != BENCH]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"
_smoke: Any = importlib.import_module("bench._smoke")  # --smoke

#: Files measured: a run of a tree where these differ from HEAD is refused (--allow-dirty).
MEASURED = ("stream/core/wire.py", "bench/host_transport.py")
#: (name, height, width, frames per request).
CASES = (("640x480", 480, 640, 1), ("1280x720", 720, 1280, 1), ("640x480 x10", 480, 640, 10))
MODES = ("threads", "zmq", "shm")
#: Slots of each client's shared-memory ring (a synchronous client needs one; two show the ring).
SLOTS = 2
#: Longest wait for one answer (s): a server that is gone ends the run with one line, not a hang.
ANSWER_TIMEOUT_S = 60.0
SPEC = b"face:lite:ensemble"  # what a real request's spec looks like (the server ignores it)
SMOKE_NUMBERS = (
    "cases/0/runs/0/latency_ms/p50",
    "cases/0/runs/1/latency_ms/p95",
    "cases/0/runs/2/cpu_ms_per_request/total",
    "cases/2/runs/1/cpu_ms_per_frame",
)


def say(msg: str) -> None:
    print(f"[host_transport] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- both ends
def stamp(frames: list[np.ndarray], rid: int) -> int:
    """Write ``rid`` into the first and last byte of every frame; what the server must read back."""
    first, last = rid % 251, (rid + 1) % 251
    for f in frames:
        f.flat[0] = first
        f.flat[-1] = last
    return first + last


def answer(items: list[tuple[int, float, np.ndarray]]) -> list[Any]:
    """What the host sends back for ``items``: one FaceResult a frame, 8-float arrays, and in
    ``score`` the stamps this frame carried (first + last byte)."""
    from stream.modalities.face import FaceResult

    out = []
    for index, pts, rgb in items:
        check = int(rgb.flat[0]) + int(rgb.flat[-1])
        basic = np.full(8, 0.125, np.float32)
        out.append(
            FaceResult(
                index, pts, True, box=(10, 20, 110, 140), score=float(check), faces=1, basic=basic, raw=basic * 2
            )
        )
    return out


def checked(results: list[Any], want: int, n: int) -> None:
    if len(results) != n or any(int(r.score) != want for r in results):
        raise RuntimeError(f"a reply does not match its request (want {n} results stamped {want})")


def usage() -> tuple[float, int]:
    """This process's CPU time (s) and minor page faults so far (a fault is a fresh page taken
    and zeroed: what a receiver that allocates every message's buffers pays)."""
    return time.process_time(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt


# --------------------------------------------------------------------------- servers
def slot_frames(seg: Any, args: dict[str, Any]) -> list[tuple[int, float, np.ndarray]]:
    """A ``shm`` request's frames: arrays over its slot of the shared segment ``seg`` (no copy;
    the caller lets them go before the segment is closed)."""
    items: list[tuple[int, float, np.ndarray]] = []
    offset = args["offset"]
    for index, pts, shape in args["frames"]:
        rgb: np.ndarray = np.ndarray(shape, np.uint8, buffer=seg.buf, offset=offset)
        offset += rgb.nbytes
        items.append((index, pts, rgb))
    return items


def serve(endpoint: str, ready: Any) -> None:
    """The ``zmq``/``shm`` server: one ROUTER, one thread, as the host's receiving loop; a
    ``face`` request's frames come in the message (``zmq``) or from a named shared-memory slot
    (``shm``). ``cpu`` answers this process's CPU time, ``stop`` ends it."""
    from multiprocessing.shared_memory import SharedMemory

    import zmq

    from stream.core.wire import pack, unpack

    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.bind(endpoint)
    ready.set()
    segments: dict[str, SharedMemory] = {}
    try:
        while True:
            ident, *body = router.recv_multipart(copy=False)
            msg = unpack(body)
            op = msg["op"]
            if op == "face":
                args = msg["args"]
                if isinstance(args, dict):  # shm: the frames lie in a slot of a client's segment
                    if args["shm"] not in segments:
                        segments[args["shm"]] = SharedMemory(args["shm"])
                    result: Any = answer(slot_frames(segments[args["shm"]], args))
                else:
                    result = answer(args)
            elif op == "cpu":
                result = usage()
            else:
                break
            router.send_multipart([ident, *pack({"id": msg["id"], "result": result})], copy=False)
        router.send_multipart([ident, *pack({"id": msg["id"], "result": None})])
    finally:
        for seg in segments.values():
            seg.close()
        router.close(0)
        ctx.term()


class Caller:
    """A DEALER to the server and one blocking request at a time."""

    def __init__(self, endpoint: str) -> None:
        import zmq

        from stream.core import wire

        self.zmq, self.wire = zmq, wire
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)

    def call(self, msg: dict[str, Any]) -> Any:
        self.sock.send_multipart(self.wire.pack(msg), copy=False)
        if not self.sock.poll(int(ANSWER_TIMEOUT_S * 1000)):
            raise RuntimeError(f"no answer from the server in {ANSWER_TIMEOUT_S:g} s")
        reply = self.wire.unpack(self.sock.recv_multipart(copy=False))
        if reply["id"] != msg["id"]:
            raise RuntimeError(f"answer {reply['id']} to request {msg['id']}")
        return reply["result"]

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()


# --------------------------------------------------------------------------- clients
def client(
    mode: str,
    endpoint: str,
    case: tuple[str, int, int, int],
    warmup: int,
    requests: int,
    seed: int,
    gates: Any,
    out: Any,
) -> None:
    """One client process: ``warmup`` untimed requests, the gates (all warmed; go), then
    ``requests`` timed ones; puts its latencies (ns), CPU time and span on ``out``."""
    try:
        out.put(_client(mode, endpoint, case, warmup, requests, seed, gates))
    except Exception as exc:  # the parent says it in one line
        out.put({"error": f"{type(exc).__name__}: {exc}"})
        for g in gates:
            g.abort()


def _client(
    mode: str, endpoint: str, case: tuple[str, int, int, int], warmup: int, requests: int, seed: int, gates: Any
) -> dict[str, Any]:
    _, h, w, batch = case
    rng = np.random.default_rng(seed)
    frames = [rng.integers(0, 256, (h, w, 3), np.uint8) for _ in range(batch)]
    stream_id = f"bench-{seed}"
    caller: Caller | None = None
    seg: Any = None
    ring: np.ndarray | None = None
    worker: threading.Thread | None = None
    if mode == "threads":
        inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        outbox: queue.SimpleQueue[Any] = queue.SimpleQueue()

        def work() -> None:
            while (req := inbox.get()) is not None:
                outbox.put({"id": req["id"], "result": answer(req["args"])})

        worker = threading.Thread(target=work, daemon=True)
        worker.start()
    else:
        caller = Caller(endpoint)
    if mode == "shm":
        from multiprocessing.shared_memory import SharedMemory

        seg = SharedMemory(create=True, size=SLOTS * batch * h * w * 3)
        ring = np.ndarray((SLOTS, batch, h, w, 3), np.uint8, buffer=seg.buf)

    def request(rid: int) -> None:
        want = stamp(frames, rid)
        msg: dict[str, Any] = {"id": rid, "op": "face", "kind": "face", "stream": stream_id, "spec": SPEC}
        if mode == "shm":
            assert ring is not None
            slot = rid % SLOTS
            for k, f in enumerate(frames):
                np.copyto(ring[slot, k], f)
            msg["args"] = {
                "shm": seg.name,
                "offset": ring[slot].ctypes.data - ring.ctypes.data,
                "frames": [(rid * batch + k, rid / 25, f.shape) for k, f in enumerate(frames)],
            }
        else:
            msg["args"] = [(rid * batch + k, rid / 25, f) for k, f in enumerate(frames)]
        if mode == "threads":
            inbox.put(msg)
            reply = outbox.get(timeout=ANSWER_TIMEOUT_S)
            result = reply["result"]
        else:
            assert caller is not None
            result = caller.call(msg)
        checked(result, want, batch)

    try:
        for rid in range(warmup):
            request(rid)
        gates[0].wait()  # everyone warmed (the parent reads the server's CPU time now)
        gates[1].wait()  # go
        lat = np.empty(requests, np.int64)
        (cpu0, flt0), t0 = usage(), time.perf_counter_ns()
        for i in range(requests):
            t = time.perf_counter_ns()
            request(warmup + i)
            lat[i] = time.perf_counter_ns() - t
        t1, (cpu1, flt1) = time.perf_counter_ns(), usage()
    finally:
        if worker is not None:
            inbox.put(None)
            worker.join(5.0)
        if caller is not None:
            caller.close()
        if seg is not None:
            del ring
            seg.close()
            seg.unlink()
    return {"lat_ns": lat.tolist(), "cpu_s": cpu1 - cpu0, "faults": flt1 - flt0, "start_ns": t0, "end_ns": t1}


# --------------------------------------------------------------------------- one run
def run_one(mode: str, case: tuple[str, int, int, int], clients: int, warmup: int, requests: int) -> dict[str, Any]:
    """``clients`` client processes of ``mode`` (and its server process, but for ``threads``)
    making ``requests`` requests each of ``case``; the figures."""
    from stream.core.wire import private_endpoint

    ctx = mp.get_context("spawn")
    endpoint, folder = private_endpoint("bench.sock")
    server = None
    caller: Caller | None = None
    gates = (ctx.Barrier(clients + 1), ctx.Barrier(clients + 1))
    out = ctx.Queue()
    procs: list[Any] = []
    try:
        if mode != "threads":
            ready = ctx.Event()
            server = ctx.Process(target=serve, args=(endpoint, ready), daemon=True)
            server.start()
            if not ready.wait(30):
                raise RuntimeError("the server did not start in 30 s")
            caller = Caller(endpoint)
        for k in range(clients):
            p = ctx.Process(target=client, args=(mode, endpoint, case, warmup, requests, k, gates, out), daemon=True)
            p.start()
            procs.append(p)
        rid, cpu0 = -1, None
        try:
            gates[0].wait(timeout=120)
            cpu0 = caller.call({"id": rid, "op": "cpu"}) if caller else None
            gates[1].wait(timeout=30)
        except threading.BrokenBarrierError:
            pass  # a client failed: its error is on the queue
        got = [out.get(timeout=600) for _ in procs]
        errors = [g["error"] for g in got if "error" in g]
        if errors:
            raise RuntimeError(f"{mode} {case[0]}: {errors[0]}")
        cpu1 = caller.call({"id": rid - 1, "op": "cpu"}) if caller else None
        if caller is not None:
            caller.call({"id": rid - 2, "op": "stop"})
    finally:
        if caller is not None:
            caller.close()
        for p in [*procs, *([server] if server else [])]:
            p.join(10)
            if p.is_alive():
                p.terminate()
                p.join(5)
        for f in folder.iterdir():
            f.unlink()
        folder.rmdir()
    lat = np.concatenate([np.asarray(g["lat_ns"], np.int64) for g in got]) / 1e6
    total = len(lat)
    client_cpu = sum(g["cpu_s"] for g in got)
    server_cpu = (cpu1[0] - cpu0[0]) if cpu0 is not None and cpu1 is not None else None
    faults = sum(g["faults"] for g in got) + ((cpu1[1] - cpu0[1]) if cpu0 is not None and cpu1 is not None else 0)
    span_s = (max(g["end_ns"] for g in got) - min(g["start_ns"] for g in got)) / 1e9
    cpu_total = client_cpu + (server_cpu or 0.0)
    batch = case[3]
    return {
        "mode": mode,
        "clients": clients,
        "requests": total,
        "latency_ms": {
            "p50": float(np.percentile(lat, 50)),
            "p95": float(np.percentile(lat, 95)),
            "mean": float(lat.mean()),
            "max": float(lat.max()),
        },
        "cpu_ms_per_request": {
            "client": client_cpu * 1e3 / total,
            "server": None if server_cpu is None else server_cpu * 1e3 / total,
            "total": cpu_total * 1e3 / total,
        },
        "cpu_ms_per_frame": cpu_total * 1e3 / total / batch,
        "page_faults_per_request": faults / total,
        "requests_per_s": total / span_s if span_s > 0 else None,
        "frames_per_s": total * batch / span_s if span_s > 0 else None,
        "span_s": span_s,
    }


def face_cost() -> dict[str, Any]:
    """The face path's milliseconds per analysed frame, from bench/results/tracking.json."""
    path = RESULTS / "tracking.json"
    try:
        t = json.loads(path.read_text(encoding="utf-8"))
        fd = t["faces_dev"]
        return {
            "source": "bench/results/tracking.json (faces_dev sequences, ms per frame of the whole call)",
            "revision": t.get("revision", {}).get("describe"),
            "following_on_ms": float(fd["on"]["ms_per_frame"]["call"]),
            "following_off_ms": float(fd["off"]["ms_per_frame"]["call"]),
        }
    except (OSError, KeyError, TypeError, ValueError) as exc:
        return {
            "source": f"{path.relative_to(ROOT)} unreadable ({exc})",
            "following_on_ms": None,
            "following_off_ms": None,
        }


def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    cases = []
    for case in CASES:
        runs = []
        plan = [(m, 1) for m in MODES] + [(m, args.clients) for m in ("zmq", "shm") if args.clients > 1]
        for mode, clients in plan:
            r = run_one(mode, case, clients, args.warmup, args.requests)
            say(
                f"{case[0]:>12} {mode:>7} x{clients}: p50 {r['latency_ms']['p50']:.3f} ms, "
                f"p95 {r['latency_ms']['p95']:.3f} ms, CPU {r['cpu_ms_per_request']['total']:.3f} ms a request"
            )
            runs.append(r)
        h, w, batch = case[1:]
        cases.append(
            {"case": case[0], "height": h, "width": w, "frames": batch, "bytes": h * w * 3 * batch, "runs": runs}
        )
    return cases


# --------------------------------------------------------------------------- report
def _f(v: Any, nd: int = 3) -> str:
    return "–" if v is None else f"{v:.{nd}f}" if isinstance(v, float) else str(v)


def find(case: dict[str, Any], mode: str, clients: int) -> dict[str, Any] | None:
    return next((r for r in case["runs"] if r["mode"] == mode and r["clients"] == clients), None)


def meaning(res: dict[str, Any]) -> str:
    """The paragraph that puts the figures beside the face path's cost."""
    face = res["face_path"]["following_on_ms"]
    parts = []
    one = res["cases"][0]
    for mode, name in (
        ("threads", "a queue to a thread"),
        ("zmq", "ZeroMQ with pickled frames"),
        ("shm", "shared memory"),
    ):
        r = find(one, mode, 1)
        if r is None:
            continue
        share = f" ({100 * r['cpu_ms_per_frame'] / face:.1f} % of the face path's {face:.1f} ms)" if face else ""
        parts.append(
            f"{name} {r['cpu_ms_per_frame']:.3f} ms of CPU{share} and {r['latency_ms']['p50']:.3f} ms p50 round trip"
        )
    text = f"One 640x480 frame to the models and its results back costs, with one client: {'; '.join(parts)}."
    big = res["cases"][1]
    z, s = find(big, "zmq", 1), find(big, "shm", 1)
    if z and s:
        text += f" At 1280x720 ZeroMQ costs {z['cpu_ms_per_frame']:.3f} ms and shared memory {s['cpu_ms_per_frame']:.3f} ms a frame"
        text += (
            f" ({100 * z['cpu_ms_per_frame'] / face:.1f} % and {100 * s['cpu_ms_per_frame'] / face:.1f} %)."
            if face
            else "."
        )
    batch = res["cases"][2]
    z1, s1 = find(batch, "zmq", 1), find(batch, "shm", 1)
    if z1 and s1:
        text += (
            f" A batch of {batch['frames']} frames from one client: ZeroMQ {z1['cpu_ms_per_frame']:.3f} ms a frame, "
            f"{z1['page_faults_per_request']:.0f} page faults a request (fresh pages for the received "
            f"buffers), shared memory {s1['cpu_ms_per_frame']:.3f} ms and {s1['page_faults_per_request']:.0f}."
        )
    many = res["clients"]
    zb, sb = find(batch, "zmq", many), find(batch, "shm", many)
    if zb and sb and many > 1:
        text += (
            f" With {many} clients sending batches of {batch['frames']} frames at once, a frame costs "
            f"{zb['cpu_ms_per_frame']:.3f} ms (ZeroMQ) and {sb['cpu_ms_per_frame']:.3f} ms (shared memory) of CPU, "
            f"p95 round trip of a batch {zb['latency_ms']['p95']:.2f} and {sb['latency_ms']['p95']:.2f} ms "
            f"(clients and server share {res['machine'].get('usable_cpus')} CPUs, so the wait is queueing)."
        )
    return text


def markdown(res: dict[str, Any]) -> str:
    rev, m = res["revision"], res["machine"]
    face = res["face_path"]
    lines = [
        "## Model host transport: threads, ZeroMQ, shared memory (issue 22)",
        "",
        f"Revision `{rev['describe']}`"
        + (f" (**measured files differ**: {', '.join(rev['changed'])})" if rev["changed"] else "")
        + f"; `{res['command']}`; {m.get('cpu')}, {m.get('usable_cpus')} usable CPUs; "
        f"load average (1, 5, 15 min) before {res['load_before']}, after {res['load_after']}; "
        f"nice {res['nice']}; Python {m.get('python')}, NumPy {res['versions']['numpy']}, "
        f"pyzmq {res['versions']['pyzmq']} (libzmq {res['versions']['libzmq']}).",
        "",
        f"Per client: {res['warmup']} warm-up requests, then {res['requests']} timed back to back. "
        "CPU: `time.process_time` of every process (all its threads, its system time), client and "
        "server, per request and per frame; page faults: minor faults of client and server (fresh "
        "pages taken and zeroed). The servers answer on their receiving thread; the real "
        "host also hands each request to a model's worker thread and back (about the `threads` row more).",
        "",
        f"Face path per analysed frame: {_f(face['following_on_ms'], 2)} ms (following on), "
        f"{_f(face['following_off_ms'], 2)} ms (off), from {face['source']}.",
        "",
        "| frames | way | clients | p50 ms | p95 ms | CPU ms/request (client + server) | CPU ms/frame "
        "| % of face path | frames/s | page faults/request |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for case in res["cases"]:
        for r in case["runs"]:
            c = r["cpu_ms_per_request"]
            share = 100 * r["cpu_ms_per_frame"] / face["following_on_ms"] if face["following_on_ms"] else None
            lines.append(
                f"| {case['case']} | {r['mode']} | {r['clients']} | {_f(r['latency_ms']['p50'])} | "
                f"{_f(r['latency_ms']['p95'])} | {_f(c['total'])} ({_f(c['client'])} + {_f(c['server'])}) | "
                f"{_f(r['cpu_ms_per_frame'])} | {_f(share, 1)} | {_f(r['frames_per_s'], 0)} | "
                f"{_f(r['page_faults_per_request'], 0)} |"
            )
    lines += ["", "### What this means", "", meaning(res), ""]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/host_transport.py", description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=300, help="timed requests per client (default 300)")
    p.add_argument("--warmup", type=int, default=30, help="untimed requests per client first (default 30)")
    p.add_argument("--clients", type=int, default=8, help="client processes of the many-client runs (default 8)")
    p.add_argument("--json", type=Path, help="default bench/results/host-transport.json")
    p.add_argument("--md", type=Path, help="default bench/results/host-transport.md")
    p.add_argument("--allow-dirty", action="store_true", help="measure a tree whose measured files differ from HEAD")
    _smoke.add_args(p, "20 requests after 3, one client")
    args = p.parse_args(argv)
    if args.smoke:
        _smoke.refuse_outputs(p, args, ("json", "md"))
        args.requests, args.warmup, args.clients = 20, 3, 1
    if args.requests < 1 or args.warmup < 0 or args.clients < 1:
        p.error("--requests and --clients must be at least 1, --warmup at least 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = _smoke.begin("bench/host_transport.py:", "host_transport", "host-transport", args, MEASURED)
    if started is None:
        return 2
    revision, json_out, md_out, folder = started
    import zmq

    load_before = [round(x, 2) for x in os.getloadavg()]
    say(f"load average before: {load_before}")
    try:
        cases = measure(args)
    except (RuntimeError, OSError, queue.Empty) as exc:  # a server or client that failed: one line
        print(f"bench/host_transport.py: error: {exc or type(exc).__name__}", file=sys.stderr)
        return 1
    machine = importlib.import_module("bench.latency").machine_info()
    res = {
        "command": "python bench/host_transport.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "revision": revision.record("describe"),
        "machine": machine,
        "load_before": load_before,
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "nice": os.nice(0),
        "versions": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "pyzmq": zmq.__version__,
            "libzmq": zmq.zmq_version(),
        },
        "requests": args.requests,
        "warmup": args.warmup,
        "clients": args.clients,
        "face_path": face_cost(),
        "cases": cases,
    }
    _smoke.write_results(json_out, res, md_out, markdown(res) + "\n", indent=2)
    say(f"wrote {json_out} and {md_out}")
    if args.smoke:
        return _smoke.finish("host_transport", res, SMOKE_NUMBERS, folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
