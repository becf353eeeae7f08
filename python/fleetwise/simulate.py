"""``simulate``: run a scenario through the Rust core and collect a ``Result``."""

from __future__ import annotations

import json
import numbers
import signal
import threading
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import polars as pl
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fleetwise import _core
from fleetwise.cluster import core_config, pool_prices, routing_trace_path, uses_prefixes
from fleetwise.config.load import as_scenario
from fleetwise.config.scenario import Scenario
from fleetwise.config.workload_fit import longest_context
from fleetwise.errors import CapacityError, ConfigError, FleetwiseError, PolicyError
from fleetwise.metrics import expert_columns, speculative_columns, summarize, table_reads
from fleetwise.metrics.speculative import acceptance_class_column
from fleetwise.metrics.idealized import IdealizedRuntime, idealized_runtime, idealized_summary
from fleetwise.metrics.mixed_pool import instance_columns as mixed_pool_columns
from fleetwise.moe import load_routing_trace
from fleetwise.policy.plugging import core_plugins, instance_names_and_roles
from fleetwise.policy.watchdog import CallClock, Watchdog
from fleetwise.request_table import compact_requests, per_pool, request_table
from fleetwise.result import Result
from fleetwise.workload import Workload, build_workload
from fleetwise.workload.acceptance_classes import given_class_codes
from fleetwise.workload.config import TraceArrivals

MAX_POLICY_TIMEOUT_S = 86400.0
"""The longest per-call limit on a Python policy (None, not a number, means no limit)."""

def _idealized_runtimes(sc: Scenario, longest: int) -> dict[str, IdealizedRuntime]:
    """Each pool's model's idealized runtime on the scenario's reference GPU and engine, tabulated
    up to ``longest`` tokens (the longest request)."""
    by_model: dict[str, IdealizedRuntime] = {}
    for p in sc.cluster.pools:
        if p.model not in by_model:
            by_model[p.model] = idealized_runtime(p.model, sc.idealized.gpu, sc.idealized.engine, longest, sc.models, sc.gpus)
    return {p.name: by_model[p.model] for p in sc.cluster.pools}


def _idealized_runtime_expr(compact: pl.DataFrame, sc: Scenario, source: str) -> tuple[Callable[[bool], pl.Expr], dict[str, IdealizedRuntime]]:
    """Each request's idealized runtime (docs/semantics.md), seconds, as an expression over the
    compact request table: the request alone on the reference GPU and engine, by its pool's model
    (the first pool's before routing); null for a rejected request longer than every served one.
    Also each pool's idealized runtime."""
    total = pl.col("prompt_tokens") + pl.col("output_tokens")
    rejected = pl.col("status") == "rejected"
    # The reference is sized for the longest request that was not rejected: a rejected one (e.g.
    # longer than the model's context) has no idealized runtime (null) and cannot fail the run.
    longest = compact.lazy().select(total.filter(~rejected).max()).collect().item()
    longest = 1 if longest is None else int(longest)
    try:
        runtimes = _idealized_runtimes(sc, longest)
    except (ConfigError, CapacityError) as err:
        raise type(err)(f"{source}: {err}") from None
    # The distinct prompt lengths up to it, by counting (a hash or a sort of every request's
    # length costs 10-30x more), a million requests at a time (no copy of the whole column).
    prompts = compact.get_column("prompt_tokens").to_numpy()
    seen = np.zeros(longest + 1, dtype=np.int64)
    for start in range(0, len(prompts), 1 << 20):
        part = prompts[start:start + (1 << 20)]
        seen += np.bincount(part[part <= longest], minlength=longest + 1)
    lengths = np.flatnonzero(seen)
    prompt, output = pl.col("prompt_tokens"), pl.col("output_tokens")

    def seconds(elementwise: bool) -> pl.Expr:
        by_model: dict[int, pl.Expr] = {}  # pools of one model share its tables
        for rt in runtimes.values():
            if id(rt) not in by_model:
                by_model[id(rt)] = rt.seconds_expr(lengths, prompt, output, elementwise=elementwise)
        secs = per_pool({name: by_model[id(rt)] for name, rt in runtimes.items()}, sc.cluster.pools[0].name, pl.Float64)
        return pl.when(rejected & (total > longest)).then(None).otherwise(secs)

    return seconds, runtimes


