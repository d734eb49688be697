#!/usr/bin/env python3
"""Every language heard (issue 21): Whisper base's language detection, the gate and the text
head's reading of translated speech, per language, and the cost of one Whisper call.

    PYTHONPATH=. python bench/multilingual.py [--threads N] [--languages de,fr,...] [--only langs,cost]
                                             [--allow-dirty]
    python bench/multilingual.py --smoke [--smoke-dir DIR]

``langs``: espeak-ng speaks ten short emotional English sentences (:data:`SENTENCES`) and their
translations (written for this benchmark) into German, French, Spanish, Italian, Portuguese,
Dutch, Polish, Russian, Turkish, Mandarin and Japanese. Each sentence, with 0.5 s of silence on
each side, is one call of the default recogniser (:class:`stream.modalities.speech.asr.SpeechRecognizer`:
Whisper base multilingual; every language allowed and translated to English). Per language: the
detection rate (detected == spoken), the mean language probability, the gate's pass rate
(:class:`~stream.modalities.speech.asr.AsrGate` on the words as spoken), how many were translated,
and the text head's agreement with the English sentence as written: on the sentences that pass
the gate, the share whose 8-way distribution (the ``speech`` head on the English the head read:
the translation, or the transcript for English) has the same argmax as the head on the written
English sentence, and the mean total-variation distance between the two distributions (0..1); and
the median seconds per call. espeak-ng is synthetic speech: the figures say what the path does
with clear, accented, flat speech, not what it does with real speakers.

``cost``: the median seconds of one call on 4, 6 and 8 s of English and German speech, before
(faster-whisper's ``transcribe(language=None)``, which encodes the padded input once to detect
the language and again to decode; with a translation done the same way, a third time) and after
(:meth:`SpeechRecognizer.words`: one encoder pass per call for detection, transcription and
translation), and the encoder passes per call.

The results (``bench/results/multilingual.{json,md}``) name the command and the git revision;
the run is refused when the files it measures (the recogniser, the text head and its weights, the
Whisper base joiner, the sentence encoder, this script) differ from that revision, unless ``--allow-dirty``
(recorded). ``--smoke``: two languages, two sentences, one duration, into ``--smoke-dir``.
``run(args) -> dict`` is the measurement without writing files (``bench/accuracy.py`` calls it).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RATE = 16000
_smoke = importlib.import_module("bench._smoke")  # --smoke

#: The measured files: a run of a tree where these differ from HEAD is refused (--allow-dirty).
MEASURED = (
    "stream/modalities/speech/asr.py",
    "stream/modalities/speech/texthead.py",
    "stream/heads/speech.npz",
    "engines/models/whisper_base.py",
    "engines/models/minilm.py",
    "bench/multilingual.py",
)

#: Ten short emotional sentences and the label a reader would give them (for the record only:
#: the benchmark compares the head on speech with the head on the written English).
SENTENCES = [
    ("I am so happy to see you again, my friend.", "Happiness"),
    ("This is the worst thing that has ever happened to me.", "Sadness"),
    ("I am really angry with you, you never listen to me.", "Anger"),
    ("I am afraid of the dark, please stay with me.", "Fear"),
    ("That smell is disgusting, I feel sick.", "Disgust"),
    ("What a surprise, I did not expect to see you here!", "Surprise"),
    ("The meeting starts at ten o'clock tomorrow morning.", "Neutral"),
    ("I miss my mother so much, I cannot stop crying.", "Sadness"),
    ("Thank you so much, this is a wonderful gift.", "Happiness"),
    ("Get out of my house right now!", "Anger"),
]
#: The same sentences, translated, per espeak-ng voice.
TRANSLATIONS: dict[str, list[str]] = {
    "de": [
        "Ich bin so glücklich, dich wiederzusehen, mein Freund.",
        "Das ist das Schlimmste, was mir je passiert ist.",
        "Ich bin wirklich wütend auf dich, du hörst mir nie zu.",
        "Ich habe Angst vor der Dunkelheit, bitte bleib bei mir.",
        "Dieser Geruch ist ekelhaft, mir ist schlecht.",
        "Was für eine Überraschung, ich hätte nicht erwartet, dich hier zu sehen!",
        "Die Besprechung beginnt morgen früh um zehn Uhr.",
        "Ich vermisse meine Mutter so sehr, ich kann nicht aufhören zu weinen.",
        "Vielen Dank, das ist ein wunderbares Geschenk.",
        "Raus aus meinem Haus, sofort!",
    ],
    "fr": [
        "Je suis tellement heureux de te revoir, mon ami.",
        "C'est la pire chose qui me soit jamais arrivée.",
        "Je suis vraiment en colère contre toi, tu ne m'écoutes jamais.",
        "J'ai peur du noir, reste avec moi s'il te plaît.",
        "Cette odeur est dégoûtante, j'ai envie de vomir.",
        "Quelle surprise, je ne m'attendais pas à te voir ici !",
        "La réunion commence demain matin à dix heures.",
        "Ma mère me manque tellement, je ne peux pas arrêter de pleurer.",
        "Merci beaucoup, c'est un cadeau merveilleux.",
        "Sors de ma maison tout de suite !",
    ],
    "es": [
        "Estoy muy feliz de verte otra vez, mi amigo.",
        "Esto es lo peor que me ha pasado en la vida.",
        "Estoy muy enfadado contigo, nunca me escuchas.",
        "Tengo miedo de la oscuridad, por favor quédate conmigo.",
        "Ese olor es asqueroso, me siento mal.",
        "¡Qué sorpresa, no esperaba verte aquí!",
        "La reunión empieza mañana a las diez de la mañana.",
        "Extraño tanto a mi madre, no puedo dejar de llorar.",
        "Muchas gracias, es un regalo maravilloso.",
        "¡Sal de mi casa ahora mismo!",
    ],
    "it": [
        "Sono così felice di rivederti, amico mio.",
        "Questa è la cosa peggiore che mi sia mai successa.",
        "Sono davvero arrabbiato con te, non mi ascolti mai.",
        "Ho paura del buio, per favore resta con me.",
        "Quest'odore è disgustoso, mi sento male.",
        "Che sorpresa, non mi aspettavo di vederti qui!",
        "La riunione inizia domani mattina alle dieci.",
        "Mi manca tanto mia madre, non riesco a smettere di piangere.",
        "Grazie mille, è un regalo meraviglioso.",
        "Esci subito da casa mia!",
    ],
    "pt": [
        "Estou tão feliz em te ver de novo, meu amigo.",
        "Esta é a pior coisa que já me aconteceu.",
        "Estou muito zangado com você, você nunca me escuta.",
        "Tenho medo do escuro, por favor fique comigo.",
        "Esse cheiro é nojento, estou enjoado.",
        "Que surpresa, eu não esperava te ver aqui!",
        "A reunião começa amanhã às dez horas da manhã.",
        "Sinto tanta falta da minha mãe, não consigo parar de chorar.",
        "Muito obrigado, é um presente maravilhoso.",
        "Saia da minha casa agora mesmo!",
    ],
    "nl": [
        "Ik ben zo blij je weer te zien, mijn vriend.",
        "Dit is het ergste wat me ooit is overkomen.",
        "Ik ben echt boos op je, je luistert nooit naar me.",
        "Ik ben bang in het donker, blijf alsjeblieft bij me.",
        "Die geur is walgelijk, ik word er misselijk van.",
        "Wat een verrassing, ik had niet verwacht je hier te zien!",
        "De vergadering begint morgenochtend om tien uur.",
        "Ik mis mijn moeder zo erg, ik kan niet stoppen met huilen.",
        "Heel erg bedankt, dit is een prachtig cadeau.",
        "Ga nu meteen mijn huis uit!",
    ],
    "pl": [
        "Tak się cieszę, że znowu cię widzę, przyjacielu.",
        "To najgorsza rzecz, jaka mi się kiedykolwiek przydarzyła.",
        "Jestem na ciebie naprawdę zły, nigdy mnie nie słuchasz.",
        "Boję się ciemności, proszę, zostań ze mną.",
        "Ten zapach jest obrzydliwy, niedobrze mi.",
        "Co za niespodzianka, nie spodziewałem się ciebie tutaj!",
        "Spotkanie zaczyna się jutro o dziesiątej rano.",
        "Tak bardzo tęsknię za mamą, nie mogę przestać płakać.",
        "Bardzo dziękuję, to wspaniały prezent.",
        "Wynoś się natychmiast z mojego domu!",
    ],
    "ru": [
        "Я так рад снова видеть тебя, мой друг.",
        "Это самое худшее, что со мной когда-либо случалось.",
        "Я очень зол на тебя, ты никогда меня не слушаешь.",
        "Я боюсь темноты, пожалуйста, останься со мной.",
        "Этот запах отвратителен, меня тошнит.",
        "Какой сюрприз, я не ожидал увидеть тебя здесь!",
        "Совещание начинается завтра в десять часов утра.",
        "Я так скучаю по маме, я не могу перестать плакать.",
        "Большое спасибо, это чудесный подарок.",
        "Убирайся из моего дома сейчас же!",
    ],
    "tr": [
        "Seni tekrar gördüğüme çok sevindim, dostum.",
        "Bu başıma gelen en kötü şey.",
        "Sana gerçekten çok kızgınım, beni hiç dinlemiyorsun.",
        "Karanlıktan korkuyorum, lütfen yanımda kal.",
        "Bu koku iğrenç, midem bulanıyor.",
        "Ne sürpriz, seni burada görmeyi beklemiyordum!",
        "Toplantı yarın sabah saat onda başlıyor.",
        "Annemi çok özlüyorum, ağlamayı durduramıyorum.",
        "Çok teşekkür ederim, bu harika bir hediye.",
        "Hemen evimden çık!",
    ],
    "cmn": [
        "我非常高兴又见到你，我的朋友。",
        "这是我遇到过的最糟糕的事情。",
        "我真的很生你的气，你从来不听我说话。",
        "我害怕黑暗，请你陪着我。",
        "这个味道太恶心了，我想吐。",
        "真是个惊喜，我没想到会在这里见到你！",
        "会议明天早上十点开始。",
        "我非常想念我的妈妈，我忍不住一直哭。",
        "非常感谢你，这是一份很棒的礼物。",
        "马上从我家出去！",
    ],
    # in kana: espeak-ng's Japanese voice reads kanji as "Chinese letter"
    "ja": [
        "またあえてとてもうれしいです、ともよ。",
        "これはいままででいちばんひどいできごとです。",
        "ほんとうにあなたにおこっています、あなたはぜんぜんきいてくれない。",
        "くらいのがこわいです、いっしょにいてください。",
        "このにおいはきもちわるい、はきそうです。",
        "びっくりした、ここであえるとはおもわなかった！",
        "かいぎはあしたのあさじゅうじにはじまります。",
        "ははがとてもこいしくて、なきやむことができません。",
        "ほんとうにありがとう、すばらしいおくりものです。",
        "いますぐわたしのいえからでていけ！",
    ],
}
#: Whisper's code for an espeak-ng voice (where they differ).
WHISPER_CODE = {"cmn": "zh"}
#: cost: seconds of speech per call, and the voices.
COST_SECONDS = (4.0, 6.0, 8.0)
COST_VOICES = ("en", "de")


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in ("faster-whisper", "ctranslate2", "onnxruntime", "numpy"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def speak(text: str, path: Path, voice: str, pad_s: float = 0.5) -> np.ndarray:
    """espeak-ng speech at 16 kHz with ``pad_s`` of silence on each side."""
    from stream.io.capture import decode_audio_file

    subprocess.run(["espeak-ng", "-v", voice, "-w", str(path), text], check=True, capture_output=True)
    pad = np.zeros(int(pad_s * RATE), np.float32)
    return np.concatenate([pad, decode_audio_file(path), pad])


def total_variation(p: np.ndarray, q: np.ndarray) -> float:
    return float(0.5 * np.abs(np.asarray(p, np.float64) - np.asarray(q, np.float64)).sum())


# --------------------------------------------------------------------------- sections
def section_languages(args: argparse.Namespace, asr: Any, head: Any, tmp: Path) -> dict[str, Any]:
    from stream.core.labels import BASIC

    sentences = SENTENCES[: args.sentences]
    reference = head.predict([s for s, _ in sentences])  # the head on the written English
    per_lang: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    for voice in args.languages:
        texts = [s for s, _ in sentences] if voice == "en" else TRANSLATIONS[voice][: args.sentences]
        code = WHISPER_CODE.get(voice, voice)
        mine = []
        for i, text in enumerate(texts):
            audio = speak(text, tmp / "s.wav", voice)
            t = asr.transcribe(audio)
            lang, lang_p = t.language
            reason = asr.rejection(t) if t.words else "empty transcript"
            english = t.head_text
            row: dict[str, Any] = {
                "language": voice,
                "sentence": i,
                "text": text,
                "detected": lang,
                "language_probability": None if lang_p is None else round(lang_p, 3),
                "task": t.task,
                "transcript": t.text,
                "translation": t.translation if t.task == "translate" else None,
                "word_probability": None if t.word_probability is None else round(t.word_probability, 3),
                "avg_logprob": None if t.avg_logprob is None else round(t.avg_logprob, 3),
                "no_speech_prob": None if t.no_speech_prob is None else round(t.no_speech_prob, 3),
                "compression_ratio": None if t.compression_ratio is None else round(t.compression_ratio, 3),
                "gated": reason,
                "seconds": round(t.seconds, 3),
            }
            if reason is None and english.strip():
                probs = head.predict([english])[0]
                row["head_argmax"] = BASIC[int(np.argmax(probs))]
                row["reference_argmax"] = BASIC[int(np.argmax(reference[i]))]
                row["same_argmax"] = bool(np.argmax(probs) == np.argmax(reference[i]))
                row["tv_distance"] = round(total_variation(probs, reference[i]), 3)
            mine.append(row)
            say(
                f"{voice:4} {i} {str(lang):3} p={row['language_probability']} {str(reason or 'pass'):32} "
                f"{t.text[:40]!r} -> {english[:50]!r}"
            )
        read = [r for r in mine if "same_argmax" in r]
        probs_l = [r["language_probability"] for r in mine if r["language_probability"] is not None]
        per_lang[voice] = {
            "whisper_code": code,
            "sentences": len(mine),
            "detection_rate": round(sum(r["detected"] == code for r in mine) / len(mine), 3),
            "mean_language_probability": round(float(np.mean(probs_l)), 3) if probs_l else None,
            "gate_pass_rate": round(sum(r["gated"] is None for r in mine) / len(mine), 3),
            "translated": sum(r["task"] == "translate" for r in mine),
            "head_read": len(read),
            "same_argmax_rate": round(sum(r["same_argmax"] for r in read) / len(read), 3) if read else None,
            "mean_tv_distance": round(float(np.mean([r["tv_distance"] for r in read])), 3) if read else None,
            "median_call_s": round(float(np.median([r["seconds"] for r in mine])), 3),
            "gated_reasons": sorted({str(r["gated"]) for r in mine if r["gated"] is not None}),
        }
        rows += mine
    return {"per_language": per_lang, "rows": rows}


def _speech_of(seconds: float, voice: str, tmp: Path) -> np.ndarray:
    """``seconds`` of audio: 0.3 s of silence, then the voice's sentences one after another, cut."""
    texts = [s for s, _ in SENTENCES] if voice == "en" else TRANSLATIONS[voice]
    audio = speak(" ".join(texts), tmp / "cost.wav", voice, pad_s=0.3)
    n = int(seconds * RATE)
    return audio[:n] if audio.shape[0] >= n else np.pad(audio, (0, n - audio.shape[0]))


