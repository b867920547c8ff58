"""ddpm/runtime.py: threads set before torch loads, the malloc setting (checked by its effect, page faults), and the
split of a batch across processes."""

import json
import os
import subprocess
import sys

import pytest

from ddpm import runtime
from ddpm.cli import commands as cli

GLIBC = sys.platform.startswith("linux") and os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc")

# A fresh process runs a few training steps of the mnist network (activations of 0.1-2 MiB, above glibc's first
# mmap threshold) and counts the page faults of each later one (the median of five: a thread's first use of a new
# arena may fault once in a while, wherever it falls).
PROBE = """
import json, resource, sys
from ddpm.runtime import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else False
import torch
from ddpm import UNet
torch.manual_seed(0)
net = UNet.from_preset("mnist")
x, t = torch.randn(32, 1, 28, 28), torch.randint(0, 1000, (32,))
def step():
    net(x, t).square().mean().backward()
for _ in range(3):
    step()
faults = []
for _ in range(5):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"applied": applied, "faults": sorted(faults)[2]}))
"""


def _probe(mode, **env):
    e = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES"))}
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True,
                         env={**e, **env})
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="the setting exists on Linux with glibc only")
def test_freed_memory_is_reused_instead_of_faulted_in_again():
    default, kept = _probe("default"), _probe("keep")
    assert kept["applied"] is True
    assert default["faults"] > 1000  # glibc's defaults fault activations in again every step
    assert kept["faults"] < default["faults"] / 10


@pytest.mark.skipif(not GLIBC, reason="the setting exists on Linux with glibc only")
def test_the_users_own_malloc_settings_win():
    got = _probe("keep", MALLOC_MMAP_THRESHOLD_="131072")
    assert got["applied"] is False
    assert got["faults"] > 1000  # the user's fixed threshold (128 KiB) maps each activation afresh


def test_the_cli_applies_it_before_a_command_runs(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(cli, "keep_freed_memory", lambda: calls.append("malloc") or True)
    assert cli.main(["schedule", "--out", str(tmp_path / "s.png")]) in (0, 1)
    assert calls == ["malloc"]
    calls.clear()
    assert cli.main(["--version"]) == 0  # nothing to do: nothing changed
    assert calls == []


def test_nothing_changes_off_glibc(monkeypatch):
    monkeypatch.setattr(runtime.sys, "platform", "darwin")
    assert runtime.keep_freed_memory() is False


def test_thread_settings(monkeypatch):
    for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT"):
        monkeypatch.delenv(k, raising=False)
    assert runtime.thread_settings(3, busy=0.0) == {"OMP_NUM_THREADS": "3"}
    assert runtime.thread_settings(None, busy=1.2) == {"OMP_NUM_THREADS": str(runtime.usable_cores()),
                                                       "OMP_WAIT_POLICY": "PASSIVE"}
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert runtime.thread_settings(None, busy=1.2) == {}  # the user's own settings win
    assert runtime.thread_settings(2, busy=1.2) == {"OMP_NUM_THREADS": "2"}  # ... except an explicit --threads


def test_busy_cores_sees_another_process():
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        assert runtime.busy_cores(0.5) > 0.5
    finally:
        busy.kill()
        busy.wait()


def test_the_command_sets_threads_before_torch_loads(tmp_path):
    """In a fresh process, `ddpm ... --threads 1` reaches torch (which reads OMP_NUM_THREADS when it loads)."""
    code = ("import sys; from ddpm import cli; assert 'torch' not in sys.modules; "
            f"cli.main(['schedule', '--out', {str(tmp_path / 's.png')!r}, '--threads', '1']); "
            "import torch, os; print(torch.get_num_threads(), os.environ['OMP_NUM_THREADS'])")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMP_")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split() == ["1", "1"]


def test_shares_split_contiguously_and_evenly():
    assert [list(r) for r in runtime.shares(7, 3)] == [[0, 1, 2], [3, 4], [5, 6]]
    assert [len(r) for r in runtime.shares(2, 4)] == [1, 1, 0, 0]
