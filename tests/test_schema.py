"""Every record of real runs validates against the committed JSON Schema
(``stream/schema/records.schema.json``): the sample clip through the command line, through the
Python API, and pushed frame by frame (with its audio) through a PushSource."""

from __future__ import annotations

import threading

import jsonschema
import pytest
from conftest import cer_stream, records

from stream.runtime.records import load_schema


@pytest.fixture(scope="module")
def validator():
    schema = load_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _check(validator, recs: list[dict]) -> None:
    assert recs and recs[0]["type"] == "start" and recs[-1]["type"] == "end"
    for r in recs:
        errors = sorted(validator.iter_errors(r), key=lambda e: list(e.absolute_path))
        assert not errors, (r["type"], [f"{list(e.absolute_path)}: {e.message[:200]}" for e in errors[:3]])


@pytest.fixture(scope="module")
def cli_records(sample):
    return records(cer_stream("--video", str(sample), check=True).stdout)


@pytest.fixture(scope="module")
def pipeline():
    from stream import Pipeline, PipelineOptions

    with Pipeline(PipelineOptions()) as p:
        yield p


def test_command_line_records_validate(validator, cli_records):
    _check(validator, cli_records)
    assert {r["type"] for r in cli_records} == {"start", "warning", "window", "frames", "end"}


def test_api_records_validate_and_match_the_command_line(validator, pipeline, cli_records, sample):
    from stream import FileSource

    recs = [r.to_dict() for r in pipeline.run(FileSource(sample))]
    _check(validator, recs)
    # (warnings may differ: the engines log their one-line fallback note once per process)
    recs, cli = ([r for r in rs if r["type"] != "warning"] for rs in (recs, cli_records))
    assert [r["type"] for r in recs] == [r["type"] for r in cli]
    for a, b in zip(recs, cli):
        assert list(a) == list(b), a["type"]  # the same fields, in the same order
        if a["type"] == "window":
            assert a["frames"] == b["frames"] and a["present"] == b["present"]
            assert list(a["modalities"]) == list(b["modalities"])


def test_push_source_records_validate(validator, pipeline, sample):
    import av

    from stream import PushSource
    from stream.io.capture import decode_audio_file

    pcm = decode_audio_file(sample)
    source = PushSource(fps=25.0, live=False)

    def capture():
        step = 16000 // 10  # 0.1 s of audio per push, between the frames
        sent = 0
        with av.open(str(sample)) as container:
            for frame in container.decode(video=0):
                source.push_frame(frame.to_ndarray(format="rgb24"), frame.time)
                while sent < pcm.size and sent / 16000 <= frame.time:
                    source.push_audio(pcm[sent : sent + step], sent / 16000, 16000)
                    sent += step
        source.push_audio(pcm[sent:], sent / 16000, 16000)
        source.end()

    t = threading.Thread(target=capture)
    t.start()
    recs = [r.to_dict() for r in pipeline.run(source)]
    t.join()
    _check(validator, recs)
    start, end = recs[0], recs[-1]
    assert start["source"] == "push" and start["audio"] is True and not start["live"]
    wins = [r for r in recs if r["type"] == "window"]
    assert len(wins) == 4 and end["frames"] == 250 and end["reason"] == "eof"
    assert all(w["audio"]["coverage"] > 0.9 for w in wins)
    assert all(w["modalities"]["face"]["present"] for w in wins)
    words = " ".join(w["modalities"]["text"].get("transcript", "") for w in wins).lower()
    assert "space" in words, words


def test_schema_rejects_a_malformed_record(validator, cli_records):
    win = next(r for r in cli_records if r["type"] == "window")
    assert not list(validator.iter_errors(win))
    assert list(validator.iter_errors({**win, "label": "Very Happy"}))
    assert list(validator.iter_errors({k: v for k, v in win.items() if k != "drops"}))
    assert list(validator.iter_errors({"type": "gossip"}))
