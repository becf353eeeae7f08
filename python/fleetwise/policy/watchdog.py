"""Time limits on policy calls: a policy that never returns must not hang a run or a check.

Two mechanisms, one per situation:

* :func:`deadline` — a call made on the main thread (the conformance checker) runs under
  ``signal.setitimer``: when the time is up, SIGALRM interrupts it (a ``time.sleep`` included) with
  :class:`PolicyTimeout`.
* :class:`CallClock` + :class:`Watchdog` — a simulation runs in a worker thread, where signals cannot
  reach the policy. Each bridge notes on a shared :class:`CallClock` which call is running (two
  attribute writes per call); the waiting main thread polls it and, when one call has run past the
  limit, raises :class:`PolicyTimeout` inside the worker (it lands as soon as the policy executes
  Python again) and cancels the simulation.
"""

from __future__ import annotations

import contextlib
import ctypes
import signal
import threading
import time


class PolicyTimeout(BaseException):
    """A policy call ran past its time limit. A BaseException, so that a policy's own
    ``except Exception`` cannot swallow it."""


class CallClock:
    """Which policy call is running now: ``busy`` names it (None between calls) and ``calls``
    counts the calls started, so that a watcher can tell one long call from many short ones."""

    __slots__ = ("busy", "calls")

    def __init__(self) -> None:
        self.busy: str | None = None
        self.calls = 0


class Watchdog:
    """Watches a :class:`CallClock` of policy calls made on ``thread``; :meth:`overdue` says which
    call has run for more than ``limit`` seconds (checked each time it is polled)."""

    def __init__(self, clock: CallClock, limit: float | None, thread: threading.Thread):
        self.clock, self.limit, self.thread = clock, limit, thread
        self._seen: tuple[int, float] | None = None

    def overdue(self) -> str | None:
        """The running call's name when it has been running for longer than the limit, else None."""
        busy, calls = self.clock.busy, self.clock.calls
        if self.limit is None or busy is None:
            self._seen = None
            return None
        now = time.monotonic()
        if self._seen is None or self._seen[0] != calls:
            self._seen = (calls, now)
            return None
        return busy if now - self._seen[1] > self.limit else None

    def interrupt(self) -> None:
        """Raises PolicyTimeout in the watched thread at its next Python instruction."""
        ident = self.thread.ident
        if ident is not None:
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.py_object(PolicyTimeout))


@contextlib.contextmanager
def deadline(seconds: float | None, what: str):
    """Runs the block with a time limit of ``seconds`` (None: none): when it is up, PolicyTimeout
    naming ``what`` is raised inside the block. Only on the main thread (signals are delivered
    there); elsewhere the block runs without a limit."""
    if seconds is None or threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def on_alarm(signum, frame):
        raise PolicyTimeout(f"{what} did not return within {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
