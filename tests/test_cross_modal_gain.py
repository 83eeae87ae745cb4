"""Cross-modal gain: 1 for a denoiser that needs the other modality, 0 for one that ignores it,
and the error ratio of a denoiser with known errors (computed by hand)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from avdit import layout as layout_lib
from avdit import tasks as tasks_lib
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


def _tasks(*names):
  return [tasks_lib.parse_task(name, LAYOUT) for name in names]


def test_heldout_error_counts_the_generated_elements_at_each_level():
  # Error t/T on generated elements, 100 on the given ones (t = 0): the given ones must not count,
  # so each generated modality's error is the mean of (t/T)² over the levels.
  def apply_fn(x0, noisy, timesteps, _):
    del noisy
    per_element = LAYOUT.expand_to_latents(
        jnp.where(timesteps > 0, timesteps / SCHEDULE.num_timesteps, 100.0))
    return {k: x0[k] + per_element[k] for k in x0}
  latents = _latents()
  levels = (300, 700)
  errors = cross_modal.heldout_x0_errors(
      apply_fn, latents, latents, jax.random.key(0), _tasks("a2v", "v2a", "joint", "av_inpaint"),
      schedule=SCHEDULE, layout=LAYOUT, prediction="x0", noise_steps=levels)
  expected = np.mean([(t / SCHEDULE.num_timesteps) ** 2 for t in levels])
  assert set(errors["a2v"]) == {"video"} and set(errors["v2a"]) == {"audio"}
  for task in ("joint", "av_inpaint"):
    assert set(errors[task]) == {"video", "audio"}
  for by_modality in errors.values():
    for value in by_modality.values():
      assert value == pytest.approx(expected, rel=1e-5)


def test_heldout_error_of_a_denoiser_that_returns_its_input_is_the_noise_it_leaves():
  # x̂0 = x_t: error = E|(sqrt(ᾱ) - 1) x0 + sqrt(1 - ᾱ) ε|², computed here with numpy from the
  # same noise draw (loss.noise_latents: sorted names, one key each).
  latents = _latents()
  t = 500
  errors = cross_modal.heldout_x0_errors(
      lambda _, noisy, *__: noisy, None, latents, jax.random.key(3), _tasks("joint"),
      schedule=SCHEDULE, layout=LAYOUT, prediction="x0", noise_steps=(t,))
  alpha_bar = float(SCHEDULE.alpha_bar(jnp.asarray(t)))
  keys = dict(zip(sorted(latents), jax.random.split(jax.random.key(3), len(latents))))
  for name, x0 in latents.items():
    noise = np.asarray(jax.random.normal(keys[name], x0.shape, x0.dtype), np.float64)
    x0 = np.asarray(x0, np.float64)
    x_t = np.sqrt(alpha_bar) * x0 + np.sqrt(1 - alpha_bar) * noise
    assert errors["joint"][name] == pytest.approx(np.mean((x_t - x0) ** 2), rel=1e-4)
