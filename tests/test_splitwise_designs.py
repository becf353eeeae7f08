"""Splitwise's cluster designs (Patel et al., ISCA 2024, section VI) as a design study
(``scenarios/studies/splitwise-designs.yaml``, ``fleetwise designs``): the designs fit the budgets
they claim, and the paper's trends hold — which design serves the most under the SLOs at iso-power
and at iso-cost, and by about how much.

The paper's numbers come from its 2023 engine on 40 DGX-H100s' worth of machines; the study runs
BLOOM-176B on 10 DGX-H100s' worth under the unfused engine's profile, so the tests assert each
trend with a tolerance around the measured value that still excludes the opposite conclusion
(docs/splitwise-designs.md has the table, measured and reported side by side).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import REPO, SHARED_TRACES, run_cli
from fleetwise.config.design_study import check_budgets, load_design_study
from fleetwise.errors import ConfigError

STUDY = REPO / "scenarios" / "studies" / "splitwise-designs.yaml"


@pytest.fixture(scope="module")
def rows(tmp_path_factory) -> dict:
    """Every design of the study searched once: its row by design name."""
    from fleetwise.sweep.designs import run_study

    out = tmp_path_factory.mktemp("splitwise-designs")
    result = {r["design"]: r for r in run_study(load_design_study(STUDY), out)}
    assert json.loads((out / "designs.json").read_text())["designs"][0]["design"] == "Baseline-H100"
    return result


def _provisioned(rows: dict, budget: str) -> dict:
    return {name: r for name, r in rows.items() if budget in r["provisioning"]}


def test_every_design_fits_the_budgets_it_claims_and_machines_follow_the_papers_ratios():
    """Iso-power: at most the 56 kW of 10 DGX-H100s at TDP (A100 400 W, capped H100 490 W);
    iso-cost: at most their $380.80/h at the paper's prices. 17 and 21 DGX-A100s stand for the
    paper's 70 and 86 against 40 DGX-H100s (1.75x the power, 2.16x the price)."""
    study = load_design_study(STUDY)
    prices = check_budgets(study)
    ref = prices["Baseline-H100"]
    assert ref == {"gpus": 80, "dollars_per_hour": pytest.approx(380.8), "watts": pytest.approx(56000.0)}
    assert prices["Baseline-A100-iso-power"]["gpus"] == 17 * 8 and prices["Baseline-A100-iso-cost"]["gpus"] == 21 * 8
    for name, design in study.designs.items():
        if "iso-power" in design.provisioning:
            assert 0.95 * ref["watts"] <= prices[name]["watts"] <= ref["watts"], name
        if "iso-cost" in design.provisioning:
            assert 0.95 * ref["dollars_per_hour"] <= prices[name]["dollars_per_hour"] <= ref["dollars_per_hour"] + 1e-6, name
    # Splitwise-HHcap's capped token machines: 5 x 8 x 700 W + 7 x 8 x 490 W.
    assert prices["Splitwise-HHcap-iso-power"]["watts"] == pytest.approx(5 * 8 * 700 + 7 * 8 * 490)


def test_iso_power_splitwise_hhcap_serves_the_most(rows):
    """At iso-power every Splitwise design beats both baselines, and Splitwise-HHcap (capped token
    machines buy more machines for the same watts) serves the most: measured 36.4 req/s against
    Baseline-H100's 25.2 (1.45x) and Baseline-A100's 11.6 (3.1x)."""
    iso = _provisioned(rows, "iso-power")
    best = max(iso, key=lambda n: iso[n]["goodput"])
    assert best == "Splitwise-HHcap-iso-power"
    h100, a100 = iso["Baseline-H100"]["goodput"], iso["Baseline-A100-iso-power"]["goodput"]
    assert 1.25 <= iso[best]["goodput"] / h100 <= 1.8
    for name, r in iso.items():
        if name.startswith("Splitwise"):
            assert r["goodput"] > 1.05 * h100 and r["goodput"] > 2 * a100, name


def test_splitwise_aa_more_than_doubles_baseline_a100_at_the_same_power_and_cost(rows):
    """The paper: Splitwise-AA 2.15x Baseline-A100's throughput at the same power and cost (its
    abstract: 2.35x at the same power and cost budgets). Measured: 27.5 against 11.6 req/s, 2.37x,
    on the same 17 DGX-A100s."""
    aa, base = rows["Splitwise-AA-iso-power"], rows["Baseline-A100-iso-power"]
    assert aa["watts"] == base["watts"] and aa["dollars_per_hour"] == base["dollars_per_hour"]
    assert 1.9 <= aa["goodput"] / base["goodput"] <= 2.8


