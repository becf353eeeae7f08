"""DistServe's chatbot comparison (Zhong et al., OSDI 2024, Fig. 8) against its own published
OPT-13B request logs (calibration/a100-distserve/) and on OPT-66B (docs/pipeline-parallelism.md):
fleetwise-torch decodes faster than both measured engines, and the profiles fitted to the logs
reproduce them. On OPT-13B, with those engines, the replayed SLO attainment matches the measured
one and DistServe's per-GPU goodput gain over vLLM falls in the paper's 2.0-4.6x. On OPT-66B
colocated vLLM loses its attainment on TPOT as the paper says, but the gain is not reached: both
sides end at the same KV capacity; that ratio is pinned so that a change to it is noticed and the
doc updated. On OPT-175B the split placement is bound by its prefill instance and gains nothing
per GPU either (pinned the same way)."""

from __future__ import annotations

import numpy as np

import fleetwise
from fleetwise.calibrate.comparison import compare
from fleetwise.calibrate.replay import load_replay_scenario, replay
from fleetwise.config.load import load_scenario
from fleetwise.requestlog import read_request_log

from conftest import REPO

LOGS = REPO / "calibration" / "a100-distserve"
SCENARIO = REPO / "scenarios" / "distserve-opt66b.yaml"
SLOS = {"ttft": 2.5, "tpot": 0.15}
# DistServe's vLLM baseline (its evaluation/2-benchmark-serving/2-start-api-server.py): TP4,
# max_num_seqs 1024, max_num_batched_tokens 65536, gpu_memory_utilization 0.92; engine as measured.
COLOCATED = ("cluster.pools=[{name: vllm, count: 1, gpu: a100-80gb-sxm, model: opt-66b, engine: ../calibration/a100-distserve/vllm_profile.yaml, "
             "parallelism: {tp: 4}, scheduler: {kind: vllm, max_num_seqs: 1024, max_num_batched_tokens: 65536}, memory: {gpu_memory_utilization: 0.92}}]")


def _errors(scenario: str, log: str, overrides: list[str] = ()) -> dict[str, float]:
    """Relative errors (simulated / measured - 1) of replaying ``log`` on ``scenario``."""
    sc = load_replay_scenario(LOGS / scenario, list(overrides))
    req_log = read_request_log(LOGS / log)
    return compare(req_log, replay(sc, req_log)).errors()


def test_fleetwise_torch_decodes_faster_than_distserve_s_measured_engines():
    uncalibrated = ["cluster.pools.0.engine=fleetwise-torch"]
    low = _errors("vllm_scenario.yaml", "vllm_requests_rate1.csv", uncalibrated)
    high = _errors("vllm_scenario.yaml", "vllm_requests_rate2.csv", uncalibrated)
    # vLLM of 2023 slows down with load more than the model does: TPOT -25% at 1 req/s, -49% at 2.
    assert -0.35 < low["tpot_mean"] < -0.15 and abs(low["ttft_p50"]) < 0.1
    assert high["tpot_mean"] < -0.4 and high["ttft_p50"] < -0.2
    # DistServe's decode instance: TPOT -30%, while its prefill instance's TTFTs are within 12%.
    ds = _errors("distserve_scenario.yaml", "distserve_requests_rate3.csv", ["cluster.pools.1.engine=fleetwise-torch"])
    assert ds["tpot_mean"] < -0.25 and abs(ds["ttft_p50"]) < 0.12 and abs(ds["ttft_p90"]) < 0.05


def test_profiles_fitted_to_the_logs_reproduce_them():
    vllm_fit = ["cluster.pools.0.engine=vllm_profile.yaml"]
    fitted = _errors("vllm_scenario.yaml", "vllm_requests_rate2.csv", vllm_fit)
    held_out = _errors("vllm_scenario.yaml", "vllm_requests_rate1.csv", vllm_fit)
    for errs in (fitted, held_out):
        assert all(abs(errs[f"tpot_{s}"]) < 0.15 for s in ("mean", "p50", "p90"))
        assert abs(errs["tpot_p99"]) < 0.25  # the p99 of 100-200 requests is one or two of them
    assert all(abs(held_out[f"ttft_{s}"]) < 0.1 for s in ("mean", "p50", "p90", "p99"))
    ds = _errors("distserve_scenario.yaml", "distserve_requests_rate3.csv", ["cluster.pools.1.engine=distserve_decode_profile.yaml"])
    assert all(abs(ds[f"tpot_{s}"]) < 0.05 for s in ("mean", "p50", "p90", "p99"))


