"""Sets of any size: moments accumulated batch by batch, a seeded reference subset, and one pass shared by
torchrun's processes, each checked against numpy over all the rows at once."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from ddpm.evaluation import streaming
from ddpm.evaluation.compare import ImageSet, score
from ddpm.evaluation.features import extract_features, load_digit_classifier, reference_pass
from ddpm.evaluation.metrics import frechet_distance, kernel_inception_distance, precision_recall
from ddpm.evaluation.streaming import Moments, feature_pass, reference_subset


@pytest.fixture(scope="module")
def mnist_images():
    from ddpm.data.sources import load_data

    return load_data("mnist", channels=1, image_size=28).images[:600].clone()


@pytest.mark.parametrize("sizes", [[7, 1, 30, 2], [3000, 5, 2100]])
def test_moments_of_batches_are_numpys_mean_and_covariance_of_all_rows(sizes, monkeypatch):
    monkeypatch.setattr(streaming, "_BLOCK_ROWS", 16)  # many merges, of blocks of unequal size
    rng = np.random.default_rng(0)
    rows = [rng.normal(size=(k, 5)) * [1, 2, 3, 4, 5] + 1e4 for k in sizes]  # far from 0: cancellation would show
    acc = Moments(5)
    for r in rows:
        acc.add(torch.from_numpy(r).float())
    mu, sigma = acc.stats()
    every = np.concatenate([r.astype(np.float32).astype(np.float64) for r in rows])
    assert acc.n == len(every)
    assert np.allclose(mu, every.mean(axis=0), rtol=0, atol=1e-9)
    assert np.allclose(sigma, np.cov(every, rowvar=False), rtol=1e-9, atol=1e-9)


def test_a_subset_is_seeded_sorted_and_only_of_a_larger_set():
    a = reference_subset(1000, 100)
    assert len(a) == 100 == len(set(a.tolist())) and (np.diff(a) > 0).all() and a.max() < 1000
    assert np.array_equal(a, reference_subset(1000, 100))
    assert not np.array_equal(a, reference_subset(1000, 100, seed=1))
    assert reference_subset(100, 100) is None and reference_subset(100, None) is None


class Lazy:
    """Images made on request from their index, as a reference too large to hold would be read."""

    def __init__(self, n):
        self.n, self.shape = n, (n, 1, 28, 28)
        self.asked = 0

    def __len__(self):
        return self.n

    def __getitem__(self, which):
        idx = torch.arange(self.n)[which]
        self.asked = max(self.asked, len(idx))
        g = torch.Generator().manual_seed(0)
        base = torch.randint(0, 256, (1, 1, 28, 28), generator=g)
        return ((base + idx[:, None, None, None] * 37) % 256).to(torch.uint8)


def test_a_pass_holds_one_batch_of_images_and_gives_what_whole_arrays_give():
    net = load_digit_classifier()
    images = Lazy(300)
    idx = reference_subset(300, 120)
    r = feature_pass(net, images, indices=idx, keep=True, with_probs=True, batch_size=16)
    assert images.asked == 16
    whole = images[torch.from_numpy(idx)]
    feats, probs = extract_features(net, whole, with_probs=True)
    assert np.allclose(r.features, feats, atol=1e-5) and np.allclose(r.probs, probs, atol=1e-6)
    assert np.allclose(r.mu, feats.mean(axis=0), atol=1e-5)
    assert np.allclose(r.sigma, np.cov(feats, rowvar=False), atol=1e-5)


def test_score_reads_a_seeded_subset_of_a_larger_reference_and_says_so(mnist_images):
    net = load_digit_classifier()
    samples = ImageSet("s", images=mnist_images[:64], n=64)
    ref = ImageSet("mnist", images=mnist_images, n=len(mnist_images))
    r = score(samples, ref, ["fid", "kid"], ("digits", net), ref_n=200).values
    assert (r["ref_n"], r["ref_total"], r["ref_subset_seed"]) == (200, len(mnist_images), 0)
    sub = extract_features(net, mnist_images[torch.from_numpy(reference_subset(len(mnist_images), 200))])
    mine = extract_features(net, mnist_images[:64])
    fid = frechet_distance(mine.mean(0), np.cov(mine, rowvar=False), sub.mean(0), np.cov(sub, rowvar=False))
    assert r["fid"] == pytest.approx(fid, rel=1e-5)
    assert r["kid"][0] == pytest.approx(kernel_inception_distance(mine, sub)[0], rel=1e-4, abs=1e-6)
    whole = score(samples, ref, ["fid"], ("digits", net), ref_n=None).values
    assert whole["ref_n"] == len(mnist_images) and "ref_total" not in whole and whole["fid"] != r["fid"]


def test_kid_of_float32_features_is_kid_of_their_float64_values_and_pr_blocks_do_not_change_it(monkeypatch):
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(300, 8)).astype(np.float32), rng.normal(size=(250, 8)).astype(np.float32) + 0.3
    assert kernel_inception_distance(a, b, subsets=5, subset_size=100) == \
        kernel_inception_distance(a.astype(np.float64), b.astype(np.float64), subsets=5, subset_size=100)
    whole = precision_recall(a, b, k=3)
    from ddpm.evaluation import metrics

    monkeypatch.setattr(metrics, "BLOCK_BYTES", 4 * 300 * 7)  # blocks of 7 rows
    assert precision_recall(a, b, k=3) == whole


def test_reference_cache_is_keyed_by_the_subset(tmp_path, mnist_images):
    net = load_digit_classifier()
    a = reference_pass(net, "digits", mnist_images, "mnist", indices=reference_subset(len(mnist_images), 50),
                       cache_dir=tmp_path)
    b = reference_pass(net, "digits", mnist_images, "mnist", indices=reference_subset(len(mnist_images), 60),
                       cache_dir=tmp_path)
    assert len(list(tmp_path.glob("ref_stats_digits_*.npz"))) == 2 and not np.allclose(a.mu, b.mu)


SHARED = r"""
import json, sys, numpy as np, torch
from ddpm.evaluation.features import load_digit_classifier, reference_pass
from ddpm.evaluation.streaming import feature_pass, reference_subset
from ddpm.runtime import close_distributed, init_distributed, rank_world
init_distributed(torch.device("cpu"))
images = torch.from_numpy(np.load(sys.argv[1]))
net = load_digit_classifier()
r = feature_pass(net, images, indices=reference_subset(len(images), 45), keep=True, with_probs=True, batch_size=4)
c = reference_pass(net, "digits", images, "x", keep=True, cache_dir=sys.argv[2], batch_size=4)
if rank_world()[0] == 0:
    np.savez(sys.argv[3], mu=r.mu, sigma=r.sigma, feats=r.features, probs=r.probs, cmu=c.mu)
