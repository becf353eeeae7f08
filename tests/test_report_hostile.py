"""`fleetwise report` on hostile input: an -o that is one of its inputs, a malformed goodput.json,
run tables lacking the columns the figures read, and a directory of run directories (the output of
compare, place or designs). Each is a clear error naming the file (exit 2), never a traceback, and
no input is ever overwritten."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl
import pytest

import fleetwise
from conftest import run_cli, small_scenario
from fleetwise.report import write_report


def _exit_2(result, *needles: str) -> None:
    text = result.stdout + result.stderr
    assert result.returncode == 2, text
    assert "Traceback" not in text, text
    for n in needles:
        assert n in text, (n, text)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """One small run with every table (iterations too); tests copy it before changing anything."""
    sc = small_scenario()
    sc["workload"]["requests"] = 200
    return fleetwise.simulate(sc, record_iterations=True).write(tmp_path_factory.mktemp("hostile") / "run")


@pytest.fixture
def run(run_dir, tmp_path) -> Path:
    return Path(shutil.copytree(run_dir, tmp_path / "run"))


def _snapshot(d: Path) -> dict[str, bytes]:
    return {str(f.relative_to(d)): f.read_bytes() for f in sorted(d.rglob("*")) if f.is_file()}


# --- 1. -o must never overwrite an input ---------------------------------------------------------


@pytest.mark.parametrize("name", ["summary.json", "requests.parquet", "instances.parquet", "iterations.parquet", "vllm-bench.json"])
def test_output_onto_a_file_of_the_input_run_is_refused(run, name):
    before = _snapshot(run)
    with pytest.raises(ValueError, match=rf"-o .*{name}: is a file of the run directory .*run.*would overwrite it"):
        write_report([run], run / name)
    assert _snapshot(run) == before


def test_cli_output_onto_summary_json_exits_2_and_keeps_the_run(run, tmp_path):
    before = _snapshot(run)
    result = run_cli("report", str(run), "-o", str(run / "summary.json"))
    _exit_2(result, "summary.json", "would overwrite it")
    assert _snapshot(run) == before
    # The input given as a file, and a link to an input file outside the run, are refused too.
    result = run_cli("report", str(run / "summary.json"), "-o", str(run / "summary.json"))
    _exit_2(result, "summary.json", "would overwrite it")
    link = tmp_path / "link.json"
    link.symlink_to(run / "summary.json")
    with pytest.raises(ValueError, match="links to .*summary.json"):
        write_report([run], link)
    assert _snapshot(run) == before
    assert write_report([run], tmp_path / "ok.html").exists()  # the run is still readable


def test_output_of_a_run_files_name_inside_an_input_is_refused_even_when_new(run):
    # A run written without a table would read one written there by the next report.
    (run / "iterations.parquet").unlink()
    with pytest.raises(ValueError, match=r"iterations.parquet: inside the run directory .*\.parquet files are its own data"):
        write_report([run], run / "iterations.parquet")
    assert not (run / "iterations.parquet").exists()


def test_output_onto_a_file_of_an_input_sweep_is_refused(run, tmp_path):
    sweep = tmp_path / "sweep"
    shutil.copytree(run, sweep / "points" / "p0")
    pl.DataFrame({"point": ["p0"], "rate": [20.0], "finished": [200]}).write_parquet(sweep / "points.parquet")
    (sweep / "sweep.json").write_text(json.dumps({"scenario": "small", "grid": {"workload.arrivals.rate": [20.0]}}))
    before = _snapshot(sweep)
    for target in (sweep / "sweep.json", sweep / "points.parquet", sweep / "points" / "p0" / "summary.json", sweep / "points" / "p0" / "requests.parquet"):
        with pytest.raises(ValueError, match="sweep directory .*would overwrite it"):
            write_report([sweep], target)
    assert _snapshot(sweep) == before


def test_a_new_report_inside_a_run_directory_is_still_allowed_and_can_be_rewritten(run):
    out = write_report([run], run / "report.html")
    first = out.read_bytes()
    assert write_report([run], run / "report.html").read_bytes() == first
    (run / "notes.html").write_text("<p>mine</p>")  # an existing file that is no report is kept
    with pytest.raises(ValueError, match="notes.html: is a file of the run directory"):
        write_report([run], run / "notes.html")
    assert (run / "notes.html").read_text() == "<p>mine</p>"


# --- 2. a malformed goodput.json --------------------------------------------------------------------

GOODPUT = {
    "scenario": "small", "slo": {"ttft": 0.5}, "attainment_target": 0.9, "goodput_rate": 20.0, "below_rate": None,
    "goodput_per_instance": 10.0, "goodput_per_gpu": 10.0, "gpus": 2, "instances": 2,
    "curve": [{"rate": 10.0, "attainment": 1.0}, {"rate": 20.0, "attainment": 0.92}, {"rate": 40.0, "attainment": 0.5}],
}


def _goodput_dir(gp: Path, doc) -> Path:
    """A goodput search's output directory at ``gp`` (its points left out) holding ``doc`` as goodput.json."""
    gp.mkdir(parents=True)
    (gp / "sweep.json").write_text(json.dumps({"scenario": "small", "grid": {"workload.arrivals.rate": "goodput search"}, "slo": {"ttft": 0.5}, "attainment_target": 0.9}))
    (gp / "goodput.json").write_text(json.dumps(doc))
    return gp


