"""HTML reports: inputs built with the real simulator, figures checked in the page's JSON and, where
Chromium is installed, rendered headless (every figure div must hold a drawn plot)."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess

import numpy as np
import polars as pl
import pytest

import fleetwise
from conftest import run_cli
from fleetwise.report import FIGURE_IDS, write_report
from fleetwise.report.colors import INSTANCE_PALETTE
from fleetwise.report.latency import cdf_points
from fleetwise.report.timeline import sample_every_kth, sample_step
from fleetwise.report.timeseries import time_average

from conftest import small_scenario

RATE = "workload.arrivals.rate"
ROUTER = "cluster.router.kind"
ROUTERS = ("least-outstanding-tokens", "round-robin")
SLO = {"ttft": 0.2, "tpot": 0.03}


def _scenario(router: str, rate: float = 20.0, requests: int = 300) -> dict:
    sc = small_scenario(slo=SLO)
    sc["cluster"]["router"] = {"kind": router}
    sc["workload"]["requests"] = requests
    sc["workload"]["arrivals"]["rate"] = rate
    return sc


def _sweep_row(point: str, rate: float, router: str, summary: dict) -> dict:
    row = {"point": point, RATE: rate, ROUTER: router, "label": f"{ROUTER}={router}", "rate": rate, "finished": summary["finished"]}
    row["requests_per_s"] = summary["throughput"]["requests_per_s"]
    row["output_tokens_per_s"] = summary["throughput"]["output_tokens_per_s"]
    for m in ("ttft", "tpot", "e2e"):
        for q in ("p50", "p90", "p99"):
            row[f"{m}_{q}"] = summary[f"{m}_s"][q]
    row["slo_attainment"] = summary["slo"]["attainment"]
    return row


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Two run directories (two routers, with iterations) and a 6-point sweep with goodput.json."""
    base = tmp_path_factory.mktemp("report-inputs")
    runs = []
    for router in ROUTERS:
        d = fleetwise.simulate(_scenario(router), record_iterations=True).write(base / router)
        runs.append(d)
    sweep = base / "sweep"
    rows = []
    for k, (rate, router) in enumerate((r, ro) for r in (10.0, 20.0, 40.0) for ro in ROUTERS):
        res = fleetwise.simulate(_scenario(router, rate), record_iterations=True)
        res.write(sweep / "points" / f"p{k}")
        rows.append(_sweep_row(f"p{k}", rate, router, res.summary))
    points = pl.DataFrame(rows)
    points.write_parquet(sweep / "points.parquet")
    (sweep / "sweep.json").write_text(json.dumps({"scenario": "small", "grid": {RATE: [10.0, 20.0, 40.0], ROUTER: list(ROUTERS)}}))
    labels = {}
    for label in sorted(set(points["label"])):
        sub = points.filter(pl.col("label") == label).sort("rate")
        ok = sub.filter(pl.col("slo_attainment") >= 0.9)
        g = float(ok["rate"].max()) if ok.height else 0.0
        labels[label] = {"slo": {"ttft_p90": SLO["ttft"], "tpot_p90": SLO["tpot"]}, "attainment_target": 0.9, "goodput_rate": g, "goodput_per_gpu": g / 2, "gpus": 2,
                         "curve": [{"rate": r, "attainment": a} for r, a in zip(sub["rate"], sub["slo_attainment"])]}
    (sweep / "goodput.json").write_text(json.dumps({"labels": labels}))
    return {"runs": runs, "sweep": sweep, "base": base}


@pytest.fixture(scope="module")
def sweep_report(inputs, tmp_path_factory):
    return write_report([inputs["sweep"]], tmp_path_factory.mktemp("report") / "sweep.html")


@pytest.fixture(scope="module")
def runs_report(inputs, tmp_path_factory):
    return write_report(inputs["runs"], tmp_path_factory.mktemp("report") / "runs.html", title="routers")


