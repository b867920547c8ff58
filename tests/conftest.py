import os

# Under pytest-xdist (make test runs one worker per core) each worker and every process it starts uses one thread:
# set before torch loads, so that OpenMP sees it, and so that the in-process CLI (which sets torch's threads from
# OMP_NUM_THREADS) keeps it. Alone, the suite uses two threads.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    # the tests that run two threads on purpose (batch invariance) wait passively, not spinning against the worker
    # on the other core (10x slower when they spin)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or 2))


@pytest.fixture(autouse=True, scope="session")
def _cache_dir(tmp_path_factory):
    """Every data cache the tests build (and their subprocesses') goes to a folder of the session, never ~/.cache."""
    import os

    os.environ["DDPM_CACHE_DIR"] = str(tmp_path_factory.mktemp("ddpm-cache"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory):
    """Two tiny runs trained 3 steps on the shipped digits, unconditional and class-conditional, shared by the tests
    that only read a run (sample, edit, inpaint, eval into another folder): (unconditional, conditional)."""
    from ddpm.cli.commands import main
    from helpers import TINY

    root = tmp_path_factory.mktemp("tiny-runs")
    assert main(["train", "--data", "mnist", "--out", str(root / "u"), "--steps", "3", *TINY]) == 0
    assert main(["train", "--data", "mnist", "--out", str(root / "c"), "--steps", "3", "--class-cond", *TINY]) == 0
    return root / "u", root / "c"
