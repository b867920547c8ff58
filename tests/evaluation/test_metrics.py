"""The metrics against independent computations and analytic cases: FID (the reference code's sqrtm, and
eigenvalues), the Inception Score, KID (a direct O(n^2) sum) and precision/recall (point sets with known
answers)."""

import numpy as np
import pytest
from scipy import linalg

from ddpm.evaluation.metrics import (
    frechet_distance,
    gaussian_stats,
    inception_score,
    kernel_inception_distance,
    precision_recall,
)


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


def eigen_fd(mu1, s1, mu2, s2):
    """An independent route to the trace term: Tr (S1 S2)^(1/2) = sum of the square roots of the eigenvalues of
    S1 S2 (real and >= 0 for covariances), with no matrix square root."""
    ev = np.linalg.eigvals(s1 @ s2)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(np.clip(ev.real, 0, None)).sum())


def test_fid_on_fixed_features_matches_an_eigenvalue_computation_to_1e6():
    rng = np.random.default_rng(7)
    f1 = rng.normal(size=(500, 32)) @ rng.normal(size=(32, 32))
    f2 = rng.normal(size=(600, 32)) @ rng.normal(size=(32, 32)) + 0.3
    a, b = gaussian_stats(f1), gaussian_stats(f2)
    assert frechet_distance(*a, *b) == pytest.approx(eigen_fd(*a, *b), rel=1e-6)


# ----------------------------------------------------------------------------- Inception Score
def test_inception_score_of_uniform_predictions_is_one():
    assert inception_score(np.full((40, 1008), 1 / 1008)) == pytest.approx((1.0, 0.0), abs=1e-12)


def test_inception_score_of_n_equally_frequent_confident_classes_is_n():
    for n in (2, 7, 10):
        probs = np.eye(n)[np.arange(20 * n) % n]  # one-hot, every split holds each class equally often
        mean, std = inception_score(probs, splits=10)
        assert mean == pytest.approx(n, rel=1e-12) and std == pytest.approx(0.0, abs=1e-9)


def test_inception_score_takes_consecutive_splits_mean_and_population_std():
    # split 1: all one class (IS 1); split 2: ten classes equally (IS 10): mean 5.5, std (population) 4.5
    probs = np.concatenate([np.eye(10)[np.zeros(10, int)], np.eye(10)[np.arange(10)]])
    assert inception_score(probs, splits=2) == pytest.approx((5.5, 4.5), rel=1e-12)
    with pytest.raises(ValueError, match="at least 2 images per split"):
        inception_score(probs[:19], splits=10)


def test_inception_score_matches_the_definition_on_soft_predictions():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(30, 5)) * 2
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    scores = []
    for part in (p[:10], p[10:20], p[20:]):  # exp of the mean KL(p(y|x) || p(y)), written out
        py = part.mean(0)
        scores.append(np.exp(np.mean([sum(q[k] * np.log(q[k] / py[k]) for k in range(5)) for q in part])))
    assert inception_score(p, splits=3) == pytest.approx((np.mean(scores), np.std(scores)), rel=1e-10)


# ----------------------------------------------------------------------------- KID
def direct_mmd2(x, y):
    """The unbiased MMD^2 with k(a, b) = (a.b / d + 1)^3, as double sums over pairs (i != j within a set)."""
    m, d = len(x), x.shape[1]
    k = lambda a, b: (a @ b / d + 1) ** 3  # noqa: E731
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def test_kid_matches_the_direct_double_sum():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(12, 5)), rng.normal(size=(12, 5)) + 0.5
    mean, std = kernel_inception_distance(x, y, subsets=3, subset_size=12)  # each subset: all of both sets
    assert mean == pytest.approx(direct_mmd2(x, y), rel=1e-10) and std == pytest.approx(0.0, abs=1e-12)


def test_kid_subsets_are_seeded_and_unbiased_for_one_distribution():
    rng = np.random.default_rng(5)
    a, b, c = rng.normal(size=(400, 8)), rng.normal(size=(400, 8)), rng.normal(size=(400, 8)) + 1.0
    same = kernel_inception_distance(a, b, subsets=50, subset_size=100, seed=1)
    assert same == kernel_inception_distance(a, b, subsets=50, subset_size=100, seed=1)
    assert abs(same[0]) < 3 * same[1]  # centred on 0: unbiased
    assert kernel_inception_distance(a, c, subsets=50, subset_size=100)[0] > 10 * same[1]
    with pytest.raises(ValueError, match="at least 2"):
        kernel_inception_distance(a[:1], b)


# ----------------------------------------------------------------------------- precision and recall
def test_precision_recall_on_points_with_known_answers():
    # real: 20 points on a line at 0..19; fake: copies of 0..9, and 10 points far away.
    # k = 3 radii: real 0 -> 3, interior 2; fake copies: 0 -> 3, 8 -> 2, 9 -> 3.
    # precision: the 10 copies lie in real balls (distance 0), the far ones in none: 0.5.
    # recall: real 0..9 are copies; 10 (from 8, r 2), 11 and 12 (from 9, r 3) are covered, 13..19 not: 13/20.
    line = np.zeros((20, 4))
    line[:, 0] = np.arange(20)
    fake = np.concatenate([line[:10], line[:10] + [1000.0, 0, 0, 0]])
    assert precision_recall(line, fake, k=3, batch=7) == pytest.approx((0.5, 0.65))
    assert precision_recall(line, line, k=3) == (1.0, 1.0)
    with pytest.raises(ValueError, match="more than 3"):
        precision_recall(line[:3], fake)
