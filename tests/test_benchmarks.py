"""The benchmarks cannot rot: every script's --smoke mode (tiny settings, seconds on a CPU) runs every part of it.
gpu.sh's figures are checked to be there, finite and positive, never against a bound that depends on the machine's
speed or load (an MFU below 1 is the benchmark's business: a busy machine once made it 1.28)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
GPU_SH = ROOT / "benchmarks" / "gpu.sh"
SCRIPTS = sorted(".".join(p.relative_to(ROOT).with_suffix("").parts) for p in (ROOT / "benchmarks").glob("*/*.py")
                 if p.name != "__init__.py" and p.stem != "gpu")  # gpu.py: through gpu.sh, below


def test_every_benchmark_is_found():
    assert len(SCRIPTS) >= 20 and "benchmarks.speed.ab" in SCRIPTS and "benchmarks.checks.torchrun" in SCRIPTS


@pytest.mark.parametrize("module", SCRIPTS)
def test_every_benchmark_runs_in_its_smoke_mode(module, tmp_path):
    """``python -m benchmarks.<purpose>.<name> --smoke`` from another folder (what it writes goes there) exits 0."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-m", module, "--smoke"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    assert res.stdout.strip(), "a benchmark prints its figures"


def test_gpu_sh_smoke_writes_every_figure(tmp_path):
    out = tmp_path / "smoke.json"
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(["bash", str(GPU_SH), "--smoke", str(out)], env=env, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    r = json.loads(out.read_text())
    for key in ("train_eager", "train_compiled"):
        for figure in ("img_per_s", "flops_per_image", "mfu_vs_measured_peak"):
            assert _positive(r[key][figure]), (key, figure, r[key][figure])
    for key in ("sampling_eager", "sampling_compiled"):
        assert _positive(r[key]["ancestral_100_steps_s"]) and _positive(r[key]["sde-dpm++_20_steps_s"])
    assert r["fp16_gradscaler"]["all_finite"] and r["fp16_gradscaler"]["precision"] == "fp16"
    assert r["stop_and_resume"]["max_weight_difference"] == 0.0  # resumed exactly on this device
    assert _positive(r["checkpoint"]["on_the_spot_s"]) and _positive(r["checkpoint"]["stall_s"])
    assert _positive(r["cli"]["ddpm_train_img_per_s"]) and _positive(r["cli"]["ddpm_sample_job_s"])
    for gc in ("off", "on"):
        figures = r["grad_checkpointing"][gc]
        assert _positive(figures["step_s"]) and _positive(figures["estimate_mib"])


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine with CUDA would run the whole benchmark")
def test_gpu_sh_without_cuda_says_so_and_stops(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable}
    res = subprocess.run(["bash", str(GPU_SH), str(tmp_path / "x.json")], env=env, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 2 and "CUDA is not available" in res.stderr and not (tmp_path / "x.json").exists()
