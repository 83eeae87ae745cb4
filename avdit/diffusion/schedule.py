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


def logsnr_table(schedule: LinearSchedule) -> np.ndarray:
  """float64 [T + 1]: λ_t = log(ᾱ_t / (1 - ᾱ_t)); λ_0 = +inf."""
  log_alpha_bar = np.cumsum(np.log1p(-schedule.betas))
  one_minus_alpha_bar = -np.expm1(log_alpha_bar)  # accurate near t = 1, where ᾱ ≈ 1
  with np.errstate(divide="ignore"):
    return log_alpha_bar - np.log(one_minus_alpha_bar)


TIMESTEP_DENSITIES = ("uniform", "logsnr_normal")


def timestep_log_probs(schedule: LinearSchedule, density: str = "uniform",
                       logsnr_mean: float = 0.0, logsnr_std: float = 2.0,
                       uniform_fraction: float = 0.0) -> np.ndarray | None:
  """float32 [T] log-probabilities of training timesteps 1..T, or None for "uniform" (DDPM's).

  "logsnr_normal": the log-SNR λ of the drawn timesteps ~ Normal(logsnr_mean, logsnr_std),
  restricted to the schedule's range (P(t) ∝ the normal density at λ_t times the width of λ
  that t covers). Why: under the linear schedule a uniform t spends half of the draws at
  λ < -2.5 (t > 500), where x_t is nearly noise; the usual densities put the mass near λ = 0
  (SD3's logit-normal(0, 1) is λ ~ Normal(0, 2); EDM's is ~Normal(1.0, 2.4) at unit data std).
  `uniform_fraction` of the draws are uniform instead (the mixture's density): a tail that keeps
  every level trained, as a modality read at the high levels needs (loss.level_densities).
  """
  if density == "uniform" or uniform_fraction == 1.0:
    return None
  if density != "logsnr_normal":
    raise ValueError(f"unknown diffusion.timestep_density {density!r}; use one of "
                     f"{TIMESTEP_DENSITIES}")
  if not logsnr_std > 0:
    raise ValueError(f"diffusion.timestep_logsnr_std must be > 0, got {logsnr_std}")
  logsnr = logsnr_table(schedule)[1:]
  width = -np.gradient(logsnr)  # λ falls with t
  log_p = -0.5 * np.square((logsnr - logsnr_mean) / logsnr_std) + np.log(width)
  log_p -= np.logaddexp.reduce(log_p)
  if uniform_fraction > 0:
    log_p = np.logaddexp(np.log1p(-uniform_fraction) + log_p,
                         np.log(uniform_fraction) - np.log(schedule.num_timesteps))
  return log_p.astype(np.float32)


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
