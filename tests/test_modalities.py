"""Modality wrappers: absent modalities and the lagged (off-thread) runner."""

import threading
import time

import numpy as np

from stream.core.windows import full_window
from stream.modalities.base import AbsentModality, LaggedModality, ModalityOutput, WindowInput


def _inp(k):
    return WindowInput(full_window(k), 25.0, [], [], np.zeros(64000, np.float32), 1.0, {"k": k})


class _Slow:
    name = "text"

    def __init__(self, seconds):
        self.seconds = seconds
        self.seen = []
        self.threads = set()
        self.closed = False

    def __call__(self, inp):
        self.threads.add(threading.current_thread().name)
        inp.shared["touched"] = True
        time.sleep(self.seconds)
        self.seen.append(inp.window.index)
        probs = np.zeros(8, np.float32)
        probs[inp.window.index % 8] = 1
        return ModalityOutput(probs, None, {"window": inp.window.index})

    def close(self):
        self.closed = True


def test_absent_modality_says_why():
    out = AbsentModality("scene", "no VLM endpoint")(_inp(0))
    assert out.basic is None and out.info == {"reason": "no VLM endpoint"}


def test_fast_results_are_used_for_their_own_window():
    lag = LaggedModality(_Slow(0.0), budget_s=1.0)
    try:
        for k in range(3):
            out = lag(_inp(k))
            assert out.info["from_window"] == k and out.info["lag_windows"] == 0
            assert out.basic[k] == 1
    finally:
        lag.close()


def test_slow_results_arrive_one_window_late_and_never_block_the_caller():
    inner = _Slow(0.3)
    lag = LaggedModality(inner, budget_s=0.02, max_lag=1)
    try:
        t0 = time.monotonic()
        first = lag(_inp(0))
        assert time.monotonic() - t0 < 0.2
        assert first.basic is None and "still processing" in first.info["reason"]
        time.sleep(0.4)  # the hop between windows
        second = lag(_inp(1))
        assert second.info["from_window"] == 0 and second.info["lag_windows"] == 1
        assert second.basic[0] == 1
        time.sleep(0.4)
        third = lag(_inp(2))
        assert third.info["from_window"] == 1
    finally:
        lag.close()
    assert inner.closed and inner.threads == {"cer-text"}


def test_a_busy_worker_takes_the_newest_window_and_old_results_expire():
    inner = _Slow(0.25)
    lag = LaggedModality(inner, budget_s=0.0, max_lag=1)
    try:
        inp0 = _inp(0)
        lag(inp0)
        time.sleep(0.05)
        lag(_inp(1))
        lag(_inp(2))  # replaces window 1 while window 0 is still running
        time.sleep(0.7)
        assert inner.seen == [0, 2]
        out = lag(_inp(5))  # results of windows 0 and 2 are too old for window 5
        assert out.basic is None
        assert "touched" not in inp0.shared  # the worker got its own copy of shared
    finally:
        lag.close()


def test_a_larger_max_lag_keeps_an_older_result():
    """--speech-lag: a recogniser that has fallen two windows behind still gives the window its
    newest result (marked two windows late) when the lag allows two, and none when it allows one."""
    outs = {}
    for max_lag in (1, 2):
        inner = _Slow(0.0)
        lag = LaggedModality(inner, budget_s=1.0, max_lag=max_lag)
        try:
            assert lag(_inp(0)).info["lag_windows"] == 0  # window 0's result is there
            inner.seconds, lag.budget_s = 0.5, 0.02  # the recogniser falls behind: window 2 waits
            outs[max_lag] = lag(_inp(2))
        finally:
            lag.close()
    assert outs[1].basic is None and "still processing" in outs[1].info["reason"]
    assert outs[2].info["from_window"] == 0 and outs[2].info["lag_windows"] == 2 and outs[2].basic[0] == 1


def test_max_lag_below_zero_is_refused():
    import pytest

    with pytest.raises(ValueError, match="max_lag"):
        LaggedModality(_Slow(0.0), max_lag=-1)
