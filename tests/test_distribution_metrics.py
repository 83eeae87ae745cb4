"""Fréchet and kernel (KID/KVD) distances against closed forms, scipy and explicit loops."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

from avdit.evaluation import distribution


def _random_spd(rng, dim, rank=None):
  """A random symmetric PSD matrix [dim, dim] of the given rank (full by default)."""
  factor = rng.normal(size=(dim, dim if rank is None else rank))
  return factor @ factor.T / dim


def _scipy_frechet(mean_a, cov_a, mean_b, cov_b):
  """The textbook formula with scipy's general matrix square root."""
  root = scipy.linalg.sqrtm(cov_a @ cov_b)
  return (np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a) + np.trace(cov_b)
          - 2.0 * np.trace(root).real)


# --- Gaussian statistics ------------------------------------------------------------------------
def test_gaussian_statistics_match_numpy_and_reject_bad_input():
  rng = np.random.default_rng(0)
  features = rng.normal(size=(9, 4)) * [1.0, 2.0, 3.0, 0.5] + [1.0, -2.0, 0.0, 5.0]
  mean, cov = distribution.gaussian_statistics(features)
  np.testing.assert_allclose(mean, features.mean(axis=0), rtol=1e-12)
  np.testing.assert_allclose(cov, np.cov(features, rowvar=False, ddof=1), rtol=1e-12)
  with pytest.raises(ValueError, match="at least 2 rows"):
    distribution.gaussian_statistics(features[:1])
  with pytest.raises(ValueError, match="2-D"):
    distribution.gaussian_statistics(features[0])
  with pytest.raises(ValueError, match="NaN"):
    distribution.gaussian_statistics(np.full((3, 2), np.nan))


# --- Fréchet distance ---------------------------------------------------------------------------
def test_frechet_diagonal_and_commuting_closed_form():
  rng = np.random.default_rng(1)
  dim = 6
  mean_a, mean_b = rng.normal(size=dim), rng.normal(size=dim)
  var_a, var_b = rng.uniform(0.1, 3.0, size=dim), rng.uniform(0.1, 3.0, size=dim)
  var_b[0] = 0.0  # one degenerate direction is fine
  # Commuting covariances share eigenvectors: (Σa Σb)^{1/2} = Q diag(sqrt(a b)) Qᵀ, so the
  # distance is ||Δμ||² + Σ (√a − √b)² in any shared basis (the identity = the diagonal case).
  expected = np.sum((mean_a - mean_b) ** 2) + np.sum((np.sqrt(var_a) - np.sqrt(var_b)) ** 2)
  rotation, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
  for basis in (np.eye(dim), rotation):
    cov_a = basis @ np.diag(var_a) @ basis.T
    cov_b = basis @ np.diag(var_b) @ basis.T
    got = distribution.frechet_distance(mean_a, cov_a, mean_b, cov_b)
    np.testing.assert_allclose(got, expected, rtol=1e-10)


def test_frechet_one_dimensional_is_squared_mean_and_std_gap():
  got = distribution.frechet_distance([1.0], [[4.0]], [-2.0], [[9.0]])
  np.testing.assert_allclose(got, 3.0**2 + (2.0 - 3.0) ** 2, rtol=1e-12)


def test_frechet_matches_scipy_on_random_full_rank_covariances():
  rng = np.random.default_rng(2)
  for dim in (2, 5, 16):
    mean_a, mean_b = rng.normal(size=dim), rng.normal(size=dim)
    cov_a, cov_b = _random_spd(rng, dim), _random_spd(rng, dim)
    got = distribution.frechet_distance(mean_a, cov_a, mean_b, cov_b)
    np.testing.assert_allclose(got, _scipy_frechet(mean_a, cov_a, mean_b, cov_b), rtol=1e-8)
    # Symmetric in its two arguments.
    np.testing.assert_allclose(distribution.frechet_distance(mean_b, cov_b, mean_a, cov_a), got,
                               rtol=1e-10)


