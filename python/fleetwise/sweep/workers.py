"""Worker processes that live and die with the process that started them.

``WorkerPool`` runs one function over many argument tuples in spawned worker processes and yields
the results as they finish. Unlike ``concurrent.futures.ProcessPoolExecutor`` it never outlives its
parent and never waits for running work on the way out:

* each worker asks the kernel to kill it when its parent dies (Linux ``PR_SET_PDEATHSIG``), checks
  right away that the parent is still there, and runs a watchdog thread that exits when its parent
  process id changes (the fallback on other systems); so ``kill -9`` of a sweep takes its workers
  with it;
* workers ignore SIGINT (Ctrl-C in a terminal reaches the whole process group): the parent decides,
  and on any exception (KeyboardInterrupt included) closing the pool terminates every worker at
  once, without waiting for the points they were running;
* a worker that dies (killed, out of memory) is an error naming the task, never a hang.
"""

from __future__ import annotations

import os
import pickle
import signal
import sys
import threading
import time
import traceback
from collections import deque
from multiprocessing import get_context
from multiprocessing.connection import wait
from typing import Any, Callable, Iterable, Iterator

PR_SET_PDEATHSIG = 1
"""prctl(2) option: the signal a process receives when its parent (thread) exits."""
WATCHDOG_INTERVAL_S = 0.5
"""How often a worker's watchdog thread checks that its parent is alive."""
TERMINATE_GRACE_S = 5.0
"""How long closing the pool waits for a terminated worker before killing it."""


def _die_with_parent(parent_pid: int) -> None:
    """Makes this process exit when ``parent_pid`` (its parent) exits, however it exits."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):  # no prctl: the watchdog below still works
            pass
    if os.getppid() != parent_pid:  # the parent died before the death signal was armed
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(WATCHDOG_INTERVAL_S)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, name="fleetwise-parent-watchdog", daemon=True).start()


def _portable(exc: BaseException) -> BaseException:
    """The exception itself when it pickles, else a SimulationError carrying its text."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        from fleetwise.errors import SimulationError

        return SimulationError(f"{type(exc).__name__}: {exc}")


def _parent_showwarning() -> Callable | None:
    """This process's ``warnings.showwarning`` when it can be handed to a spawned worker (a
    module-level function, such as the CLI's one-line ``warning: ...``), else None."""
    import warnings

    try:
        pickle.dumps(warnings.showwarning)
    except Exception:  # a lambda or a bound method of something unpicklable: the worker keeps Python's
        return None
    return warnings.showwarning


def _worker_main(conn, fn: Callable, parent_pid: int, showwarning: Callable | None = None) -> None:
    """A worker's loop: receive ``(index, args)``, run ``fn(*args)``, send the outcome back.
    Warnings are shown with ``showwarning``, the parent's way, when given."""
    _die_with_parent(parent_pid)
    if showwarning is not None:
        import warnings

        warnings.showwarning = showwarning
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):  # started with SIGINT blocked (see _start_worker): now ignored
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        index, args = task
        try:
            reply = ("ok", index, fn(*args), "")
        except BaseException as e:  # handed to the parent, which raises it
            reply = ("error", index, _portable(e), traceback.format_exc())
        try:
            conn.send(reply)
        except (OSError, ValueError):
            return


class WorkerPool:
    """Up to ``jobs`` spawned worker processes running ``fn``; use it as a context manager.

    ``fn`` must be a module-level function (it is pickled to the workers). Leaving the ``with``
    block, normally or by an exception, terminates every worker still running.
    """

    def __init__(self, fn: Callable, jobs: int):
        self.fn = fn
        self.jobs = max(1, int(jobs))
        self._ctx = get_context("spawn")
        self._workers: list = []

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def pids(self) -> list[int]:
        """Process ids of the workers started so far."""
        return [p.pid for p, _ in self._workers if p.pid is not None]

    def _start_worker(self):
        parent_end, child_end = self._ctx.Pipe(duplex=True)
        proc = self._ctx.Process(target=_worker_main, args=(child_end, self.fn, os.getpid(), _parent_showwarning()), name="fleetwise-worker", daemon=True)
        # The child starts with SIGINT blocked (the mask survives fork and exec) until it ignores it, so
        # a Ctrl-C while it imports cannot print its traceback; here the signal waits and then arrives.
        blocked = hasattr(signal, "pthread_sigmask") and threading.current_thread() is threading.main_thread()
        if blocked:
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            proc.start()
        finally:
            if blocked:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        child_end.close()  # so that a dead worker reads as end-of-file here
        self._workers.append((proc, parent_end))
        return proc, parent_end

    def imap_unordered(self, tasks: Iterable[tuple], describe: Callable[[int], str] = lambda i: f"task {i}") -> Iterator[tuple[int, Any]]:
        """Runs ``fn(*args)`` for every args tuple; yields ``(index, result)`` as each finishes.

        An exception raised by ``fn`` is raised here (the others' work is then abandoned);
        a worker that dies is a SimulationError naming ``describe(index)`` of its task.
        """
        from fleetwise.errors import SimulationError

        todo = deque(enumerate(tasks))
        busy: dict = {}  # connection -> (process, index)
        def send(proc, conn, index: int, args) -> None:
            try:
                conn.send((index, args))
            except OSError:
                proc.join(timeout=1.0)
                raise SimulationError(f"{describe(index)}: its worker process died (exit code {proc.exitcode}); finished work is kept") from None
            busy[conn] = (proc, index)

        for _ in range(min(self.jobs, len(todo))):
            proc, conn = self._start_worker()
            send(proc, conn, *todo.popleft())
        while busy:
            for conn in wait(list(busy)):
                proc, index = busy.pop(conn)
                try:
                    status, index, value, remote_tb = conn.recv()
                except (EOFError, OSError):
                    proc.join(timeout=1.0)
                    raise SimulationError(f"{describe(index)}: its worker process died (exit code {proc.exitcode}); finished work is kept") from None
                if status == "error":
                    if remote_tb and hasattr(value, "add_note") and not _is_fleetwise_error(value):
                        value.add_note(f"in worker process {proc.pid}:\n{remote_tb}")
                    raise value
                if todo:
                    send(proc, conn, *todo.popleft())
                else:
                    try:
                        conn.send(None)
                    except OSError:
                        pass
                yield index, value

    def close(self) -> None:
        """Terminates every worker that is still running (SIGTERM, then SIGKILL) and reaps it."""
        for proc, conn in self._workers:
            try:
                conn.close()
            except OSError:
                pass
            if proc.is_alive():
                proc.terminate()
        deadline = time.monotonic() + TERMINATE_GRACE_S
        for proc, _ in self._workers:
            proc.join(timeout=max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=TERMINATE_GRACE_S)


def _is_fleetwise_error(e: BaseException) -> bool:
    from fleetwise.errors import FleetwiseError

    return isinstance(e, FleetwiseError)
