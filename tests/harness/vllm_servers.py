"""Start real vLLM OpenAI servers as subprocesses (for tests and side-by-side runs on one machine)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

CPU_ENV = {"HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": "1"}
"""Environment for small CPU engines: offline, 1 GiB of KV cache, one unpinned thread each."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VllmStartError(RuntimeError):
    """A vLLM server exited or did not answer /health in time; ``log`` is its output."""

    def __init__(self, url: str, log_path: Path):
        self.url, self.log_path = url, log_path
        self.log = log_path.read_text(errors="replace") if log_path.exists() else ""
        super().__init__(f"vLLM at {url} did not start; see {log_path}")


START_TIMEOUT_S = float(os.environ.get("FLEETWISE_VLLM_START_TIMEOUT", "900"))
"""How long a server may take to answer /health: a hang guard, generous because a loaded machine
makes vLLM's start (imports, model load, CPU kernel warm-up) slow; FLEETWISE_VLLM_START_TIMEOUT
overrides it."""


def vllm_command() -> list[str]:
    """The ``vllm`` command line tool of this Python environment (what users run: ``vllm serve``)."""
    beside = Path(sys.executable).with_name("vllm")
    return [str(beside)] if beside.exists() else [shutil.which("vllm") or "vllm"]


def stop_group(p: subprocess.Popen, grace_s: float = 30.0) -> None:
    """Stops ``p`` and every process it started (vLLM's engine core runs in its own process): SIGTERM
    to its process group, then SIGKILL to the group if it has not exited within ``grace_s``."""
    if p.poll() is None:
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            p.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(p.pid, signal.SIGKILL)  # whatever of the group is left, the leader gone or not
    except ProcessLookupError:
        pass
    p.wait()


@contextmanager
def vllm_servers(model: Path, servers: Sequence[tuple[str, Sequence[str]]], logs: Path, timeout_s: float = START_TIMEOUT_S, served_name: str = "tiny") -> Iterator[list[str]]:
    """Starts one ``vllm serve`` per ``(name, extra arguments)`` in ``servers``, all at once, on
    free local ports, each in its own process group; yields their base URLs once every one answers
    ``/health`` and stops each whole group on exit. Each server's output goes to ``logs/<name>.log``."""
    import httpx

    env = {**os.environ, **CPU_ENV}
    procs, urls, paths = [], [], []
    try:
        for name, extra in servers:
            port = free_port()
            path = logs / f"{name}.log"
            with open(path, "w") as log:
                procs.append(subprocess.Popen([*vllm_command(), "serve", str(model), "--served-model-name", served_name,
                                               "--enforce-eager", "--dtype", "float32", "--port", str(port), "--host", "127.0.0.1", *extra],
                                              stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True))
            urls.append(f"http://127.0.0.1:{port}")
            paths.append(path)
        deadline = time.monotonic() + timeout_s
        for p, u, path in zip(procs, urls, paths):
            while True:
                try:
                    if httpx.get(u + "/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if p.poll() is not None or time.monotonic() > deadline:
                    raise VllmStartError(u, path)
                time.sleep(0.5)
        yield urls
    finally:
        for p in procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for p in procs:
            stop_group(p)