def _figures(html: str) -> dict[str, dict]:
    """The figure specs embedded in the page, by div id."""
    out = {}
    for target, text in re.findall(r'<script type="application/json" class="fw-figure-data" data-target="([^"]+)">(.*?)</script>', html, re.S):
        out[target] = json.loads(text)
    return out


def _colors(html: str) -> dict[str, str]:
    return json.loads(re.search(r'<script type="application/json" id="fw-colors">(.*?)</script>', html, re.S).group(1))


def _length(arr) -> int:
    """Length of a plotly data array: a list, or a base64 typed array (plotly >= 6)."""
    if isinstance(arr, dict) and "bdata" in arr:
        size = {"f4": 4, "f8": 8, "i4": 4, "u4": 4, "i2": 2, "u2": 2, "i1": 1, "u1": 1}[arr["dtype"]]
        return len(base64.b64decode(arr["bdata"])) // size
    return len(arr)


def _trace_color(t: dict) -> str | None:
    if t.get("type") == "bar":
        return t.get("marker", {}).get("color")
    return t.get("line", {}).get("color") or t.get("marker", {}).get("color")


def _plotly_inline_once(html: str) -> None:
    from plotly.offline import get_plotlyjs

    assert '<script src="http' not in html and "cdn.plot.ly" not in html.replace(get_plotlyjs(), "")
    assert html.count(get_plotlyjs()[:2000]) == 1, "plotly.js embedded exactly once"


def test_runs_report_has_figures_and_notes(runs_report):
    html = runs_report.read_text()
    _plotly_inline_once(html)
    assert "<title>routers</title>" in html
    figs = _figures(html)
    assert set(figs) == {"fig-latency-cdf", "fig-utilisation", "fig-kv-usage", "fig-queues", "fig-timeline"}
    for f in figs:
        assert f'<div id="{f}" class="fw-figure"></div>' in html
    # Figures without data are replaced by a visible note, not dropped silently.
    for name in ("percentiles", "goodput", "slo-attainment", "moe-pim"):
        assert f'id="note-{name}"' in html and f'id="fig-{name}"' not in html
    # Runs are labelled by directory name; both appear in the CDFs and the summary table.
    cdf_labels = {t["meta"]["label"] for t in figs["fig-latency-cdf"]["data"]}
    assert cdf_labels == set(ROUTERS)
    assert html.count('class="summary runs"') == 1 and "least-outstanding-tokens</th>" in html


def test_sweep_report_figures_and_consistent_colours(sweep_report, inputs, tmp_path):
    html = sweep_report.read_text()
    _plotly_inline_once(html)
    figs = _figures(html)
    assert set(figs) == set(FIGURE_IDS) - {"fig-moe-pim"}
    assert 'id="note-moe-pim"' in html
    colors = _colors(html)
    labels = {f"{ROUTER}={r}" for r in ROUTERS}
    assert set(colors) == labels and len(set(colors.values())) == 2
    seen: dict[str, set[str]] = {}
    per_instance: dict[int, set[str]] = {}
    for fid, spec in figs.items():
        for t in spec["data"]:
            meta = t.get("meta") or {}
            if meta.get("color_by") == "label":
                assert _trace_color(t) == colors[meta["label"]], (fid, t.get("name"))
                seen.setdefault(meta["label"], set()).add(fid)
            elif meta.get("color_by") == "instance":
                c = _trace_color(t)
                if c.startswith("#"):  # the timeline's queueing bars are the same colour, translucent
                    per_instance.setdefault(meta["instance"], set()).add(c)
    for label in labels:
        assert {"fig-latency-cdf", "fig-percentiles", "fig-goodput", "fig-slo-attainment"} <= seen[label]
    assert per_instance and all(cs == {INSTANCE_PALETTE[i]} for i, cs in per_instance.items())
    # p50/p90/p99 of three metrics per series, each with one point per rate.
    perc = [t for t in figs["fig-percentiles"]["data"]]
    assert len(perc) == 2 * 9 and all(_length(t["x"]) == 3 for t in perc)
    # The target attainment is a dashed line; goodput bars in total and per GPU.
    assert any(t.get("line", {}).get("dash") == "dash" and t["name"] == "target 90%" for t in figs["fig-slo-attainment"]["data"])
    assert sum(t["type"] == "bar" for t in figs["fig-goodput"]["data"]) == 4
    # Series are shown in the per-run figures at one common rate; sizes stay bounded.
    assert "per-run figures at 20 req/s" in html
    for t in figs["fig-latency-cdf"]["data"]:
        assert _length(t["x"]) <= 2000
    for fid in ("fig-utilisation", "fig-kv-usage", "fig-queues"):
        assert all(_length(t["y"]) <= 2000 for t in figs[fid]["data"])
    for t in figs["fig-timeline"]["data"]:
        assert _length(t["y"]) <= 200
    # Same inputs, same bytes.
    again = write_report([inputs["sweep"]], tmp_path / "again.html")
    assert again.read_bytes() == sweep_report.read_bytes()


