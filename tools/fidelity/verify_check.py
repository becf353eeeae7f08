"""Compares measured speculative verify passes with the cost model's, under an engine profile.

Reads ``DIR/verify.csv`` (``verify_grid.py`` on a lent GPU: B sequences at context C verifying k
draft tokens each, k = 0 a plain decode, whole iterations of the efficient engine) and predicts each
point as the simulator prices it: a plain decode batch for k = 0, else the verify pass of k + 1
query tokens per sequence after its C cached ones, every position sampled (the step of a
``suffix`` proposer, which runs no model, is its verify pass alone), GPU time only (no CPU step),
under the profile's factors (default: the shipped ``vllm`` profile). Writes ``DIR/verify_check.csv``
(each point's measured and predicted seconds, error, and both verify/decode ratios at its B and C)
and prints the errors by k::

    python -m tools.fidelity.verify_check calibration/h100-vllm-like --gpu h100-sxm
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import polars as pl
import yaml

from tools.fidelity.engine_fit import layer_cost_model
from fleetwise.catalog.engine import ENGINES_DIR


def predict(data: pl.DataFrame, gpu_name: str, factors: dict) -> np.ndarray:
    """Predicted GPU seconds of every point of ``data`` (verify.csv rows) under ``factors``."""
    out = []
    for (name, layers), g in data.group_by(["model", "layers_run"], maintain_order=True):
        cm = layer_cost_model(name, layers, gpu_name, factors)
        for r in g.iter_rows(named=True):
            contexts = [r["context"] + 1] * r["batch"]
            if r["k"] == 0:
                out.append(cm.iteration_seconds([], contexts))
            else:
                spec = {"method": "suffix", "num_speculative_tokens": r["k"], "acceptance_rate": 0.5}
                out.append(cm.speculative_step(json.dumps(spec), contexts)[1])
    return np.array(out)


def compare(data: pl.DataFrame, gpu_name: str, factors: dict) -> pl.DataFrame:
    """``data`` with ``predicted`` seconds, ``error`` (predicted / measured - 1) and the verify
    pass's ratio to the plain decode of the same batch and context, measured and predicted."""
    data = data.sort(["model", "context", "batch", "k"])
    table = data.with_columns(predicted=pl.Series(predict(data, gpu_name, factors)))
    table = table.with_columns(error=pl.col("predicted") / pl.col("gpu_seconds") - 1.0)
    plain = table.filter(pl.col("k") == 0).select("model", "batch", "context", plain_measured="gpu_seconds", plain_predicted="predicted")
    table = table.join(plain, on=["model", "batch", "context"], how="left")
    return table.with_columns(ratio_measured=pl.col("gpu_seconds") / pl.col("plain_measured"), ratio_predicted=pl.col("predicted") / pl.col("plain_predicted")).drop(
        "plain_measured", "plain_predicted")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("data", type=Path, help="a directory holding verify.csv")
    ap.add_argument("--gpu", required=True, help="the catalogue GPU it was measured on (h100-sxm, h200)")
    ap.add_argument("--profile", type=Path, default=ENGINES_DIR / "vllm.yaml")
    args = ap.parse_args()
    factors = yaml.safe_load(args.profile.read_text())["factors"]
    table = compare(pl.read_csv(args.data / "verify.csv"), args.gpu, factors)
    table.write_csv(args.data / "verify_check.csv", float_precision=6)
    for (k,), g in table.group_by(["k"], maintain_order=True):
        e = g["error"].to_numpy()
        r = (g["ratio_predicted"] / g["ratio_measured"] - 1.0).to_numpy()
        print(f"k = {k}: {len(e)} points, median |error| {np.median(np.abs(e)):.3f}, median error {np.median(e):+.3f}, worst {np.max(np.abs(e)):.3f}; "
              f"verify/decode ratio median |error| {np.median(np.abs(r)):.3f}, worst {np.max(np.abs(r)):.3f}")
    e = np.abs(table["error"].to_numpy())
    print(f"all {len(e)} points ({args.profile.name} on {args.gpu}): median |error| {np.median(e):.3f}, p90 {np.quantile(e, 0.9):.3f}, worst {e.max():.3f}")


if __name__ == "__main__":
    main()
