"""How OpenMP settings hold up when another process keeps the cores busy.

    python -m benchmarks.speed.threads [--calls 60] [--batch 64] [--cli]

A fresh Python process runs ``--calls`` forwards of the mnist network (batch ``--batch``, no grad), with
different OpenMP settings, once on an idle machine and once beside a competitor that keeps the cores
busy: another PyTorch process doing matmuls with its own threads (what a second ddpm job does).
Each setting runs in its own process so the setting applies before torch loads. Prints seconds per call.

``--cli`` also times the whole command ``ddpm sample --n 64 --sampler ddim --steps 50`` (mnist network)
beside the competitor: as it runs by default, with libgomp's own default wait (GOMP_SPINCOUNT=300000, what
every version before the load check got), and with OMP_NUM_THREADS=1.
"""

import argparse
import os
import subprocess
import sys
import time

from benchmarks.common import parse

WORK = r"""
import sys, time, torch
from ddpm import UNet
torch.manual_seed(0)
net = UNet.from_preset("mnist").eval()
x, t = torch.randn(int(sys.argv[2]), 1, 28, 28), torch.randint(0, 1000, (int(sys.argv[2]),))
with torch.no_grad():
    for _ in range(3):
        net(x, t)
    t0 = time.perf_counter()
    for _ in range(int(sys.argv[1])):
        net(x, t)
print((time.perf_counter() - t0) / int(sys.argv[1]))
"""

COMPETITOR = r"""
import torch
a = torch.randn(512, 512)
while True:
    a = (a @ a).tanh()
"""

SETTINGS = {
    "default (2 threads, active wait)": {},
    "OMP_WAIT_POLICY=PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"},
    "OMP_NUM_THREADS=1": {"OMP_NUM_THREADS": "1"},
    "ddpm's default (--threads unset)": {"DDPM_BENCH_CLI": "1"},
}


def run(calls: int, batch: int, env: dict) -> float:
    e = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "GOMP_"))}
    if env.pop("DDPM_BENCH_CLI", None):  # what the ddpm command sets before torch loads
        from ddpm.runtime import thread_settings

        env = {**env, **thread_settings(None)}
    out = subprocess.run([sys.executable, "-c", WORK, str(calls), str(batch)], env={**e, **env},
                         capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def time_cli(run_dir: str, env: dict) -> float:
    e = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "GOMP_"))}
    out = os.path.join(run_dir, "s.npz")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "ddpm", "sample", "--run", run_dir, "--n", "64", "--sampler", "ddim",
                    "--steps", "50", "--out", out, "--overwrite"], env={**e, **env}, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def cli_rows() -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        run = os.path.join(tmp, "run")
        subprocess.run([sys.executable, "-m", "ddpm", "train", "--data", "mnist", "--preset", "mnist", "--steps", "1",
                        "--out", run, "--quiet"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        settings = {"ddpm sample (its default)": {}, "GOMP_SPINCOUNT=300000 (libgomp's default)":
                    {"GOMP_SPINCOUNT": "300000"}, "OMP_NUM_THREADS=1": {"OMP_NUM_THREADS": "1"}}
        print(f"\n{'whole command, competitor busy':<44}{'seconds':>9}")
        comp = subprocess.Popen([sys.executable, "-c", COMPETITOR], stdout=subprocess.DEVNULL)
        try:
            time.sleep(2)
            for name, env in settings.items():
                print(f"{name:<44}{time_cli(run, env):>9.1f}", flush=True)
        finally:
            comp.kill()
            comp.wait()

SMOKE = {"calls": 2, "batch": 2, "settings": 1, "settle": 0.2}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=60)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--cli", action="store_true", help="also time the whole ddpm sample command")
    ap.add_argument("--settings", type=int, default=len(SETTINGS), help="measure the first N settings")
    ap.add_argument("--settle", type=float, default=2.0, help="seconds the competitor's threads get to start")
    args = parse(ap, SMOKE)
    print(f"mnist network, batch {args.batch}, {args.calls} forwards per process; cores: {os.cpu_count()}")
    print(f"{'setting':<36}{'idle s/call':>13}{'busy s/call':>13}{'busy/idle':>11}")
    for name, env in list(SETTINGS.items())[:args.settings]:
        idle = run(args.calls, args.batch, dict(env))
        comp = subprocess.Popen([sys.executable, "-c", COMPETITOR], stdout=subprocess.DEVNULL)
        try:
            time.sleep(args.settle)  # let the competitor's threads start
            busy = run(args.calls, args.batch, dict(env))
        finally:
            comp.kill()
            comp.wait()
        print(f"{name:<36}{idle:>13.4f}{busy:>13.4f}{busy / idle:>10.1f}x", flush=True)
    if args.cli:
        cli_rows()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