def test_splitwise_ha_beats_baseline_h100_at_lower_cost(rows):
    """The paper: Splitwise-HA 1.18x Baseline-H100's throughput at 10% lower cost (iso-power).
    Measured: 1.11x at 7.5% lower cost (H100 prompt machines, cheaper A100 token machines)."""
    ha, h100 = rows["Splitwise-HA-iso-power"], rows["Baseline-H100"]
    assert 1.04 <= ha["goodput"] / h100["goodput"] <= 1.35
    assert 0.88 <= ha["cost_ratio"] <= 0.95


def test_iso_cost_splitwise_aa_serves_the_most_on_more_power(rows):
    """The paper: at iso-cost Splitwise-AA gives 1.4x Baseline-H100's throughput, drawing 25% more
    power on twice the machines. Measured: 33.4 against 25.2 req/s (1.33x) at 1.2x the watts on
    21 machines against 10."""
    iso = _provisioned(rows, "iso-cost")
    assert max(iso, key=lambda n: iso[n]["goodput"]) == "Splitwise-AA-iso-cost"
    aa = iso["Splitwise-AA-iso-cost"]
    assert 1.2 <= aa["goodput_ratio"] <= 1.6
    assert aa["watts_ratio"] == pytest.approx(1.2) and aa["instances"] == 21
    # Colocated A100s for the same dollars lose to colocated H100s (the baselines' order holds).
    assert iso["Baseline-A100-iso-cost"]["goodput"] < 0.7 * iso["Baseline-H100"]["goodput"]


def test_splitwise_hhcap_matches_baseline_h100_on_less_power_at_the_same_cost(rows):
    """The paper's iso-throughput power-optimized design: Splitwise-HHcap gives Baseline-H100's
    throughput at 25% lower power, same cost and space. Measured on the same 10 machines: 1.14x the
    throughput at 15% lower power (capping 5 token machines saves 5 x 8 x 210 W)."""
    cap, h100 = rows["Splitwise-HHcap-iso-cost"], rows["Baseline-H100"]
    assert cap["instances"] == h100["instances"] and cap["cost_ratio"] == pytest.approx(1.0)
    assert cap["goodput"] >= h100["goodput"]
    assert cap["watts_ratio"] == pytest.approx(0.85)


def test_the_workload_is_the_azure_conversation_traces_lengths():
    """The study's log-normal lengths keep the Azure 2023 conversation trace's medians (prompt
    1020, output 129) within 10% and its prompt p99 within 25%; skipped when the trace is absent."""
    path = SHARED_TRACES / "azure_llm_2023_conv.csv"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    from fleetwise.config.load import load_scenario
    from fleetwise.workload.azure import load_azure_csv
    from fleetwise.workload.build import build_workload

    trace = load_azure_csv(path)
    sc = load_scenario(REPO / "scenarios" / "splitwise-designs.yaml", ["workload.requests=20000"])
    w = build_workload(sc.workload, sc.seed)
    for col, synth in (("prompt_tokens", np.asarray(w.prompt_tokens)), ("output_tokens", np.asarray(w.output_tokens))):
        real = trace[col].to_numpy()
        assert np.median(synth) == pytest.approx(np.median(real), rel=0.10), col
    assert np.percentile(np.asarray(w.prompt_tokens), 99) == pytest.approx(np.percentile(trace["prompt_tokens"].to_numpy(), 99), rel=0.25)


def test_pool_price_per_hour_prices_the_run(tmp_path):
    """A pool's price_per_hour replaces its GPU's catalogue price in the run's cost: dollars are
    GPUs x price x the run's wall time."""
    import fleetwise
    from fleetwise.config.load import load_scenario

    sc = load_scenario(REPO / "scenarios" / "splitwise-designs.yaml", ["workload.requests=200", "workload.arrivals.rate=5"])
    r = fleetwise.simulate(sc)
    inst = r.instances
    assert set(inst["price_per_hour"].to_list()) == {4.76}
    hours = r.summary["cost"]["gpu_hours"] / 96
    assert r.summary["cost"]["dollars"] == pytest.approx(96 * 4.76 * hours)


