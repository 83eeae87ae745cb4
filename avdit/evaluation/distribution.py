"""Distances between two sets of feature vectors: Fréchet (FVD/FAD) and kernel (KID/KVD).

These are the set-level generation metrics of SPEC's evaluation stage: embed real and generated
clips with a fixed network (I3D for video, VGGish/AudioCLIP for audio), then compare the two
feature clouds [N, D]. Everything is numpy float64 and independent of the embedding network.

* Fréchet distance (Heusel et al. 2017; FVD: Unterthiner et al. 2019; FAD: Kilgour et al. 2019):
  the 2-Wasserstein distance² between Gaussians fitted to the two sets,
  ||μa − μb||² + tr(Σa + Σb − 2 (Σa Σb)^{1/2}).
* Kernel distance (KID: Bińkowski et al. 2018; KVD as in the FVD paper and MM-Diffusion): the
  unbiased estimator of the squared maximum mean discrepancy (MMD²) with the polynomial kernel
  k(x, y) = (γ x·y + c)^p, by default p = 3, γ = 1 / D, c = 1. It makes no Gaussian assumption
  and is unbiased, so it can be (slightly) negative when the two sets come from one distribution.
"""
from __future__ import annotations

import numpy as np

# Rows of the kernel matrix evaluated at a time, so KID/KVD on tens of thousands of features does
# not materialize an N x N matrix (25k² float64 would be 5 GB).
_KERNEL_BLOCK_ROWS = 2048
# Relative asymmetry tolerated in a covariance matrix before it is rejected (round-off from
# averaging or float32 storage is far below this; a non-covariance is far above it).
_SYMMETRY_RTOL = 1e-6


def _as_features(features_nd, name: str, min_rows: int = 2) -> np.ndarray:
  features = np.asarray(features_nd, np.float64)
  if features.ndim != 2:
    raise ValueError(f"{name} must be a 2-D [num_samples, feature_dim] array, got shape "
                     f"{features.shape}")
  if features.shape[0] < min_rows:
    raise ValueError(f"{name} needs at least {min_rows} rows (samples), got {features.shape[0]}")
  if features.shape[1] < 1:
    raise ValueError(f"{name} has feature dimension 0")
  if not np.all(np.isfinite(features)):
    raise ValueError(f"{name} contains NaN or infinite values")
  return features


def gaussian_statistics(features_nd) -> tuple[np.ndarray, np.ndarray]:
  """Mean [D] and unbiased (divide by N − 1) covariance [D, D] of features [N, D], float64.

  Raises:
    ValueError: if the input is not 2-D, has fewer than 2 rows, or is not finite.
  """
  features = _as_features(features_nd, "features")
  mean_d = features.mean(axis=0)
  centred = features - mean_d
  covariance_dd = centred.T @ centred / (features.shape[0] - 1)
  # Exactly symmetric (the matmul is symmetric only up to round-off in some BLAS kernels).
  return mean_d, 0.5 * (covariance_dd + covariance_dd.T)


def _check_gaussian(mean, cov, name: str) -> tuple[np.ndarray, np.ndarray]:
  mean = np.asarray(mean, np.float64)
  cov = np.asarray(cov, np.float64)
  if mean.ndim != 1 or cov.shape != (mean.shape[0], mean.shape[0]):
    raise ValueError(f"{name}: need mean [D] and covariance [D, D], got {mean.shape} and "
                     f"{cov.shape}")
  if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(cov))):
    raise ValueError(f"{name}: mean or covariance contains NaN or infinite values")
  scale = max(float(np.abs(cov).max()), np.finfo(np.float64).tiny)
  if float(np.abs(cov - cov.T).max()) > _SYMMETRY_RTOL * scale:
    raise ValueError(f"{name}: covariance is not symmetric")
  return mean, 0.5 * (cov + cov.T)


def _psd_sqrt(cov_dd: np.ndarray) -> np.ndarray:
  """Symmetric square root of a symmetric PSD matrix; round-off negative eigenvalues -> 0."""
  eigenvalues, eigenvectors = np.linalg.eigh(cov_dd)
  return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ eigenvectors.T