def test_mixed_inputs_prefix_sweep_labels(inputs, tmp_path):
    out = write_report([inputs["runs"][0], inputs["sweep"]], tmp_path / "mixed.html")
    colors = _colors(out.read_text())
    assert set(colors) == {"least-outstanding-tokens"} | {f"sweep: {ROUTER}={r}" for r in ROUTERS}


def test_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError):
        write_report([tmp_path / "missing"], tmp_path / "x.html")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not a run directory"):
        write_report([tmp_path / "empty"], tmp_path / "x.html")
    with pytest.raises(ValueError, match="no inputs"):
        write_report([], tmp_path / "x.html")


def test_a_sweep_without_a_finished_point_is_nothing_to_report_alone_and_a_note_beside_runs(inputs, tmp_path):
    early = tmp_path / "early"  # a sweep stopped before its first point: only its settings
    early.mkdir()
    (early / "sweep.json").write_text(json.dumps({"scenario": "small", "grid": {RATE: [10.0]}}))
    with pytest.raises(ValueError, match="nothing to report: .*early has no finished point yet"):
        write_report([early], tmp_path / "x.html")
    cli = run_cli("report", str(early), "-o", str(tmp_path / "y.html"))
    assert cli.returncode == 2 and "nothing to report" in cli.stdout + cli.stderr and not (tmp_path / "y.html").exists()
    html = write_report([inputs["runs"][0], early], tmp_path / "z.html").read_text()
    assert "no finished point yet; it has no figures" in html


def test_downsampling_and_time_averages():
    v = np.random.default_rng(1).lognormal(size=10_000)
    x, y = cdf_points(v)
    assert len(x) == 2000 and y[-1] == 1.0 and x[-1] == v.max() and np.all(np.diff(x) >= 0)
    x, y = cdf_points(v[:50])
    assert len(x) == 50 and y[0] == 1 / 50
    # Busy on [0, 1.5) and [3, 4): bins of width 1 over [0, 4).
    edges = np.array([0.0, 1.0, 2.0, 3.0, 4.0])
    got = time_average(np.array([0.0, 3.0]), np.array([1.5, 4.0]), np.array([1.0, 2.0]), edges)
    assert np.allclose(got, [1.0, 0.5, 0.0, 2.0])


