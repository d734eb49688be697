"""The window scheduler on its own: a fake clock and hand-built frame/audio arrivals, no
processes, no threads, no models."""

from __future__ import annotations

from stream.core.windows import HOP_S, SAMPLE_FPS, WINDOW_S, full_window
from stream.runtime.scheduler import (
    AUDIO_GRACE_S,
    Arrivals,
    Finish,
    Run,
    Scheduler,
    Skip,
    Wait,
)


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t

    def advance(self, s: float) -> None:
        self.t += s


LAST_FRAME = WINDOW_S - 1.0 / SAMPLE_FPS  # media time of window 0's last analysed frame (3.8 s)


def test_window_is_due_when_its_last_frame_and_its_audio_have_arrived():
    s = Scheduler(live=False, clock=FakeClock())
    assert s.poll(Arrivals(video_horizon=-1.0, audio_expected=True)) == Wait(s.window)
    assert isinstance(s.poll(Arrivals(video_horizon=3.6, audio_horizon=4.0, audio_expected=True)), Wait)
    # video complete, audio not yet: a file waits for its audio
    assert isinstance(s.poll(Arrivals(video_horizon=LAST_FRAME, audio_horizon=3.9, audio_expected=True)), Wait)
    step = s.poll(Arrivals(video_horizon=LAST_FRAME, audio_horizon=4.0, audio_expected=True))
    assert isinstance(step, Run) and (step.window.index, step.window.start, step.window.end) == (0, 0.0, 4.0)
    # the next window is [2, 6): due once the frame at 5.8 s is in
    assert s.window.index == 1
    assert isinstance(s.poll(Arrivals(video_horizon=5.6, audio_expected=False)), Wait)
    step = s.poll(Arrivals(video_horizon=5.8, audio_expected=False))
    assert isinstance(step, Run) and step.window.start == HOP_S


def test_no_reason_to_wait_for_audio():
    for a in (
        Arrivals(video_horizon=LAST_FRAME, audio_expected=False),  # no audio source
        Arrivals(video_horizon=LAST_FRAME, audio_expected=True, audio_done=True),  # audio ended
        Arrivals(video_horizon=LAST_FRAME, audio_expected=True, frames_full=True),
    ):  # a full lossless ring
        assert isinstance(Scheduler(live=False, clock=FakeClock()).poll(a), Run), a


def test_live_source_waits_for_late_audio_only_for_the_grace_period():
    clock = FakeClock()
    s = Scheduler(live=True, clock=clock)
    late = Arrivals(video_horizon=LAST_FRAME, audio_horizon=3.0, audio_expected=True)
    assert isinstance(s.poll(late), Wait)  # video complete now: the grace period starts
    clock.advance(AUDIO_GRACE_S - 0.01)
    assert isinstance(s.poll(late), Wait)
    clock.advance(0.02)
    assert isinstance(s.poll(late), Run)
    # a file never stops waiting for audio that is still coming
    f = Scheduler(live=False, clock=clock)
    assert isinstance(f.poll(late), Wait)
    clock.advance(60.0)
    assert isinstance(f.poll(late), Wait)


def test_live_source_more_than_a_window_behind_skips_to_the_newest_complete_window():
    s = Scheduler(live=True, clock=FakeClock())
    # the analyzer is at window 0 but frames up to 11.8 s have arrived
    step = s.poll(Arrivals(video_horizon=11.8))
    assert step == Skip(skipped=3, to=3)  # newest complete window: [6, 10)
    assert s.skipped == 3 and s.window.start == 6.0
    # still more than a hop behind [6, 10)? 11.8 - 10 = 1.8 s: no, run it
    step = s.poll(Arrivals(video_horizon=11.8))
    assert isinstance(step, Run) and step.window.index == 3
    # exactly one hop behind is not behind
    s2 = Scheduler(live=True, clock=FakeClock())
    assert isinstance(s2.poll(Arrivals(video_horizon=6.0)), Run)


def test_file_mode_never_skips():
    s = Scheduler(live=False, clock=FakeClock())
    for k in range(5):
        step = s.poll(Arrivals(video_horizon=30.0))  # the reader is far ahead of the analyzer
        assert isinstance(step, Run) and step.window.index == k
    assert s.skipped == 0


