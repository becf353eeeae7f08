"""Running simulations as Ray tasks: the one place where fleetwise talks to Ray.

``RayPool`` is the Ray counterpart of ``WorkerPool``: it runs one module-level function over many
argument tuples as Ray tasks and yields the results as they finish. ``sweep``, ``goodput``,
``place`` and ``compare`` all run their simulations through it with ``--ray ADDRESS``:

* ``"local"`` starts a private Ray on this machine (never joining a cluster that happens to run
  here); any other address joins that cluster;
* tasks are submitted through a window of a few per cluster CPU, so ten thousand points need neither
  ten thousand scenarios in memory at once nor a ``ray.wait`` over ten thousand references;
* several driver threads may share one pool (``place`` searches its layouts concurrently);
  ``close()`` — on Ctrl-C or any error — cancels every task still running and makes every thread
  waiting on the pool raise ``RayPoolClosed`` within ``WAIT_S``;
* a fleetwise error raised in a task (a missing trace file, say) is raised in the driver as itself,
  so the command reports it like a local one (exit 2, no traceback).
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Callable, Iterable, Iterator

WAIT_S = 0.5
"""How long one wait for a finished task lasts before the pool checks whether it was closed."""
TASKS_PER_CPU = 2
"""Tasks kept submitted per cluster CPU (so that no core idles while the driver saves a result)."""
MIN_WINDOW = 8
"""The fewest tasks kept submitted, whatever the cluster's size."""


class RayPoolClosed(Exception):
    """Raised in a thread waiting on a pool that another thread closed (Ctrl-C, an error)."""


def _need_ray():
    try:
        import ray
    except ImportError:
        from fleetwise.errors import ConfigError

        raise ConfigError("--ray needs Ray: pip install 'fleetwise[ray]' (or 'ray[default]' for Ray's dashboard)") from None
    return ray


def ray_init(address: str) -> None:
    """Connects to the Ray cluster at ``address``, or starts a private one for ``"local"``; does
    nothing when this process is already connected."""
    ray = _need_ray()
    if ray.is_initialized():
        return
    _check_reachable(address)
    try:
        ray.init(address="local" if address == "local" else address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    except Exception as e:  # a malformed address, no cluster there, or a private one that failed to start (a loaded machine)
        from fleetwise.errors import ConfigError

        raise ConfigError(f"--ray {address}: cannot start or join Ray there ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else e!r}); "
                          "give 'local' for a private cluster, or the address of a running one (ray start --head prints it)") from None


CONNECT_TIMEOUT_S = 10.0
"""How long the address of a running cluster may take to accept a connection before it is refused."""


def _check_reachable(address: str) -> None:
    """``ConfigError`` when ``address`` (``host:port`` or ``ray://host:port``) accepts no TCP
    connection within ``CONNECT_TIMEOUT_S``: ``ray.init`` itself waits on such an address for
    minutes. ``local`` and ``auto`` are left to Ray."""
    import re
    import socket

    m = re.fullmatch(r"(?:ray://)?\[?([^\[\]]+?)\]?:([0-9]{1,5})", address.strip())
    if m is None:
        return
    host, port = m.group(1), int(m.group(2))
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
    except (OSError, ValueError) as e:
        from fleetwise.errors import ConfigError

        raise ConfigError(f"--ray {address}: nothing accepts connections there ({e.strerror or e}); start the cluster first "
                          "(ray start --head prints its address) or give 'local' for a private one") from None


class RayPool:
    """Ray tasks submitted by one or more driver threads; use it as a context manager.

    Leaving the ``with`` block, normally or by an exception, cancels every task of this pool that is
    still running. The pool does not shut Ray down: a private ``local`` cluster ends with the process.
    """

    def __init__(self, address: str):
        self._ray = _need_ray()
        ray_init(address)
        self.address = address
        self._lock = threading.Lock()
        self._inflight: set = set()
        self._remotes: dict[Callable, Any] = {}
        self._closed = False
        cpus = int(self._ray.cluster_resources().get("CPU", 1))
        self.window = max(MIN_WINDOW, TASKS_PER_CPU * cpus)

    def __enter__(self) -> "RayPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        """Whether ``close()`` was called (no more tasks are accepted)."""
        return self._closed

    def _remote(self, fn: Callable):
        with self._lock:
            if fn not in self._remotes:
                self._remotes[fn] = self._ray.remote(fn)
            return self._remotes[fn]

    def _submit(self, remote, args: tuple):
        with self._lock:
            if self._closed:
                raise RayPoolClosed("the Ray pool was closed")
            ref = remote.remote(*args)
            self._inflight.add(ref)
            return ref

    def _forget(self, refs: Iterable, cancel: bool) -> None:
        with self._lock:
            for r in refs:
                self._inflight.discard(r)
        if cancel:
            for r in refs:
                try:
                    self._ray.cancel(r, force=True)
                except Exception:  # already finished, or the cluster is gone
                    pass

    def imap_unordered(self, fn: Callable, tasks: Iterable[tuple], describe: Callable[[int], str] = lambda i: f"task {i}") -> Iterator[tuple[int, Any]]:
        """Runs ``fn(*args)`` as a Ray task for every args tuple; yields ``(index, result)`` as each finishes.

        ``tasks`` is consumed lazily, a window at a time. An exception raised by a task is raised
        here (a fleetwise error as itself, anything else as a SimulationError naming
        ``describe(index)``) and the other tasks of this call are cancelled, as they are when the
        consumer stops early or the pool is closed.
        """
        remote = self._remote(fn)
        todo = iter(enumerate(tasks))
        index_of: dict = {}
        pending: list = []
        try:
            while True:
                while len(pending) < self.window:
                    nxt = next(todo, None)
                    if nxt is None:
                        break
                    ref = self._submit(remote, nxt[1])
                    index_of[ref] = nxt[0]
                    pending.append(ref)
                if not pending:
                    return
                ready, pending = self._ray.wait(pending, num_returns=1, timeout=WAIT_S)
                if self._closed:
                    raise RayPoolClosed("the Ray pool was closed")
                for ref in ready:
                    i = index_of.pop(ref)
                    self._forget([ref], cancel=False)
                    yield i, self._get(ref, describe(i))
        finally:
            self._forget(pending, cancel=True)

    def _get(self, ref, what: str):
        from fleetwise.errors import FleetwiseError, SimulationError

        try:
            return self._ray.get(ref)
        except self._ray.exceptions.RayTaskError as e:
            cause = getattr(e, "cause", None)
            if isinstance(cause, FleetwiseError):
                raise cause from None
            raise SimulationError(f"{what}: failed on Ray: {cause if cause is not None else e}") from None
        except self._ray.exceptions.TaskCancelledError:
            raise RayPoolClosed(f"{what}: cancelled") from None

    def close(self) -> None:
        """Cancels every task of this pool still running; waiting threads raise ``RayPoolClosed``."""
        with self._lock:
            self._closed = True
            refs = list(self._inflight)
            self._inflight.clear()
        self._forget(refs, cancel=True)


def pool_for(ray: "str | RayPool | None", stack: contextlib.ExitStack) -> "RayPool | None":
    """``ray`` itself when it is a pool (a caller shares it) or None; for an address, a new pool
    that ``stack`` closes."""
    if ray is None or isinstance(ray, RayPool):
        return ray
    return stack.enter_context(RayPool(ray))
