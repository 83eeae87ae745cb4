"""Cross-modal gain: how much the clean other modality helps the denoiser, on held-out clips.

For a target modality at noise level t (all its segments) and the same noise draw,

  gain(target, t) = 1 - E|x̂_0 - x_0|² (other modality clean, t = 0: the a2v / v2a condition)
                      / E|x̂_0 - x_0|² (other modality pure noise, t = T: nothing to read)

over the target's latents. 0: the model ignores the other modality; > 0: it reads it. It needs
no sampling and no oracle, so it moves long before the oracle's cross-modal scores do, and it
says which direction (audio → video or video → audio) the model has started to learn.

The same x̂0 error with a task's given elements clean (t = 0) and its generated ones at t is the
task's held-out denoising error (`heldout_x0_errors`): the validation loss of a learning curve,
per generated modality, deterministic for a fixed noise draw, so it shows whether more steps
still buy anything long before the oracle's sampled metrics settle.
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


def _x0_errors(apply_fn, params, latents_x0, noise_rng, timestep_vector_bmn, *, schedule,
               layout, prediction) -> dict[str, jnp.ndarray]:
  """{modality: mean |x̂0 - x0|² over its elements at t > 0} (NaN where all are at t = 0)."""
  # The same rng draws the same noise for every timestep vector (loss.noise_latents).
  noisy, _, alpha_bar = loss_lib.noise_latents(latents_x0, timestep_vector_bmn, noise_rng,
                                               schedule=schedule, layout=layout)
  output = apply_fn(params, noisy, timestep_vector_bmn.astype(jnp.float32), None)
  generated = layout.expand_to_latents((timestep_vector_bmn > 0).astype(jnp.float32))
  errors = {}
  for name, x0 in latents_x0.items():
    x0_hat, _ = schedule_lib.prediction_to_x0_eps(output[name], noisy[name], alpha_bar[name],
                                                  prediction)
    weight = jnp.broadcast_to(generated[name], x0.shape)
    errors[name] = jnp.sum(weight * jnp.square(x0_hat - x0)) / jnp.sum(weight)
  return errors


_jitted_x0_errors = jax.jit(_x0_errors, static_argnums=(0,),
                            static_argnames=("schedule", "layout", "prediction"))


def cross_modal_gain(apply_fn, params, latents_x0, rng, *, schedule, layout, prediction: str,
                     noise_steps=DEFAULT_NOISE_STEPS) -> dict[str, float]:
  """{"<target>_t<t>": gain, "<target>": mean over t} for normalized clean latents [B, ...]."""
  batch = latents_x0["video"].shape[0]
  gains = {}
  for target, index in TARGETS.items():
    per_step = []
    for t in noise_steps:
      errors = []
      for other_t in (0, schedule.num_timesteps):
        timesteps = np.full((batch, layout_lib.NUM_MODALITIES, layout.num_segments), other_t,
                            np.int32)
        timesteps[:, index, :] = t
        errors.append(float(_jitted_x0_errors(
            apply_fn, params, latents_x0, rng, jnp.asarray(timesteps), schedule=schedule,
            layout=layout, prediction=prediction)[target]))
      per_step.append(1.0 - errors[0] / max(errors[1], 1e-12))
      gains[f"{target}_t{t}"] = per_step[-1]
    gains[target] = float(np.mean(per_step))
  return gains


def heldout_x0_errors(apply_fn, params, latents_x0, rng, task_list, *, schedule, layout,
                      prediction: str, noise_steps=DEFAULT_NOISE_STEPS) -> dict[str, dict]:
  """{task name: {modality: E|x̂0 - x0|²}} over each generated modality's elements, the task's
  condition clean at t = 0 and the rest at each of `noise_steps` (the mean over them), on
  normalized clean latents [B, ...] with one noise draw for every task and level."""
  batch = latents_x0["video"].shape[0]
  errors = {}
  for task in task_list:
    per_step = []
    for t in noise_steps:
      timesteps = np.where(task.condition_mask, 0, t).astype(np.int32)
      timesteps = np.broadcast_to(timesteps, (batch, *timesteps.shape))
      per_step.append(_jitted_x0_errors(apply_fn, params, latents_x0, rng,
                                        jnp.asarray(timesteps), schedule=schedule,
                                        layout=layout, prediction=prediction))
    generated = task.generate_mask.any(axis=1)
    errors[task.name] = {name: float(np.mean([float(e[name]) for e in per_step]))
                         for name, index in TARGETS.items() if generated[index]}
  return errors
