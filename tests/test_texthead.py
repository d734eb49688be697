"""Text emotion heads: the committed files, their scores on real data, training and `text`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import DATA, data_missing

from stream.core.labels import BASIC
from stream.offline import texthead_train as T
from stream.offline.metrics import macro_f1

ROOT = Path(__file__).resolve().parents[1]
NO_DATA = data_missing(T.GOEMOTIONS_DIR, "dev.tsv")
needs_data = pytest.mark.skipif(NO_DATA is not None, reason=str(NO_DATA))

#: Dev macro-F1 floors for the committed speech head. Measured (see stream/heads/README.md):
#: 0.5095 on all 4946 single-label dev rows (the slow test), 0.5504 on the fixed random 800
#: of them the fast test scores (small classes make a subset's score wander).
FULL_DEV_FLOOR = 0.48
SUBSET_DEV_FLOOR = 0.48
SUBSET = 800
#: Held-out (by video) macro-F1 floor of the committed scene head (measured 0.3851).
SCENE_FLOOR = 0.35


def run_py(code: str, *args: str, stdin: str | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
    )


TEXT_MAIN = "import sys; from stream.cli.offline import text_main; sys.exit(text_main(sys.argv[1:]))"
TRAIN_MAIN = "import sys; from stream.cli.offline import train_head_main; sys.exit(train_head_main(sys.argv[1:]))"


@pytest.fixture(scope="module")
def speech_head():
    head = T.TextHead.load("speech")
    yield head
    head.close()


@pytest.fixture(scope="module")
def dev():
    goemotions = DATA / T.GOEMOTIONS_DIR
    return T.load_goemotions(goemotions / "dev.tsv", T.goemotions_classes(goemotions))


def test_committed_heads_are_complete():
    for kind in T.KINDS:
        head = T.TextHead.load(kind)
        assert head.weight.shape == (len(head.labels), 384) and head.weight.dtype == np.float32
        assert head.meta["kind"] == kind and head.meta["limit"] is None
        assert head.meta["encoder"]["name"] == "all-MiniLM-L6-v2"
        assert head.meta["max_len"] == T.MAX_LEN[kind]
        assert set(head.meta["selection"]) >= {"l2", "weighting", "epochs", "trials"}
    assert T.TextHead.load("speech").labels == ("anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise")
    assert "Other" not in T.TextHead.load("scene").labels  # AFEW has no Other rows


@needs_data
def test_committed_head_data_is_the_data_folders():
    head = T.TextHead.load("speech")
    for name, digest in head.meta["data"].items():
        assert T.sha256_file(DATA / name) == digest, f"{name} changed since the head was trained"


@needs_data
def test_speech_head_dev_macro_f1_subset(speech_head, dev):
    idx = np.sort(np.random.default_rng(0).permutation(len(dev.texts))[:SUBSET])
    probs = speech_head.probs_from_embeddings(speech_head.get_encoder().encode([dev.texts[i] for i in idx]))
    score = macro_f1(dev.labels[idx], probs.argmax(1), labels=list(range(len(dev.classes))))
    print(f"dev macro-F1 on {SUBSET} rows: {score:.4f}")
    assert score >= SUBSET_DEV_FLOOR


@pytest.mark.slow
@needs_data
def test_speech_head_dev_macro_f1_full(speech_head, dev):
    """All single-label dev rows: the score recorded in the head file, recomputed."""
    probs = speech_head.probs_from_embeddings(speech_head.get_encoder().encode(dev.texts))
    score = macro_f1(dev.labels, probs.argmax(1), labels=list(range(len(dev.classes))))
    assert score == pytest.approx(speech_head.meta["heldout_macro_f1"], abs=2e-3)
    assert score >= FULL_DEV_FLOOR


def test_plain_joy_is_happiness(speech_head):
    basic = speech_head.predict(
        ["I am so happy today, this is the best day of my life!", "I am furious with you, how dare you lie to me!"]
    )
    assert basic.shape == (2, 8)
    assert BASIC[int(basic[0].argmax())] == "Happiness"
    assert BASIC[int(basic[1].argmax())] == "Anger"
    assert np.all(basic[:, BASIC.index("Other")] == 0.0)
    np.testing.assert_allclose(basic.sum(1), 1.0, atol=1e-5)


def test_head_file_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    head = T.TextHead(rng.normal(size=(3, 384)), rng.normal(size=3), ("joy", "sadness", "neutral"), {"x": 1})
    loaded = T.TextHead.load(head.save(tmp_path / "h.npz"))
    assert loaded.labels == head.labels and loaded.meta == {"x": 1}
    emb = rng.normal(size=(4, 384)).astype(np.float32)
    basic = loaded.basic_from_embeddings(emb)
    probs = head.probs_from_embeddings(emb)
    np.testing.assert_allclose(basic[:, BASIC.index("Happiness")], probs[:, 0], rtol=1e-6)  # joy -> Happiness
    np.testing.assert_allclose(basic[:, BASIC.index("Neutral")], probs[:, 2], rtol=1e-6)
    assert np.all(basic[:, [BASIC.index(n) for n in ("Anger", "Fear", "Other")]] == 0)
    with pytest.raises(ValueError, match="unknown emotion label"):
        T.TextHead(np.zeros((1, 384)), np.zeros(1), ("bored",))


def test_scene_grouping_keeps_videos_together():
    assert T.scene_video("000046280___Angry_0001.avi") == "000046280"
    groups = [f"v{i // 3}" for i in range(300)]
    train, held = T.group_split(groups, 0.2, seed=0)
    assert len(train) + len(held) == 300 and not {groups[i] for i in train} & {groups[i] for i in held}
    assert abs(len({groups[i] for i in held}) - 20) <= 1


@needs_data
def test_goemotions_keeps_single_label_rows(tmp_path):
    path = tmp_path / "mini.tsv"
    path.write_text("I love it\t3\ta\nmeh\t4\tb\nangry and sad\t0,5\tc\n")
    data = T.load_goemotions(path, T.goemotions_classes(DATA / T.GOEMOTIONS_DIR))
    assert data.texts == ["I love it", "meh"] and data.labels.tolist() == [3, 4] and data.dropped == 1


@needs_data
@pytest.mark.parametrize("kind,limit", [("speech", 240), ("scene", 120)])  # captions are long to encode
def test_training_on_a_subset_prints_macro_f1(kind, limit, tmp_path):
    out = tmp_path / f"{kind}.npz"
    proc = run_py(
        TRAIN_MAIN,
        "--kind",
        kind,
        "--data",
        str(DATA),
        "--limit",
        str(limit),
        "--epochs",
        "60",
        "--l2",
        "0.0001",
        "--weighting",
        "none",
        "--no-cache",
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    which = "dev" if kind == "speech" else "held-out"
    line = next(line for line in proc.stdout.splitlines() if "macro-F1" in line)
    score = float(line.split("macro-F1")[1].split()[0])
    assert 0.0 < score <= 1.0 and line.startswith(f"{kind} head: {which} macro-F1")
    assert "encoded" in proc.stderr  # progress goes to stderr
    head = T.TextHead.load(out)
    assert head.meta["limit"] == limit and head.meta["heldout_macro_f1"] == pytest.approx(score, abs=1e-4)
    if kind == "scene":
        assert head.meta["split"]["heldout_videos"] > 0


def test_training_reports_missing_data(tmp_path):
    proc = run_py(TRAIN_MAIN, "--kind", "speech", "--data", str(tmp_path), "--no-cache")
    assert proc.returncode == 2 and "not found" in proc.stderr


@pytest.mark.parametrize("kind,dataset", [("speech", T.GOEMOTIONS_DIR), ("scene", T.SCENE_DIR)])
def test_training_without_a_data_folder_says_what_to_supply(kind, dataset, monkeypatch):
    """No --data and no $CER_STREAM_DATA: one line naming both and the dataset, exit 2."""
    monkeypatch.delenv(T.DATA_ENV, raising=False)
    proc = run_py(TRAIN_MAIN, "--kind", kind, "--no-cache")
    assert proc.returncode == 2 and proc.stdout == ""
    (line,) = proc.stderr.splitlines()
    assert f"no data folder: pass --data DIR or set ${T.DATA_ENV} to the folder that holds {dataset}/ (" in line
    assert "Traceback" not in proc.stderr


def test_text_command_file_and_stdin(tmp_path, speech_head):
    lines = ["I am so happy today, this is the best day of my life!", "", "This is disgusting, I feel sick."]
    path = tmp_path / "in.txt"
    path.write_text("\n".join(lines) + "\n")
    from_file = run_py(TEXT_MAIN, "--kind", "speech", str(path))
    from_stdin = run_py(TEXT_MAIN, "--kind", "speech", "-", stdin="\n".join(lines) + "\n")
    for proc in (from_file, from_stdin):
        assert proc.returncode == 0, proc.stderr
    recs = [json.loads(line) for line in from_file.stdout.splitlines()]
    assert recs == [json.loads(line) for line in from_stdin.stdout.splitlines()]
    assert [r["text"] for r in recs] == [lines[0], lines[2]]  # blank lines skipped
    want = speech_head.predict([lines[0], lines[2]])
    for rec, row in zip(recs, want):
        assert list(rec["basic"]) == list(BASIC)
        np.testing.assert_allclose([rec["basic"][n] for n in BASIC], row, atol=1e-4)
        assert rec["label"] == BASIC[int(row.argmax())]
    assert recs[0]["label"] == "Happiness"


@needs_data
def test_scene_head_scores_held_out_videos():
    head = T.TextHead.load("scene")
    assert head.meta["heldout_macro_f1"] >= SCENE_FLOOR
    assert head.meta["split"]["heldout_videos"] >= 100
