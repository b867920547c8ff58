"""The GPU benchmark script cannot rot: its --smoke mode (the CPU, the tiny preset) runs every part of it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

GPU_SH = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.sh"


def test_gpu_sh_smoke_writes_every_figure(tmp_path):
    out = tmp_path / "smoke.json"
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(["bash", str(GPU_SH), "--smoke", str(out)], env=env, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    r = json.loads(out.read_text())
    for key in ("train_eager", "train_compiled"):
        assert r[key]["img_per_s"] > 0 and r[key]["flops_per_image"] > 0 and 0 < r[key]["mfu_vs_measured_peak"] < 1
    for key in ("sampling_eager", "sampling_compiled"):
        assert r[key]["ancestral_100_steps_s"] > 0 and r[key]["sde-dpm++_20_steps_s"] > 0
    assert r["fp16_gradscaler"]["all_finite"] and r["fp16_gradscaler"]["precision"] == "fp16"
    assert r["stop_and_resume"]["max_weight_difference"] == 0.0  # resumed exactly on this device
    assert r["cli"]["ddpm_train_img_per_s"] > 0 and r["cli"]["ddpm_sample_job_s"] > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine with CUDA would run the whole benchmark")
def test_gpu_sh_without_cuda_says_so_and_stops(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable}
    res = subprocess.run(["bash", str(GPU_SH), str(tmp_path / "x.json")], env=env, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 2 and "CUDA is not available" in res.stderr and not (tmp_path / "x.json").exists()
