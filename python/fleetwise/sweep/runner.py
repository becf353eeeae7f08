"""Running many points in parallel: local processes or a Ray cluster, with a progress bar."""

from __future__ import annotations

import contextlib

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from fleetwise.sweep.grid import Point
from fleetwise.sweep.point import run_point, save_point, simulate_point_files
from fleetwise.sweep.ray_pool import RayPool, pool_for
from fleetwise.sweep.scenarios import BaseScenario
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
    ray_address: "str | RayPool | None" = None,
    write_requests: bool = True,
    quiet: bool = False,
    description: str = "sweep",
    record_iterations: bool = False,
) -> list[dict]:
    """Runs the points not yet in ``store`` and saves each as it finishes; returns the new rows.

    Each point's row is saved durably by whoever ran it (see ``run_point``), so a point that
    finished survives any interruption. Local workers (``jobs`` > 1) die with this process. An
    exception here (Ctrl-C included) stops at once: running points are abandoned and their workers
    terminated; running the same command again resumes. ``ray_address`` runs the points on Ray: a
    cluster address, ``"local"`` for a private one, or a ``RayPool`` shared with other callers.
    """
    done = store.done()  # once: it looks at every row file
    todo = [p for p in points if p.id not in done]
    base = BaseScenario(scenario_path, base_overrides)  # parsed once; every point's scenario is a copy with its overrides
    args = [(base, p, str(store.dir), grid_paths, write_requests, record_iterations) for p in todo]
    rows: list[dict] = []
    with _progress(quiet) as bar:
        task = bar.add_task(description, total=len(points), completed=len(points) - len(todo))
        if ray_address is not None and todo:
            ray_rows = _ray_rows(base, todo, store, grid_paths, write_requests, record_iterations, ray_address)
            with contextlib.closing(ray_rows):  # an exception here cancels the tasks still running at once
                for row in ray_rows:
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


def _ray_rows(base: BaseScenario, todo: list[Point], store: SweepStore, grid_paths: list[str],
              write_requests: bool, record_iterations: bool, ray: "str | RayPool"):
    """Runs the points as Ray tasks and yields their rows as they finish.

    The driver loads each point's scenario (so relative paths resolve here, not in a worker's
    directory) and ships it whole; each task sends its run files back, and the driver writes them
    under the sweep directory — on a cluster of several machines every point's data lands here.
    Trace files a scenario names are read where the task runs: on several machines they must be on
    a shared path. ``ray`` is a cluster address (a pool for this call) or a pool shared with others.
    """
    def tasks():
        for p in todo:  # loaded as the window reaches them, not all at once
            yield base.load(p.overrides()), p, write_requests, record_iterations

    with contextlib.ExitStack() as stack:
        pool = pool_for(ray, stack)
        results = stack.enter_context(contextlib.closing(pool.imap_unordered(simulate_point_files, tasks(), describe=lambda i: f"point {todo[i].id} ({todo[i].label}, rate {todo[i].rate})")))
        yield from save_points(store, ((todo[i], files, summary) for i, (files, summary) in results), grid_paths)


SAVE_THREADS = 8
"""Points the driver saves at once (writing a point waits mostly on fsync, which threads overlap)."""


def save_points(store: SweepStore, finished, grid_paths: list[str]):
    """Saves each ``(point, files, summary)`` of ``finished`` (``save_point``) in a few threads, so
    that the driver of a large Ray cluster keeps up with its tasks; yields each row once its point is
    on disk. On an exception the points being written are finished (each is written atomically),
    those not started are dropped."""
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    savers = ThreadPoolExecutor(SAVE_THREADS, thread_name_prefix="fleetwise-save")
    saving: set = set()
    try:
        for point, files, summary in finished:
            saving.add(savers.submit(save_point, store.dir, point, files, summary, grid_paths))
            done, saving = wait(saving, timeout=0, return_when=FIRST_COMPLETED) if len(saving) < 2 * SAVE_THREADS else wait(saving, return_when=FIRST_COMPLETED)
            for f in done:
                yield f.result()
        while saving:
            done, saving = wait(saving, return_when=FIRST_COMPLETED)
            for f in done:
                yield f.result()
    finally:
        savers.shutdown(wait=True, cancel_futures=True)
