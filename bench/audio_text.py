#!/usr/bin/env python3
"""Per-window cost of the speech stages on this machine: VAD, Whisper, MiniLM + head.

    PYTHONPATH=. python bench/audio_text.py [--repeats N] [--clip samples/astronaut.mp4]

Each stage is warmed up first, then timed ``--repeats`` times on the sample clip's 4 s
windows; the report gives median, p95 and min in milliseconds, with the machine and the
library versions beside them.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RATE = 16000


def stats(ms: list[float]) -> dict:
    a = np.asarray(ms)
    return {"median": round(float(np.median(a)), 2), "p95": round(float(np.percentile(a, 95)), 2),
            "min": round(float(a.min()), 2), "n": int(a.size)}


def timed(fn, repeats: int, warmup: int = 2) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def versions() -> dict:
    names = ["numpy", "onnxruntime", "faster-whisper", "ctranslate2", "tokenizers", "silero-vad"]
    out = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clip", type=Path, default=ROOT / "samples" / "astronaut.mp4")
    p.add_argument("--repeats", type=int, default=10)
    args = p.parse_args()

    from stream.asr import SpeechRecognizer
    from stream.texthead import TextHead
    from stream.vad import SpeechGate
    from stream.windows import plan_windows

    from stream.capture import decode_audio_file

    audio = decode_audio_file(args.clip)
    windows = [(w, audio[int(w.start * RATE):int(w.end * RATE)]) for w in plan_windows(audio.shape[0] / RATE)]
    report: dict = {"machine": {"cpus": len(os.sched_getaffinity(0)), "processor": platform.processor(),
                                "load_avg_before": [round(x, 2) for x in os.getloadavg()]},
                    "versions": versions(), "stages_ms": {}}

    # VAD: a window scored from scratch (125 chunks) and a window continuing the stream (~63 new)
    w0, a0 = windows[0]
    gate = SpeechGate()

    def from_scratch():
        gate.reset_states()
        gate.analyse(a0, w0.start)

    report["stages_ms"]["vad_window_from_scratch"] = stats(timed(from_scratch, args.repeats))

    def stream_pass():
        gate = SpeechGate()
        gate.vad.load()
        gate.analyse(a0, w0.start)
        t0 = time.perf_counter()
        for w, a in windows[1:]:
            gate.analyse(a, w.start)
        return (time.perf_counter() - t0) * 1e3 / (len(windows) - 1)

    stream_pass()
    report["stages_ms"]["vad_window_streaming"] = stats([stream_pass() for _ in range(args.repeats)])

    for threads in (1, 2, 0):
        asr = SpeechRecognizer(device="cpu", cpu_threads=threads).load()
        key = f"asr_window_{threads or 'default'}_threads"
        report["stages_ms"][key] = stats(timed(lambda: asr.transcribe(windows[1][1]), args.repeats, warmup=1))
    transcript = asr.transcribe(windows[1][1]).text

    head = TextHead.load("speech")
    head.get_encoder().load()
    report["stages_ms"]["text_head_window"] = stats(timed(lambda: head.predict([transcript]), args.repeats * 5))
    report["transcript"] = transcript
    report["machine"]["load_avg_after"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
