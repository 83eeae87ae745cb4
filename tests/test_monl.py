"""Mixture of Noise Levels: strategy structure and mixture frequencies (SPEC §4)."""
import jax
import ml_collections
import numpy as np
import pytest
from scipy import stats

from avdit.diffusion import loss as loss_lib
from avdit.diffusion import monl
from avdit.diffusion import schedule as schedule_lib

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


@pytest.mark.parametrize("mean,std", [(0.0, 2.0), (-1.0, 2.5)])
def test_logsnr_normal_density(mean, std):
  """The drawn levels' log-SNR follows Normal(mean, std) cut to the schedule's range: a KS test
  against scipy's truncated normal, the log-SNR recomputed here from DDPM's linear betas."""
  log_probs = schedule_lib.timestep_log_probs(schedule_lib.LinearSchedule(), "logsnr_normal",
                                              mean, std)
  t, _ = jax.device_get(monl.sample_timestep_vectors(
      jax.random.key(1), B, M, N, monl.parse_mixture("ptm"), T, log_probs))
  assert t.min() >= 1 and t.max() <= T
  alpha_bar = np.cumprod(1.0 - np.linspace(1e-4, 0.02, T))
  logsnr = np.log(alpha_bar / (1.0 - alpha_bar))
  lo, hi = (logsnr[-1] - mean) / std, (logsnr[0] - mean) / std
  drawn = logsnr[t.reshape(-1) - 1]
  result = stats.kstest(drawn, stats.truncnorm(lo, hi, loc=mean, scale=std).cdf)
  assert result.statistic < 0.01, result  # 40 000 draws: ~0.007 at p = 0.01; uniform t: 0.3
  # ... and not the uniform density it replaces.
  uniform = logsnr[np.arange(T)]
  assert stats.kstest(uniform, stats.truncnorm(lo, hi, loc=mean, scale=std).cdf).statistic > 0.2


def test_unknown_timestep_density_is_an_error():
  with pytest.raises(ValueError, match="timestep_density"):
    schedule_lib.timestep_log_probs(schedule_lib.LinearSchedule(), "lognormal")
  assert schedule_lib.timestep_log_probs(schedule_lib.LinearSchedule(), "uniform") is None


def _truncated_normal_cdf_of_t(logsnr, mean, std):
  """P(level <= t) when the log-SNR ~ Normal(mean, std) cut to the table (λ falls with t)."""
  law = stats.truncnorm((logsnr[-1] - mean) / std, (logsnr[0] - mean) / std, loc=mean, scale=std)
  return 1.0 - law.cdf(np.concatenate([logsnr[1:], [-np.inf]]))


def _empirical_cdf_of_t(t):
  """P(level <= t) for t = 1..T over the drawn levels `t` (any shape)."""
  return np.searchsorted(np.sort(t.reshape(-1)), np.arange(1, T + 1), "right") / t.size


def test_per_modality_densities():
  """'video:logsnr_normal': under ptm the video's levels follow the truncated normal in log-SNR
  and the audio's stay uniform; under vanilla both modalities share one level drawn from the
  two mixed evenly. CDFs from scipy and DDPM's betas recomputed here, 40 000 draws."""
  config = ml_collections.ConfigDict(dict(timestep_density="video:logsnr_normal",
                                          timestep_logsnr_mean=-0.5, timestep_logsnr_std=2.0))
  log_probs = loss_lib.level_densities(config, schedule_lib.LinearSchedule())
  assert log_probs.shape == (M, T)
  alpha_bar = np.cumprod(1.0 - np.linspace(1e-4, 0.02, T))
  logsnr = np.log(alpha_bar / (1.0 - alpha_bar))
  video_cdf = _truncated_normal_cdf_of_t(logsnr, -0.5, 2.0)
  uniform_cdf = np.arange(1, T + 1) / T
  t, _ = jax.device_get(monl.sample_timestep_vectors(
      jax.random.key(2), B, M, N, monl.parse_mixture("ptm"), T, log_probs))
  # layout: video is modality 0
  assert np.abs(_empirical_cdf_of_t(t[:, 0]) - video_cdf).max() < 0.01
  assert np.abs(_empirical_cdf_of_t(t[:, 1]) - uniform_cdf).max() < 0.01
  assert np.abs(uniform_cdf - video_cdf).max() > 0.3  # the two differ: the test can tell them
  t, _ = jax.device_get(monl.sample_timestep_vectors(
      jax.random.key(3), B, M, N, monl.parse_mixture("vanilla"), T, log_probs))
  assert np.all(t == t[:, :1, :1])
  mixed_cdf = (video_cdf + uniform_cdf) / 2
  assert np.abs(_empirical_cdf_of_t(t[:, 0, 0]) - mixed_cdf).max() < 0.02  # 4000 draws
  # One density for both: [T]; uniform: None; a modality that is not one: an error.
  config.timestep_density = "logsnr_normal"
  assert loss_lib.level_densities(config, schedule_lib.LinearSchedule()).shape == (T,)
  config.timestep_density = "uniform"
  assert loss_lib.level_densities(config, schedule_lib.LinearSchedule()) is None
  config.timestep_density = "pixels:logsnr_normal"
  with pytest.raises(ValueError, match="MODALITY:VALUE"):
    loss_lib.level_densities(config, schedule_lib.LinearSchedule())


def test_uniform_fraction_per_modality():
  """timestep_uniform_fraction="audio:0.4": the audio's levels follow 0.6 x the truncated normal
  + 0.4 x uniform (CDFs from scipy and DDPM's betas), the video's the truncated normal alone."""
  config = ml_collections.ConfigDict(dict(timestep_density="logsnr_normal",
                                          timestep_logsnr_mean=0.0, timestep_logsnr_std=2.0,
                                          timestep_uniform_fraction="audio:0.4"))
  log_probs = loss_lib.level_densities(config, schedule_lib.LinearSchedule())
  assert log_probs.shape == (M, T)
  alpha_bar = np.cumprod(1.0 - np.linspace(1e-4, 0.02, T))
  normal_cdf = _truncated_normal_cdf_of_t(np.log(alpha_bar / (1.0 - alpha_bar)), 0.0, 2.0)
  uniform_cdf = np.arange(1, T + 1) / T
  t, _ = jax.device_get(monl.sample_timestep_vectors(
      jax.random.key(4), B, M, N, monl.parse_mixture("ptm"), T, log_probs))
  assert np.abs(_empirical_cdf_of_t(t[:, 0]) - normal_cdf).max() < 0.01
  mixture_cdf = 0.6 * normal_cdf + 0.4 * uniform_cdf
  assert np.abs(_empirical_cdf_of_t(t[:, 1]) - mixture_cdf).max() < 0.01
  assert np.abs(0.4 * (uniform_cdf - normal_cdf)).max() > 0.1  # the mixture is told apart
  # A fraction of 1 is the uniform density; one outside [0, 1] or not a number is an error.
  config.timestep_uniform_fraction = "1"
  assert loss_lib.level_densities(config, schedule_lib.LinearSchedule()) is None
  for bad in ("1.5", "audio:x", "pixels:0.5"):
    config.timestep_uniform_fraction = bad
    with pytest.raises(ValueError, match="timestep_uniform_fraction"):
      loss_lib.level_densities(config, schedule_lib.LinearSchedule())