def trace_sqrt_product(cov_a, cov_b) -> float:
  """tr((Σa Σb)^{1/2}) for symmetric PSD Σa, Σb [D, D] (the principal square root).

  Computed as Σ_i sqrt(λ_i) over the eigenvalues λ_i of M = Σa^{1/2} Σb Σa^{1/2}. Why this is
  the same: Σa Σb = Σa^{1/2} (Σa^{1/2} Σb) and a product XY has the eigenvalues of YX, so
  Σa Σb has the eigenvalues of M; the principal square root of Σa Σb has their square roots as
  eigenvalues, and the trace is their sum. Why it is robust: M is symmetric PSD, so `eigh` is
  backward stable and its eigenvalues are real and ≥ 0 up to round-off (clipped), whereas the
  usual `scipy.linalg.sqrtm(Σa @ Σb)` takes a Schur-based square root of a non-symmetric matrix
  that is singular whenever N ≤ D (few samples) and then returns complex parts or large errors
  (which is why the reference FID code adds an ε·I offset and retries). The remaining error is
  the one inherent in sqrt near 0: a zero eigenvalue perturbed by round-off δ ≈ 1e-16·||M||
  contributes sqrt(δ), i.e. ~1e-8·sqrt(||M||) per null direction.
  """
  sqrt_a = _psd_sqrt(np.asarray(cov_a, np.float64))
  middle = sqrt_a @ np.asarray(cov_b, np.float64) @ sqrt_a
  eigenvalues = np.linalg.eigvalsh(0.5 * (middle + middle.T))
  return float(np.sum(np.sqrt(np.clip(eigenvalues, 0.0, None))))


def frechet_distance(mean_a, cov_a, mean_b, cov_b) -> float:
  """Fréchet distance ||μa − μb||² + tr(Σa + Σb − 2 (Σa Σb)^{1/2}) between two Gaussians.

  Args:
    mean_a, mean_b: float [D].
    cov_a, cov_b: symmetric PSD float [D, D] (e.g. from `gaussian_statistics`; singular is fine).

  Returns:
    The distance (≥ 0 up to round-off of order 1e-8·tr(Σ); not clipped, so a tiny negative value
    signals round-off rather than being hidden).
  """
  mean_a, cov_a = _check_gaussian(mean_a, cov_a, "gaussian a")
  mean_b, cov_b = _check_gaussian(mean_b, cov_b, "gaussian b")
  if mean_a.shape != mean_b.shape:
    raise ValueError(f"feature dimensions differ: {mean_a.shape[0]} vs {mean_b.shape[0]}")
  mean_term = float(np.sum(np.square(mean_a - mean_b)))
  trace_term = float(np.trace(cov_a) + np.trace(cov_b)) - 2.0 * trace_sqrt_product(cov_a, cov_b)
  return mean_term + trace_term


def frechet_distance_of_features(features_a, features_b) -> float:
  """Fréchet distance between Gaussians fitted to features [Na, D] and [Nb, D] (FVD / FAD)."""
  features_a = _as_features(features_a, "features_a")
  features_b = _as_features(features_b, "features_b")
  if features_a.shape[1] != features_b.shape[1]:
    raise ValueError(f"feature dimensions differ: {features_a.shape[1]} vs {features_b.shape[1]}")
  return frechet_distance(*gaussian_statistics(features_a), *gaussian_statistics(features_b))


def _polynomial_kernel_sum(x_nd, y_md, gamma: float, coef0: float, degree: int) -> float:
  """Σ_ij (γ x_i·y_j + c)^p, in row blocks."""
  total = 0.0
  for start in range(0, x_nd.shape[0], _KERNEL_BLOCK_ROWS):
    total += float(np.sum((gamma * (x_nd[start:start + _KERNEL_BLOCK_ROWS] @ y_md.T) + coef0)
                          ** degree))
  return total


