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


def test_pooling_gain_is_nil_for_independent_tokens_and_large_for_a_shared_colour():
  """Independent tokens: nothing to pool, and the skip error is its closed form
  s (1 - ᾱ) / (ᾱ s + 1 - ᾱ). One value per clip and channel shared by every token: pooling
  recovers it, the closed form of averaging 80 noisy copies is about (1 - ᾱ) / (80 ᾱ)."""
  rng = np.random.default_rng(1)
  shape = (64, 5, 4, 4, 3)  # 80 tokens a clip
  data_var = np.array([4.0, 1.0, 0.25])
  alpha_bar = 0.3
  independent = rng.standard_normal(shape) * np.sqrt(data_var)
  gains = probe.pooling_gain(independent, data_var, {500: alpha_bar}, rng)["500"]
  closed = np.mean(data_var * (1 - alpha_bar) / (alpha_bar * data_var + 1 - alpha_bar))
  assert abs(gains["skip_error"] - closed) < 0.03 * closed
  assert abs(gains["gain"]) < 0.02
  shared = np.broadcast_to(rng.standard_normal((64, 1, 1, 1, 3)) * np.sqrt(data_var), shape)
  gains = probe.pooling_gain(shared, data_var, {500: alpha_bar}, rng)["500"]
  assert gains["gain"] > 0.8
  assert gains["pooled_error"] < 2 * (1 - alpha_bar) / (80 * alpha_bar)


def test_pooling_gain_weighs_the_channels_as_the_loss_does():
  """With loss weights (diffusion.loss_spectrum) the skip error is the weighted closed form
  sum_c w_c s_c (1 - ᾱ) / (ᾱ s_c + 1 - ᾱ) / C; all weight on one channel gives that channel's
  own closed form."""
  rng = np.random.default_rng(2)
  data_var = np.array([4.0, 1.0, 0.25])
  alpha_bar = 0.3
  independent = rng.standard_normal((64, 5, 4, 4, 3)) * np.sqrt(data_var)
  per_channel = data_var * (1 - alpha_bar) / (alpha_bar * data_var + 1 - alpha_bar)
  weights = np.array([2.0, 0.5, 0.5])
  gains = probe.pooling_gain(independent, data_var, {500: alpha_bar}, rng, weights)["500"]
  expected = np.mean(weights * per_channel)  # 2560 scored tokens: a few % of sampling noise
  assert abs(gains["skip_error"] - expected) < 0.08 * expected
  only_first = probe.pooling_gain(independent, data_var, {500: alpha_bar}, rng,
                                  np.array([3.0, 0.0, 0.0]))["500"]
  assert abs(only_first["skip_error"] - per_channel[0]) < 0.08 * per_channel[0]
  assert abs(only_first["skip_error"] - np.mean(per_channel)) > 0.3 * per_channel[0]