def _instances_frame(instances: list[dict]) -> pl.DataFrame:
    rows = []
    for i, inst in enumerate(instances):
        mem, st = inst["memory"], dict(inst["stats"])
        st.update(expert_columns(st.pop("experts", None)))
        st.update(mixed_pool_columns(inst.get("mixed_pool")))
        st.update(speculative_columns(st.pop("speculative", None)))
        rows.append({"instance": i, "pool": inst["pool_name"], "gpus": inst["gpus"], "nodes": inst["nodes"], "energy_joules": inst["energy_joules"], "host_link_bytes": inst["host_link_bytes"], "host_link_utilisation": inst["host_link_utilisation"], "prefix_hit_tokens": inst["prefix_hit_tokens"], "prefix_lookup_tokens": inst["prefix_lookup_tokens"], **{f"kv_{k}" if k in ("block_size",) else k: v for k, v in mem.items()}, **st})
    return pl.DataFrame(rows)


POLICY_TIMEOUT_S = 60.0
"""Default time limit of one call into a Python policy during a simulation, seconds."""

_TIMEOUT_GRACE_S = 2.0


def _timed_out(what: str, limit: float, worker: threading.Thread, done: threading.Event, box: dict) -> PolicyError:
    """The error for a policy call that ran past ``limit``: the simulation was cancelled and the
    call interrupted; what finished is kept when the worker stopped in time."""
    stopped = done.wait(_TIMEOUT_GRACE_S)
    err = PolicyError(f"{what} did not return within {limit:g} s (the per-call policy time limit; fleetwise run --policy-timeout)"
                      + ("" if stopped else "; it is blocked outside Python and was abandoned, so nothing of the run could be kept"))
    partial = getattr(box.get("err"), "partial", None)
    if partial is not None:
        err.partial = partial
    return err


_INTERRUPTS = {signal.SIGINT, signal.SIGTERM}
"""The signals a command turns into KeyboardInterrupt (Ctrl-C, and SIGTERM in sweeps and searches)."""


def _signal_mask():
    """This thread's signal mask, to restore after holding the interrupts back; None where masks do
    not exist or this is not the main thread (only the main thread handles signals)."""
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        return None
    return signal.pthread_sigmask(signal.SIG_BLOCK, ())


def _run_core(config_json: str, arrays: tuple, show_progress: bool, extra: dict | None = None, clock: CallClock | None = None, policy_timeout: float | None = None) -> dict:
    """Runs the core in a worker thread so that Ctrl-C reaches the main thread, which then cancels
    the simulation; shows a progress bar over arriving requests when asked. A policy call noted on
    ``clock`` that runs longer than ``policy_timeout`` seconds is interrupted and ends the run with
    a PolicyError naming it."""
    control = _core.SimControl()
    box: dict = {}
    done = threading.Event()

    def target() -> None:
        try:
            box["out"] = _core.simulate(config_json, *arrays, control=control, **(extra or {}))
        except BaseException as e:  # handed to the caller's thread below
            box["err"] = e
        finally:
            done.set()

    worker = threading.Thread(target=target, name="fleetwise-simulate", daemon=True)
    watchdog = Watchdog(clock or CallClock(), policy_timeout, worker)
    total = len(arrays[0])
    mask = _signal_mask()  # read first: an interrupt here leaves nothing changed
    try:
        # Ctrl-C or SIGTERM while the thread starts would leave it running into the core unwaited
        # for (the interpreter then exits under it and aborts): the signals wait until it runs (the
        # thread inherits the mask, so they never go to it). The mask is restored whatever happens,
        # an interrupt raised while it was being set included.
        try:
            if mask is not None:
                signal.pthread_sigmask(signal.SIG_BLOCK, _INTERRUPTS)
            worker.start()
        finally:
            if mask is not None:
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        with Progress(TextColumn("simulating"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), disable=not show_progress, transient=True) as bar:
            task = bar.add_task("simulating", total=total)
            while not done.wait(0.1):
                bar.update(task, completed=control.arrived())
                what = watchdog.overdue()
                if what is not None:
                    control.cancel()
                    watchdog.interrupt()
                    raise _timed_out(what, policy_timeout, worker, done, box)
    except KeyboardInterrupt:
        # The core checks the flag every few thousand events. Wait on the event, not join():
        # an interrupted join() can return early and let the interpreter exit under the worker.
        # A policy call past its time limit is still interrupted; a second interrupt stops waiting.
        control.cancel()
        interrupted = False
        while worker.ident is not None and not done.wait(0.1):
            if not interrupted and watchdog.overdue() is not None:
                watchdog.interrupt()  # once: the policy's PolicyTimeout ends the run
                interrupted = True
        raise
    if "err" in box:
        raise box["err"]
    return box["out"]


