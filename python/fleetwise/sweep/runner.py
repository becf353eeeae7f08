"""Running many points in parallel: local processes or a Ray cluster, with a progress bar."""

from __future__ import annotations

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from fleetwise.sweep.grid import Point
from fleetwise.sweep.point import run_point
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
            for row in _ray_rows(args, ray_address):
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


def _ray_rows(args: list[tuple], address: str):
    """Runs the points as Ray tasks (``address`` "local" starts a local Ray) and yields rows as they finish."""
    try:
        import ray
    except ImportError:
        from fleetwise.errors import ConfigError

        raise ConfigError("--ray needs Ray: pip install 'ray[default]'") from None
    if not ray.is_initialized():
        if address == "local":
            ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
        else:
            ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    remote = ray.remote(run_point)
    refs = [remote.remote(*a) for a in args]
    try:
        while refs:
            ready, refs = ray.wait(refs, num_returns=1)
            yield ray.get(ready[0])
    except BaseException:
        for r in refs:
            ray.cancel(r, force=True)
        raise
