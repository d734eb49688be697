import pytest

from stream.core.windows import SampleClock, Window, final_before, full_window, plan_windows


def spans(duration):
    return [(w.index, w.start, round(w.end, 6)) for w in plan_windows(duration)]


def test_full_windows_tile_with_two_second_hop():
    assert spans(10.0) == [(0, 0, 4), (1, 2, 6), (2, 4, 8), (3, 6, 10)]


def test_short_stream_is_one_window():
    assert spans(3.0) == [(0, 0, 3.0)]
    assert spans(4.0) == [(0, 0, 4.0)]
    assert spans(0.5) == [(0, 0, 0.5)]
    assert plan_windows(0) == []


def test_tail_under_one_second_is_dropped():
    # last full window ends at 10 s; 0.5 s remain: no extra window
    assert spans(10.5) == [(0, 0, 4), (1, 2, 6), (2, 4, 8), (3, 6, 10)]
    assert spans(4.5) == [(0, 0, 4)]


def test_longer_tail_gets_a_shortened_last_window():
    assert spans(11.2) == [(0, 0, 4), (1, 2, 6), (2, 4, 8), (3, 6, 10), (4, 8, 11.2)]
    assert spans(5.5) == [(0, 0, 4), (1, 2, 5.5)]
    assert spans(5.0) == [(0, 0, 4), (1, 2, 5.0)]  # exactly 1 s of tail is kept


def test_frame_ranges_follow_int_start_end_fps():
    w = full_window(1)
    assert w.frame_range(25) == (50, 150)
    assert w.frame_range(30) == (60, 180)
    assert Window(4, 8.0, 11.2).frame_range(25, total=280) == (200, 280)
    assert w.frame_range(25, total=120) == (50, 120)
    assert final_before(w) == 4.0


@pytest.mark.parametrize("fps,expected", [(25, [0, 5, 10, 15, 20]), (30, [0, 6, 12, 18, 24]), (10, [0, 2, 4, 6, 8])])
def test_sample_clock_picks_a_five_fps_grid(fps, expected):
    clock = SampleClock(5.0)
    picked = [i for i in range(fps) if clock(i / fps)]
    assert picked == expected


def test_sample_clock_on_irregular_times_and_gaps():
    clock = SampleClock(5.0)
    times = [0.0, 0.05, 0.19, 0.21, 0.3, 0.95, 1.0, 1.01]
    # 0.19 is just before the 0.2 tick; 0.21 takes it; 0.95 takes the 0.4-0.8 ticks it missed
    assert [t for t in times if clock(t)] == [0.0, 0.21, 0.95, 1.0]


def test_overlapping_windows_share_grid_frames():
    clock = SampleClock(5.0)
    picked = [i / 25 for i in range(250) if clock(i / 25)]
    w0 = [t for t in picked if full_window(0).contains(t)]
    w1 = [t for t in picked if full_window(1).contains(t)]
    assert len(w0) == len(w1) == 20
    assert w0[10:] == w1[:10]