def simulate(
    scenario: Scenario | dict | str | Path,
    *,
    workload: Workload | None = None,
    record_iterations: bool = False,
    progress: bool = False,
    router=None,
    schedulers: Mapping[str, Callable] | None = None,
    prefix_caches: Mapping[str, Callable] | None = None,
    expert_caches: Mapping[str, Callable] | None = None,
    decode_choice=None,
    policy_timeout: float | None = POLICY_TIMEOUT_S,
) -> Result:
    """Simulates ``scenario`` (a Scenario, a dict, or a YAML path) and returns its Result.

    ``workload`` replaces the scenario's own requests (useful to replay one workload on several
    clusters); ``record_iterations`` keeps one row per iteration in ``Result.iterations``;
    ``progress`` shows a progress bar. Ctrl-C cancels the simulation (KeyboardInterrupt).
    ``router`` (a ``fleetwise.policy.Router``) replaces the scenario's router; ``schedulers`` maps a
    pool name to a zero-argument factory of ``fleetwise.policy.BatchScheduler`` objects (one per
    instance) run in vLLM v1's loop within the pool's ``vllm-v1`` limits; ``prefix_caches`` maps a
    pool name to a factory of ``fleetwise.policy.PrefixCachePolicy`` objects; ``expert_caches`` maps a
    pool with offloaded experts to a factory ``f(num_layers, num_experts, capacity)`` of
    ``fleetwise.policy.ExpertCachePolicy`` objects (one per GPU); ``decode_choice`` (a
    ``fleetwise.policy.DecodeChoice``) picks the decode instance of each prefilled request in a
    disaggregated cluster. A policy that raises
    stops the simulation with a PolicyError whose ``__cause__`` is its exception; so does one call
    into a Python policy running longer than ``policy_timeout`` seconds (None: no limit), and a
    scheduler policy that leaves an idle instance with waiting requests. When the run stopped after
    some requests finished, the error's ``requests`` attribute holds the per-request table of what
    finished (the others have status ``unfinished``).
    """
    if policy_timeout is not None and (isinstance(policy_timeout, bool) or not (isinstance(policy_timeout, numbers.Real) and 0 < policy_timeout <= MAX_POLICY_TIMEOUT_S)):
        raise ConfigError(f"policy_timeout must be a positive number of seconds up to {MAX_POLICY_TIMEOUT_S:g} (a day), or None for no limit, got {policy_timeout!r}")
    if policy_timeout is not None:
        policy_timeout = float(policy_timeout)  # a numpy number too; True is not one second
    sc = as_scenario(scenario)
    source = sc.source or "<scenario>"
    base_dir = Path(sc._base_dir) if sc._base_dir else None
    class_source = "workload.acceptance_class"  # where a request's class name came from
    if workload is None:
        if isinstance(sc.workload.arrivals, TraceArrivals):
            class_source = f"workload.arrivals.path ({sc.workload.arrivals.path}): column acceptance_class, of the requests replayed"
        try:
            workload = build_workload(sc.workload, sc.seed, base_dir, context_tokens=longest_context(sc))
        except ConfigError as err:
            raise ConfigError(f"{source}: {err}") from None
    wants_hashes = uses_prefixes(sc) or router is not None
    if wants_hashes and workload.hash_ids is not None and workload.hash_block_tokens is None:
        # They were dropped without a word (prefix caching then said the workload had no hashes).
        raise ConfigError(f"{source}: workload.arrivals.hash_block_tokens: the workload has hash_ids but not how many tokens each covers; "
                          "set it (Mooncake's traces: 512)")
    hashes = workload.hash_offsets_and_values() if wants_hashes else None
    try:
        config = core_config(sc, record_iterations, workload.hash_block_tokens if hashes is not None else None)
        trace_path = routing_trace_path(sc, base_dir)
        clock = CallClock()
        plugins = core_plugins(sc, router, schedulers, prefix_caches, clock, policy_timeout, expert_caches=expert_caches, decode_choice=decode_choice)
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None
    try:
        arrays = tuple(np.ascontiguousarray(a, dtype=np.int64) for a in (workload.arrival_ns, workload.prompt_tokens, workload.output_tokens))
        extra = {} if hashes is None else {"hash_offsets": np.ascontiguousarray(hashes[0], dtype=np.int64), "hash_values": np.ascontiguousarray(hashes[1], dtype=np.int64)}
        if trace_path is not None:
            extra.update(load_routing_trace(trace_path).core_arrays())
        given = given_class_codes(sc, workload.acceptance_class, class_source)
        if given:
            extra["given_classes"] = given
        extra.update(plugins)
        out = _run_core(json.dumps(config), arrays, progress, extra, clock, policy_timeout)
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None
    except CapacityError as err:
        raise CapacityError(f"{source}: {err}") from None
    except FleetwiseError as err:
        partial = getattr(err, "partial", None)
        if partial is not None and len(partial["status"]) == len(workload):  # the run stopped part way: keep what finished
            names, _ = instance_names_and_roles(sc)
            compact = compact_requests(workload, partial, [n.rpartition("/")[0] for n in names])
            err.requests = request_table(compact, unrouted=len(names)).collect()
        raise
    instances = json.loads(out["instances_json"])
    pool_of = [inst["pool_name"] for inst in instances]
    compact = compact_requests(workload, out, pool_of, [p.name for p in sc.cluster.pools])
    classes = acceptance_class_column(sc, compact["pool"], given)
    if classes is not None:
        compact = compact.with_columns(acceptance_class=classes)
    for column in ("first_scheduled_ns", "first_token_ns", "completion_ns", "generated_tokens", "instance", "prefill_instance", "kv_transfer_ns", "preemptions", "status"):
        del out[column]  # kept by the compact table where needed: a column it leaves out is freed now
    seconds, runtimes = _idealized_runtime_expr(compact, sc, source)
    table = {"idealized_gpus": {name: rt.gpus for name, rt in runtimes.items()}, "first_pool": sc.cluster.pools[0].name}
    requests = request_table(compact, idealized=seconds(False), **table)
    # What the summaries read: the same rows, Enum labels; a table they read a slice at a time
    # (past CHUNK_ROWS rows) with the idealized runtime's elementwise form.
    labelled = request_table(compact, idealized=seconds(len(compact) > table_reads.CHUNK_ROWS), **table, enum_labels=True)
    idealized_gpus = {rt.model: rt.gpus for rt in runtimes.values()}
    inst_frame = _instances_frame(instances)
    prices = pool_prices(sc)
    inst_frame = inst_frame.with_columns(price_per_hour=pl.col("pool").replace_strict(prices, return_dtype=pl.Float64))
    summary = summarize(labelled, out["itl"], sc.slo, inst_frame, out["end_time_ns"] * 1e-9)
    summary["scenario"] = sc.name
    summary["seed"] = sc.seed
    summary["events"] = out["events"]
    summary["engines"] = {p.name: sc.cluster.engine_of(p) for p in sc.cluster.pools}
    summary["idealized"] = idealized_summary(labelled, sc, idealized_gpus)
    if workload.selection is not None:
        summary["trace_rows"] = dict(workload.selection)
    if workload.length_rows is not None:
        summary["length_rows"] = dict(workload.length_rows)
    iterations = pl.DataFrame(out["iterations"]) if "iterations" in out else None
    return Result(requests=requests, instances=inst_frame, summary=summary, iterations=iterations)
