"""The discrete noise schedule and the conversions between x_0, ε, v and x_t.

Timesteps are integers in {0..T}: t = 0 is clean data (ᾱ_0 = 1, the conditioning value at
inference), t in {1..T} follow the linear β schedule of DDPM (β from 1e-4 to 0.02, T = 1000).
Every function takes ᾱ already broadcast to the data's shape, so the same code serves scalar
timesteps, per-(modality, segment) vectors and per-token values.
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class LinearSchedule:
  num_timesteps: int = 1000
  beta_start: float = 1e-4
  beta_end: float = 0.02

  def __post_init__(self):
    if self.num_timesteps < 1 or not 0 < self.beta_start <= self.beta_end < 1:
      raise ValueError(f"invalid schedule {self}")

  @property
  def betas(self) -> np.ndarray:
    """float64 [T + 1]; betas[0] = 0 so that index t is timestep t."""
    return np.concatenate([[0.0], np.linspace(self.beta_start, self.beta_end, self.num_timesteps)])

  @property
  def alpha_bar_table(self) -> np.ndarray:
    """float64 [T + 1]: ᾱ_t = prod_{i<=t} (1 - β_i), with ᾱ_0 = 1."""
    return np.cumprod(1.0 - self.betas)

  def alpha_bar(self, t) -> jnp.ndarray:
    """ᾱ at integer timesteps `t` (any shape), float32."""
    table = jnp.asarray(self.alpha_bar_table, jnp.float32)
    return table[jnp.asarray(t, jnp.int32)]


def from_config(diffusion_config) -> LinearSchedule:
  return LinearSchedule(diffusion_config.num_timesteps, diffusion_config.beta_start,
                        diffusion_config.beta_end)


def q_sample(x0, noise, alpha_bar):
  """Forward noising (Eq. 5): x_t = sqrt(ᾱ) x_0 + sqrt(1 - ᾱ) ε, elementwise in ᾱ."""
  return jnp.sqrt(alpha_bar) * x0 + jnp.sqrt(1.0 - alpha_bar) * noise


def v_target(x0, noise, alpha_bar):
  """The v-prediction target: v = sqrt(ᾱ) ε - sqrt(1 - ᾱ) x_0."""
  return jnp.sqrt(alpha_bar) * noise - jnp.sqrt(1.0 - alpha_bar) * x0


PREDICTIONS = ("eps", "v", "x0")


def prediction_to_x0_eps(prediction, x_t, alpha_bar, parameterization: str):
  """(x̂_0, ε̂) from the network output under 'eps', 'v' or 'x0' parameterization.

  For 'eps' at ᾱ -> 1 (t = 0, the clean condition) x̂_0 = x_t exactly; the tiny floor on
  sqrt(ᾱ) only guards against ᾱ underflow, it never triggers with T = 1000 linear β.
  For 'x0' at ᾱ = 1 the noise is undefined (x_t = x_0): ε̂ is 0 there.

  Why 'x0': a network narrower than a latent token (e.g. width 128 on the 768-channel
  space-to-depth tokens) predicts in a subspace of the token. Under 'eps' (or 'v') the noise in
  the directions it cannot represent is never removed and samples stay noise there; under 'x0'
  those directions of x̂_0 sit at the (normalized) mean, so samples are clean, only low-rank.
  """
  sqrt_ab = jnp.sqrt(alpha_bar)
  sqrt_1m = jnp.sqrt(1.0 - alpha_bar)
  if parameterization == "eps":
    eps = prediction
    x0 = (x_t - sqrt_1m * eps) / jnp.maximum(sqrt_ab, 1e-8)
  elif parameterization == "v":
    x0 = sqrt_ab * x_t - sqrt_1m * prediction
    eps = sqrt_1m * x_t + sqrt_ab * prediction
  elif parameterization == "x0":
    x0 = prediction
    noisy = sqrt_1m > 0
    eps = jnp.where(noisy, (x_t - sqrt_ab * x0) / jnp.where(noisy, sqrt_1m, 1.0), 0.0)
  else:
    raise ValueError(f"unknown prediction parameterization {parameterization!r}; use one of "
                     f"{PREDICTIONS}")
  return x0, eps