def _unbiased_mmd2(x_nd, y_md, gamma: float, coef0: float, degree: int) -> float:
  """1/(n(n−1)) Σ_{i≠j} k(x_i, x_j) + 1/(m(m−1)) Σ_{i≠j} k(y_i, y_j) − 2/(nm) Σ_ij k(x_i, y_j)."""
  n, m = x_nd.shape[0], y_md.shape[0]
  # Off-diagonal sums: the full sum minus the diagonal k(x_i, x_i) = (γ ||x_i||² + c)^p.
  diag_x = float(np.sum((gamma * np.einsum("nd,nd->n", x_nd, x_nd) + coef0) ** degree))
  diag_y = float(np.sum((gamma * np.einsum("md,md->m", y_md, y_md) + coef0) ** degree))
  within_x = (_polynomial_kernel_sum(x_nd, x_nd, gamma, coef0, degree) - diag_x) / (n * (n - 1))
  within_y = (_polynomial_kernel_sum(y_md, y_md, gamma, coef0, degree) - diag_y) / (m * (m - 1))
  between = _polynomial_kernel_sum(x_nd, y_md, gamma, coef0, degree) / (n * m)
  return within_x + within_y - 2.0 * between


def kernel_distance(features_a, features_b, *, degree: int = 3, gamma: float | None = None,
                    coef0: float = 1.0, num_subsets: int | None = None,
                    subset_size: int | None = None, seed: int = 0) -> float:
  """Unbiased MMD² with the polynomial kernel (γ x·y + coef0)^degree: KID / KVD.

  Args:
    features_a: float [Na, D]; features_b: float [Nb, D] (Na, Nb ≥ 2; they may differ).
    degree: the kernel's integer power p ≥ 1 (3 for KID/KVD).
    gamma: the kernel's scale γ; None means 1 / D (KID/KVD).
    coef0: the kernel's offset c (1 for KID/KVD).
    num_subsets: None computes the estimator once on the full sets. Otherwise it is averaged over
      this many random subset pairs, each drawn without replacement from both sets, like the KID
      reference code (which uses 100 subsets of up to 1000) — this bounds the cost and gives the
      same expectation, since every pair of samples is equally likely to be in a subset.
    subset_size: rows per subset (≥ 2, ≤ min(Na, Nb)); None means min(Na, Nb, 1000).
    seed: seeds the subset draws (numpy default_rng).

  Returns:
    The estimate of MMD²; ~0 (either sign) for samples of one distribution, > 0 otherwise. KID
    papers often report it × 1000 or × 100; this returns the raw value.
  """
  features_a = _as_features(features_a, "features_a")
  features_b = _as_features(features_b, "features_b")
  dim = features_a.shape[1]
  if features_b.shape[1] != dim:
    raise ValueError(f"feature dimensions differ: {dim} vs {features_b.shape[1]}")
  if int(degree) != degree or degree < 1:
    raise ValueError(f"degree must be a positive integer, got {degree}")
  degree = int(degree)
  gamma = 1.0 / dim if gamma is None else float(gamma)
  if num_subsets is None:
    if subset_size is not None:
      raise ValueError("subset_size needs num_subsets")
    return _unbiased_mmd2(features_a, features_b, gamma, float(coef0), degree)
  if num_subsets < 1:
    raise ValueError(f"num_subsets must be >= 1, got {num_subsets}")
  max_size = min(features_a.shape[0], features_b.shape[0])
  subset_size = min(max_size, 1000) if subset_size is None else int(subset_size)
  if not 2 <= subset_size <= max_size:
    raise ValueError(f"subset_size must be in [2, min(Na, Nb) = {max_size}], got {subset_size}")
  rng = np.random.default_rng(seed)
  estimates = []
  for _ in range(num_subsets):
    subset_a = features_a[rng.choice(features_a.shape[0], subset_size, replace=False)]
    subset_b = features_b[rng.choice(features_b.shape[0], subset_size, replace=False)]
    estimates.append(_unbiased_mmd2(subset_a, subset_b, gamma, float(coef0), degree))
  return float(np.mean(estimates))
