"""A sandboxed fleetwise worker process for the fuzz suite.

The fuzz cases feed hostile input to fleetwise; a bug may make it hang, allocate without bound or
abort. Every case therefore runs in a long-lived child process (``SandboxWorker``) that has an
address-space limit (``RLIMIT_AS``, so a blow-up is a MemoryError, not a machine out of memory)
and a per-call timeout (a hang kills the child and its whole process group; the next call starts
a fresh one). Requests and outcomes travel as JSON lines.

Each call returns an *outcome* dict:

- ``{"outcome": "ok", "violations": [...]}``: fleetwise succeeded; the invariants of
  ``fuzz_invariants`` were checked and ``violations`` lists those that failed;
- ``{"outcome": "error", "type": ..., "message": ...}``: a ``FleetwiseError`` subclass was raised;
- ``{"outcome": "crash", "type": ..., "message": ..., "traceback": ...}``: any other exception;
- ``{"outcome": "hang"}`` or ``{"outcome": "died", "returncode": ...}``: the child had to be killed
  or died by itself (an abort, a segfault).

``cli`` calls add ``exit_code``, ``stdout`` and ``stderr``.

Run as a script, this module is the child's main loop.
"""

from __future__ import annotations

import json
import os
import re
import selectors
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
MEMORY_LIMIT_BYTES = 3 << 30
"""The child's address-space limit (importing fleetwise maps about 1.2 GB)."""
_TEXT_LIMIT = 6000


# --- the child ---------------------------------------------------------------------------------


def _tail(text: str, n: int = _TEXT_LIMIT) -> str:
    return text if len(text) <= n else "..." + text[-n:]


def _expected_requests(sc) -> int | None:
    """How many requests the scenario's workload has (built again: cheap for tiny workloads)."""
    from fleetwise.workload import build_workload

    base_dir = Path(sc._base_dir) if sc._base_dir else None
    return len(build_workload(sc.workload, sc.seed, base_dir))


def _simulate_and_check(sc, out_dir: str | None, expect_requests: int | None = None) -> dict:
    import fleetwise
    from fleetwise_fuzz_invariants import check_result, check_run_directory

    expected = _expected_requests(sc)
    result = fleetwise.simulate(sc)
    violations = check_result(result, expected)
    if expect_requests is not None and expected != expect_requests:
        violations.append(f"{expected} requests replayed from {expect_requests} well-formed rows (rows dropped silently)")
    if out_dir is not None:
        result.write(out_dir)
        violations += check_run_directory(Path(out_dir), expected)
    finished = result.summary.get("finished")
    return {"outcome": "ok", "violations": violations, "requests": expected, "finished": finished}


def _op_simulate(req: dict) -> dict:
    from fleetwise import scenario_from_dict

    base = req.get("base_dir")
    sc = scenario_from_dict(req["scenario"], req.get("source", "<fuzz>"), Path(base) if base else None)
    return _simulate_and_check(sc, req.get("out_dir"), req.get("expect_requests"))


def _op_load(req: dict) -> dict:
    from fleetwise import load_scenario

    sc = load_scenario(req["path"], req.get("overrides", []))
    return _simulate_and_check(sc, req.get("out_dir"))


def _op_read(req: dict) -> dict:
    """Reads a trace or length file directly and checks the frame a reader returns."""
    import polars as pl

    from fleetwise.workload import load_lengths, load_trace

    fmt = req["format"]
    if fmt in ("csv", "sharegpt", "vllm-bench"):
        frame = load_lengths(req["path"], fmt)
    else:
        frame = load_trace(req["path"], fmt)
    bad = []
    for col in ("prompt_tokens", "output_tokens") + (("arrival_ns",) if "arrival_ns" in frame.columns else ()):
        if col not in frame.columns:
            bad.append(f"column {col} missing")
            continue
        if frame[col].dtype != pl.Int64:
            bad.append(f"{col} has dtype {frame[col].dtype}, not Int64")
        if frame[col].null_count():
            bad.append(f"{col} has nulls")
    if not bad:
        if int((frame["prompt_tokens"] < 1).sum()) or int((frame["output_tokens"] < 1).sum()):
            bad.append("a token count below 1")
        if "arrival_ns" in frame.columns and frame.height:
            arr = frame["arrival_ns"]
            if arr[0] != 0:
                bad.append(f"first arrival_ns is {arr[0]}, not 0")
            if frame.height > 1 and int((arr.diff().drop_nulls() < 0).sum()):
                bad.append("arrival_ns decreases")
    if req.get("expect_rows") is not None and frame.height != req["expect_rows"]:
        bad.append(f"{frame.height} rows read from {req['expect_rows']} well-formed rows (rows dropped silently)")
    return {"outcome": "ok", "violations": bad, "rows": frame.height}


