#!/usr/bin/env bash
# The speed benchmark on a CUDA machine, against the paper's figures (TPU v3-8: 21 steps/s at batch 128
# = 2,688 images/s; 256 samples in 17 s). Not run in CI. Needs ddpm installed with the bench extra:
#   pip install torch && pip install -e '.[bench]' && bash benchmarks/gpu.sh
set -euo pipefail
cd "$(dirname "$0")"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
# Training and forward images/s: ddpm (bf16 autocast) vs diffusers fp32 / bf16 on the same cifar10 network.
python speed.py --device cuda --preset cifar10 --batch-size 128 --rounds 5 --iters 10 --no-memory \
    --sample 256 --compile --json gpu_results.json
# The same through the CLI: `ddpm train` reports images/s in metrics.csv.
tmp=$(mktemp -d)
python - "$tmp" <<'PY'
import sys, numpy as np
from pathlib import Path
from PIL import Image
root = Path(sys.argv[1]) / "images"; root.mkdir()
rng = np.random.default_rng(0)
for i in range(512):
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / f"{i:04d}.png")
PY
for extra in "" "--compile"; do
  rm -rf "$tmp/run"
  ddpm train --data "$tmp/images" --preset cifar10 --batch-size 128 --steps 300 --log-every 50 \
      --save-every 100000 --sample-every 0 --out "$tmp/run" --quiet $extra
  echo "ddpm train $extra: images/s over the last logged steps:"; tail -n 3 "$tmp/run/metrics.csv"
done
rm -rf "$tmp"
