"""A model that does not fit is refused with the memory needed and available."""

from __future__ import annotations

import re

import pytest

import fleetwise
from fleetwise.errors import CapacityError

from conftest import run_cli, small_scenario


def _pool(model, gpu, tp):
    sc = small_scenario()
    sc["cluster"]["pools"][0].update(model=model, gpu=gpu, parallelism={"tp": tp})
    return sc


def test_70b_on_one_h100_is_refused_with_needed_and_available():
    with pytest.raises(CapacityError) as info:
        fleetwise.simulate(_pool("llama-3-70b", "h100-sxm", 1))
    msg = str(info.value)
    assert "llama-3-70b on h100-sxm x1" in msg
    # Weights alone: 70.55e9 params * 2 bytes = 131.4 GiB; usable = 0.9 * 80e9 B = 67.06 GiB.
    needed, available = (float(x) for x in re.findall(r"([\d.]+) GiB \(\d+ bytes\)", msg))
    assert needed > 131.4
    assert available == pytest.approx(0.9 * 80e9 / 2**30, abs=0.01)


def test_70b_fits_at_tp2_on_h100_and_tp4_on_a100():
    for model, gpu, tp in (("llama-3-70b", "h100-sxm", 2), ("llama-2-70b", "a100-80gb-sxm", 4)):
        sc = _pool(model, gpu, tp)
        sc["workload"]["requests"] = 50
        sc["workload"]["lengths"] = {"kind": "constant", "prompt": 1000, "output": 200}
        r = fleetwise.simulate(sc)
        assert r.summary["finished"] == 50


def test_cli_estimate_refuses_with_exit_2():
    r = run_cli("estimate", "--model", "llama-2-70b", "--gpu", "l40s", "--tp", "2", "--decode-batch", "1", "--context", "10")
    assert r.returncode == 2
    assert "CapacityError" in r.stderr and "GiB available" in r.stderr


def test_cli_run_refuses_with_exit_2(write_yaml):
    p = write_yaml(_pool("llama-2-70b", "a100-80gb-sxm", 1))
    r = run_cli("run", str(p))
    assert r.returncode == 2
    assert "does not fit" in r.stderr and "available" in r.stderr and str(p) in r.stderr
