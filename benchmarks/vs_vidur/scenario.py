"""The benchmark's fixed setup: paths, Vidur's vLLM scheduler limits, the per-replica layouts and the
fleetwise scenario both simulators run."""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
REPO = HERE.parent
SHARED = REPO.parent / "shared"
SHAREGPT = SHARED / "traces" / "sharegpt_8k_lengths_llama2tok.csv"
RUN_VIDUR = SHARED / "peers" / "vidur" / "run_vidur.sh"
MAX_TOTAL_TOKENS = 4096
# Vidur's vllm scheduler defaults (vidur 0.0.26): batch_size_cap 128, max_tokens_in_batch 4096.
MAX_NUM_SEQS = 128
MAX_BATCHED_TOKENS = 4096

LAYOUTS = {"tp2pp2": ({"tp": 2, "pp": 2}, "TP2 x PP2"), "tp4": ({"tp": 4}, "TP4")}
PARALLELISM, LAYOUT = LAYOUTS["tp2pp2"]


def use_layout(name: str) -> None:
    """Makes ``LAYOUTS[name]`` fleetwise's layout per replica (``--parallelism``) for what follows."""
    global PARALLELISM, LAYOUT
    PARALLELISM, LAYOUT = LAYOUTS[name]


def scenario_dict(requests: int, replicas: int, qps: float, seed: int, router: str, lengths: dict) -> dict:
    """The fleetwise scenario: ``replicas`` Llama-2-70B/A100 instances in the current layout, Vidur's
    vLLM limits, ``router``, Poisson arrivals at ``qps`` (all replicas) and ``lengths``."""
    return {
        "name": "bench-vs-vidur",
        "seed": seed,
        "cluster": {
            "pools": [
                {
                    "name": "main",
                    "count": replicas,
                    "gpu": "a100-80gb-sxm",
                    "model": "llama-2-70b",
                    "parallelism": PARALLELISM,
                    "scheduler": {
                        "kind": "vllm",
                        "max_num_seqs": MAX_NUM_SEQS,
                        "max_num_batched_tokens": MAX_BATCHED_TOKENS,
                    },
                }
            ],
            "router": {"kind": router},
        },
        "workload": {
            "arrivals": {"kind": "poisson", "rate": qps},
            "lengths": lengths,
            "requests": requests,
        },
    }


def sharegpt_lengths() -> dict:
    """ShareGPT lengths from the shared trace, rows with prompt + output > MAX_TOTAL_TOKENS dropped."""
    return {"kind": "file", "path": str(SHAREGPT), "max_total_tokens": MAX_TOTAL_TOKENS}
