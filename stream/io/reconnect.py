"""When and how often a live source is reopened after it ends, fails or stalls.

A :class:`ReconnectPolicy` says how many reopen attempts a capture process makes in a row
(``None``: forever; ``0``: none, the stream ends with its source) and how long it waits before
each: exponential backoff from ``base_delay_s``, capped at ``max_delay_s``, with "equal jitter"
(half the delay fixed, half random), so that many analyzers that lost the same server do not
all knock on it at the same moment when it comes back.  The attempt count starts again once a
reopened source delivers a frame.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

#: Defaults of the command line and of :class:`stream.runtime.options.RuntimeOptions`.
DEFAULT_MAX_DELAY_S = 30.0
BASE_DELAY_S = 0.5


@dataclass(frozen=True)
class ReconnectPolicy:
    """``attempts``: reopen attempts in a row before giving up (``None``: forever, ``0``: off);
    ``max_delay_s``: the longest wait between two attempts; ``wait_at_start``: a source that
    cannot be opened at start is retried under the same policy (else it is a start-up error)."""

    attempts: int | None = None
    max_delay_s: float = DEFAULT_MAX_DELAY_S
    base_delay_s: float = BASE_DELAY_S
    wait_at_start: bool = False

    def __post_init__(self) -> None:
        if self.attempts is not None and self.attempts < 0:
            raise ValueError(f"reconnect attempts must be >= 0, got {self.attempts}")
        if self.max_delay_s <= 0 or self.base_delay_s <= 0:
            raise ValueError("reconnect delays must be positive")

    @property
    def enabled(self) -> bool:
        return self.attempts != 0

    def gives_up(self, attempt: int) -> bool:
        """Whether attempt number ``attempt`` (1-based) is past the policy's limit."""
        return self.attempts is not None and attempt > self.attempts

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before attempt ``attempt`` (1-based): between half and all of
        ``min(max_delay_s, base_delay_s * 2 ** (attempt - 1))``."""
        cap = min(self.max_delay_s, self.base_delay_s * 2.0 ** min(max(attempt - 1, 0), 30))
        r = (rng or random).random()
        return cap / 2 + r * cap / 2

    def describe(self) -> str:
        if not self.enabled:
            return "off"
        n = "forever" if self.attempts is None else f"{self.attempts} attempt(s)"
        return f"{n}, at most {self.max_delay_s:g} s apart"


OFF = ReconnectPolicy(attempts=0)


def parse_policy(
    text: str, *, max_delay_s: float = DEFAULT_MAX_DELAY_S, wait_at_start: bool = False
) -> ReconnectPolicy:
    """``forever``, ``off`` or a number of attempts (the ``--reconnect`` flag); ``ValueError``
    with one line otherwise."""
    value = text.strip().lower()
    if value in ("forever", "on", "always"):
        attempts: int | None = None
    elif value in ("off", "no", "never", "0"):
        attempts = 0
    else:
        try:
            attempts = int(value)
        except ValueError:
            raise ValueError(f"--reconnect takes forever, off or a number of attempts, not {text!r}") from None
        if attempts < 0:
            raise ValueError(f"--reconnect takes forever, off or a number of attempts, not {text!r}")
    if max_delay_s <= 0:
        raise ValueError(f"--reconnect-max-delay must be positive, got {max_delay_s:g}")
    return ReconnectPolicy(attempts=attempts, max_delay_s=max_delay_s, wait_at_start=wait_at_start)


@dataclass(frozen=True)
class Resume:
    """Where a stream that another analyzer process left goes on (``cer-stream serve`` restarting
    a crashed analyzer): ``window`` is the first window index this run may emit (the one after
    the last that was written), ``after_s`` the media time of the last frame already written as
    final, ``wall_time`` the Unix time it was written, ``reason`` why the stream changed process.

    Media time goes on from ``after_s`` by the wall-clock time away; the stretch between is a
    gap (a ``gap`` record with ``reason``, its windows missing), as when a source reconnects.
    ``after_s`` is held to half a grid step before ``window``'s first grid point at most, so that
    this run's windows are served by its own frames only (the previous run's frames after that,
    already final there, lie inside the gap and are never emitted again)."""

    window: int
    after_s: float
    wall_time: float
    reason: str = "analyzer restarted"

    def __post_init__(self) -> None:
        if self.window < 0 or not (self.after_s >= 0) or not (self.wall_time > 0):
            raise ValueError("resume: window >= 0, after_s >= 0 and a wall_time are required")
        from stream.core.windows import HOP_S, SAMPLE_FPS

        bound = max(0.0, self.window * HOP_S - 0.5 / SAMPLE_FPS - 1e-3)
        object.__setattr__(self, "after_s", min(self.after_s, bound))

    @classmethod
    def from_json(cls, text: str) -> Resume:
        """From ``{"window": K, "after_s": T, "wall_time": W, "reason": "..."}``; ``ValueError``."""
        import json

        try:
            d = json.loads(text)
            return cls(
                window=int(d["window"]),
                after_s=float(d["after_s"]),
                wall_time=float(d["wall_time"]),
                reason=str(d.get("reason") or "analyzer restarted")[:300],
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"--resume: expected a JSON object with window, after_s, wall_time ({exc})") from None

    def media_start(self, now: float) -> float:
        """The media time the first frame of the new run gets at Unix time ``now``."""
        return self.after_s + max(0.0, now - self.wall_time)


__all__ = ["BASE_DELAY_S", "DEFAULT_MAX_DELAY_S", "OFF", "ReconnectPolicy", "Resume", "parse_policy"]