def test_timeline_sample_is_deterministic_and_avoids_round_robin_aliasing():
    assert sample_step(300, 200, 2) == 3 and sample_step(300, 200, 1) == 2 and sample_step(100, 200, 4) == 1
    req = pl.DataFrame({"request_id": np.arange(1000)[::-1], "instance": np.arange(1000)[::-1] % 4})
    s = sample_every_kth(req, 200)
    assert s.height <= 200 and s["request_id"].is_sorted() and s["instance"].n_unique() == 4
    assert s.equals(sample_every_kth(req, 200))


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def test_report_renders_in_headless_chromium(sweep_report, tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("chromium not installed: apt-get install chromium")
    flags = [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars", "--virtual-time-budget=10000"]
    url = sweep_report.resolve().as_uri()
    dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    ids = re.findall(r'<div id="(fig-[a-z-]+)"', dom)
    assert len(ids) == len(FIGURE_IDS) - 1, ids
    for fid in ids:
        start = dom.index(f'<div id="{fid}"')
        chunk = dom[start : dom.index('<script type="application/json"', start)]
        assert 'class="main-svg"' in chunk and "plot-container" in chunk, f"{fid} was not drawn"
    png = tmp_path / "report.png"
    subprocess.run([*flags, f"--screenshot={png}", "--window-size=1400,3000", url], capture_output=True, timeout=120)
    assert png.exists() and png.stat().st_size > 20_000


def test_a_run_that_stopped_part_way_says_so_in_its_report(tmp_path):
    # A router that fails at request 40 of 60: `fleetwise run` writes what finished and exits 2;
    # the report of that directory used to look like a complete run.
    class Late:
        def __init__(self):
            self.n = 0

        def route(self, request, endpoints):
            from fleetwise.policy import RouteDecision

            self.n += 1
            if self.n > 40:
                raise RuntimeError("late failure")
            return RouteDecision(instance=endpoints[0].index)

    from fleetwise.errors import PolicyError
    from fleetwise.result import write_stopped

    sc = small_scenario()
    sc["workload"]["requests"] = 60
    with pytest.raises(PolicyError) as info:
        fleetwise.simulate(sc, router=Late())
    run = write_stopped(tmp_path / "stopped", info.value.requests, "small", f"PolicyError: {info.value}")
    html = write_report([run], tmp_path / "r.html").read_text()
    assert "this run stopped part way (PolicyError: " in html and "late failure" in html


def test_pipelined_iterations_overlap_but_are_counted_once():
    from fleetwise.report.timeseries import not_overlapping

    # Two batches in flight on a pp = 2 instance: [0, 2) and [1, 3), then [4, 5). The instance is
    # busy on [0, 3) and [4, 5), and its snapshot switches at 1 (the later batch's).
    s, e = not_overlapping(np.array([0.0, 1.0, 4.0]), np.array([2.0, 3.0, 5.0]))
    edges = np.array([0.0, 1.0, 2.0, 3.0, 4.0, 5.0])
    assert np.allclose(time_average(s, e, np.ones(3), edges), [1, 1, 1, 0, 1])
    assert np.allclose(time_average(s, e, np.array([10.0, 20.0, 5.0]), edges), [10, 20, 20, 0, 5])
    # Rows that do not overlap (pp = 1) are unchanged.
    assert np.array_equal(not_overlapping(np.array([0.0, 2.0]), np.array([1.0, 3.0]))[1], [1.0, 3.0])


def test_report_of_an_async_pipeline_shows_busy_fraction_at_most_one(tmp_path):
    out = tmp_path / "s70"
    from conftest import REPO
    from fleetwise.report.load import load_run
    from fleetwise.report.timeseries import _series

    # The scenario's arXiv length file is not shipped: its log-normal fit instead (as its header says).
    lengths = "workload.lengths={kind: lognormal, prompt_median: 2245, prompt_sigma: 0.75, prompt_max: 3584, output_median: 179, output_sigma: 0.8, output_max: 512}"
    r = run_cli("run", str(REPO / "scenarios" / "sarathi-serve-70b.yaml"), "--set", "workload.requests=40", "--set", lengths, "--iterations", "-o", str(out))
    assert r.returncode == 0, r.stderr
    run = load_run(out, "s70")
    ys = [y for _, _, _, y in _series(run, lambda f, i: np.ones(f.height))]
    assert ys and max(float(y.max()) for y in ys) <= 1.0 + 1e-6
