"""Frame-wise overlap averaging and the ABAW CSV, on hand-worked numbers."""

import numpy as np

from stream.runtime.timeline import Timeline
from stream.sinks.outputs import CSV_HEADER, AbawCsvSink


def onehot(n, i, v=1.0):
    x = np.zeros(n, np.float32)
    x[i] = v
    return x


def test_overlapping_windows_are_averaged_and_finalised_once():
    tl = Timeline(fps=1.0)  # one frame per second keeps the numbers small
    tl.add((0, 4), onehot(8, 4), onehot(7, 1))  # window [0,4): Happily Surprised
    assert [r.index for r in tl.finalize(2)] == [0, 1]
    prov = tl.provisional((0, 4))
    assert [r.index for r in prov] == [2, 3] and not any(r.final for r in prov)
    tl.add((2, 6), onehot(8, 3), onehot(7, 0))  # window [2,6): Fearfully Surprised
    rows = tl.finalize(4)
    assert [r.index for r in rows] == [2, 3] and all(r.windows == 2 for r in rows)
    assert np.allclose(rows[0].compound, [0.5, 0.5, 0, 0, 0, 0, 0])  # averaged, per frame
    assert np.allclose(rows[0].basic[[3, 4]], [0.5, 0.5])
    rows = tl.finalize(7)  # frame 6: no window covers it -> previous frame's value
    assert [(r.index, r.windows, r.label) for r in rows] == [(4, 1, 0), (5, 1, 0), (6, 0, 0)]
    assert tl.finalize(7) == []  # never twice


def test_frames_before_the_first_prediction_have_none():
    tl = Timeline(fps=1.0)
    rows = tl.finalize(2)  # a first window with no modality present added nothing
    assert [(r.index, r.label, r.compound) for r in rows] == [(0, None, None), (1, None, None)]


def test_abaw_csv_backfills_the_start_and_writes_every_frame(tmp_path):
    path = tmp_path / "p.csv"
    sink = AbawCsvSink(path, "vid")
    sink.write({"type": "frames", "final": False, "frame_index": [9], "label_index": [2]})  # ignored
    sink.write({"type": "frames", "final": True, "frame_index": [0, 1], "label_index": [None, None]})
    sink.write({"type": "frames", "final": True, "frame_index": [2, 3], "label_index": [5, 6]})
    sink.close()
    assert path.read_text().splitlines() == [
        CSV_HEADER,
        "vid/00001.jpg,5",
        "vid/00002.jpg,5",
        "vid/00003.jpg,5",
        "vid/00004.jpg,6",
    ]