def _attainment(overrides: list[str], rate: float) -> tuple[float, float, np.ndarray, np.ndarray]:
    """TTFT and TPOT attainment at ``rate``, and the output lengths of the TPOT misses and of all requests."""
    req = fleetwise.simulate(load_scenario(SCENARIO, [*overrides, f"workload.arrivals.rate={rate}"])).requests
    ttft = req["ttft_s"].to_numpy()
    tpot = np.nan_to_num(req["tpot_s"].to_numpy())  # one-token outputs have no TPOT: met
    out = req["output_tokens"].to_numpy()
    return float((ttft <= SLOS["ttft"]).mean()), float((tpot <= SLOS["tpot"]).mean()), out[tpot > SLOS["tpot"]], out


def test_colocated_vllm_is_tpot_bound_and_disaggregation_is_not(tmp_path):
    from fleetwise.sweep.goodput import search

    dis = search(str(SCENARIO), [], tmp_path / "dis", SLOS, 0.9, low=0.5, tolerance=0.03, jobs=1, quiet=True)
    colo = search(str(SCENARIO), [COLOCATED], tmp_path / "colo", SLOS, 0.9, low=0.5, tolerance=0.03, jobs=1, quiet=True)
    assert (dis["gpus"], colo["gpus"]) == (8, 4)

    # At its goodput colocated vLLM meets nearly every TTFT; what it misses is TPOT, most often for
    # short outputs, whose few decode steps a single prefill of another request can double
    # (measured: 59% of the misses have at most 32 output tokens, against 35% of all requests).
    ttft_ok, tpot_ok, missed, out = _attainment([COLOCATED], colo["goodput_rate"])
    assert ttft_ok >= 0.98
    assert 0.85 <= tpot_ok < 0.95
    assert (missed <= 32).mean() > 1.4 * (out <= 32).mean()
    # Disaggregated, every TTFT is met; the TPOT misses there are requests waiting for room in the
    # decode instance's full KV cache, not prefill interference.
    ttft_ok, tpot_ok, _, _ = _attainment([], dis["goodput_rate"])
    assert ttft_ok >= 0.98 and tpot_ok >= 0.9

    # The split cluster serves twice the rate on twice the GPUs (measured 0.500 vs 0.479 req/s
    # per GPU): both decode sides fill the same ~68k-token KV cache, so the paper's >= 2x per GPU
    # is not reached (docs/pipeline-parallelism.md).
    assert dis["goodput_rate"] > 1.8 * colo["goodput_rate"]
    assert 0.9 < dis["goodput_per_gpu"] / colo["goodput_per_gpu"] < 1.3



def test_vllm_s_online_cost_as_cpu_time_per_sequence_fits_both_logs_and_leaves_the_66b_gain(tmp_path):
    # The alternative reading of vLLM's slow online decode (calibration/a100-distserve/
    # vllm_cpu_profile.yaml): ~1 ms of CPU per running sequence per step, which TP does not divide,
    # instead of slow attention, which it does. It replays both OPT-13B logs' TPOT within 5%
    # (vllm_profile.yaml: +4% / +7% mean, p90 +14% / +10%), yet on OPT-66B TP4 colocated vLLM
    # keeps nearly its goodput (measured 0.459 against 0.479 per GPU): the per-step cost of the
    # colocated engine is not what stands between the model and the paper's 2x.
    from fleetwise.sweep.goodput import search

    for log in ("vllm_requests_rate1.csv", "vllm_requests_rate2.csv"):
        errors = _errors("vllm_scenario.yaml", log, ["cluster.pools.0.engine=vllm_cpu_profile.yaml"])
        assert abs(errors["tpot_mean"]) < 0.05 and abs(errors["tpot_p90"]) < 0.05, (log, errors)
    cpu = COLOCATED.replace("vllm_profile.yaml", "vllm_cpu_profile.yaml")
    colo = search(str(SCENARIO), [cpu], tmp_path / "colo", SLOS, 0.9, low=0.5, tolerance=0.03, jobs=1, quiet=True)
    assert 0.4 < colo["goodput_per_gpu"] < 0.5


