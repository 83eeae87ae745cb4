"""Linear probes of a latent space (avdit/evaluation/probe.py)."""
import numpy as np

from avdit.evaluation import probe


def test_ridge_r2_recovers_a_linear_target_and_not_noise():
  rng = np.random.default_rng(0)
  features = rng.standard_normal((400, 6))
  weights = np.array([1.0, -2.0, 0.5, 0.0, 0.0, 3.0])
  signal = features @ weights
  noise = rng.standard_normal(400) * 0.5
  target = signal + noise
  # Closed form of the population R² for this model: var(signal) / (var(signal) + 0.25).
  expected = weights @ weights / (weights @ weights + 0.25)
  r2 = probe.ridge_r2(features[:200], target[:200], features[200:], target[200:])
  assert abs(r2 - expected) < 0.02
  unrelated = rng.standard_normal(400)
  assert probe.ridge_r2(features[:200], unrelated[:200], features[200:], unrelated[200:]) < 0.05


def test_with_neighbours_stacks_shifted_copies_with_repeated_edges():
  x = np.arange(5, dtype=float).reshape(1, 5, 1)
  stacked = probe.with_neighbours(x, 1)
  np.testing.assert_array_equal(stacked[0, :, 0], [0, 0, 1, 2, 3])  # left neighbour
  np.testing.assert_array_equal(stacked[0, :, 1], [0, 1, 2, 3, 4])  # itself
  np.testing.assert_array_equal(stacked[0, :, 2], [1, 2, 3, 4, 4])  # right neighbour
