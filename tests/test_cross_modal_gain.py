"""Cross-modal gain: 1 for a denoiser that needs the other modality, 0 for one that ignores it,
and the error ratio of a denoiser with known errors (computed by hand)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from avdit import layout as layout_lib
from avdit.diffusion import schedule as schedule_lib
from avdit.evaluation import cross_modal

LAYOUT = layout_lib.ClipLayout(num_frames=9, fps=8.0, height=16, width=16, sample_rate=16000,
                               video_channels=12, audio_channels=10)
SCHEDULE = schedule_lib.LinearSchedule(1000, 1e-4, 0.02)


def _latents():
  rng = np.random.default_rng(0)
  return {k: jnp.asarray(rng.normal(size=(3, *shape)), jnp.float32)
          for k, shape in (("video", LAYOUT.video_latent_shape),
                           ("audio", LAYOUT.audio_latent_shape))}


def _other_is_clean(timesteps_bmn, target):
  other = layout_lib.AUDIO if target == "video" else layout_lib.VIDEO
  return jnp.all(timesteps_bmn[:, other] == 0)


def _gain(apply_fn, latents):
  return cross_modal.cross_modal_gain(apply_fn, latents, latents, jax.random.key(0),
                                      schedule=SCHEDULE, layout=LAYOUT, prediction="x0",
                                      noise_steps=(300, 700))


def test_a_denoiser_that_reads_the_other_modality_gains_one():
  def apply_fn(x0, noisy, timesteps, _):
    return {k: jnp.where(_other_is_clean(timesteps, k), x0[k], 0.0) for k in noisy}
  gains = _gain(apply_fn, _latents())
  for key in ("video", "audio", "video_t300", "audio_t700"):
    assert gains[key] == pytest.approx(1.0, abs=1e-6)


def test_a_denoiser_that_ignores_the_other_modality_gains_nothing():
  def apply_fn(x0, noisy, timesteps, _):
    del x0, timesteps
    return {k: 0.5 * v for k, v in noisy.items()}
  gains = _gain(apply_fn, _latents())
  assert gains["video"] == pytest.approx(0.0, abs=1e-6)
  assert gains["audio"] == pytest.approx(0.0, abs=1e-6)


def test_gain_is_one_minus_the_error_ratio_at_each_noise_level():
  def apply_fn(x0, noisy, timesteps, _):
    # Error t/T per element with the other modality clean, twice that without: gain 1 - 1/4
    # (a target left clean, t = 0, would have no error to compare).
    out = {}
    for k, index in cross_modal.TARGETS.items():
      t = jnp.mean(timesteps[:, index]) / SCHEDULE.num_timesteps
      out[k] = x0[k] + t * jnp.where(_other_is_clean(timesteps, k), 1.0, 2.0)
    return out
  gains = _gain(apply_fn, _latents())
  for key in ("video_t300", "video_t700", "audio_t300", "audio"):
    assert gains[key] == pytest.approx(0.75, abs=1e-5)
