"""The feature extractors: the shipped digit classifier separates real digits from spoiled ones; real images'
statistics and features are cached, keyed by the images and the network."""

import numpy as np
import torch
import torch.nn.functional as F

from ddpm.data.images import to_float
from ddpm.data.sources import load_data
from ddpm.evaluation.features import extract_features, load_digit_classifier, reference_features, reference_stats
from ddpm.evaluation.metrics import frechet_distance, gaussian_stats


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


def test_reference_features_are_cached_as_float32_and_keyed_by_the_network(tmp_path):
    net = load_digit_classifier()
    images = load_data("mnist", channels=1, image_size=28).images[::100]
    feats = reference_features(net, "digits", images, "mnist", cache_dir=tmp_path)
    assert feats.shape == (50, 128) and feats.dtype == np.float64
    (cached,) = tmp_path.glob("ref_feats_digits_*.npy")
    assert np.array_equal(np.load(cached), feats.astype(np.float32))
    np.save(cached, np.zeros((50, 128), np.float32))  # poisoned: what comes back is the cache
    assert not reference_features(net, "digits", images, "mnist", cache_dir=tmp_path).any()
    net.sha256 = "another weights file"
    reference_features(net, "digits", images, "mnist", cache_dir=tmp_path)
    assert len(list(tmp_path.glob("ref_feats_digits_*.npy"))) == 2


def test_class_probabilities_come_with_the_features():
    net = load_digit_classifier()
    images = load_data("mnist", channels=1, image_size=28).images[:30]
    feats, probs = extract_features(net, images, batch_size=7, with_probs=True)
    assert np.allclose(feats, extract_features(net, images), atol=1e-5)  # batches of 7 or 100: the same
    with torch.no_grad():
        expected = torch.softmax(net(to_float(images)).double(), dim=1).numpy()
    assert np.allclose(probs, expected, atol=1e-6) and np.allclose(probs.sum(1), 1)


def test_measurements_run_without_tf32_whatever_ran_before(monkeypatch):
    """Sampling turns TF32 on for the process (fast_cuda_math); features, bits/dim and precision/recall run with it
    off and leave it as they found it, so a GPU measures what the CPU measures whatever ran first."""
    import torch

    from ddpm.evaluation.features import extract_features
    from ddpm.evaluation.metrics import precision_recall

    seen = []

    class Net(torch.nn.Module):
        def features(self, x):
            seen.append((torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32))
            return x.flatten(1)

    import ddpm.evaluation.metrics as metrics

    real = metrics._covered

    def spy(*a, **k):
        seen.append((torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32))
        return real(*a, **k)

    monkeypatch.setattr(metrics, "_covered", spy)
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # as after sampling on a GPU
    try:
        extract_features(Net(), torch.zeros(3, 1, 4, 4, dtype=torch.uint8))
        assert seen == [(False, False)]
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32  # restored
        rng = np.random.default_rng(0)
        precision_recall(rng.normal(size=(8, 3)), rng.normal(size=(8, 3)))
        assert seen[1:] == [(False, False)] * 2 and torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
