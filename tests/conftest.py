import numpy as np
import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(autouse=True, scope="session")
def _cache_dir(tmp_path_factory):
    """Every data cache the tests build (and their subprocesses') goes to a folder of the session, never ~/.cache."""
    import os

    os.environ["DDPM_CACHE_DIR"] = str(tmp_path_factory.mktemp("ddpm-cache"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)