def test_a_well_formed_goodput_json_is_reported(tmp_path):
    html = write_report([_goodput_dir(tmp_path / "gp", GOODPUT)], tmp_path / "r.html").read_text()
    assert 'id="fig-goodput"' in html and 'id="fig-slo-attainment"' in html


@pytest.mark.parametrize(
    "doc, message",
    [
        ({**GOODPUT, "curve": [1, 2]}, r"curve\[0\]: must be an object"),
        ({**GOODPUT, "curve": [{"rate": None, "attainment": 1.0}]}, r"curve\[0\]\.rate: must be a number, got null"),
        ({**GOODPUT, "curve": [{"rate": "x", "attainment": 1.0}]}, r'curve\[0\]\.rate: must be a number, got "x"'),
        ({**GOODPUT, "curve": [{"rate": 1.0}]}, r"curve\[0\]: missing 'attainment'"),
        ({**GOODPUT, "curve": {"rate": 1.0}}, r"curve: must be a list"),
        ({"labels": {"a": 5}}, r"labels\.a: must be an object"),
        ({"labels": [1, 2]}, r"labels: must be an object"),
        ({"labels": {"a": {**GOODPUT, "goodput_rate": None}}}, r"labels\.a\.goodput_rate: must be a number, got null"),
        ({**GOODPUT, "slo": 3}, r"slo: must be an object"),
        ({**GOODPUT, "attainment_target": "high"}, r'attainment_target: must be a number or null, got "high"'),
        ({**GOODPUT, "gpus": [2]}, r"gpus: must be a number or null"),
        ({**GOODPUT, "goodput_per_gpu": "x"}, r'goodput_per_gpu: must be a number, got "x"'),
    ],
    ids=["curve-ints", "rate-null", "rate-string", "no-attainment", "curve-object", "labels-int", "labels-list", "label-rate-null",
         "slo-int", "target-string", "gpus-list", "per-gpu-string"],
)
def test_a_malformed_goodput_json_names_the_file_and_the_field(tmp_path, doc, message):
    gp = _goodput_dir(tmp_path / "gp", doc)
    with pytest.raises(ValueError, match=r"gp/goodput\.json: " + message):
        write_report([gp], tmp_path / "r.html")
    assert not (tmp_path / "r.html").exists()


@pytest.mark.parametrize("doc", [{**GOODPUT, "curve": [{"rate": None, "attainment": 1.0}]}, {**GOODPUT, "curve": [{"rate": "x", "attainment": 1.0}]}, {"labels": {"a": 5}}],
                         ids=["rate-null", "rate-string", "labels-int"])
def test_cli_malformed_goodput_json_exits_2_naming_the_file(tmp_path, doc):
    gp = _goodput_dir(tmp_path / "gp", doc)
    _exit_2(run_cli("report", str(gp), "-o", str(tmp_path / "r.html")), str(gp / "goodput.json"))


# --- 3. run tables without the columns the report reads ---------------------------------------------