def _attainment_measured_and_replayed(scenario: str, log: str, overrides: list[str], ttft: float, tpot: float) -> tuple[float, float]:
    """Fraction of the log's requests meeting both SLOs, as measured and as replayed on ``scenario``
    (TPOT = (last - first token) / (output - 1); one-token outputs meet it)."""
    req_log = read_request_log(LOGS / log)
    f = req_log.frame
    out = f["output_tokens"].to_numpy()
    first = f["first_token_s"].to_numpy()
    ttft_m = first - f["arrival_s"].to_numpy()
    tpot_m = np.where(out > 1, (f["last_token_s"].to_numpy() - first) / np.maximum(out - 1, 1), 0.0)
    sim = replay(load_replay_scenario(LOGS / scenario, overrides), req_log).requests
    met_m = (ttft_m <= ttft) & (tpot_m <= tpot)
    met_s = (sim["ttft_s"].to_numpy() <= ttft) & (np.nan_to_num(sim["tpot_s"].to_numpy()) <= tpot)
    return float(met_m.mean()), float(met_s.mean())


VLLM_13B = ["cluster.pools.0.engine=vllm_profile.yaml"]
DISTSERVE_13B = ["cluster.pools.1.engine=distserve_decode_profile.yaml"]


def test_opt13b_gain_is_reproduced_and_matches_the_measured_attainment(tmp_path):
    from fleetwise.sweep.goodput import search

    # The paper's OPT-13B SLOs (TTFT 0.25 s, TPOT 0.1 s) on the three published runs: attainment as
    # measured and as replayed with the fitted engines (measured 0.86 / 0.665 / 0.983).
    for scenario, log, overrides, tol in [("vllm_scenario.yaml", "vllm_requests_rate1.csv", VLLM_13B, 0.02),
                                          ("vllm_scenario.yaml", "vllm_requests_rate2.csv", VLLM_13B, 0.12),
                                          ("distserve_scenario.yaml", "distserve_requests_rate3.csv", DISTSERVE_13B, 0.02)]:
        measured, replayed = _attainment_measured_and_replayed(scenario, log, overrides, 0.25, 0.1)
        assert abs(replayed - measured) <= tol, (log, measured, replayed)

    # Goodput per GPU: DistServe (prefill TP2 + decode TP1, 3 GPUs) against vLLM on one GPU, within
    # the paper's 2.0-4.6x (measured 1.52 against 0.545 req/s per GPU: 2.8x). vLLM's misses are
    # TTFTs: one GPU prefills a long prompt in about the 0.25 s the SLO allows, DistServe two.
    slos = {"ttft": 0.25, "tpot": 0.1}
    dis = search(str(LOGS / "distserve_scenario.yaml"), DISTSERVE_13B, tmp_path / "dis13", slos, 0.9, low=0.25, tolerance=0.03, jobs=1, quiet=True)
    colo = search(str(LOGS / "vllm_scenario.yaml"), VLLM_13B, tmp_path / "vllm13", slos, 0.9, low=0.25, tolerance=0.03, jobs=1, quiet=True)
    assert (dis["gpus"], colo["gpus"]) == (3, 1)
    assert 2.0 <= dis["goodput_per_gpu"] / colo["goodput_per_gpu"] <= 4.6
    req = fleetwise.simulate(load_scenario(LOGS / "vllm_scenario.yaml", [*VLLM_13B, f"workload.arrivals.rate={colo['goodput_rate']}"])).requests
    assert (req["ttft_s"].to_numpy() <= 0.25).mean() < (np.nan_to_num(req["tpot_s"].to_numpy()) <= 0.1).mean()


def _tpot_against_concurrency(log: str) -> tuple[float, float]:
    """Least-squares TPOT (ms) = a + b N over the log's requests of at least 20 output tokens, N the
    time-averaged number of other requests decoding while each one decodes."""
    d = read_request_log(LOGS / log).frame
    start, end, out = (d[c].to_numpy() for c in ("first_token_s", "last_token_s", "output_tokens"))
    overlap = np.clip(np.minimum(end[:, None], end[None, :]) - np.maximum(start[:, None], start[None, :]), 0, None)
    np.fill_diagonal(overlap, 0)
    n = overlap.sum(1) / np.maximum(end - start, 1e-9)
    keep = out >= 20
    tpot_ms = (end - start)[keep] / (out[keep] - 1) * 1e3
    a, b = np.linalg.lstsq(np.vstack([np.ones(keep.sum()), n[keep]]).T, tpot_ms, rcond=None)[0]
    return float(a), float(b)


