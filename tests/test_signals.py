"""SignalEvent: an event a signal handler may set, however the signals fall.

A Python signal handler runs in the main thread at a call boundary of whatever that thread was
doing.  The reentrancy tests below run a nested ``set()`` at *every* call boundary inside
``set()`` and ``wait()`` (a profile hook), which is every place a second signal's handler could
run; ``threading.Event`` is shown to deadlock under the same harness, so the harness can fail.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from conftest import ROOT, alive, read_rest

from stream.core.signals import SignalEvent


def _nested_sets_everywhere(ev, action) -> bool:
    """Run ``action()`` on a thread whose profile hook calls ``ev.set()`` at each call event
    inside it (not inside the nested call itself); True if it finished within 3 s."""
    inside = [False]

    def hook(_frame, event, _arg):
        if event in ("call", "c_call") and not inside[0]:
            inside[0] = True
            try:
                ev.set()  # a handler of a second signal, run here
            finally:
                inside[0] = False

    def target():
        sys.setprofile(hook)
        try:
            action()
        except RuntimeError:  # only the unstuck threading.Event below: its lock released twice
            pass
        finally:
            sys.setprofile(None)

    th = threading.Thread(target=target, daemon=True)
    th.start()
    th.join(3.0)
    finished = not th.is_alive()
    if not finished and isinstance(ev, threading.Event):
        ev._cond._lock.release()  # type: ignore[attr-defined]  # let the stuck nested set() go
        th.join(3.0)
    return finished


def test_set_reentered_at_any_point_completes():
    ev = SignalEvent()
    assert _nested_sets_everywhere(ev, ev.set)
    assert ev.is_set() and ev.wait(0)


def test_wait_reentered_at_any_point_completes():
    ev = SignalEvent()
    assert _nested_sets_everywhere(ev, lambda: ev.wait(5.0))
    assert ev.is_set()


def test_the_harness_catches_threading_events_deadlock():
    ev = threading.Event()
    assert not _nested_sets_everywhere(ev, ev.set)


def test_wait_times_out_unset_and_wakes_when_set_from_a_thread():
    ev = SignalEvent()
    t0 = time.monotonic()
    assert ev.wait(0.05) is False
    assert time.monotonic() - t0 >= 0.05
    threading.Timer(0.1, ev.set).start()
    t0 = time.monotonic()
    assert ev.wait(30.0) is True
    assert time.monotonic() - t0 < 10.0  # woken by the set, not by the timeout
    assert ev.wait(30.0) is True  # and stays set


def test_many_events_leave_no_descriptors_open():
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(500):
        ev = SignalEvent()
        ev.set()
    del ev
    assert len(os.listdir("/proc/self/fd")) <= before + 2


PARENT = textwrap.dedent(
    """
    import multiprocessing as mp, os, sys, threading, time

    def child(parent):
        from stream.io.capture import _Stop, _die_with_parent
        stop = _Stop()
        stop.install()
        if not _die_with_parent(parent):
            return
        print("ready", flush=True)
        while not stop:
            stop.wait(0.001)  # short waits, as a paced capture loop makes

    if __name__ == "__main__":
        for _ in range(40):  # Linux sends the death signal once per exiting thread
            threading.Thread(target=time.sleep, args=(1000,), daemon=True).start()
        p = mp.get_context("spawn").Process(target=child, args=(os.getpid(),))
        p.start()
        print(p.pid, flush=True)
        time.sleep(1000)
    """
)


@pytest.mark.parametrize("round_", range(5))
def test_capture_stop_survives_a_burst_of_parent_death_signals(tmp_path, round_):
    """The failure this module exists for: a capture process whose many-threaded parent was
    SIGKILLed got one SIGTERM per parent thread, and with a ``threading.Event`` its handler
    deadlocked inside itself (16 of 20 children stuck in a run of this very setup)."""
    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env)
    child = None
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert parent.stdout.readline().strip() == "ready"
        parent.kill()
        parent.wait(10)
        deadline = time.monotonic() + 5.0
        while alive(child) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not alive(child), "the capture-side stop never took effect after its parent died"
    finally:
        parent.kill()
        parent.wait(10)
        if child is not None and alive(child):
            os.kill(child, 9)


def test_a_run_started_with_sigint_blocked_still_stops_on_it(sample):
    # a signal mask is inherited across fork and exec: Ray's worker threads block SIGINT, so a
    # `serve --ray` actor's analyzer started with it blocked never got its stop and was killed
    # after the grace time, without its end record
    started: list[subprocess.Popen] = []

    def start() -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        cmd = [sys.executable, "-m", "stream.cli", "--video", str(sample), "--realtime", "--no-asr", "--no-clip"]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        started.append(
            subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
        )

    t = threading.Thread(target=start)
    t.start()
    t.join()
    proc = started[0]
    assert proc.stdout is not None
    first = json.loads(proc.stdout.readline())  # the start record: the run is under way
    assert first["type"] == "start"
    proc.send_signal(signal.SIGINT)
    out, err = read_rest(proc, timeout=30)
    end = json.loads(out.strip().splitlines()[-1])
    assert end["type"] == "end" and end["reason"] == "interrupted", err


def test_a_ctrl_c_that_lands_in_a_callback_is_delivered_not_printed():
    """Python runs a signal handler at the next bytecode, which can be inside a weakref callback
    (importlib's module-lock callback, while the command imports its modules): the start-up's
    KeyboardInterrupt raised there cannot propagate.  It is delivered to the main thread again,
    not printed as "Exception ignored ... Traceback" and lost (seen once under load)."""
    script = (
        "import signal, sys, weakref\n"
        "from stream.cli.interrupt import note_sigint, redeliver_swallowed\n"
        "signal.signal(signal.SIGINT, note_sigint)\n"
        "sys.unraisablehook = redeliver_swallowed(sys.unraisablehook)\n"
        "class A: pass\n"
        "a = A(); r = weakref.ref(a, lambda _: note_sigint(signal.SIGINT, None))\n"
        "try:\n"
        "    del a\n"
        "    for _ in range(50_000_000): pass\n"
        "    print('lost')\n"
        "except KeyboardInterrupt:\n"
        "    print('delivered')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, env=env, timeout=60)
    assert proc.stdout.strip() == "delivered" and proc.stderr == "", proc.stderr