def test_cli_designs_prints_the_reference_and_refuses_a_design_over_its_budget(tmp_path):
    """``fleetwise designs --design`` searches that design (and the reference) and prints the
    table; a design over the budget it claims is refused before any simulation, exit 2, naming
    the file and the field."""
    r = run_cli("designs", str(STUDY), "--design", "Baseline-H100", "-o", str(tmp_path / "one"))
    assert r.returncode == 0, r.stderr
    assert "Baseline-H100" in r.stdout and "56.0" in r.stdout and "380.8" in r.stdout
    doc = json.loads((tmp_path / "one" / "designs.json").read_text())
    assert [d["design"] for d in doc["designs"]] == ["Baseline-H100"] and 20 < doc["designs"][0]["goodput"] < 32

    text = STUDY.read_text().replace("scenario: ../splitwise-designs.yaml", f"scenario: {REPO / 'scenarios' / 'splitwise-designs.yaml'}")
    over = tmp_path / "over.yaml"
    over.write_text(text.replace("- {<<: *a100, count: 21}", "- {<<: *a100, count: 22}"))
    r = run_cli("designs", str(over), "-o", str(tmp_path / "over"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "over.yaml" in r.stderr and "designs.Baseline-A100-iso-cost.provisioning" in r.stderr and "iso-cost" in r.stderr


def test_a_bad_study_is_a_config_error_naming_file_and_field(tmp_path):
    """Unknown reference, a misspelt field, a design override the scenario schema refuses."""
    base = REPO / "scenarios" / "splitwise-designs.yaml"
    study = {"name": "s", "scenario": str(base), "slo": {"ttft": 2.0}, "reference": "a",
             "designs": {"a": {"provisioning": ["iso-power"]}}}
    import yaml

    def load(data) -> str:
        p = tmp_path / "study.yaml"
        p.write_text(yaml.safe_dump(data))
        with pytest.raises(ConfigError) as e:
            load_design_study(p)
        return str(e.value)

    msg = load({**study, "reference": "b"})
    assert "study.yaml: reference:" in msg and "'b' is not a design; allowed: a" in msg
    msg = load({**study, "designs": {"a": {"provisioning": ["iso-power"], "sett": {}}}})
    assert "designs.a.sett" in msg and "allowed fields" in msg
    msg = load({**study, "designs": {"a": {"provisioning": ["iso-power"], "set": {"cluster.pools.0.count": 0}}}})
    assert "study.yaml" in msg and "designs.a.set" in msg and "count" in msg
    msg = load({**study, "designs": {"a": {"provisioning": ["iso-watts"]}}})
    assert "designs.a.provisioning.0" in msg and "iso-power" in msg
    # An SLO target of true ran with 1 s, and "0.5" was read as a number.
    msg = load({**study, "slo": {"ttft": True}})
    assert "slo: ttft: True is not a number of seconds" in msg
    msg = load({**study, "slo": {"ttft": "0.5"}})
    assert "slo: ttft: '0.5' is not a number of seconds" in msg


def test_splitwise_ha_hands_kv_from_h100_prompt_to_a100_token_machines():
    """Splitwise-HA's KV crosses GPU kinds: every request prefills on an H100 prompt machine and
    decodes on an A100 token machine, and waits after its first token only the layer-wise residue
    (setup plus the last layer; the paper: about 5 ms on DGX-H100, 8 ms on DGX-A100), a little
    longer than Splitwise-HH's because the A100s' NICs take the KV at half the H100s' rate."""
    import fleetwise
    from fleetwise.config.load import load_scenario

    study = load_design_study(STUDY)
    light = ["workload.requests=300", "workload.arrivals.rate=5"]
    waits = {}
    for name in ("Splitwise-HA-iso-power", "Splitwise-HH"):
        sc = load_scenario(study.scenario_path, [*study.designs[name].overrides(), *light])
        r = fleetwise.simulate(sc)
        gpu_of_pool = {p.name: p.gpu for p in sc.cluster.pools}
        gpu_of = {i: gpu_of_pool[pool] for i, pool in enumerate(r.instances["pool"].to_list())}
        req = r.requests
        assert (req["status"] == "finished").all() and (req["mixed_pool"] == "none").all()
        assert {gpu_of[i] for i in req["prefill_instance"].to_list()} == {"h100-sxm"}
        assert {gpu_of[i] for i in req["instance"].to_list()} == ({"a100-80gb-sxm"} if name.startswith("Splitwise-HA") else {"h100-sxm"})
        assert (req["prefill_instance"] != req["instance"]).all()
        waits[name] = float(req["kv_transfer_ns"].median()) / 1e6
    assert 4.0 <= waits["Splitwise-HH"] < waits["Splitwise-HA-iso-power"] <= 8.0


def test_a_design_whose_search_fails_is_named_in_the_error(tmp_path):
    # It named only the base scenario and blamed the SLOs; the cause was the design's own override.
    import yaml

    from fleetwise.sweep.designs import run_study

    sc = {"name": "base", "seed": 7, "cluster": {"pools": [{"name": "main", "count": 1, "gpu": "h100-sxm", "model": "llama-3-8b"}]},
          "workload": {"arrivals": {"kind": "poisson", "rate": 4.0}, "lengths": {"kind": "constant", "prompt": 100, "output": 4}, "requests": 20}}
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(sc))
    study = {"name": "s", "scenario": "base.yaml", "slo": {"ttft": 0.5}, "reference": "b",
             "designs": {"b": {"provisioning": ["iso-power"], "set": {"workload.requests": 1}}}}
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study))
    with pytest.raises(ConfigError, match=r"study.yaml: designs.b \(its overrides workload.requests=1\): .*attainment stays above 0.9 beyond 1e6 req/s"):
        run_study(load_design_study(tmp_path / "study.yaml"), tmp_path / "out")
