"""Paths the system refuses to look at (a name too long, a symlink loop) are an error naming the
path, shortened, and the system's reason: exit 2, never an ``OSError`` traceback (exit 1). A path
through a regular file (``file/x.yaml``) is "not found", as before."""

from __future__ import annotations

import pytest

from fleetwise.errors import ConfigError, TraceError
from fleetwise.paths import path_kind, shown_path

from conftest import REPO, run_cli

_LONG = "a" * 300
"""A file name longer than any file system's limit (255 bytes)."""
_ESTIMATE = ["estimate", "--model", "llama-3-8b", "--gpu", "h100-sxm", "--decode-batch", "1", "--context", "100"]
_QUICK = str(REPO / "scenarios" / "quickstart.yaml")


def _exit_2(r, *says: str) -> str:
    """``r`` ended with exit code 2, no traceback, and a stderr holding each of ``says``."""
    assert r.returncode == 2, (r.returncode, r.stdout[-2000:], r.stderr[-2000:])
    assert "Traceback" not in r.stderr and "OSError" not in r.stderr, r.stderr[-2000:]
    for s in says:
        assert s in r.stderr, r.stderr[-2000:]
    return r.stderr


@pytest.mark.parametrize("args, label", [
    (["run", "{long}.yaml"], "scenario file"),
    (["sweep", "{long}.yaml", "--grid", "seed=1,2"], "scenario file"),
    (["designs", "{long}.yaml"], "design-study file"),
    ([*_ESTIMATE, "--engine", "{long}.yaml"], "engine profile"),
    ([*_ESTIMATE, "--specs", "{long}.yaml"], "--specs"),
    (["run", _QUICK, "-o", "{long}"], "-o"),
    (["run", _QUICK, "--set", "workload.lengths={{kind: file, path: {long}.csv}}"], "workload.lengths.path: workload file"),
    (["report", "{long}"], "report input"),
    (["report", _QUICK, "-o", "{long}.html"], "-o"),
    (["calibrate", "--data", "{long}", "--gpu", "h100-sxm"], "--data"),
])
def test_a_file_name_too_long_is_an_error_naming_it(tmp_path, args, label):
    long = str(tmp_path / _LONG)
    err = _exit_2(run_cli(*(a.format(long=long) for a in args)), "File name too long")
    assert f"{label} {long}" in err, err  # under 400 characters, so shown whole


def test_an_engine_name_too_long_for_a_file_is_an_unknown_engine():
    err = _exit_2(run_cli(*_ESTIMATE, "--engine", _LONG), "unknown engine 'aaaa", "built-in engines are")
    assert "File name too long" not in err


def test_a_path_through_a_regular_file_is_not_found(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    _exit_2(run_cli("run", str(f / "x.yaml")), f"{f / 'x.yaml'}: scenario file not found")
    _exit_2(run_cli(*_ESTIMATE, "--specs", str(f / "x.yaml")), "specs file not found")


def test_path_kind(tmp_path):
    f = tmp_path / "f"
    f.write_text("x")
    assert path_kind(f) == "file" and path_kind(tmp_path) == "dir" and path_kind("/dev/null") == "other"
    assert path_kind(tmp_path / "missing") is None and path_kind(f / "x") is None
    with pytest.raises(ConfigError, match=r"^-o /.*/a{300}: File name too long$"):  # under 400 characters: whole
        path_kind(tmp_path / _LONG, "-o")
    (tmp_path / ("d" * 200)).mkdir()
    deep = tmp_path / ("d" * 200) / _LONG  # over 400 characters: its head and its file name
    with pytest.raises(ConfigError, match=r"^-o /.*d\.\.\.a{80} \([\d,]+ characters\): File name too long$"):
        path_kind(deep, "-o")
    with pytest.raises(TraceError, match="NUL character"):
        path_kind("a\0b", "trace", TraceError)
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    with pytest.raises(ConfigError, match="symbolic links"):
        path_kind(loop / "x")


def test_shown_path_keeps_short_paths_whole():
    assert shown_path("/tmp/x.yaml") == "/tmp/x.yaml"
    deep = "/data/" + "project/" * 60 + "run.yaml"  # 494 characters: the start and the file name
    assert shown_path(deep) == deep[:200] + "..." + deep[-80:] + " (494 characters)" and shown_path(deep).endswith("project/run.yaml (494 characters)")
    assert shown_path("/" + "b" * 399) == "/" + "b" * 399
