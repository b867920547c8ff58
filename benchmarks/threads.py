"""How OpenMP settings hold up when another process keeps the cores busy.

    python benchmarks/threads.py [--calls 60] [--batch 64]

A fresh Python process runs ``--calls`` forwards of the mnist network (batch ``--batch``, no grad), with
different OpenMP settings, once on an idle machine and once beside a competitor that keeps the cores
busy: another PyTorch process doing matmuls with its own threads (what a second ddpm job does).
Each setting runs in its own process so the setting applies before torch loads. Prints seconds per call.
"""

import argparse
import os
import subprocess
import sys
import time

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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=60)
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    print(f"mnist network, batch {args.batch}, {args.calls} forwards per process; cores: {os.cpu_count()}")
    print(f"{'setting':<36}{'idle s/call':>13}{'busy s/call':>13}{'busy/idle':>11}")
    for name, env in SETTINGS.items():
        idle = run(args.calls, args.batch, dict(env))
        comp = subprocess.Popen([sys.executable, "-c", COMPETITOR], stdout=subprocess.DEVNULL)
        try:
            time.sleep(2)  # let the competitor's threads start
            busy = run(args.calls, args.batch, dict(env))
        finally:
            comp.kill()
            comp.wait()
        print(f"{name:<36}{idle:>13.4f}{busy:>13.4f}{busy / idle:>10.1f}x", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