def section_cost(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """Median seconds per call: faster-whisper's own language detection (before) and one
    encoder pass per call (after), interleaved, ``--cost-repeats`` times each, on
    ``--cost-threads`` CTranslate2 threads (the machine's cores: what a run uses)."""
    from stream.modalities.speech.asr import SpeechRecognizer

    asr = SpeechRecognizer(device="cpu", cpu_threads=args.cost_threads).load()
    model = asr._model
    o = asr.options

    def before(audio: np.ndarray) -> None:
        common = asr.decode_options()
        segments, info = model.transcribe(audio, language=None, **common)
        list(segments)
        if info.language != "en" and o.translate:
            segments, _ = model.transcribe(audio, language=info.language, task="translate", **common)
            list(segments)

    out: dict[str, Any] = {}
    for voice in args.cost_voices:
        for seconds in args.cost_seconds:
            audio = _speech_of(seconds, voice, tmp)
            asr.words(audio)  # warm up
            before(audio)
            times: dict[str, list[float]] = {"before": [], "after": []}
            encodes = translations = 0
            for _ in range(args.cost_repeats):
                t0 = time.perf_counter()
                before(audio)
                times["before"].append(time.perf_counter() - t0)
                e0, tr0 = asr.encodes, asr.translations
                t0 = time.perf_counter()
                asr.words(audio)
                times["after"].append(time.perf_counter() - t0)
                encodes, translations = asr.encodes - e0, asr.translations - tr0
            key = f"{voice}_{seconds:g}s"
            out[key] = {
                "before_median_s": round(float(np.median(times["before"])), 3),
                "after_median_s": round(float(np.median(times["after"])), 3),
                "after_encodes_per_call": encodes,
                "translated": bool(translations),
                "repeats": args.cost_repeats,
            }
            say(f"cost {key}: {out[key]}")
    asr.close()
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The measurement (no files written): ``args`` as :func:`parse_args` makes them."""
    from stream.modalities.speech.asr import SpeechRecognizer
    from stream.modalities.speech.texthead import TextHead

    if shutil.which("espeak-ng") is None:
        raise RuntimeError("espeak-ng is not installed (apt-get install espeak-ng)")
    asr = SpeechRecognizer(device="cpu", cpu_threads=args.threads).load()
    if not asr.multilingual:
        raise RuntimeError(f"{asr.model_path or 'the default model'} is not a multilingual Whisper")
    report: dict[str, Any] = {
        "model": str(asr.model_path or "whisper-base (default)"),
        "threads": args.threads,
        "gate": {
            "min_language_probability": asr.gate.min_language_probability,
            "min_word_probability": asr.gate.min_word_probability,
            "min_avg_logprob": asr.gate.min_avg_logprob,
        },
    }
    with tempfile.TemporaryDirectory() as tmp:
        if "langs" in args.only:
            head = TextHead.load("speech")
            head.get_encoder().load()
            report["languages"] = section_languages(args, asr, head, Path(tmp))
        if "cost" in args.only:
            report["cost_threads"] = args.cost_threads
            report["cost"] = section_cost(args, Path(tmp))
    asr.close()
    return report


def markdown(res: dict[str, Any]) -> str:
    rev = res["revision"]
    lines = [
        "# Every language heard: Whisper base on espeak-ng speech",
        "",
        f"Revision `{rev['short']}`{' (measured files changed: ' + ', '.join(rev['changed']) + ')' if rev['changed'] else ''}; "
        f"`{res['command']}`; {res['machine']['cpus']} CPUs, {res['threads']} CTranslate2 thread(s) per call "
        "in the language table; "
        f"faster-whisper {res['versions']['faster-whisper']}.",
        "",
    ]
    if "languages" in res:
        lines += [
            "Each sentence one call (0.5 s of silence each side). Detection: detected == spoken. Gate: "
            "passes `AsrGate` (words as spoken). Head agreement, on the sentences the gate passes: the "
            "`speech` head on the English it read (the translation; the transcript for English) against "
            "the head on the written English sentence: same argmax, mean total-variation distance.",
            "",
            "| language | n | detected | mean p(lang) | gate pass | translated | head read | same argmax | mean TV | median s/call |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for lang, r in res["languages"]["per_language"].items():

            def f(v: Any) -> str:
                return "–" if v is None else f"{v:.2f}" if isinstance(v, float) else str(v)

            lines.append(
                f"| {lang} ({r['whisper_code']}) | {r['sentences']} | {f(r['detection_rate'])} | "
                f"{f(r['mean_language_probability'])} | {f(r['gate_pass_rate'])} | {r['translated']} | "
                f"{r['head_read']} | {f(r['same_argmax_rate'])} | {f(r['mean_tv_distance'])} | {f(r['median_call_s'])} |"
            )
        lines += [
            "",
            "Reasons the gate gave: "
            + "; ".join(
                f"{k}: {', '.join(v['gated_reasons']) or '-'}" for k, v in res["languages"]["per_language"].items()
            ),
            "",
        ]
    if "cost" in res:
        lines += [
            f"## Seconds per Whisper call (median, {res.get('cost_threads')} CTranslate2 threads)",
            "",
            "before: faster-whisper's `transcribe(language=None)` (encodes to detect, again to decode; a "
            "translation the same way encodes a third time); after: one encoder pass per call.",
            "",
            "| speech | before | after | encodes/call after | translated |",
            "|---|---|---|---|---|",
        ]
        for key, c in res["cost"].items():
            lines.append(
                f"| {key} | {c['before_median_s']:.2f} | {c['after_median_s']:.2f} | "
                f"{c['after_encodes_per_call']} | {c['translated']} |"
            )
        lines.append("")
    return "\n".join(lines)


#: --smoke: the figures its report must hold.
SMOKE_NUMBERS = (
    "languages/per_language/en/detection_rate",
    "languages/per_language/de/detection_rate",
    "languages/per_language/de/gate_pass_rate",
    "languages/per_language/de/median_call_s",
    "cost/de_4s/after_median_s",
    "cost/de_4s/before_median_s",
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/multilingual.py", description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1, help="CTranslate2 threads (default 1)")
    p.add_argument(
        "--languages",
        default="en," + ",".join(TRANSLATIONS),
        help="espeak-ng voices, comma-separated (default: en and every translation)",
    )
    p.add_argument("--sentences", type=int, default=len(SENTENCES), help="sentences per language")
    p.add_argument("--only", default="langs,cost", help="comma-separated sections (langs, cost)")
    p.add_argument("--cost-repeats", type=int, default=5)
    p.add_argument("--cost-threads", type=int, default=2, help="CTranslate2 threads for `cost` (default 2)")
    p.add_argument("--allow-dirty", action="store_true", help="measure a tree whose measured files differ from HEAD")
    _smoke.add_args(p, "English and German, two sentences, 4 s of speech, one repeat")
    args = p.parse_args(argv)
    args.languages = [v.strip() for v in args.languages.split(",") if v.strip()]
    unknown = [v for v in args.languages if v != "en" and v not in TRANSLATIONS]
    if unknown:
        p.error(f"--languages: no sentences for {', '.join(unknown)} (have en, {', '.join(TRANSLATIONS)})")
    args.only = set(args.only.split(","))
    args.cost_seconds, args.cost_voices = COST_SECONDS, COST_VOICES
    if args.smoke:
        args.languages, args.sentences, args.only = ["en", "de"], 2, {"langs", "cost"}
        args.cost_seconds, args.cost_repeats = (4.0,), 1
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.smoke and shutil.which("espeak-ng") is None:
        return _smoke.skip("multilingual", "espeak-ng is not installed")
    started = _smoke.begin("bench/multilingual.py:", "multilingual", "multilingual", args, MEASURED)
    if started is None:
        return 2
    revision, json_out, md_out, folder = started
    try:
        report = run(args)
    except Exception as exc:  # a missing model or tool: one line
        print(f"bench/multilingual.py: error: {exc}", file=sys.stderr)
        return 1
    res = {
        "command": "python bench/multilingual.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "revision": revision.record("short"),
        "machine": {"cpus": len(os.sched_getaffinity(0)), "processor": platform.processor() or platform.machine()},
        "versions": versions(),
        **report,
    }
    _smoke.write_results(json_out, res, md_out, markdown(res) + "\n", indent=2, ensure_ascii=False)
    say(f"wrote {json_out} and {md_out.name}")
    if args.smoke:
        return _smoke.finish("multilingual", res, SMOKE_NUMBERS, folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