def _op_cli(req: dict) -> dict:
    """Runs ``fleetwise.cli.main`` in this process with ``args``, capturing its output."""
    import contextlib
    import io

    from fleetwise import cli
    from fleetwise_fuzz_invariants import check_run_directory

    stdout, stderr = io.StringIO(), io.StringIO()
    old_argv, old_cwd = sys.argv, os.getcwd()
    code, crash = 0, None
    os.chdir(req["cwd"])
    try:
        sys.argv = ["fleetwise", *req["args"]]
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                cli.main()
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            except Exception as e:  # noqa: BLE001 - what a user would see as a traceback
                code, crash = 1, e
                traceback.print_exc()
    finally:
        sys.argv = old_argv
        os.chdir(old_cwd)
    res = {"outcome": "ok", "exit_code": code, "stdout": _tail(stdout.getvalue()), "stderr": _tail(stderr.getvalue()), "violations": []}
    if crash is not None:
        res.update(outcome="crash", type=type(crash).__qualname__, message=_tail(str(crash), 2000))
    elif code == 0 and req.get("check_dir"):
        res["violations"] = check_run_directory(Path(req["check_dir"]), req.get("expected"))
    return res


_OPS = {"simulate": _op_simulate, "load": _op_load, "read": _op_read, "cli": _op_cli}


def _serve() -> None:
    """The child's loop: one JSON request per line on stdin, one JSON outcome per line out."""
    import importlib.util

    # The invariants module is loaded under a unique name (no clash with pytest's imports).
    spec = importlib.util.spec_from_file_location("fleetwise_fuzz_invariants", HERE / "fuzz_invariants.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    sys.modules["fleetwise_fuzz_invariants"] = mod
    from fleetwise.errors import FleetwiseError

    proto = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # anything fleetwise prints goes to stderr, never into the protocol
    for line in sys.stdin:
        req = json.loads(line)
        try:
            res = _OPS[req["op"]](req)
        except FleetwiseError as e:
            res = {"outcome": "error", "type": type(e).__name__, "message": _tail(str(e), 2000)}
        except BaseException as e:  # noqa: BLE001 - every other exception is a finding
            res = {"outcome": "crash", "type": type(e).__qualname__, "message": _tail(str(e), 2000), "traceback": _tail(traceback.format_exc(), 3000)}
        proto.write(json.dumps(res, default=str) + "\n")
        proto.flush()


# --- the parent --------------------------------------------------------------------------------


def _limit_memory(limit: int) -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def sandbox_env() -> dict:
    """The environment of sandboxed processes: this checkout's fleetwise and the fuzz policies importable."""
    paths = [str(REPO / "python"), str(HERE)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(paths), COLUMNS="200", NO_COLOR="1", POLARS_MAX_THREADS="2", RAYON_NUM_THREADS="2")


class SandboxWorker:
    """A child process running fuzz calls under a memory limit, restarted after a hang or a death."""

    def __init__(self, memory_limit: int = MEMORY_LIMIT_BYTES):
        """Prepares a worker; the child starts on the first call."""
        self.memory_limit = memory_limit
        self.proc: subprocess.Popen | None = None
        self._buf = b""
        self._stderr = tempfile.NamedTemporaryFile(prefix="fleetwise-fuzz-", suffix=".stderr")

    def _start(self) -> None:
        self._buf = b""
        self._stderr.seek(0)
        self._stderr.truncate()
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=sandbox_env(),
            cwd=str(REPO),
            start_new_session=True,
            preexec_fn=lambda: _limit_memory(self.memory_limit),
        )

    def close(self) -> None:
        """Ends the child and its process group."""
        if self.proc is not None:
            if self.proc.poll() is None:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.proc.wait()
            for f in (self.proc.stdin, self.proc.stdout):
                f.close()
            self.proc = None

    def _stderr_tail(self) -> str:
        self._stderr.flush()
        with open(self._stderr.name, "rb") as f:
            return _tail(f.read().decode("utf-8", "replace"), 3000)

    def call(self, request: dict, timeout: float = 20.0, fresh: bool = False) -> dict:
        """Runs one request in the child; a hang or a death of the child is an outcome too.
        ``fresh`` starts a new child first: a memory-hazard case then gets the whole address-space
        limit, not what earlier cases left mapped."""
        if fresh:
            self.close()
        if self.proc is None or self.proc.poll() is not None:
            self.close()
            self._start()
        try:
            self.proc.stdin.write((json.dumps(request) + "\n").encode())
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass
        deadline = time.monotonic() + timeout
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        try:
            while b"\n" not in self._buf:
                left = deadline - time.monotonic()
                if left <= 0:
                    self.close()
                    return {"outcome": "hang", "seconds": timeout}
                if not sel.select(left):
                    continue
                chunk = os.read(self.proc.stdout.fileno(), 1 << 20)
                if not chunk:
                    rc = self.proc.wait()
                    tail = self._stderr_tail()
                    self.close()
                    return {"outcome": "died", "returncode": rc, "stderr": tail}
                self._buf += chunk
        finally:
            sel.close()
        line, _, self._buf = self._buf.partition(b"\n")
        return json.loads(line)


