"""ddpm.evaluation.reports: bits/dim over a data set (batched, with an oracle) and the report files."""


import numpy as np
import torch

from ddpm import GaussianDiffusion, NoiseSchedule
from ddpm.data.images import to_float
from ddpm.evaluation.compare import read_samples
from ddpm.evaluation.reports import evaluate_bpd
from helpers import OracleEps


def test_evaluate_bpd_batches_give_the_per_image_bound():
    d = GaussianDiffusion(NoiseSchedule.linear(50))
    img = torch.randint(0, 256, (1, 1, 4, 4), dtype=torch.uint8)
    images = img.repeat(5, 1, 1, 1)
    model = OracleEps(d, to_float(img))
    res = evaluate_bpd(d, model, images, batch_size=2, progress=False)
    assert res["total"].shape == (5,) and res["terms"].shape == (5, 50) and res["prior"].shape == (5,)
    # the oracle's KL terms vanish, so each image's bound is prior + decoder, the same for all five
    direct = d.bits_per_dim(model, to_float(img), return_terms=True)
    assert np.allclose(res["total"], float(direct["total"][0]), rtol=1e-6)
    assert np.allclose(res["total"], res["prior"] + res["terms"].sum(1))


def test_read_samples_takes_the_layout_sample_writes(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, (3, 8, 6, 1), dtype=np.uint8)
    np.savez(tmp_path / "s.npz", arr_0=arr)
    x, labels = read_samples(tmp_path / "s.npz")
    assert labels is None and x.shape == (3, 1, 8, 6) and torch.equal(x.permute(0, 2, 3, 1), torch.from_numpy(arr))
