"""The x0 denoiser with a skip path from its noisy input (`diffusion.x0_skip`).

EDM's preconditioning (Karras et al. 2022) in the variance-preserving form, per latent channel:
with x_t = √ᾱ x_0 + √(1-ᾱ) ε and a channel of data variance s,

  x̂_0 = c_skip x_t + c_out F(x_t, t),   c_skip = √ᾱ s / (ᾱ s + 1 - ᾱ),
                                          c_out = √(s (1 - ᾱ) / (ᾱ s + 1 - ᾱ)).

c_skip x_t is the best linear guess of x_0 from x_t alone and c_out its error's standard
deviation, so the network F predicts a unit-scale correction. Why: a plain x0 head must learn
the identity through the trunk at low noise, and a head narrower than the token (width 192 on
768 video channels) can only pass a `width`-dimensional part of it, so a sampled background
colour, known from x_t, is shrunk back to the mean. With s per channel, the weak directions of
whitened latents (latent_space.estimate_stats) get c_skip ≈ 0 and stay at the mean as before.
Given elements (t = 0, ᾱ = 1) come back exactly: c_skip = 1, c_out = 0. The loss stays the x_0
squared error, so nothing else (loss weighting, samplers, evaluation) changes: everything that
calls the wrapped network sees an 'x0' model.

With `input_scale` F also gets EDM's input scaling, c_in x_t with c_in = 1 / √(ᾱ s + 1 - ᾱ), the
inverse of x_t's standard deviation per channel: 1 for channels of unit variance, and for latents
that keep their natural spectrum (latent.direction_scale="shared") a given element (ᾱ = 1)
arrives whitened, x_0 / √s, while the noise and the loss stay in the natural space.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from avdit import layout as layout_lib
from avdit.diffusion import schedule as schedule_lib


def skip_coefficients(alpha_bar, data_var):
  """(c_skip, c_out), broadcast over ᾱ and the per-channel data variance s."""
  signal = alpha_bar * data_var
  total = signal + (1.0 - alpha_bar)
  return jnp.sqrt(alpha_bar) * data_var / total, jnp.sqrt(data_var * (1.0 - alpha_bar) / total)


def input_scale(alpha_bar, data_var):
  """c_in = 1 / std(x_t) per channel: x_t = √ᾱ x_0 + √(1-ᾱ) ε has variance ᾱ s + 1 - ᾱ."""
  return jax.lax.rsqrt(alpha_bar * data_var + (1.0 - alpha_bar))


def data_variances(stats, layout: layout_lib.ClipLayout) -> dict[str, np.ndarray]:
  """Per-channel variance of the normalized latents (`{name}_normalized_var` of the stats; 1
  where the stats predate it or come from a latent cache, which normalizes per channel)."""
  channels = {"video": layout.video_channels * layout.patch_size**2,
              "audio": layout.audio_channels}
  return {k: np.asarray(stats.get(f"{k}_normalized_var", np.ones(c)), np.float32)
          for k, c in channels.items()}


def with_skip(network, schedule: schedule_lib.LinearSchedule, layout: layout_lib.ClipLayout,
              data_var: dict[str, np.ndarray], scale_input: bool = False):
  """The denoiser x̂_0(noisy, timestep_vector_bmn, self_cond) around `network` (same call)."""

  data_var = {k: jnp.asarray(v) for k, v in data_var.items()}

  def denoise(noisy, timestep_vector_bmn, self_cond=None):
    alpha_bar = layout.expand_to_latents(
        schedule.alpha_bar(jnp.round(timestep_vector_bmn).astype(jnp.int32)))
    network_input = noisy
    if scale_input:
      network_input = {k: (input_scale(alpha_bar[k], data_var[k]) * x).astype(x.dtype)
                       for k, x in noisy.items()}
    output = network(network_input, timestep_vector_bmn, self_cond)
    x0_hat = {}
    for k, f in output.items():
      c_skip, c_out = skip_coefficients(alpha_bar[k], data_var[k])
      x0_hat[k] = (c_skip * noisy[k] + c_out * f.astype(jnp.float32)).astype(f.dtype)
    return x0_hat

  return denoise


def maybe_with_skip(network, diffusion_config, schedule, layout, stats):
  """`network` itself, or wrapped by `with_skip` when `diffusion_config.x0_skip`."""
  if not diffusion_config.get("x0_skip", False):
    if diffusion_config.get("input_scale", False):
      raise ValueError("diffusion.input_scale needs diffusion.x0_skip=True (it is the skip "
                       "path's preconditioning)")
    return network
  if diffusion_config.prediction != "x0":
    raise ValueError("diffusion.x0_skip needs diffusion.prediction='x0' (it builds x̂_0 from "
                     f"the network's output), got {diffusion_config.prediction!r}")
  return with_skip(network, schedule, layout, data_variances(stats, layout),
                   scale_input=diffusion_config.get("input_scale", False))


def apply_fn_with_skip(apply_fn, diffusion_config, schedule, layout, stats):
  """The same for an `apply_fn(params, noisy, timestep_vector_bmn, self_cond)`."""
  if not diffusion_config.get("x0_skip", False):
    return apply_fn

  def apply(params, noisy, timestep_vector_bmn, self_cond):
    network = lambda x, t, sc: apply_fn(params, x, t, sc)
    return maybe_with_skip(network, diffusion_config, schedule, layout, stats)(
        noisy, timestep_vector_bmn, self_cond)

  return apply
