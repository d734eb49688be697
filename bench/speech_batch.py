"""Speech batched across streams (issue 22): what one batched call saves per item on this CPU.

    PYTHONPATH=. python bench/speech_batch.py [--threads 2 1] [--batches 1 2 4 8] [--repeats 3]
                                              [--clip samples/astronaut.mp4] [--out DIR] [--allow-dirty]
    PYTHONPATH=. python bench/speech_batch.py --smoke [--smoke-dir DIR]

Items: espeak-ng sentences (English and German, 2-5 s each, 0.5 s of silence around them) and
the sample clip's audio cut into two halves (~5 s each), cycled to the batch size. Per CPU
thread count (CTranslate2 ``cpu_threads`` and ONNX Runtime ``intra_op_threads`` alike) and batch
size B, the median over ``--repeats`` runs, divided by B:

Each figure is compared with the same items run one at a time (each item's median alone,
summed): items differ in length, and the voice encoder pads a batch to its longest item.

* ``whisper_encoder``: CTranslate2's encoder pass over B padded 30 s inputs ([B, 80, 3000]);
* ``words_batch``: the whole :meth:`SpeechRecognizer.words_batch` (features, one encoder pass,
  language detection, decoding and translation per item), and whether every item's words
  equal its single :meth:`SpeechRecognizer.words` call;
* ``voice_encoder``: :meth:`WhisperEncoder.batch` over the items' trimmed log-mels (the voice
  head's blocks 1-3, padded to the longest and masked), and ``voice_features`` the whole
  :meth:`VoiceFeatures.batch`, with the largest difference from the single-item features.

The results (``bench/results/speech-batch.{json,md}``) name the command and the git revision; a
tree whose measured files differ from that revision is refused unless ``--allow-dirty``.
``--smoke``: one thread, batches 1 and 2, one repeat, into ``--smoke-dir`` (a dirty tree allowed).
"""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.multilingual import say, speak, versions  # noqa: E402

_smoke = importlib.import_module("bench._smoke")  # --smoke
#: --smoke: the figures its report must hold.
SMOKE_NUMBERS = ("runs/0/rows/0/whisper_encoder_s_per_item", "runs/0/rows/1/voice_features_s_per_item")

RESULTS = ROOT / "bench" / "results"
MEASURED = (
    "stream/modalities/speech/asr.py",
    "stream/modalities/speech/voice.py",
    "engines/models/whisper_encoder.py",
    "bench/speech_batch.py",
)
SENTENCES = [
    ("en", "Hello there, what a wonderful day to be in space."),
    ("de", "Ich bin so glücklich, dich wiederzusehen, mein Freund."),
    ("en", "This is the worst thing that has ever happened to me, and I am really angry about it."),
    ("en", "Please open the window."),
    ("de", "Das ist das Schlimmste, was mir je passiert ist."),
    ("en", "I am afraid of the dark, please stay with me tonight."),
]


def items(clip: Path, tmp: Path) -> list[tuple[str, np.ndarray]]:
    """The named pieces of audio the batches are cut from."""
    from stream.io.capture import decode_audio_file

    out = [(f"espeak-{v}-{i}", speak(t, tmp / f"s{i}.wav", v)) for i, (v, t) in enumerate(SENTENCES)]
    audio = decode_audio_file(clip)
    half = len(audio) // 2
    return out + [("clip-a", audio[:half]), ("clip-b", audio[half:])]


def median_time(fn: Any, *args: Any, repeats: int) -> tuple[float, Any]:
    """The median seconds of ``fn(*args)`` after a warm-up, and its last result."""
    out = fn(*args)  # warm-up
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn(*args)
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts)), out


