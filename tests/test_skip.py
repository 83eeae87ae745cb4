"""The x0 denoiser's skip path (avdit/diffusion/skip.py) against least squares on Gaussian data."""
import jax.numpy as jnp
import numpy as np
import pytest
import ml_collections

from avdit import layout as layout_lib
from avdit.diffusion import schedule as schedule_lib
from avdit.diffusion import skip


@pytest.mark.parametrize("data_var", [1.0, 0.05, 4.0])
@pytest.mark.parametrize("alpha_bar", [0.999, 0.5, 0.02])
def test_skip_is_the_least_squares_guess_and_its_error(alpha_bar, data_var):
  # c_skip: the regression slope of x_0 on x_t; c_out: the residual's standard deviation.
  rng = np.random.default_rng(0)
  x0 = rng.normal(size=400_000) * np.sqrt(data_var)
  x_t = np.sqrt(alpha_bar) * x0 + np.sqrt(1 - alpha_bar) * rng.normal(size=x0.shape)
  slope = np.dot(x_t, x0) / np.dot(x_t, x_t)
  residual_std = np.std(x0 - slope * x_t)
  c_skip, c_out = skip.skip_coefficients(jnp.float32(alpha_bar), jnp.float32(data_var))
  np.testing.assert_allclose(float(c_skip), slope, rtol=1e-2, atol=2e-3)
  np.testing.assert_allclose(float(c_out), residual_std, rtol=1e-2)


def _layout():
  return layout_lib.ClipLayout(num_frames=9, fps=8.0, height=16, width=16, sample_rate=16000,
                               video_channels=6, audio_channels=4)


def test_wrapped_network_keeps_given_elements_and_scales_its_output():
  lay = _layout()
  schedule = schedule_lib.LinearSchedule()
  rng = np.random.default_rng(1)
  noisy = {"video": jnp.asarray(rng.normal(size=(2,) + lay.video_latent_shape), jnp.float32),
           "audio": jnp.asarray(rng.normal(size=(2,) + lay.audio_latent_shape), jnp.float32)}
  data_var = {"video": np.linspace(0.1, 1.0, 6).astype(np.float32),
              "audio": np.ones(4, np.float32)}
  ones = lambda x, t, sc: {k: jnp.ones_like(v) for k, v in x.items()}
  t = np.zeros((2, 2, lay.num_segments), np.float32)
  t[:, layout_lib.VIDEO, 1:] = 700.0  # video after its first segment generated, the rest given
  x0_hat = skip.with_skip(ones, schedule, lay, data_var)(noisy, jnp.asarray(t), None)
  np.testing.assert_array_equal(np.asarray(x0_hat["audio"]), np.asarray(noisy["audio"]))
  np.testing.assert_array_equal(np.asarray(x0_hat["video"][:, 0]), np.asarray(noisy["video"][:, 0]))
  # Generated elements: numpy's c_skip x_t + c_out · 1 from the schedule's own ᾱ table.
  ab = schedule.alpha_bar_table[700]
  s = data_var["video"].astype(np.float64)
  c_skip = np.sqrt(ab) * s / (ab * s + 1 - ab)
  c_out = np.sqrt(s * (1 - ab) / (ab * s + 1 - ab))
  np.testing.assert_allclose(np.asarray(x0_hat["video"][:, 1:]),
                             c_skip * np.asarray(noisy["video"][:, 1:]) + c_out, rtol=1e-5)


def test_input_scale_gives_the_network_unit_variance_inputs_and_given_elements_whitened():
  lay = _layout()
  schedule = schedule_lib.LinearSchedule()
  rng = np.random.default_rng(2)
  data_var = {"video": np.array([40.0, 9.0, 1.0, 0.25, 0.04, 0.01], np.float32),
              "audio": np.ones(4, np.float32)}
  batch = 4000
  x0 = {"video": rng.normal(size=(batch,) + lay.video_latent_shape) * np.sqrt(data_var["video"]),
        "audio": rng.normal(size=(batch,) + lay.audio_latent_shape)}
  t = np.zeros((batch, 2, lay.num_segments), np.float32)
  t[:, layout_lib.VIDEO, 1:] = 300.0  # video's first segment given, the rest at t = 300
  ab = schedule.alpha_bar_table[300]
  noisy = {k: v.copy() for k, v in x0.items()}
  noisy["video"][:, 1:] = (np.sqrt(ab) * x0["video"][:, 1:]
                           + np.sqrt(1 - ab) * rng.normal(size=x0["video"][:, 1:].shape))
  seen = {}
  def network(x, t, sc):
    seen.update(x)
    return {k: jnp.zeros_like(v) for k, v in x.items()}
  denoise = skip.with_skip(network, schedule, lay, data_var, scale_input=True)
  denoise({k: jnp.asarray(v, jnp.float32) for k, v in noisy.items()}, jnp.asarray(t), None)
  video = np.asarray(seen["video"], np.float64)
  # Empirical per-channel standard deviation of what the network saw: 1 at t = 300 ...
  np.testing.assert_allclose(video[:, 1:].reshape(-1, 6).std(0), 1.0, rtol=0.03)
  # ... and the given segment is x_0 / sqrt(s) exactly (whitened); unit-variance audio unchanged.
  np.testing.assert_allclose(video[:, 0], x0["video"][:, 0] / np.sqrt(data_var["video"]),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(seen["audio"]), x0["audio"], rtol=1e-6, atol=1e-6)


def test_skip_needs_x0_prediction_and_is_off_by_default():
  lay = _layout()
  network = lambda x, t, sc: x
  config = ml_collections.ConfigDict(dict(prediction="v", x0_skip=False))
  assert skip.maybe_with_skip(network, config, schedule_lib.LinearSchedule(), lay, {}) is network
  config.x0_skip = True
  with pytest.raises(ValueError, match="x0_skip needs diffusion.prediction='x0'"):
    skip.maybe_with_skip(network, config, schedule_lib.LinearSchedule(), lay, {})
  config = ml_collections.ConfigDict(dict(prediction="x0", x0_skip=False, input_scale=True))
  with pytest.raises(ValueError, match="input_scale needs diffusion.x0_skip"):
    skip.maybe_with_skip(network, config, schedule_lib.LinearSchedule(), lay, {})
  # Stats without the per-channel variance (older checkpoints, latent caches): 1 per channel.
  variances = skip.data_variances({}, lay)
  np.testing.assert_array_equal(variances["video"], np.ones(6))
  np.testing.assert_array_equal(variances["audio"], np.ones(4))
