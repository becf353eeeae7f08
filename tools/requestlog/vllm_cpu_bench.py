"""Produce a real ``vllm bench serve --save-result --save-detailed`` file on this machine's CPU.

Builds the tiny two-layer Llama of ``tests/harness/tiny_models.py`` (random dummy weights, a local
word-level tokenizer, nothing downloaded), starts one vLLM OpenAI server on it (the CPU build that
``scripts/install-engines.sh`` installs), runs ``vllm bench serve`` against it with random prompts
at a Poisson rate, and stops the server. The result JSON is the fixture
``tests/data/vllm_bench_cpu_tiny.json``::

    python -m tools.requestlog.vllm_cpu_bench --out tests/data/vllm_bench_cpu_tiny.json

Run from the repository root (it imports ``tests/harness``).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))


BENCH = (
    "import sys\n"
    "from vllm.benchmarks.serve import add_cli_args, main\n"
    "from vllm.utils.argparse_utils import FlexibleArgumentParser\n"
    "p = FlexibleArgumentParser()\n"
    "add_cli_args(p)\n"
    "main(p.parse_args(sys.argv[1:]))\n"
)
"""``vllm bench serve`` run as its module's ``main`` (the ``vllm`` console entry point needs the
package's install metadata, which the CPU build installed here lacks)."""


def main(argv: list[str] | None = None) -> int:
    """Build the model, serve it, benchmark it; returns the benchmark's exit status."""
    from harness.tiny_models import build_tiny_model
    from harness.vllm_servers import vllm_servers

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="Where to write the result JSON.")
    ap.add_argument("--num-prompts", type=int, default=120)
    ap.add_argument("--rate", type=float, default=6.0, help="Poisson request rate, requests/s.")
    ap.add_argument("--input-len", type=int, default=96)
    ap.add_argument("--output-len", type=int, default=24)
    ap.add_argument("--max-num-seqs", type=int, default=8)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        model = build_tiny_model(tmp_path / "tiny-llama")
        logs = tmp_path / "logs"
        logs.mkdir()
        server_args = ["--load-format", "dummy", "--max-model-len", "1024", "--max-num-seqs", str(args.max_num_seqs)]
        try:
            with vllm_servers(model, [("server", server_args)], logs, timeout_s=600) as (url,):
                cmd = [sys.executable, "-c", BENCH, "--backend", "vllm",
                       "--base-url", url, "--model", "tiny", "--tokenizer", str(model), "--dataset-name", "random",
                       "--random-input-len", str(args.input_len), "--random-output-len", str(args.output_len),
                       "--random-range-ratio", "0.5", "--num-prompts", str(args.num_prompts),
                       "--request-rate", str(args.rate), "--seed", "0", "--ignore-eos",
                       "--save-result", "--save-detailed", "--result-dir", str(args.out.parent.resolve()),
                       "--result-filename", args.out.name]
                print(" ".join(cmd), flush=True)
                rc = subprocess.run(cmd, cwd=tmp).returncode
        finally:
            for log in logs.glob("*.log"):
                print(f"--- {log.name} (last lines)")
                print("\n".join(log.read_text(errors="replace").splitlines()[-15:]))
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
