#!/usr/bin/env bash
# Everything a GPU user needs to know, in one go (about 8 minutes on one H100-class GPU), written to one JSON:
#   bash benchmarks/gpu.sh gpu.json            # needs a CUDA build of PyTorch (python3) and ddpm installed
#   bash benchmarks/gpu.sh --smoke smoke.json  # the same code on the CPU with the tiny preset (the test suite runs it)
# The figures are listed in benchmarks/speed/gpu.py. Not run in CI.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
smoke=()
if [[ "${1:-}" == "--smoke" ]]; then smoke=(--smoke); shift; fi
out="${1:?usage: gpu.sh [--smoke] OUT.json}"
if [[ ${#smoke[@]} -eq 0 ]]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi
export PYTHONPATH="$(dirname "$here")${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python3}" -m benchmarks.speed.gpu "${smoke[@]}" --json "$out"