def test_distserve_pipelined_decode_runs_one_batch_at_a_time():
    # DistServe's TP1 x PP2 decode (its c21d12 run, 4 req/s) decodes, at a given number of
    # requests decoding, as fast as its TP1 decode on one GPU (c21d11, 3 req/s): TPOT 23.4 + 0.66 N
    # against 23.8 + 0.70 N ms. Its scheduler keeps pp batches, but one of them takes (nearly) every
    # request, so the stages take turns on one batch (calibration/a100-distserve/README.md); a flow
    # shop of two batches would halve the slope.
    (a1, b1), (a2, b2) = _tpot_against_concurrency("distserve_requests_rate3.csv"), _tpot_against_concurrency("distserve_pp2_requests_rate4.csv")
    assert abs(a2 / a1 - 1) < 0.05 and abs(b2 / b1 - 1) < 0.1, (a1, b1, a2, b2)
    # So fleetwise replays it with a synchronous pipeline of one micro-batch and the engine fitted on
    # the TP1 decode: TPOT +12% (what TP1 on the same log predicts), where the asynchronous flow shop
    # predicts -26% and the synchronous pipeline of two micro-batches +24%.
    pp2, engine = ["cluster.pools.1.parallelism.pp=2"], "cluster.pools.1.engine=distserve_decode_profile.yaml"
    log = "distserve_pp2_requests_rate4.csv"
    one_batch = _errors("distserve_scenario.yaml", log, [*pp2, "cluster.pools.1.parallelism.pipeline=sync", "cluster.pools.1.parallelism.microbatches=1", engine])
    flow_shop = _errors("distserve_scenario.yaml", log, [*pp2, engine])
    drained = _errors("distserve_scenario.yaml", log, [*pp2, "cluster.pools.1.parallelism.pipeline=sync", engine])
    assert abs(one_batch["tpot_mean"]) < 0.15 and abs(one_batch["tpot_p50"]) < 0.2, one_batch
    assert -0.35 < flow_shop["tpot_mean"] < -0.15 and 0.15 < drained["tpot_mean"] < 0.35
    assert abs(one_batch["tpot_mean"]) < min(abs(flow_shop["tpot_mean"]), abs(drained["tpot_mean"]))
    # The profile fitted on the PP2 log under the flow shop reproduces it but not the TP1 log: it
    # absorbs the missing per-stage cost into a factor that scales with the batch.
    pp2_fit = _errors("distserve_scenario.yaml", log, [*pp2, "cluster.pools.1.engine=distserve_pp2_decode_profile.yaml"])
    assert all(abs(pp2_fit[f"tpot_{s}"]) < 0.1 for s in ("mean", "p50", "p90"))
    crossed = _errors("distserve_scenario.yaml", "distserve_requests_rate3.csv", ["cluster.pools.1.engine=distserve_pp2_decode_profile.yaml"])
    assert crossed["tpot_mean"] > 0.3


def test_opt175b_placement_is_prefill_bound_and_gains_nothing_per_gpu(tmp_path):
    """DistServe's OPT-175B placement (TP3 x PP3 prefill + TP4 x PP3 decode, both asynchronous
    pipelines) against colocated vLLM TP8 under the paper's 175B SLOs (TTFT 4 s, TPOT 0.2 s):
    the split cluster runs out of prefill capacity, not TPOT, and its per-GPU goodput stays below
    vLLM's (measured 0.135 vs 0.169; docs/pipeline-parallelism.md)."""
    from fleetwise.sweep.goodput import search

    scenario = REPO / "scenarios" / "distserve-opt175b.yaml"
    slos = {"ttft": 4.0, "tpot": 0.2}
    colocated = COLOCATED.replace("opt-66b", "opt-175b").replace("{tp: 4}", "{tp: 8}")
    dis = search(str(scenario), [], tmp_path / "dis", slos, 0.9, low=0.5, tolerance=0.05, jobs=1, quiet=True)
    colo = search(str(scenario), [colocated], tmp_path / "colo", slos, 0.9, low=0.5, tolerance=0.05, jobs=1, quiet=True)
    assert (dis["gpus"], colo["gpus"]) == (21, 8)
    assert 0.65 < dis["goodput_per_gpu"] / colo["goodput_per_gpu"] < 0.95
    # Past its goodput the split cluster misses TTFTs (its prefill instance saturates) while its
    # decodes stay well inside the TPOT SLO.
    req = fleetwise.simulate(load_scenario(scenario, [f"workload.arrivals.rate={1.2 * dis['goodput_rate']}"])).requests
    ttft_ok = float((req["ttft_s"].to_numpy() <= slos["ttft"]).mean())
    tpot_ok = float((np.nan_to_num(req["tpot_s"].to_numpy()) <= slos["tpot"]).mean())
    assert ttft_ok < 0.9 and tpot_ok > 0.97, (ttft_ok, tpot_ok)
