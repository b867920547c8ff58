"""Fréchet distance against independent reference code and analytic cases; the feature extractors."""

import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import linalg

from ddpm.data.sources import load_data, to_float
from ddpm.errors import DDPMError
from ddpm.evaluation.inception import FIDInception, load_inception
from ddpm.evaluation.metrics import (extract_features, frechet_distance, gaussian_stats, load_digit_classifier,
                          reference_stats)

from helpers import CodeRunningPickle


def reference_fd(mu1, s1, mu2, s2):
    """The formula as the FID reference code writes it (scipy.linalg.sqrtm of the product)."""
    covmean = linalg.sqrtm(s1.dot(s2)).real
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def random_stats(rng, n=400, d=16):
    a = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) + rng.normal(size=d)
    return gaussian_stats(a)


def test_fd_of_a_set_with_itself_is_zero():
    mu, s = random_stats(np.random.default_rng(0))
    assert abs(frechet_distance(mu, s, mu, s)) < 1e-8 * np.trace(s)


def test_fd_matches_reference_code_and_is_symmetric():
    rng = np.random.default_rng(1)
    (m1, s1), (m2, s2) = random_stats(rng), random_stats(rng)
    fd = frechet_distance(m1, s1, m2, s2)
    assert fd > 1.0
    assert fd == pytest.approx(reference_fd(m1, s1, m2, s2), rel=1e-8)
    assert fd == pytest.approx(frechet_distance(m2, s2, m1, s1), rel=1e-8)


def test_fd_of_diagonal_gaussians_is_closed_form():
    # For commuting (diagonal) covariances: |mu1 - mu2|^2 + sum (sqrt(v1) - sqrt(v2))^2.
    v1, v2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    m1, m2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    expected = 1 + 4 + (1 - 3) ** 2 + (2 - 1) ** 2 + 0
    assert frechet_distance(m1, np.diag(v1), m2, np.diag(v2)) == pytest.approx(expected, rel=1e-10)


def test_gaussian_stats_are_unbiased_mean_and_covariance():
    f = np.random.default_rng(2).normal(size=(50, 3))
    mu, s = gaussian_stats(f)
    centred = f - f.mean(0)
    assert np.allclose(mu, f.mean(0)) and np.allclose(s, centred.T @ centred / 49)
    with pytest.raises(ValueError):
        gaussian_stats(f[:1])


def _blur(x):
    k = torch.ones(1, 1, 5, 5) / 25
    return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="replicate"), k)


def test_digit_features_separate_real_digits_from_blurred_and_noised():
    digits = load_data("mnist", channels=1, image_size=28).images  # sorted by class: shuffle before splitting
    digits = digits[torch.randperm(len(digits), generator=torch.Generator().manual_seed(0))]
    a, b = digits[:1000], digits[1000:2000]
    net = load_digit_classifier()
    real = to_float(b)
    g = torch.Generator().manual_seed(0)
    spoiled = {
        "blurred": _blur(real),
        "noised": (real + 0.5 * torch.randn(real.shape, generator=g)).clamp(-1, 1),
    }
    ref = gaussian_stats(extract_features(net, a))
    fd_real = frechet_distance(*gaussian_stats(extract_features(net, b)), *ref)
    for name, x in spoiled.items():
        u8 = ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
        fd = frechet_distance(*gaussian_stats(extract_features(net, u8)), *ref)
        assert fd > 3 * fd_real, f"{name}: FD {fd:.1f} vs real-vs-real {fd_real:.1f}"


def test_reference_stats_are_cached_and_keyed_by_the_images(tmp_path):
    net = load_digit_classifier()
    images = load_data("mnist", channels=1, image_size=28).images[::50]
    mu, s = reference_stats(net, "digits", images, "mnist", cache_dir=tmp_path)
    files = list(tmp_path.glob("ref_stats_digits_*.npz"))
    assert len(files) == 1
    with np.load(files[0]) as z:
        assert np.array_equal(z["mu"], mu) and int(z["n"]) == 100
    # a poisoned cache with the right key is what gets read back: proof that the cache, not a recomputation, is used
    np.savez(files[0], mu=mu + 1, sigma=s)
    mu2, _ = reference_stats(net, "digits", images, "mnist", cache_dir=tmp_path)
    assert np.allclose(mu2, mu + 1)
    reference_stats(net, "digits", images[:32], "mnist", cache_dir=tmp_path)  # other images: another file
    assert len(list(tmp_path.glob("ref_stats_digits_*.npz"))) == 2


# ----------------------------------------------------------------------------- Inception
def _fake_inception_file(tmp_path):
    torch.manual_seed(0)
    state = FIDInception().state_dict()
    path = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    torch.save({k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}, path)
    return path


def test_inception_has_the_fid_networks_layout():
    sd = FIDInception().state_dict()
    # shapes from torchvision's Inception3 with num_classes=1008, aux_logits=False (the FID graph's)
    expected = {
        "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
        "Conv2d_4a_3x3.conv.weight": (192, 80, 3, 3),
        "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),
        "Mixed_5d.branch5x5_2.conv.weight": (64, 48, 5, 5),
        "Mixed_6a.branch3x3.conv.weight": (384, 288, 3, 3),
        "Mixed_6b.branch7x7dbl_5.conv.weight": (192, 128, 1, 7),
        "Mixed_6e.branch7x7_3.conv.weight": (192, 192, 7, 1),
        "Mixed_7a.branch3x3_2.conv.weight": (320, 192, 3, 3),
        "Mixed_7b.branch3x3dbl_1.conv.weight": (448, 1280, 1, 1),
        "Mixed_7c.branch3x3_2b.conv.weight": (384, 384, 3, 1),
        "Mixed_7c.branch_pool.bn.running_var": (192,),
        "fc.weight": (1008, 2048),
    }
    for k, shape in expected.items():
        assert tuple(sd[k].shape) == shape, k
    assert not any(k.startswith("AuxLogits") for k in sd)
    n_convs = sum(1 for k in sd if k.endswith("conv.weight"))
    assert n_convs == 94  # Inception-v3's 94 conv layers (without the auxiliary head)


def test_inception_loads_a_local_file_and_gives_2048_features(tmp_path):
    path = _fake_inception_file(tmp_path)
    net = load_inception(path)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    f = net.features(x)
    assert f.shape == (2, 2048) and torch.isfinite(f).all()
    assert net.features(x[:, :1]).shape == (2, 2048)  # grey images are repeated to 3 channels


def test_inception_without_weights_says_where_to_put_them(tmp_path):
    with pytest.raises(DDPMError, match="pt_inception-2015-12-05"):
        load_inception(None)
    with pytest.raises(DDPMError, match="not found"):
        load_inception(tmp_path / "missing.pth")
    bad = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(1)}, bad)
    with pytest.raises(DDPMError, match="not the FID Inception"):
        load_inception(bad)



def test_inception_file_with_code_in_it_runs_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"x": CodeRunningPickle()}, f)
    with pytest.raises(DDPMError, match="is not a PyTorch file of plain tensors"):
        load_inception(path)
    assert not (tmp_path / "PWNED").exists()
