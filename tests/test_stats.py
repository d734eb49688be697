"""Run statistics keep constant memory however long a live run goes on."""

from __future__ import annotations

import numpy as np
import pytest

from stream.runtime.stats import RunningQuantiles, RunStats


def test_quantiles_are_exact_while_few():
    rng = np.random.default_rng(0)
    xs = rng.lognormal(4.0, 0.6, RunningQuantiles.EXACT)
    q = RunningQuantiles()
    assert q.summary() is None
    for x in xs:
        q.add(float(x))
    assert q.summary() == {
        "p50": float(np.percentile(xs, 50)),
        "p95": float(np.percentile(xs, 95)),
        "max": float(xs.max()),
    }


def test_quantiles_of_a_long_run_within_a_bin_and_memory_does_not_grow():
    rng = np.random.default_rng(1)
    xs = np.concatenate([rng.lognormal(4.0, 0.6, 30_000), [0.0, 0.001, 5e8]])  # below and past the bins
    q = RunningQuantiles()
    sizes = (q._values.nbytes, q._hist.nbytes)
    for x in xs:
        q.add(float(x))
    assert (q._values.nbytes, q._hist.nbytes) == sizes and q.n == len(xs)
    s = q.summary()
    assert s is not None and s["max"] == 5e8
    for key, pct in (("p50", 50), ("p95", 95)):
        assert s[key] == pytest.approx(np.percentile(xs, pct), rel=0.011)


def test_end_record_takes_the_latency_summary():
    stats = RunStats()
    for ms in (10.0, 20.0, 30.0):
        stats.latency_ms.add(ms)
    end = stats.end_record(reason="eof", total_frames=1, media_s=1.0, elapsed_s=0.5, drops={}, warnings=0)
    assert end.latency_ms == {"p50": 20.0, "p95": 29.0, "max": 30.0}
    assert (
        RunStats().end_record(reason="eof", total_frames=0, media_s=0.0, elapsed_s=0.0, drops={}, warnings=0).latency_ms
        is None
    )
