"""Digests of every shipped scenario's outputs, to prove a change leaves behaviour byte-identical.

    python scripts/output_digest.py before.json                  # on the old commit
    python scripts/output_digest.py after.json --against before.json   # on the new one: exit 1 on any difference

Each scenario in scenarios/ runs with ``fleetwise run --iterations`` into a temporary directory;
the digest is the SHA-256 of every file it writes (requests, instances, iterations, summary).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def digests(scenarios: list[Path]) -> dict[str, dict[str, str]]:
    """Scenario name -> {file name: sha256} of what ``fleetwise run --iterations`` writes."""
    out: dict[str, dict[str, str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for sc in scenarios:
            d = Path(tmp) / sc.stem
            r = subprocess.run([sys.executable, "-m", "fleetwise", "run", str(sc), "--iterations", "-o", str(d)], capture_output=True, text=True, cwd=REPO)
            if r.returncode != 0:
                out[sc.stem] = {"error": r.stderr.strip()[-500:]}
                continue
            out[sc.stem] = {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(d.iterdir())}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("output", type=Path, help="Where to write the digests (JSON).")
    ap.add_argument("--against", type=Path, help="Digests of another commit: report every difference, exit 1 if any.")
    ap.add_argument("--scenarios", nargs="*", type=Path, default=sorted((REPO / "scenarios").glob("*.yaml")))
    args = ap.parse_args()
    now = digests(args.scenarios)
    args.output.write_text(json.dumps(now, indent=2, sort_keys=True) + "\n")
    if args.against is None:
        return 0
    before = json.loads(args.against.read_text())
    diffs = [f"{sc}/{f}" for sc in sorted(set(now) | set(before)) for f in sorted(set(now.get(sc, {})) | set(before.get(sc, {}))) if now.get(sc, {}).get(f) != before.get(sc, {}).get(f)]
    for d in diffs:
        print(f"differs: {d}")
    print(f"{len(diffs)} differing files over {len(now)} scenarios")
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