def run_cli_process(args: list[str], cwd: Path, timeout: float = 60.0, check_dir: Path | None = None) -> dict:
    """Runs ``python -m fleetwise ARGS`` as a real process under the memory limit, its whole process
    group killed on timeout; returns an outcome like the worker's ``cli`` calls."""
    proc = subprocess.Popen([sys.executable, "-m", "fleetwise", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=str(cwd), env=sandbox_env(), start_new_session=True, preexec_fn=lambda: _limit_memory(MEMORY_LIMIT_BYTES))
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return {"outcome": "hang", "seconds": timeout, "exit_code": None, "stdout": "", "stderr": ""}
    res = {"outcome": "ok", "exit_code": proc.returncode, "stdout": _tail(out.decode("utf-8", "replace")), "stderr": _tail(err.decode("utf-8", "replace")), "violations": []}
    if proc.returncode == 0 and check_dir is not None:
        from fuzz_invariants import check_run_directory

        res["violations"] = check_run_directory(check_dir)
    return res


def describe(outcome: dict) -> str:
    """A short description of an outcome for an assertion message."""
    kind = outcome["outcome"]
    if kind == "crash":
        return f"crash {outcome['type']}: {outcome['message'][:600]}\n{outcome.get('traceback', '')[-1500:]}"
    if kind == "hang":
        return f"hang: no answer within {outcome['seconds']} s"
    if kind == "died":
        return f"died with return code {outcome['returncode']}: {outcome['stderr'][-1500:]}"
    if kind == "error":
        return f"{outcome['type']}: {outcome['message'][:600]}"
    return f"ok with violations: {outcome['violations']}"


def assert_clean(outcome: dict, case: object = "") -> None:
    """Asserts an outcome is a clean fleetwise error or a success whose invariants all hold."""
    if "exit_code" in outcome:
        return assert_clean_cli(outcome, case)
    kind = outcome["outcome"]
    if kind == "error":
        assert outcome["message"].strip(), f"{case}: {outcome['type']} with an empty message"
        return
    assert kind == "ok" and not outcome["violations"], f"{case}: {describe(outcome)}"


def assert_clean_cli(outcome: dict, case: object = "", also_allowed: tuple[int, ...] = ()) -> None:
    """Asserts a CLI outcome is exit 2 with a message and no traceback, or exit 0 with every
    invariant (or an exit code of ``also_allowed``, e.g. check-policy's 1 for a failed check)."""
    text = outcome["stdout"] + outcome["stderr"]
    code = outcome["exit_code"]
    assert outcome["outcome"] != "crash", f"{case}: exit {code}, {describe(outcome)}"
    assert outcome["outcome"] in ("ok",), f"{case}: {describe(outcome)}"
    assert "Traceback" not in text, f"{case}: exit {code} with a traceback:\n{text[-2000:]}"
    assert code in (0, 2, *also_allowed), f"{case}: exit code {code}:\n{text[-2000:]}"
    if code == 2:
        assert outcome["stderr"].strip(), f"{case}: exit 2 with no message"
    else:
        assert not outcome["violations"], f"{case}: exit 0 with violations {outcome['violations']}\n{text[-1500:]}"
        assert not re.search(r"\bnan\b", outcome["stdout"], re.IGNORECASE), f"{case}: exit 0 printing NaN:\n{outcome['stdout'][-1500:]}"


if __name__ == "__main__":
    _serve()
