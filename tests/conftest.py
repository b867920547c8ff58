import os

# Under pytest-xdist (make test runs one worker per core) each worker and every process it starts uses one thread:
# set before torch loads, so that OpenMP sees it, and so that the in-process CLI (which sets torch's threads from
# OMP_NUM_THREADS) keeps it. Alone, the suite uses two threads.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"

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
