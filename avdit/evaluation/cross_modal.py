"""Cross-modal gain: how much the clean other modality helps the denoiser, on held-out clips.

For a target modality at noise level t (all its segments) and the same noise draw,

  gain(target, t) = 1 - E|x̂_0 - x_0|² (other modality clean, t = 0: the a2v / v2a condition)
                      / E|x̂_0 - x_0|² (other modality pure noise, t = T: nothing to read)

over the target's latents. 0: the model ignores the other modality; > 0: it reads it. It needs
no sampling and no oracle, so it moves long before the oracle's cross-modal scores do, and it
says which direction (audio → video or video → audio) the model has started to learn.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from avdit import layout as layout_lib
from avdit.diffusion import loss as loss_lib
from avdit.diffusion import schedule as schedule_lib

TARGETS = {"video": layout_lib.VIDEO, "audio": layout_lib.AUDIO}
DEFAULT_NOISE_STEPS = (200, 500, 800)


def _x0_error(apply_fn, params, latents_x0, noise_rng, timestep_vector_bmn, target, *,
              schedule, layout, prediction) -> jnp.ndarray:
  # The same rng draws the same noise for every timestep vector (loss.noise_latents).
  noisy, _, alpha_bar = loss_lib.noise_latents(latents_x0, timestep_vector_bmn, noise_rng,
                                               schedule=schedule, layout=layout)
  output = apply_fn(params, noisy, timestep_vector_bmn.astype(jnp.float32), None)
  x0_hat, _ = schedule_lib.prediction_to_x0_eps(output[target], noisy[target], alpha_bar[target],
                                                prediction)
  return jnp.mean(jnp.square(x0_hat - latents_x0[target]))


def cross_modal_gain(apply_fn, params, latents_x0, rng, *, schedule, layout, prediction: str,
                     noise_steps=DEFAULT_NOISE_STEPS) -> dict[str, float]:
  """{"<target>_t<t>": gain, "<target>": mean over t} for normalized clean latents [B, ...]."""
  batch = latents_x0["video"].shape[0]
  error = jax.jit(_x0_error, static_argnums=(0,), static_argnames=(
      "target", "schedule", "layout", "prediction"))
  gains = {}
  for target, index in TARGETS.items():
    per_step = []
    for t in noise_steps:
      errors = []
      for other_t in (0, schedule.num_timesteps):
        timesteps = np.full((batch, layout_lib.NUM_MODALITIES, layout.num_segments), other_t,
                            np.int32)
        timesteps[:, index, :] = t
        errors.append(float(error(apply_fn, params, latents_x0, rng, jnp.asarray(timesteps),
                                  target=target, schedule=schedule, layout=layout,
                                  prediction=prediction)))
      per_step.append(1.0 - errors[0] / max(errors[1], 1e-12))
      gains[f"{target}_t{t}"] = per_step[-1]
    gains[target] = float(np.mean(per_step))
  return gains