def measure(threads: int, batches: list[int], repeats: int, pieces: list[tuple[str, np.ndarray]]) -> dict[str, Any]:
    import ctranslate2

    from stream.modalities.speech.asr import SpeechRecognizer
    from stream.modalities.speech.voice import VoiceFeatures

    asr = SpeechRecognizer(device="cpu", cpu_threads=threads).load()
    voice = VoiceFeatures(backend="onnxruntime", intra_op_threads=threads).load()
    model = asr._model
    assert model is not None
    audios = [a for _, a in pieces]
    single_words = [asr.words(a) for a in audios]
    single_voice = [voice(a)[0] for a in audios]
    segments = [asr._segment(model, a) for a in audios]
    mels = [voice._mel(voice_trim(a))[:, :-1] for a in audios]
    # each item alone (seconds): the baseline a batch of the same items is compared with
    alone = {
        "whisper_encoder": [
            median_time(model.model.encode, ctranslate2.StorageView.from_array(s[None]), repeats=repeats)[0]
            for s in segments
        ],
        "words_batch": [median_time(asr.words, a, repeats=repeats)[0] for a in audios],
        "voice_encoder": [median_time(voice.encoder, m, repeats=repeats)[0] for m in mels],
        "voice_features": [median_time(voice, a, repeats=repeats)[0] for a in audios],
    }
    rows = []
    for b in batches:
        idx = [i % len(audios) for i in range(b)]
        stacked = np.ascontiguousarray(np.stack([segments[i] for i in idx]), dtype=np.float32)
        enc, _ = median_time(model.model.encode, ctranslate2.StorageView.from_array(stacked), repeats=repeats)
        batch_audio = [audios[i] for i in idx]
        words, got = median_time(asr.words_batch, batch_audio, repeats=repeats)
        same = all(
            not isinstance(w, Exception) and [x.text for x in w] == [x.text for x in single_words[i]]
            for w, i in zip(got, idx)
        )
        venc, _ = median_time(voice.encoder.batch, [mels[i] for i in idx], repeats=repeats)
        vfeat, feats = median_time(voice.batch, batch_audio, repeats=repeats)
        vdiff = max(float(np.abs(f - single_voice[i]).max()) for (f, _), i in zip(feats, idx))
        row = {
            "batch": b,
            "whisper_encoder_s_per_item": round(enc / b, 4),
            "words_batch_s_per_item": round(words / b, 4),
            "words_equal_single": same,
            "voice_encoder_s_per_item": round(venc / b, 4),
            "voice_features_s_per_item": round(vfeat / b, 4),
            "voice_max_abs_diff": vdiff,
        }
        for key, times in alone.items():
            single = sum(times[i] for i in idx) / b
            row[f"{key}_alone_s_per_item"] = round(single, 4)
            row[f"{key}_saving"] = round(1.0 - row[f"{key}_s_per_item"] / single, 3)
        say(f"threads {threads} {row}")
        rows.append(row)
    asr.close()
    voice.close()
    return {"threads": threads, "rows": rows}


def voice_trim(audio: np.ndarray) -> np.ndarray:
    from stream.modalities.speech.prosody import trim

    return trim(np.asarray(audio, np.float32))


def markdown(res: dict[str, Any]) -> str:
    rev = res["revision"]
    lines = [
        "# Speech batched across streams (issue 22)",
        "",
        f"`{res['command']}` at `{rev['short']}`{' (dirty: ' + ', '.join(rev['changed']) + ')' if rev['changed'] else ''}, "
        f"{res['cpus']} CPUs; versions {json.dumps(res['versions'])}.",
        "",
        "Items: " + ", ".join(f"{n} ({s:.1f} s)" for n, s in res["items"]) + "; cycled to the batch size.",
        "Seconds per item (median of the repeats / batch); saving = 1 - batched / the same items run one "
        "at a time (each item's median alone, summed).",
        "",
    ]
    for part in res["runs"]:
        lines += [
            f"## {part['threads']} thread(s)",
            "",
            "| batch | Whisper encoder s/item | saving | words_batch s/item | saving | same words | "
            "voice encoder s/item | saving | voice features s/item | saving | voice max diff |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in part["rows"]:
            lines.append(
                f"| {r['batch']} | {r['whisper_encoder_s_per_item']:.3f} | {r['whisper_encoder_saving']:+.0%} | "
                f"{r['words_batch_s_per_item']:.3f} | {r['words_batch_saving']:+.0%} | {r['words_equal_single']} | "
                f"{r['voice_encoder_s_per_item']:.4f} | {r['voice_encoder_saving']:+.0%} | "
                f"{r['voice_features_s_per_item']:.4f} | {r['voice_features_saving']:+.0%} | {r['voice_max_abs_diff']:.1e} |"
            )
        lines.append("")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, nargs="+", default=[2, 1])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--clip", type=Path, default=ROOT / "samples" / "astronaut.mp4")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--allow-dirty", action="store_true")
    _smoke.add_args(p, "one thread, batches 1 and 2, one repeat")
    args = p.parse_args(argv)
    if args.smoke:
        args.threads, args.batches, args.repeats, args.allow_dirty = [1], [1, 2], 1, True
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        subprocess.run(["espeak-ng", "--version"], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        if args.smoke:
            return _smoke.skip("speech_batch", "espeak-ng is not installed")
        say("speech_batch: espeak-ng is not installed")
        return 2
    started = _smoke.begin("speech_batch:", "speech_batch", "speech-batch", args, MEASURED, results=args.out)
    if started is None:
        return 2
    rev, json_out, md_out, folder = started
    import os

    with tempfile.TemporaryDirectory() as tmp:
        pieces = items(args.clip, Path(tmp))
        runs = [measure(t, args.batches, args.repeats, pieces) for t in args.threads]
    res = {
        "command": "python bench/speech_batch.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "revision": rev.record("short"),
        "versions": versions(),
        "cpus": os.cpu_count(),
        "items": [(n, round(len(a) / 16000, 2)) for n, a in pieces],
        "runs": runs,
    }
    _smoke.write_results(json_out, res, md_out, markdown(res) + "\n", indent=1)
    say(f"wrote {md_out}")
    if folder is not None:
        return _smoke.finish("speech_batch", res, SMOKE_NUMBERS, folder)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
