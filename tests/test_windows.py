import random

import pytest

from stream.core.windows import (
    GridSampler,
    MediaTime,
    SampleClock,
    Window,
    final_before,
    full_window,
    plan_windows,
)


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
    # 0.19 is within jitter of the 0.2 tick and takes it; 0.95 takes the 0.4-0.8 ticks it missed
    assert [t for t in times if clock(t)] == [0.0, 0.19, 0.95, 1.0]


def test_overlapping_windows_share_grid_frames():
    clock = SampleClock(5.0)
    picked = [i / 25 for i in range(250) if clock(i / 25)]
    w0 = [t for t in picked if full_window(0).contains(t)]
    w1 = [t for t in picked if full_window(1).contains(t)]
    assert len(w0) == len(w1) == 20
    assert w0[10:] == w1[:10]


def _sample(times, rate=5.0):
    """Run frame times through GridSampler as the capture process does: (grid time, frame time)."""
    g = GridSampler(rate)
    picks = []
    for t in times:
        picks += g.push(t, t)
    end = times[-1] + (times[-1] - times[-2]) if len(times) > 1 else None
    return picks + g.flush(end)


def _per_window(picks, duration):
    return [sum(w.contains(gt) for gt, _ in picks) for w in plan_windows(duration)]


def _jittered(n, fps, jitter, seed=0):
    rnd = random.Random(seed)
    return [i / fps + rnd.uniform(-jitter, jitter) for i in range(n)]


@pytest.mark.parametrize(
    "fps,jitter",
    [(25.0, 0.0), (25.0, 4e-5), (25.0, 0.004), (30000 / 1001, 0.0), (30.0, 0.001), (30.0, 0.0), (60.0, 0.001)],
)
def test_grid_sampler_one_nearest_frame_per_grid_point(fps, jitter):
    times = _jittered(int(600 * fps), fps, jitter, seed=int(fps))  # 10 minutes
    picks = _sample(times)
    grid = [gt for gt, _ in picks]
    assert grid == [i / 5.0 for i in range(len(grid))]  # every grid point once, in order
    assert len(picks) == 3000
    for gt, t in picks:  # the nearest frame of all
        assert abs(t - gt) == min(abs(x - gt) for x in times[max(0, int((gt - 0.2) * fps)) : int((gt + 0.2) * fps) + 2])
    assert set(_per_window(picks, times[-1] + 1 / fps)) == {20}


def test_grid_sampler_times_a_few_microseconds_under_the_grid():
    # the measured RTSP case: 1.9999667 s instead of 2.0
    times = [i / 25 - (3.33e-5 if i % 5 == 0 else 0.0) for i in range(250)]
    picks = _sample(times)
    assert [round(gt, 6) for gt, _ in picks] == [round(i * 0.2, 6) for i in range(50)]
    assert _per_window(picks, 10.0) == [20, 20, 20, 20]
    clock = SampleClock(5.0, fps=25.0)  # the immediate rule agrees
    assert sum(clock(t) for t in times) == 50
    clock = SampleClock(5.0)  # ... also when it learns the frame interval
    assert sum(clock(t) for t in times) == 50


def test_sample_clock_on_jittered_30fps():
    times = _jittered(30 * 60, 30.0, 0.001)
    clock = SampleClock(5.0)
    picked = [t for t in times if clock(t)]
    assert len(picked) == 300
    assert all(abs(t - round(t * 5) / 5) < 0.002 for t in picked)


def test_grid_sampler_backward_jump_neither_stalls_nor_doubles():
    fps = 25.0
    raw = [i / fps for i in range(125)] + [1.0 + i / fps for i in range(125)]  # the clock restarts at 5 s
    mt = MediaTime(fps)
    times = [mt(t) for t in raw]
    assert all(b > a for a, b in zip(times, times[1:])) and mt.jumps == 1
    assert abs(times[125] - 5.0) < 1e-9  # continues one frame after the last
    picks = _sample(times)
    assert [gt for gt, _ in picks] == [i / 5.0 for i in range(50)]
    # fed straight into the sampler, backward times are passed over: nothing doubles, and it
    # picks up again as soon as times pass the grid point it was deciding
    picks = _sample(raw)
    grid = [gt for gt, _ in picks]
    assert grid == sorted(set(grid)) and len(grid) == 30


def test_grid_sampler_gaps_leave_grid_points_without_frames():
    times = [i / 25 for i in range(50)] + [3.0 + i / 25 for i in range(50)]  # nothing in (1.96, 3)
    picks = _sample(times)
    assert [gt for gt, _ in picks] == [i / 5 for i in range(11)] + [3.0 + i / 5 for i in range(10)]
    assert picks[10] == (2.0, 1.96)  # within half a grid step of 2.0; 2.2-2.8 have no frame


def test_short_window_is_final_at_its_end():
    assert final_before(Window(0, 0.0, 1.0)) == 1.0
    assert final_before(Window(0, 0.0, 1.52)) == 1.52
    assert final_before(Window(0, 0.0, 3.0)) == 2.0
    assert final_before(Window(3, 6.0, 9.5)) == 8.0
