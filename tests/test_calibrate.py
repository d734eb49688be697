"""calibrate and eval end to end on small synthetic files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from stream.cli.offline import calibrate_main, calibrate_options, calibrate_parser, eval_options, eval_parser
from stream.core.labels import BASIC, COMPOUND
from stream.fusion.compound import PFSA
from stream.fusion.schemes import MHPF, DirichletWeights
from stream.offline import calibrate as cal
from stream.offline.calibrate import CalibrationError, load_calibration
from stream.sinks.outputs import CSV_HEADER

FPS = 25.0
WINDOWS_PER_VIDEO = 10
SPACE = {"name": "synthetic/features", "dim": 12, "model": "synthetic"}


def _video_labels(rng: np.random.Generator) -> np.ndarray:
    """Per-frame basic labels: blocks of 50 frames (2 s) with one class, a few -1."""
    n_frames = int((2 * (WINDOWS_PER_VIDEO - 1) + 4) * FPS)
    blocks = rng.integers(0, 7, n_frames // 50 + 1)
    labels = np.repeat(blocks, 50)[:n_frames]
    labels[:10] = -1
    return labels


def _write_dataset(tmp_path: Path, seed: int = 0) -> tuple[list[Path], Path]:
    """Three videos: dumps (face with 12-d features, audio that is noise and sometimes absent)."""
    rng = np.random.default_rng(seed)
    label_dir = tmp_path / "labels"
    label_dir.mkdir()
    protos = rng.normal(size=(8, 12))
    dumps = []
    for v in range(3):
        video = f"vid{v}"
        frames = _video_labels(rng)
        (label_dir / f"{video}.txt").write_text(",".join(BASIC) + "\n" + "\n".join(str(int(x)) for x in frames) + "\n")
        lines = [json.dumps({"type": "header", "video": video})]
        for k in range(WINDOWS_PER_VIDEO):
            first, last = int(2 * k * FPS), int((2 * k + 4) * FPS)
            true = cal.majority_label(frames, first, last)
            face = rng.dirichlet(np.ones(8)) * 0.5
            face[max(true, 0)] += 0.5
            mods = {
                "face": {
                    "basic": face.tolist(),
                    "feature": (protos[max(true, 0)] + 0.3 * rng.normal(size=12)).tolist(),
                    "feature_space": SPACE,
                }
            }
            if k % 3:
                mods["audio"] = {"basic": rng.dirichlet(np.ones(8)).tolist(), "feature": None}
            lines.append(
                json.dumps(
                    {
                        "type": "window",
                        "video": video,
                        "index": k,
                        "start": 2.0 * k,
                        "end": 2.0 * k + 4,
                        "frames": [first, last],
                        "fps": FPS,
                        "modalities": mods,
                    }
                )
            )
        path = tmp_path / f"{video}.jsonl"
        path.write_text("\n".join(lines) + "\n")
        dumps.append(path)
    return dumps, label_dir


def _calibrate_args(argv: list[str]) -> cal.CalibrateOptions:
    return calibrate_options(calibrate_parser().parse_args(argv))


def _eval_args(argv: list[str]) -> cal.EvalOptions:
    return eval_options(eval_parser().parse_args(argv))


def test_majority_label_ignores_unlabelled_and_breaks_ties_low():
    frames = np.array([-1, -1, -1, 2, 2, 1, 1, 3])
    assert cal.majority_label(frames, 0, 8) == 1  # 1 and 2 tie: the lower class
    assert cal.majority_label(frames, 0, 5) == 2  # -1 never wins
    assert cal.majority_label(frames, 0, 3) == -1
    assert cal.majority_label(frames, 6, 99) == 1  # past the end of the file


@pytest.mark.parametrize("fusion", ["dirichlet", "equal"])
def test_calibrate_round_trip(tmp_path, capsys, fusion):
    dumps, labels = _write_dataset(tmp_path)
    out = tmp_path / "cal.json"
    args = _calibrate_args(
        [
            *map(str, dumps),
            "--labels",
            str(labels),
            "-o",
            str(out),
            "--fusion",
            fusion,
            "--samples",
            "300",
            "--val-fraction",
            "0.34",
        ]
    )
    assert cal.run_calibrate(args) == 0
    err = capsys.readouterr().err
    assert "macro-F1 train" in err and "PFSA on 'face'" in err

    data = json.loads(out.read_text())
    assert data["format"] == "cer-stream-calibration" and data["version"] == 1
    assert data["basic_labels"] == list(BASIC) and data["compound_labels"] == list(COMPOUND)
    assert data["modalities"] == ["face", "audio"]  # order of first appearance
    assert data["meta"]["train_windows"] + data["meta"]["val_windows"] == 30
    assert data["meta"]["val_windows"] == WINDOWS_PER_VIDEO  # one whole video held out

    loaded = load_calibration(out)
    assert loaded.modalities == ("face", "audio")
    assert loaded.to_dict() == data
    expected_type = DirichletWeights if fusion == "dirichlet" else MHPF
    assert isinstance(loaded.fusion, expected_type)
    assert loaded.fusion.n_modalities == 2 and loaded.fusion.n_classes == 8
    if fusion == "dirichlet":
        # face is informative, audio is noise: most weight goes to face
        assert loaded.fusion.weights[0].mean() > 0.5
        assert data["meta"]["train_macro_f1"] > 0.8
    assert isinstance(loaded.pfsa, PFSA) and loaded.pfsa_modality == "face"
    assert loaded.pfsa.basic_prototypes.shape == (8, 12) and loaded.pfsa.temperature > 0
    # the prototypes say which modality and feature space they belong to
    assert data["pfsa"]["modality"] == "face" and data["pfsa"]["feature_space"] == SPACE
    assert loaded.pfsa_feature_space == SPACE
    assert "synthetic/features, model synthetic" in err
    probs = loaded.pfsa(np.ones((2, 12)))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)


def test_calibrate_mhpf_and_window_csv_labels(tmp_path, capsys):
    dumps, label_dir = _write_dataset(tmp_path, seed=1)
    # Window labels by name (basic) for vid0 and vid1, by index for vid2.
    rows = ["video,index,label"]
    for d in dumps:
        for line in d.read_text().splitlines():
            rec = json.loads(line)
            if rec["type"] != "window":
                continue
            frames = cal.read_frame_labels(label_dir / f"{rec['video']}.txt")[rec["video"]]
            t = cal.majority_label(frames, *rec["frames"])
            label = str(t) if rec["video"] == "vid2" or t < 0 else BASIC[t].lower()
            rows.append(f"{rec['video']},{rec['index']},{label}")
    csv = tmp_path / "windows.csv"
    csv.write_text("\n".join(rows) + "\n")
    out = tmp_path / "cal.json"
    args = _calibrate_args(
        [
            *map(str, dumps),
            "--labels",
            str(csv),
            "-o",
            str(out),
            "--fusion",
            "mhpf",
            "--heads",
            "2",
            "--epochs",
            "3",
            "--lr",
            "0.01",
            "--no-pfsa",
            "--modalities",
            "audio,face",
        ]
    )
    assert cal.run_calibrate(args) == 0
    loaded = load_calibration(out)
    assert loaded.modalities == ("audio", "face") and loaded.pfsa is None
    assert isinstance(loaded.fusion, MHPF) and loaded.fusion.weights.shape == (2, 2, 8)
    assert "PFSA: off" in capsys.readouterr().err


def test_calibrate_compound_labels_skip_pfsa(tmp_path, capsys):
    dumps, label_dir = _write_dataset(tmp_path, seed=2)
    for f in label_dir.glob("*.txt"):  # reuse the blocks as compound classes 0..6
        f.write_text(f.read_text().replace(",".join(BASIC), ",".join(COMPOUND)))
    out = tmp_path / "cal.json"
    args = _calibrate_args(
        [
            *map(str, dumps),
            "--labels",
            str(label_dir),
            "--label-kind",
            "compound",
            "-o",
            str(out),
            "--fusion",
            "hierarchical",
            "--samples",
            "50",
        ]
    )
    assert cal.run_calibrate(args) == 0
    loaded = load_calibration(out)
    assert loaded.fusion.kind == "hierarchical" and loaded.pfsa is None
    assert loaded.meta["label_kind"] == "compound"
    assert "prototypes need basic labels" in capsys.readouterr().err


def _good_file(tmp_path: Path) -> tuple[Path, dict]:
    dumps, labels = _write_dataset(tmp_path)
    out = tmp_path / "cal.json"
    cal.run_calibrate(_calibrate_args([*map(str, dumps), "--labels", str(labels), "-o", str(out), "--fusion", "equal"]))
    return out, json.loads(out.read_text())


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.update(format="something-else"), "not a calibration file"),
        (lambda d: d.update(version=2), "version 2 is not supported"),
        (lambda d: d.update(basic_labels=list(reversed(BASIC))), "basic_labels differ"),
        (lambda d: d.update(compound_labels=list(COMPOUND[:6])), "compound_labels differ"),
        (lambda d: d.update(modalities=["face"]), "fusion is for 2 modalities"),
        (lambda d: d["fusion"].update(kind="vote"), "unknown fusion kind"),
        (lambda d: d["fusion"].update(alpha=[0.0, 1.0]), "heads"),
        (lambda d: d["pfsa"].update(modality="scene"), "PFSA modality 'scene'"),
        (lambda d: d["pfsa"].update(compound_prototypes=[[0.0]] * 7), "compound ones 1-d"),
        (lambda d: d["pfsa"]["feature_space"].update(dim=99), "feature_space says 99-d, the prototypes are 12-d"),
        (lambda d: d["pfsa"].update(feature_space="face"), "feature_space must be an object"),
    ],
)
def test_load_calibration_rejects_mismatches(tmp_path, mutate, message):
    path, data = _good_file(tmp_path)
    mutate(data)
    path.write_text(json.dumps(data))
    with pytest.raises(CalibrationError, match=message):
        load_calibration(path)


def test_corrupt_inputs_raise_calibration_error(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(CalibrationError, match="invalid JSON"):
        load_calibration(bad)
    with pytest.raises(CalibrationError, match="cannot read calibration"):
        load_calibration(tmp_path / "missing.json")
    dumps, labels = _write_dataset(tmp_path)
    broken = tmp_path / "broken.jsonl"
    broken.write_text(dumps[0].read_text() + '{"type": "window", "video": "x"\n')
    with pytest.raises(CalibrationError, match=r"broken.jsonl:12: not JSON"):
        cal.read_dumps([broken])
    short = tmp_path / "short.jsonl"
    short.write_text(
        json.dumps(
            {
                "type": "window",
                "video": "a",
                "index": 0,
                "start": 0,
                "end": 4,
                "frames": [0, 100],
                "fps": 25,
                "modalities": {"face": {"basic": [0.5] * 7}},
            }
        )
        + "\n"
    )
    with pytest.raises(CalibrationError, match=r"short.jsonl:1: face.basic must be a list of 8"):
        cal.read_dumps([short])
    # Labels that match no video in the dumps
    other = tmp_path / "other"
    other.mkdir()
    (other / "unrelated.txt").write_text("header\n0\n1\n")
    args = _calibrate_args([str(dumps[0]), "--labels", str(other), "-o", str(tmp_path / "c.json")])
    with pytest.raises(CalibrationError, match="video names"):
        cal.run_calibrate(args)
    (other / "unrelated.txt").write_text("header\n0\n9\n")
    with pytest.raises(CalibrationError, match="class 9, out of range"):
        cal.load_labels(other, "basic")
    # The command's entry point turns the error into exit status 2.
    assert calibrate_main([str(broken), "--labels", str(labels), "-o", "x.json"]) == 2


def _eval_files(tmp_path: Path) -> tuple[Path, Path]:
    labels = tmp_path / "labels"
    labels.mkdir()
    # frames 1..9; frame 6 unlabelled; frame 9 labelled but never predicted
    (labels / "v1.txt").write_text(",".join(COMPOUND) + "\n0\n0\n1\n1\n2\n-1\n2\n3\n3\n")
    pred = tmp_path / "pred.csv"
    preds = [0, 1, 1, 1, 2, 0, 0, 3]
    # The header the analyzer's --csv sink writes (ABAW layout with class names).
    pred.write_text(CSV_HEADER + "\n" + "".join(f"v1/{i + 1:05d}.jpg,{c}\n" for i, c in enumerate(preds)))
    return pred, labels


def test_eval_hand_computed_numbers_and_plot(tmp_path, capsys):
    pred, labels = _eval_files(tmp_path)
    png = tmp_path / "cm.png"
    assert cal.run_eval(_eval_args(["--pred", str(pred), "--labels", str(labels), "--plot", str(png)])) == 0
    out = json.loads(capsys.readouterr().out)
    # pairs (true, pred): (0,0) (0,1) (1,1) (1,1) (2,2) (2,0) (3,3); frame 9 missing
    assert out["n"] == 7 and out["missing"] == 1
    f1 = {"Fearfully Surprised": 0.5, "Happily Surprised": 0.8, "Sadly Surprised": 2 / 3, "Disgustedly Surprised": 1.0}
    for name, value in f1.items():
        assert out["per_class"][name]["f1"] == pytest.approx(value)
    assert out["per_class"]["Sadly Angry"] == {"f1": 0.0, "support": 0}
    assert out["per_class"]["Happily Surprised"]["support"] == 2
    assert out["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3 + 1.0) / 7)
    assert out["uar"] == pytest.approx((0.5 + 1 + 0.5 + 1) / 7)
    assert out["confusion"][0][:2] == [50.0, 50.0]
    assert out["confusion"][2][:3] == [50.0, 0.0, 50.0]
    assert out["confusion"][3][3] == 100.0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Same predictions as ABAW txt files, averaged over the observed classes only.
    pdir = tmp_path / "pred_txt"
    pdir.mkdir()
    (pdir / "v1.txt").write_text("header\n0\n1\n1\n1\n2\n0\n0\n3\n")
    cal.run_eval(_eval_args(["--pred", str(pdir), "--labels", str(labels / "v1.txt"), "--over", "observed"]))
    obs = json.loads(capsys.readouterr().out)
    assert obs["n"] == 7 and obs["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3 + 1.0) / 4)


def test_eval_window_level_and_errors(tmp_path, capsys):
    truth = tmp_path / "truth.csv"
    truth.write_text("video,index,label\na,0,Fearfully Surprised\na,1,sadly_angry\na,2,1\nb,0,0\n")
    pred = tmp_path / "pred.csv"
    pred.write_text("video,index,label\na,0,0\na,1,6\na,2,0\n")
    cal.run_eval(_eval_args(["--pred", str(pred), "--labels", str(truth), "--level", "window"]))
    out = json.loads(capsys.readouterr().out)
    assert out["n"] == 3 and out["missing"] == 1 and out["level"] == "window"
    assert out["per_class"]["Sadly Angry"]["f1"] == 1.0
    assert out["per_class"]["Fearfully Surprised"]["f1"] == pytest.approx(2 / 3)

    bad = tmp_path / "bad.csv"
    bad.write_text("image_location,label\nv1/00001.jpg,7\n")
    _, labels = _eval_files(tmp_path)
    with pytest.raises(CalibrationError, match="class 7 or frame 1 out of range"):
        cal.run_eval(_eval_args(["--pred", str(bad), "--labels", str(labels)]))
    elsewhere = tmp_path / "elsewhere.csv"
    elsewhere.write_text("image_location,label\nother/00001.jpg,0\n")
    with pytest.raises(CalibrationError, match="no labelled frame has a prediction"):
        cal.run_eval(_eval_args(["--pred", str(elsewhere), "--labels", str(labels)]))


def test_pfsa_features_from_two_spaces_are_refused(tmp_path):
    dumps, labels = _write_dataset(tmp_path)
    text = dumps[1].read_text().replace('"model": "synthetic"', '"model": "another"')
    dumps[1].write_text(text)
    args = _calibrate_args(
        [*map(str, dumps), "--labels", str(labels), "-o", str(tmp_path / "c.json"), "--fusion", "equal"]
    )
    with pytest.raises(CalibrationError, match="several spaces"):
        cal.run_calibrate(args)


def test_dumps_without_a_feature_space_record_the_dimension(tmp_path):
    dumps, labels = _write_dataset(tmp_path)
    for d in dumps:
        lines = [json.loads(x) for x in d.read_text().splitlines()]
        for rec in lines:
            for entry in rec.get("modalities", {}).values():
                entry.pop("feature_space", None)
        d.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    out = tmp_path / "c.json"
    cal.run_calibrate(_calibrate_args([*map(str, dumps), "--labels", str(labels), "-o", str(out), "--fusion", "equal"]))
    assert json.loads(out.read_text())["pfsa"]["feature_space"] == {"name": "face.feature", "dim": 12, "model": None}


def test_pfsa_on_real_face_features_end_to_end(sample, tmp_path):
    """The sample clip -> --dump-features -> calibrate (PFSA) -> --compound pfsa --fusion cal.json:
    the prototypes live in the face model's feature space (not its 8 probabilities) and every
    window's compound is a PFSA distribution."""
    from conftest import cer_stream, records

    dump = tmp_path / "dump.jsonl"
    cer_stream("--video", str(sample), "--no-audio", "--no-clip", "--quiet", "--dump-features", str(dump), check=True)
    windows = [json.loads(line) for line in dump.read_text().splitlines() if line.strip()]
    faces = [w["modalities"]["face"] for w in windows if "face" in w["modalities"]]
    assert faces and all(f["feature"] is not None for f in faces)
    dim = len(faces[0]["feature"])
    assert dim == 256 + 128  # the default ensemble: face-api 256-d + mini-Xception 128-d, not 8 probabilities
    for f in faces:
        assert len(f["feature"]) == dim and abs(np.linalg.norm(f["feature"]) - 1) < 1e-4
    # window labels: the face's own top class (PFSA keeps correctly classified windows only)
    labels = tmp_path / "labels.csv"
    labels.write_text(
        "video,index,label\n"
        + "".join(
            f"{w['video']},{w['index']},{BASIC[int(np.argmax(w['modalities']['face']['basic']))]}\n"
            for w in windows
            if "face" in w["modalities"]
        )
    )
    out = tmp_path / "cal.json"
    assert (
        cal.run_calibrate(
            _calibrate_args(
                [
                    str(dump),
                    "--labels",
                    str(labels),
                    "-o",
                    str(out),
                    "--fusion",
                    "equal",
                    "--val-fraction",
                    "0",
                    "--temperature",
                    "0.1",
                ]
            )
        )
        == 0
    )
    loaded = load_calibration(out)
    assert loaded.pfsa_modality == "face"
    assert loaded.pfsa.compound_prototypes.shape == (len(COMPOUND), dim)
    assert json.loads(out.read_text())["pfsa"]["feature_space"]["dim"] == dim

    proc = cer_stream(
        "--video", str(sample), "--no-audio", "--no-clip", "--compound", "pfsa", "--fusion", str(out), check=True
    )
    recs = records(proc.stdout)
    wins = [r for r in recs if r["type"] == "window"]
    assert wins and all(r["compound_method"] == "pfsa" for r in wins)
    for r in wins:
        assert r["compound"] is not None, r.get("compound_reason")
        scores = np.array([r["compound"][c] for c in COMPOUND])
        assert (scores >= 0).all() and abs(scores.sum() - 1) < 1e-4
        assert r["label"] == COMPOUND[int(np.argmax(scores))]
    frames = [c for r in recs if r["type"] == "frames" and r["final"] for c in r["compound"] if c is not None]
    assert frames and all(abs(sum(c) - 1) < 1e-3 for c in frames)
