"""The pure parts of reconnecting and of trustworthy clocks: the reconnect policy, the windows a
gap swallows, the scheduler across a gap, media time across sessions and clock leaps, frame
numbers from timestamps, the timeline's missing frame numbers.  No processes, no models."""

from __future__ import annotations

import random

import numpy as np
import pytest

from stream.core.windows import (
    SAMPLE_FPS,
    FrameNumbers,
    MediaTime,
    full_window,
    sane_fps,
    swallowed_windows,
)
from stream.io.reconnect import ReconnectPolicy, parse_policy
from stream.runtime.scheduler import Arrivals, Finish, Missing, Run, Scheduler, Skip, Wait
from stream.runtime.timeline import Timeline


# --------------------------------------------------------------------------- policy
def test_policy_parsing_and_limits():
    assert parse_policy("forever").attempts is None
    assert parse_policy("off").enabled is False
    p = parse_policy("3", max_delay_s=5)
    assert (p.attempts, p.max_delay_s) == (3, 5)
    assert not p.gives_up(3) and p.gives_up(4)
    assert not parse_policy("forever").gives_up(10**6)
    for bad in ("sometimes", "-1", "2.5"):
        with pytest.raises(ValueError, match="--reconnect takes forever, off or a number"):
            parse_policy(bad)
    with pytest.raises(ValueError, match="--reconnect-max-delay"):
        parse_policy("forever", max_delay_s=0)


def test_backoff_doubles_up_to_the_cap_with_jitter():
    p = ReconnectPolicy(max_delay_s=8.0, base_delay_s=0.5)
    rng = random.Random(1)
    for attempt, cap in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (5, 8.0), (9, 8.0), (500, 8.0)]:
        delays = [p.delay(attempt, rng) for _ in range(200)]
        assert min(delays) >= cap / 2 and max(delays) <= cap
        assert max(delays) - min(delays) > cap / 4  # jittered, not one fixed value


# --------------------------------------------------------------------------- windows in a gap
def _served(k: int, last_before: float, first_after: float) -> bool:
    """Brute force: does any grid point of window k lie within half a step of a frame?"""
    w = full_window(k)
    half = 0.5 / SAMPLE_FPS
    grid = [w.start + j / SAMPLE_FPS for j in range(20)]
    return any(g <= last_before + half + 1e-9 or g >= first_after - half - 1e-9 for g in grid)


@pytest.mark.parametrize("last_before", [0.0, 3.96, 9.96, 13.2884, 21.0])
def test_swallowed_windows_are_exactly_those_without_a_frame(last_before):
    for length in np.arange(0.04, 14.0, 0.37):
        first_after = last_before + float(length)
        gone = swallowed_windows(last_before, first_after)
        for k in range(0, 20):
            assert (k in gone) == (not _served(k, last_before, first_after)), (last_before, first_after, k)


def test_scheduler_accounts_for_a_gap_instead_of_skipping():
    # frames up to 13.2 s, then none until 22.7 s (the source was down): windows 7..9 have no
    # frame; 5, 6 and 10 have some and still run; nothing counts as "fell behind"
    s = Scheduler(live=True)
    s.k = 5
    gap = ((13.2, 22.7),)
    assert isinstance(s.poll(Arrivals(video_horizon=13.2)), Wait)  # the gap is still open
    ran, missing = [], 0
    for horizon in (22.8, 22.8, 22.8, 22.8, 24.0, 25.8):  # the first frames after the gap arrive
        step = s.poll(Arrivals(video_horizon=horizon, gaps=gap))
        if isinstance(step, Run):
            ran.append(step.window.index)
        elif isinstance(step, Missing):
            missing += step.missing
        else:
            assert isinstance(step, Wait), step
    assert ran == [5, 6, 10, 11] and missing == 3


def test_falling_behind_across_a_gap_counts_skipped_and_missing_apart():
    s = Scheduler(live=True)
    step = s.poll(Arrivals(video_horizon=40.0, gaps=((1.0, 12.0),)))  # window 0 has frames
    assert isinstance(step, Skip)
    gone = swallowed_windows(1.0, 12.0)
    assert step.missing == len([k for k in range(0, step.to) if k in gone])
    assert step.skipped + step.missing == step.to


def test_tail_leaves_out_swallowed_windows():
    s = Scheduler(live=True)
    assert [w.index for w in s.tail(20.0, ((5.0, 15.9),))] == [0, 1, 2, 6, 7, 8]
    assert isinstance(s.poll(Arrivals(video_horizon=1.0, stopping=True)), Finish)


# --------------------------------------------------------------------------- clocks
def test_media_time_continues_across_a_reconnect_and_clock_leaps():
    mt = MediaTime(25.0)
    assert [round(mt(t), 2) for t in (5.0, 5.04, 5.08)] == [0.0, 0.04, 0.08]
    mt.restart(3.0)  # back after ~2.9 s away; the new session's clock starts anywhere
    assert mt(1000.0) == 3.0 and round(mt(1000.04), 2) == 3.04
    # a leap forward of 20 s and one backward of 50 s: media time goes on one frame at a time
    assert round(mt(1020.08), 2) == 3.08
    assert round(mt(970.12), 2) == 3.12
    assert mt.jumps == 2
    mt.restart(0.0)  # a restart never goes backwards
    assert mt(0.0) > 3.12


def test_frame_numbers_follow_timestamps():
    n = FrameNumbers(25.0)
    assert [n(t) for t in (0.0, 0.04, 0.0801, 0.1199)] == [0, 1, 2, 3]  # jitter
    assert n(1.0) == 25  # variable frame rate / a gap: numbers are time slots
    assert n(1.001) == 25  # faster than the declared rate: the same slot
    assert n(0.5) == 25  # never decreasing
    assert n.total == 26


def test_fps_sanity_bound():
    assert sane_fps(29.97, None) == (29.97, None)
    assert sane_fps(90000.0, 30.0) == (30.0, None)
    fps, note = sane_fps(1000.0)
    assert fps == 25.0 and note and "1000 fps" in note
    assert sane_fps(None, 0) == (25.0, None)


def test_timeline_never_emits_frame_numbers_a_gap_left_empty():
    tl = Timeline(25.0)
    p = np.full(8, 1 / 8), np.full(7, 1 / 7)
    tl.add((0, 100), *p)
    tl.skip(50, 80)
    rows = tl.finalize(100)
    assert [r.index for r in rows] == list(range(50)) + list(range(80, 100))
    assert tl.provisional((0, 100)) == []
    assert tl.pending() == 100 and not tl._count  # nothing held for the frames that do not exist