def test_end_of_stream_finishes_with_the_tail_rule():
    # 9.5 s: full windows [0,4) [2,6) [4,8); the 1.5 s tail after 8 s gets a shortened window [6, 9.5)
    s = Scheduler(live=False, clock=FakeClock())
    for _ in range(2):
        assert isinstance(s.poll(Arrivals(video_horizon=9.4)), Run)
    step = s.poll(Arrivals(video_horizon=9.4, video_done=True))
    assert step == Finish(next_index=2)
    assert [(w.index, w.start, w.end) for w in s.tail(9.5)] == [(2, 4.0, 8.0), (3, 6.0, 9.5)]
    # 8.6 s: the 0.6 s tail is dropped
    s = Scheduler(live=False, clock=FakeClock())
    assert isinstance(s.poll(Arrivals(video_horizon=8.4, video_done=True)), Finish)
    assert [(w.start, w.end) for w in s.tail(8.6)] == [(0.0, 4.0), (2.0, 6.0), (4.0, 8.0)]
    # a stream of at most 4 s is one window
    s = Scheduler(live=True, clock=FakeClock())
    assert isinstance(s.poll(Arrivals(video_horizon=2.8, video_done=True)), Finish)
    assert [(w.start, w.end) for w in s.tail(3.0)] == [(0.0, 3.0)]


def test_stop_finishes_at_once_without_waiting():
    s = Scheduler(live=True, clock=FakeClock())
    assert isinstance(s.poll(Arrivals(video_horizon=1.0, audio_expected=True)), Wait)
    assert isinstance(s.poll(Arrivals(video_horizon=1.0, audio_expected=True, stopping=True)), Finish)


def test_a_resumed_stream_starts_at_its_window_and_its_gap_swallows_the_windows_without_frames():
    """`cer-stream serve` restarted the analyzer: it starts at window K (the previous process
    wrote up to K - 1), the time since is a gap from just before K's first grid point, and the
    windows that only the new run's frames could serve but do not reach are missing, not run."""
    from stream.io.reconnect import Resume
    from stream.runtime.scheduler import Missing

    k = 6
    after = k * HOP_S - 0.5 / SAMPLE_FPS - 1e-3  # as Resume bounds it
    # the previous run's last final frame (11.96 s) serves window 6's first grid point (12 s):
    # Resume holds after_s before it, so that window 6 is the new run's
    resume = Resume(window=k, after_s=11.96, wall_time=1.0e9, reason="the analyzer exited (SIGKILL); restarted")
    assert resume.after_s == after
    first_frame = 18.84  # the new run's first frame: windows 6 [12, 16) and 7 [14, 18) get none
    s = Scheduler(live=True, clock=FakeClock(), first=resume.window)
    assert s.window.index == k
    gap = ((resume.after_s, first_frame),)
    assert s.poll(Arrivals(video_horizon=first_frame, gaps=gap)) == Missing(2, 8)
    assert isinstance(s.poll(Arrivals(video_horizon=first_frame, gaps=gap)), Wait)  # window 8 [16, 20)
    step = s.poll(Arrivals(video_horizon=19.8, gaps=gap))
    assert isinstance(step, Run) and step.window.index == 8
    # media time goes on by the time the stream was without an analyzer
    assert resume.media_start(1.0e9 + 7.0) == after + 7.0 and resume.media_start(1.0e9 - 5.0) == after


def test_windows_a_loss_cuts_short_run_at_once_and_the_rest_wait_for_the_return():
    # the source is lost after its frame at 6.5 s (an open gap): windows 2 [4, 8) and 3 [6, 10)
    # hold frames from before the loss and run now, with the frames they have, audio or not;
    # window 4 [8, 12) holds none of them and waits for the source to come back (or a gap
    # record that says it is missing)
    s = Scheduler(live=True, clock=FakeClock(), first=2)
    lost = Arrivals(video_horizon=6.5, audio_horizon=6.0, audio_expected=True, lost=6.5)
    assert isinstance(s.poll(Arrivals(video_horizon=6.5, audio_horizon=6.0, audio_expected=True)), Wait)
    assert [s.poll(lost), s.poll(lost)] == [Run(full_window(2)), Run(full_window(3))]
    assert s.poll(lost) == Wait(full_window(4))
    # a frame within half a grid step of window 4's first grid point serves it: it is cut too
    s = Scheduler(live=True, clock=FakeClock(), first=4)
    assert s.poll(Arrivals(video_horizon=7.95, lost=7.95)) == Run(full_window(4))