close_distributed()  # as the commands do: a process that leaves gloo's threads running may abort at exit
"""


def test_processes_share_a_pass_and_each_gets_the_whole_result(tmp_path, mnist_images):
    images = mnist_images[:50].numpy()
    np.save(tmp_path / "images.npy", images)
    (tmp_path / "shared.py").write_text(SHARED)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=3",
           str(tmp_path / "shared.py"), str(tmp_path / "images.npy"), str(tmp_path / "cache"), str(tmp_path / "r.npz")]
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    net = load_digit_classifier()
    idx = torch.from_numpy(reference_subset(50, 45))
    feats, probs = extract_features(net, mnist_images[:50][idx], with_probs=True)
    with np.load(tmp_path / "r.npz") as z:
        assert np.allclose(z["feats"], feats, atol=1e-5) and np.allclose(z["probs"], probs, atol=1e-6)
        assert np.allclose(z["mu"], feats.mean(0), atol=1e-5)
        assert np.allclose(z["sigma"], np.cov(feats, rowvar=False), atol=1e-5)
        every = extract_features(net, mnist_images[:50])
        assert np.allclose(z["cmu"], every.mean(0), atol=1e-5)
    assert len(list((tmp_path / "cache").glob("ref_stats_digits_*.npz"))) == 1  # written once, by rank 0