def test_frechet_of_features_is_stable_with_fewer_samples_than_dimensions():
  # n < d: both sample covariances are singular (rank n − 1). Independent exact reference: with
  # centred data Xa [n, d], Xb [m, d], Σa = XaᵀXa/(n−1), Σb = XbᵀXb/(m−1), the nonzero eigenvalues
  # of Σa Σb are those of (Xa Xbᵀ)(Xa Xbᵀ)ᵀ / ((n−1)(m−1)), so tr((Σa Σb)^{1/2}) is the nuclear
  # norm (sum of singular values) of Xa Xbᵀ / sqrt((n−1)(m−1)) — a small SVD, no square roots of
  # near-zero eigenvalues.
  rng = np.random.default_rng(3)
  dim = 48
  for n, m in ((6, 9), (20, 20), (30, 12)):
    features_a = rng.normal(size=(n, dim)) * rng.uniform(0.5, 2.0, size=dim)
    features_b = rng.normal(size=(m, dim)) + 0.3
    centred_a = features_a - features_a.mean(0)
    centred_b = features_b - features_b.mean(0)
    nuclear = np.linalg.svd(centred_a @ centred_b.T, compute_uv=False).sum()
    trace_sqrt = nuclear / np.sqrt((n - 1) * (m - 1))
    expected = (np.sum((features_a.mean(0) - features_b.mean(0)) ** 2)
                + np.sum(centred_a**2) / (n - 1) + np.sum(centred_b**2) / (m - 1)
                - 2.0 * trace_sqrt)
    got = distribution.frechet_distance_of_features(features_a, features_b)
    assert np.isfinite(got) and got >= 0.0
    np.testing.assert_allclose(got, expected, rtol=1e-7)
    np.testing.assert_allclose(distribution.frechet_distance_of_features(features_b, features_a),
                               got, rtol=1e-7)
    # scipy's non-symmetric square root of the singular product agrees where it is defined
    # (finite, with a negligible imaginary part).
    root = scipy.linalg.sqrtm(np.cov(features_a, rowvar=False) @ np.cov(features_b, rowvar=False))
    if np.all(np.isfinite(root)) and abs(np.trace(root).imag) < 1e-5 * trace_sqrt:
      np.testing.assert_allclose(trace_sqrt, np.trace(root).real, rtol=1e-5)


def test_frechet_zero_for_identical_sets_even_when_rank_deficient():
  rng = np.random.default_rng(4)
  for n, dim in ((50, 8), (5, 40)):
    features = rng.normal(size=(n, dim)) * 10.0
    got = distribution.frechet_distance_of_features(features, features)
    scale = np.trace(np.cov(features, rowvar=False))
    # Zero up to the sqrt-of-round-off error of the null directions (documented ~1e-8 scale).
    assert abs(got) < 1e-6 * scale
  # Two well-separated point clouds are clearly apart.
  assert distribution.frechet_distance_of_features(features, features + 1.0) > 0.99 * dim


def test_frechet_rejects_mismatched_or_asymmetric_input():
  with pytest.raises(ValueError, match="dimensions differ"):
    distribution.frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))
  with pytest.raises(ValueError, match="not symmetric"):
    distribution.frechet_distance(np.zeros(2), [[1.0, 0.5], [0.0, 1.0]], np.zeros(2), np.eye(2))
  with pytest.raises(ValueError, match="covariance"):
    distribution.frechet_distance(np.zeros(2), np.eye(3), np.zeros(2), np.eye(2))


