"""Running many points in parallel: local processes or a Ray cluster, with a progress bar."""

from __future__ import annotations

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from fleetwise.sweep.grid import Point
from fleetwise.sweep.point import run_point, save_point, simulate_point_files
from fleetwise.sweep.store import SweepStore
from fleetwise.sweep.workers import WorkerPool


def _progress(quiet: bool) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(), disable=quiet)


def run_points(
    scenario_path: str,
    base_overrides: list[str],
    points: list[Point],
    store: SweepStore,
    grid_paths: list[str],
    jobs: int = 1,
    ray_address: str | None = None,
    write_requests: bool = True,
    quiet: bool = False,
    description: str = "sweep",
    record_iterations: bool = False,
) -> list[dict]:
    """Runs the points not yet in ``store`` and saves each as it finishes; returns the new rows.

    Each point's row is saved durably by whoever ran it (see ``run_point``), so a point that
    finished survives any interruption. Local workers (``jobs`` > 1) die with this process. An
    exception here (Ctrl-C included) stops at once: running points are abandoned and their workers
    terminated; running the same command again resumes.
    """
    todo = [p for p in points if p.id not in store.done()]
    args = [(scenario_path, base_overrides, p, str(store.dir), grid_paths, write_requests, record_iterations) for p in todo]
    rows: list[dict] = []
    with _progress(quiet) as bar:
        task = bar.add_task(description, total=len(points), completed=len(points) - len(todo))
        if ray_address is not None:
            for row in _ray_rows(scenario_path, base_overrides, todo, store, grid_paths, write_requests, record_iterations, ray_address):
                store.add(row)
                rows.append(row)
                bar.advance(task)
        elif jobs <= 1 or len(args) <= 1:
            for a in args:
                row = run_point(*a)
                store.add(row)
                rows.append(row)
                bar.advance(task)
        else:
            with WorkerPool(run_point, jobs) as pool:
                for _, row in pool.imap_unordered(args, describe=lambda i: f"point {todo[i].id} ({todo[i].label}, rate {todo[i].rate})"):
                    store.add(row)
                    rows.append(row)
                    bar.advance(task)
    return rows


def _ray_init(address: str) -> None:
    """Connects to the Ray cluster at ``address``, or starts a private one for "local" (never
    joining a cluster that happens to run on this machine)."""
    import ray

    if ray.is_initialized():
        return
    ray.init(address="local" if address == "local" else address, include_dashboard=False, log_to_driver=False, configure_logging=False)


def _ray_rows(scenario_path: str, base_overrides: list[str], todo: list[Point], store: SweepStore, grid_paths: list[str],
              write_requests: bool, record_iterations: bool, address: str):
    """Runs the points as Ray tasks and yields their rows as they finish.

    The driver loads each point's scenario (so relative paths resolve here, not in a worker's
    directory) and ships it whole; each task sends its run files back, and the driver writes them
    under the sweep directory — on a cluster of several machines every point's data lands here.
    Trace files a scenario names are read where the task runs: on several machines they must be on
    a shared path.
    """
    try:
        import ray
    except ImportError:
        from fleetwise.errors import ConfigError

        raise ConfigError("--ray needs Ray: pip install 'ray[default]'") from None
    from fleetwise.config.load import load_scenario

    scenarios = [load_scenario(scenario_path, [*base_overrides, *p.overrides()]) for p in todo]
    _ray_init(address)
    remote = ray.remote(simulate_point_files)
    refs = {remote.remote(sc, p, write_requests, record_iterations): p for sc, p in zip(scenarios, todo)}
    pending = list(refs)
    try:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            files, summary = ray.get(ready[0])
            yield save_point(store.dir, refs[ready[0]], files, summary, grid_paths)
    except BaseException:
        for r in pending:
            ray.cancel(r, force=True)
        raise
