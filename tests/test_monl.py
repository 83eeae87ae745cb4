"""Mixture of Noise Levels: strategy structure and mixture frequencies (SPEC §4)."""
import jax
import numpy as np
import pytest

from avdit.diffusion import monl

B, M, N, T = 4000, 2, 5, 1000


def _sample(mixture):
  return jax.device_get(monl.sample_timestep_vectors(
      jax.random.key(0), B, M, N, monl.parse_mixture(mixture), T))


@pytest.mark.parametrize("name", monl.STRATEGIES)
def test_single_strategy_structure(name):
  t, strategy = _sample(name)
  assert t.shape == (B, M, N) and t.dtype == np.int32
  assert t.min() >= 1 and t.max() <= T
  assert np.all(strategy == monl.STRATEGIES.index(name))
  same_across_modality = np.all(t[:, 0] == t[:, 1], axis=-1)
  same_across_segments = np.all(t == t[:, :, :1], axis=(1, 2))
  if name == "vanilla":
    assert np.all(t == t[:, :1, :1])
  elif name == "pm":
    assert same_across_segments.all() and not same_across_modality.all()
  elif name == "pt":
    assert same_across_modality.all() and not same_across_segments.all()
  else:  # ptm: all M*N independent, so ties are rare
    assert same_across_modality.mean() < 0.01 and same_across_segments.mean() < 0.01
  # Marginals are uniform on 1..T: mean (T+1)/2, within 5 standard errors.
  values = t[:, 0, 0].astype(np.float64)
  assert abs(values.mean() - (T + 1) / 2) < 5 * np.sqrt((T**2 - 1) / 12 / B)


@pytest.mark.parametrize("mixture,weights", [
    ("monl", [0.25, 0.25, 0.25, 0.25]),
    ("pt/pm/ptm", [0.0, 1 / 3, 1 / 3, 1 / 3]),
    ("pt:2,vanilla:1,ptm:1", [0.25, 0.0, 0.5, 0.25]),
])
def test_mixture_frequencies(mixture, weights):
  np.testing.assert_allclose(monl.parse_mixture(mixture), weights)
  t, strategy = _sample(mixture)
  counts = np.bincount(strategy, minlength=4) / B
  # Binomial standard error; 5 sigma bound.
  for p, f in zip(weights, counts):
    assert abs(f - p) <= 5 * np.sqrt(max(p * (1 - p), 1e-12) / B) + 1e-12
  # Each example's structure matches the strategy it drew.
  for i in np.flatnonzero(strategy == 0)[:50]:
    assert np.all(t[i] == t[i, 0, 0])
  for i in np.flatnonzero(strategy == 2)[:50]:
    assert np.all(t[i, 0] == t[i, 1])


def test_strategy_application_matches_loops():
  rng = np.random.default_rng(0)
  t_ref = rng.integers(1, T + 1, (8, M, N))
  strategy = np.arange(8) % 4
  got = np.asarray(monl.timesteps_for_strategies(t_ref, strategy))
  for i in range(8):  # Algorithm 1, literally
    for m in range(M):
      for n in range(N):
        expected = {0: t_ref[i, 0, 0], 1: t_ref[i, m, 0], 2: t_ref[i, 0, n],
                    3: t_ref[i, m, n]}[strategy[i]]
        assert got[i, m, n] == expected


@pytest.mark.parametrize("bad", ["foo", "pt:-1", "pt:0"])
def test_bad_mixture(bad):
  with pytest.raises(ValueError):
    monl.parse_mixture(bad)