# --- kernel distance (KID / KVD) ----------------------------------------------------------------
def _loop_unbiased_mmd2(x, y, degree, gamma, coef0):
  """Per-pair loops over the definition (no matrix algebra shared with the code under test)."""
  def k(u, v):
    return (gamma * sum(ui * vi for ui, vi in zip(u, v)) + coef0) ** degree
  n, m = len(x), len(y)
  xx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
  yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
  xy = sum(k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
  return xx + yy - 2.0 * xy


def test_kernel_distance_matches_per_pair_loops():
  rng = np.random.default_rng(5)
  x = rng.normal(size=(7, 4))
  y = rng.normal(size=(5, 4)) + 0.5
  got = distribution.kernel_distance(x, y)  # KID defaults: degree 3, gamma 1/d, coef0 1
  np.testing.assert_allclose(got, _loop_unbiased_mmd2(x.tolist(), y.tolist(), 3, 0.25, 1.0),
                             rtol=1e-10)
  got = distribution.kernel_distance(x, y, degree=2, gamma=0.7, coef0=-0.3)
  np.testing.assert_allclose(got, _loop_unbiased_mmd2(x.tolist(), y.tolist(), 2, 0.7, -0.3),
                             rtol=1e-10)


def test_linear_kernel_closed_form():
  # With k(x, y) = γ x·y: Σ_{i≠j} x_i·x_j = n²||μa||² − Σ||x_i||², which gives
  # MMD²_u = γ (||μa − μb||² − tr(Ĉa)/n − tr(Ĉb)/m) with unbiased sample covariances Ĉ: the
  # unbiased estimate of γ ||E x − E y||².
  rng = np.random.default_rng(6)
  x = rng.normal(size=(11, 3)) * 2.0 + 1.0
  y = rng.normal(size=(8, 3))
  gamma = 0.4
  expected = gamma * (np.sum((x.mean(0) - y.mean(0)) ** 2)
                      - np.trace(np.cov(x, rowvar=False)) / 11
                      - np.trace(np.cov(y, rowvar=False)) / 8)
  got = distribution.kernel_distance(x, y, degree=1, gamma=gamma, coef0=0.0)
  np.testing.assert_allclose(got, expected, rtol=1e-10)


def test_kernel_distance_near_zero_for_one_distribution_and_positive_for_a_shift():
  rng = np.random.default_rng(7)
  dim = 8
  x, y = rng.normal(size=(300, dim)), rng.normal(size=(300, dim))
  same = distribution.kernel_distance(x, y)
  shifted = distribution.kernel_distance(x, y + 0.5)
  scaled = distribution.kernel_distance(x, 1.5 * y)
  assert shifted > 0.0 and scaled > 0.0
  assert abs(same) < 0.05 * min(shifted, scaled)
  # Symmetric in the two sets.
  np.testing.assert_allclose(distribution.kernel_distance(y + 0.5, x), shifted, rtol=1e-10)


def test_kernel_distance_subsets():
  rng = np.random.default_rng(8)
  x, y = rng.normal(size=(12, 3)), rng.normal(size=(12, 3)) + 0.4
  full = distribution.kernel_distance(x, y)
  # Subsets of all rows are permutations, and the estimator is permutation invariant.
  np.testing.assert_allclose(distribution.kernel_distance(x, y, num_subsets=3, subset_size=12),
                             full, rtol=1e-10)
  # Averaged over random subsets, the estimator's expectation is the full-set estimate (every
  # pair of rows is equally likely to appear together).
  averaged = distribution.kernel_distance(x, y, num_subsets=3000, subset_size=6, seed=1)
  one_subset = [distribution.kernel_distance(x, y, num_subsets=1, subset_size=6, seed=s)
                for s in range(50)]
  spread = np.std(one_subset)
  assert spread > 0.0
  assert abs(averaged - full) < 4.0 * spread / np.sqrt(3000)
  with pytest.raises(ValueError, match="subset_size"):
    distribution.kernel_distance(x, y, num_subsets=2, subset_size=13)
  with pytest.raises(ValueError, match="subset_size needs num_subsets"):
    distribution.kernel_distance(x, y, subset_size=5)
  with pytest.raises(ValueError, match="degree"):
    distribution.kernel_distance(x, y, degree=0)
  with pytest.raises(ValueError, match="dimensions differ"):
    distribution.kernel_distance(x, y[:, :2])