@pytest.mark.parametrize(
    "table, drop, message",
    [
        ("iterations.parquet", ["start_ns", "end_ns"], r"iterations\.parquet: missing column\(s\) start_ns, end_ns; not a fleetwise iterations table"),
        ("iterations.parquet", ["instance"], r"iterations\.parquet: missing column\(s\) instance; not a fleetwise iterations table"),
        ("instances.parquet", ["instance"], r"instances\.parquet: missing column\(s\) instance; not a fleetwise instances table"),
    ],
    ids=["iterations-times", "iterations-instance", "instances-instance"],
)
def test_a_run_table_without_the_columns_the_report_reads_is_named(run, tmp_path, table, drop, message):
    pl.read_parquet(run / table).drop(drop).write_parquet(run / table)
    with pytest.raises(ValueError, match=message):
        write_report([run], tmp_path / "r.html")
    if drop == ["start_ns", "end_ns"]:
        _exit_2(run_cli("report", str(run), "-o", str(tmp_path / "r.html")), str(run / table), "start_ns, end_ns")
        assert not (tmp_path / "r.html").exists()


def test_a_run_table_column_of_the_wrong_type_is_named(run, tmp_path):
    it = pl.read_parquet(run / "iterations.parquet")
    it.with_columns(pl.col("start_ns").cast(pl.String), pl.col("waiting").cast(pl.String)).write_parquet(run / "iterations.parquet")
    with pytest.raises(ValueError, match=r"iterations\.parquet: column\(s\) of the wrong type \(start_ns is String, expected integer; waiting is String, expected number\)"):
        write_report([run], tmp_path / "r.html")


# --- 4. a directory of run directories (compare, place, designs) ------------------------------------


def _shell_glob(d: Path) -> list[Path]:
    """What a shell makes of ``d/*``: its entries, hidden ones left out."""
    return sorted(p for p in d.iterdir() if not p.name.startswith("."))


def test_a_compare_output_directory_says_to_give_its_runs(run, tmp_path):
    cmp = tmp_path / "cmp"
    for name in ("vllm", "sarathi"):
        shutil.copytree(run, cmp / name)
    (cmp / ".compare.lock").write_text("")
    result = run_cli("report", str(cmp), "-o", str(tmp_path / "r.html"))
    _exit_2(result, f"{cmp} is not a run directory but holds run directories (sarathi, vllm)", f"fleetwise report {cmp}/*")
    assert write_report(_shell_glob(cmp), tmp_path / "r.html").exists()  # what it suggests works
    # With a goodput search beside them, and a variant that never finished: name the inputs.
    _goodput_dir(cmp / "vllm-goodput", GOODPUT)
    (cmp / "unfinished").mkdir()
    with pytest.raises(ValueError, match=rf"and sweep or goodput search directories \(vllm-goodput\): give them, e\.g\. `fleetwise report {cmp}/sarathi {cmp}/vllm {cmp}/vllm-goodput`"):
        write_report([cmp], tmp_path / "r.html")


@pytest.mark.parametrize("marker, sub, what", [("placement.json", "points", "a placement search's output"), ("designs.json", "designs", "a design study's output")])
def test_a_place_or_designs_output_directory_says_to_give_its_searches(tmp_path, marker, sub, what):
    out = tmp_path / "study"
    for name in ("a", "b"):
        _goodput_dir(out / sub / name, GOODPUT)
    (out / marker).write_text("{}")
    msg = f"{out} is {what} ({marker}); "
    with pytest.raises(ValueError, match=rf"goodput searches are in {out / sub}/ \(a, b\): give them, e\.g\. `fleetwise report {out / sub}/\*`"):
        write_report([out], tmp_path / "r.html")
    _exit_2(run_cli("report", str(out / marker), "-o", str(tmp_path / "r.html")), msg)
    assert write_report(_shell_glob(out / sub), tmp_path / "r.html").exists()


def test_a_sweeps_points_folder_says_to_give_the_sweep(run, tmp_path):
    gp = _goodput_dir(tmp_path / "gp", GOODPUT)
    shutil.copytree(run, gp / "points" / "p0")
    with pytest.raises(ValueError, match=rf"{gp / 'points'} is the points/ folder of the sweep {gp}: give the sweep directory"):
        write_report([gp / "points"], tmp_path / "r.html")


def test_an_empty_directory_is_still_not_a_run_directory(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not a run directory"):
        write_report([tmp_path / "empty"], tmp_path / "r.html")
