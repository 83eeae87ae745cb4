"""Samplers against closed forms, with analytic (exact) denoisers instead of a network.

Data x0 ~ N(μ, σ²) i.i.d. per element has the exact ε-predictor
E[ε | x_t] = sqrt(1-ᾱ) (x_t - sqrt(ᾱ) μ) / (ᾱ σ² + 1 - ᾱ), elementwise in ᾱ. With it every
sampler is an affine map of Gaussian noise, so the exact mean and variance of its output *after
discretization* follow from a scalar recursion. `_reference_moments` computes them in numpy from
the textbook formulas (an implementation independent of samplers.py); the tests then check
 (a) the sampler's empirical moments against that reference within statistical error, and
 (b) that reference against the data's (μ, σ²) within the discretization error of the step count.

Statistical tolerances: for n i.i.d. values, the sample mean has standard error sqrt(v/n) and
the sample variance a relative standard error sqrt(2/n); we allow 4.5 standard errors
(a false failure once in ~10^5 runs; seeds are fixed anyway).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from avdit import layout as layout_lib
from avdit import tasks as tasks_lib
from avdit.diffusion import schedule as schedule_lib
from avdit.sampling import samplers

LAYOUT = layout_lib.ClipLayout(num_frames=9, fps=8.0, height=16, width=16, sample_rate=16000,
                               video_channels=3, audio_channels=2, spatial_factor=8,
                               temporal_factor=4, audio_hop=320)
SCHEDULE = schedule_lib.LinearSchedule()
T = SCHEDULE.num_timesteps
N = LAYOUT.num_segments  # 3 segments; video [3, 2, 2, 3] = 36 and audio [57, 2] = 114 per clip
# Per-modality data moments of the i.i.d. Gaussian toy.
DATA = {"video": (0.5, 0.6), "audio": (-0.8, 1.3)}
NUM_STD_ERR = 4.5
JOINT = np.zeros((2, N), bool)


def _task_mask(name: str) -> np.ndarray:
  return tasks_lib.parse_task(name, LAYOUT).condition_mask


def _alpha_bar_elements(t_bmn):
  return LAYOUT.expand_to_latents(SCHEDULE.alpha_bar(t_bmn))


# --- analytic denoisers ----------------------------------------------------------------------
def _gaussian_posterior(x, ab, mu, sigma):
  """(E[x0 | x_t], E[ε | x_t]) for x0 ~ N(mu, sigma²) elementwise, x_t = √ᾱ x0 + √(1-ᾱ) ε."""
  denom = ab * sigma**2 + 1.0 - ab
  centred = x - jnp.sqrt(ab) * mu
  x0 = mu + jnp.sqrt(ab) * sigma**2 * centred / denom
  eps = jnp.sqrt(1.0 - ab) * centred / denom  # exactly 0 at ᾱ = 1
  return x0, eps


def gaussian_eps_apply(params, x, t_bmn, self_cond):
  del self_cond
  ab = _alpha_bar_elements(t_bmn)
  return {k: _gaussian_posterior(x[k], ab[k], *params[k])[1] for k in x}


def gaussian_v_apply(params, x, t_bmn, self_cond):
  """The exact v-predictor: E[v | x_t] = √ᾱ E[ε | x_t] - √(1-ᾱ) E[x0 | x_t]."""
  del self_cond
  ab = _alpha_bar_elements(t_bmn)
  out = {}
  for k in x:
    x0, eps = _gaussian_posterior(x[k], ab[k], *params[k])
    out[k] = jnp.sqrt(ab[k]) * eps - jnp.sqrt(1.0 - ab[k]) * x0
  return out


def _gaussian_params():
  return {k: (jnp.float32(m), jnp.float32(s)) for k, (m, s) in DATA.items()}


def _zeros(batch):
  return {k: jnp.zeros(s, jnp.float32) for k, s in LAYOUT.latent_shapes(batch).items()}


# --- the independent numpy reference -----------------------------------------------------------
class _Affine:
  """c + v·Z with Z ~ N(0, I): exact mean c and variance |v|² of an affine-Gaussian quantity."""

  def __init__(self, const, coef):
    self.const, self.coef = float(const), np.asarray(coef, np.float64)

  def __add__(self, other):
    if isinstance(other, _Affine):
      return _Affine(self.const + other.const, self.coef + other.coef)
    return _Affine(self.const + other, self.coef)

  __radd__ = __add__

  def __sub__(self, other):
    return self + (-1.0) * other

  def __mul__(self, a):
    return _Affine(self.const * a, self.coef * a)

  __rmul__ = __mul__

  def __truediv__(self, a):
    return self * (1.0 / a)


def _reference_moments(sampler, num_steps, mu, sigma, eta=0.0, resample=1, resample_steps=0):
  """(mean, variance) of the discretized sampler's output with the exact Gaussian denoiser.

  Written from the papers' formulas: DDPM Algorithm 3 on the respaced schedule with σ² = β̃,
  DDIM Eq. 12 (Song et al.), DPM-Solver++(2M) (Lu et al. Alg. 2), x_T ~ N(0, 1); RePaint's
  resampling (Lugmayr et al. Alg. 1, jump 1): the first `resample_steps` steps are each taken
  `resample` times, x_{t} ~ q(x_t | x_s) = N(sqrt(ᾱ_t/ᾱ_s) x_s, 1 - ᾱ_t/ᾱ_s) between passes.
  """
  ab = SCHEDULE.alpha_bar_table
  ts = [int(round(T * k / num_steps)) for k in range(num_steps, -1, -1)]
  basis = iter(np.eye(1 + 2 * num_steps * resample))  # one fresh N(0, 1) per draw
  x = _Affine(0.0, next(basis))
  x0_prev = h_prev = i_prev = None
  passes = [resample if i < resample_steps else 1 for i in range(num_steps)]
  for i in [i for i in range(num_steps) for _ in range(passes[i])]:
    a_t, a_s = ab[ts[i]], ab[ts[i + 1]]
    if i == i_prev:  # a repeat pass: forward-noise x_s back to t
      x = np.sqrt(a_t / a_s) * x + np.sqrt(1 - a_t / a_s) * _Affine(0.0, next(basis))
    i_prev = i
    eps = (x - np.sqrt(a_t) * mu) * (np.sqrt(1 - a_t) / (a_t * sigma**2 + 1 - a_t))
    x0 = (x - np.sqrt(1 - a_t) * eps) / np.sqrt(a_t)
    z = _Affine(0.0, next(basis))
    if sampler == "ddpm":
      alpha = a_t / a_s
      beta = 1 - alpha
      var = (1 - a_s) / (1 - a_t) * beta
      x = (x - eps * (beta / np.sqrt(1 - a_t))) / np.sqrt(alpha) + np.sqrt(var) * z
    elif sampler == "ddim":
      s = eta * np.sqrt((1 - a_s) / (1 - a_t) * (1 - a_t / a_s))
      x = np.sqrt(a_s) * x0 + np.sqrt(max(1 - a_s - s**2, 0.0)) * eps + s * z
    else:
      if ts[i + 1] == 0:
        x = x0
        break
      lam_t = np.log(np.sqrt(a_t / (1 - a_t)))
      lam_s = np.log(np.sqrt(a_s / (1 - a_s)))
      h = lam_s - lam_t
      if x0_prev is None:
        d = x0
      else:
        r = h_prev / h
        d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_prev
      x = np.sqrt((1 - a_s) / (1 - a_t)) * x - np.sqrt(a_s) * (np.exp(-h) - 1) * d
      x0_prev, h_prev = x0, h
  return x.const, float(x.coef @ x.coef)


# --- moments -----------------------------------------------------------------------------------
# (sampler, steps, eta, discretization bound on |var_ref/σ² - 1|, batch). The bound is the
# reference recursion's own deviation rounded up: it documents how far each step count is from
# the continuous-time answer (DDIM η=1 at 50 steps is a coarse ancestral sampler, ~19% low).
MOMENT_CASES = [
    ("ddpm", 1000, 0.0, 0.015, 256),
    ("ddpm", 250, 0.0, 0.05, 512),
    ("ddim", 50, 0.0, 0.10, 1024),
    ("ddim", 250, 0.0, 0.025, 1024),
    ("ddim", 50, 1.0, 0.20, 1024),
    ("dpmpp_2m", 20, 0.0, 0.06, 1024),
]


def _check_moments(out, sampler, steps, eta, bound):
  for name, (mu, sigma) in DATA.items():
    values = np.asarray(out[name], np.float64).ravel()
    n = values.size
    ref_mean, ref_var = _reference_moments(sampler, steps, mu, sigma, eta)
    # The reference itself is within the discretization bound of the data's moments.
    assert abs(ref_var / sigma**2 - 1) < bound, (name, ref_var / sigma**2)
    assert abs(ref_mean - mu) < 0.01 * sigma  # x_T ~ N(0, 1) instead of N(√ᾱ_T μ, ...) only
    mean_tol = NUM_STD_ERR * np.sqrt(ref_var / n)
    var_tol = NUM_STD_ERR * np.sqrt(2.0 / n)
    assert abs(values.mean() - ref_mean) < mean_tol, (name, values.mean(), ref_mean, mean_tol)
    assert abs(values.var() / ref_var - 1) < var_tol, (name, values.var() / ref_var, var_tol)
    assert abs(values.mean() - mu) < mean_tol + abs(ref_mean - mu)
    assert abs(values.var() / sigma**2 - 1) < var_tol + bound


@pytest.mark.parametrize("sampler,steps,eta,bound,batch", MOMENT_CASES)
def test_unconditional_moments_match_closed_form(sampler, steps, eta, bound, batch):
  spec = samplers.SamplerSpec(sampler=sampler, num_steps=steps, eta=eta, self_condition=False)
  out = samplers.sample_latents(gaussian_eps_apply, _gaussian_params(), _zeros(batch), JOINT,
                                jax.random.key(1), schedule=SCHEDULE, layout=LAYOUT, spec=spec)
  _check_moments(out, sampler, steps, eta, bound)


@pytest.mark.parametrize("sampler,steps", [("ddim", 50), ("dpmpp_2m", 20)])
def test_v_prediction_matches_eps_prediction(sampler, steps):
  """The exact v-predictor gives the same sampler (same x_T, deterministic) and moments."""
  kwargs = dict(schedule=SCHEDULE, layout=LAYOUT)
  outs = {}
  for prediction, fn in (("eps", gaussian_eps_apply), ("v", gaussian_v_apply)):
    spec = samplers.SamplerSpec(sampler=sampler, num_steps=steps, prediction=prediction,
                                self_condition=False)
    outs[prediction] = samplers.sample_latents(fn, _gaussian_params(), _zeros(1024), JOINT,
                                               jax.random.key(2), spec=spec, **kwargs)
  _check_moments(outs["v"], sampler, steps, 0.0, 0.10)
  for name in DATA:
    # float32: x̂0 from ε divides by √ᾱ_T ≈ 0.0066 at the first step, from v it does not.
    np.testing.assert_allclose(outs["v"][name], outs["eps"][name], atol=2e-3)


def test_ddim_eta_one_is_ddpm():
  """Same noise draws: DDIM with η = 1 and DDPM with β̃ are the same ancestral step."""
  outs = []
  for spec in (samplers.SamplerSpec(sampler="ddim", num_steps=20, eta=1.0),
               samplers.SamplerSpec(sampler="ddpm", num_steps=20)):
    outs.append(samplers.sample_latents(gaussian_eps_apply, _gaussian_params(), _zeros(8), JOINT,
                                        jax.random.key(3), schedule=SCHEDULE, layout=LAYOUT,
                                        spec=spec))
  for name in DATA:
    np.testing.assert_allclose(outs[0][name], outs[1][name], atol=5e-4, rtol=1e-4)


# --- RePaint's resampling ----------------------------------------------------------------------
@pytest.mark.parametrize("sampler,steps,eta", [("ddim", 20, 0.0), ("ddpm", 20, 0.0)])
def test_resampling_moments_match_closed_form(sampler, steps, eta):
  """Every step taken 3 times with forward re-noising between passes: the output's moments
  against the numpy recursion, which with these step counts sits far from the plain sampler's."""
  resample = 3
  spec = samplers.SamplerSpec(sampler=sampler, num_steps=steps, eta=eta, self_condition=False,
                              resample=resample)
  out = samplers.sample_latents(gaussian_eps_apply, _gaussian_params(), _zeros(1024), JOINT,
                                jax.random.key(5), schedule=SCHEDULE, layout=LAYOUT, spec=spec)
  for name, (mu, sigma) in DATA.items():
    values = np.asarray(out[name], np.float64).ravel()
    n = values.size
    ref_mean, ref_var = _reference_moments(sampler, steps, mu, sigma, eta, resample, steps)
    _, plain_var = _reference_moments(sampler, steps, mu, sigma, eta)
    var_tol = NUM_STD_ERR * np.sqrt(2.0 / n)
    assert abs(ref_var / plain_var - 1) > 2 * var_tol  # the test can tell resampling apart
    assert abs(values.mean() - ref_mean) < NUM_STD_ERR * np.sqrt(ref_var / n)
    assert abs(values.var() / ref_var - 1) < var_tol, (name, values.var() / ref_var, var_tol)


def test_resampling_step_table():
  """K = 10, r = 3 on the noisiest quarter: ceil(2.5) = 3 steps of 3 passes, then 7 of one;
  repeat passes re-noise with sqrt(ᾱ_t/ᾱ_s) and sqrt(1 - ᾱ_t/ᾱ_s) (t the step's timestep)."""
  spec = samplers.SamplerSpec(sampler="ddpm", num_steps=10, resample=3, resample_fraction=0.25)
  table = samplers.step_tables(SCHEDULE, spec)
  expected_t = [1000] * 3 + [900] * 3 + [800] * 3 + [700, 600, 500, 400, 300, 200, 100]
  np.testing.assert_array_equal(table["t_cur"], expected_t)
  np.testing.assert_array_equal(table["index"], np.arange(16))
  ab = SCHEDULE.alpha_bar_table
  repeat = np.array([0, 1, 1] * 3 + [0] * 7, bool)
  ratio = ab[np.array(expected_t)] / ab[np.array(expected_t) - 100]
  np.testing.assert_allclose(table["c_renoise_x"], np.where(repeat, np.sqrt(ratio), 1.0),
                             rtol=1e-6)
  np.testing.assert_allclose(table["c_renoise_z"], np.where(repeat, np.sqrt(1 - ratio), 0.0),
                             rtol=1e-6, atol=1e-7)
  plain = samplers.step_tables(SCHEDULE, samplers.SamplerSpec(sampler="ddpm", num_steps=10))
  rows = np.repeat(np.arange(10), [3, 3, 3] + [1] * 7)
  for name in ("c_x", "c_x0", "c_z", "alpha_bar_next"):
    np.testing.assert_array_equal(table[name], plain[name][rows])
  np.testing.assert_array_equal(plain["c_renoise_x"], 1.0)
  np.testing.assert_array_equal(plain["c_renoise_z"], 0.0)


def test_resampling_returns_the_condition_bit_exact():
  mask = _task_mask("av_inpaint")
  cond = _random_condition(4)
  spec = samplers.SamplerSpec(sampler="ddim", num_steps=4, resample=2)
  out = samplers.sample_latents(gaussian_eps_apply, _gaussian_params(), cond, mask,
                                jax.random.key(6), schedule=SCHEDULE, layout=LAYOUT, spec=spec)
  for k, elem in samplers._element_mask(mask, LAYOUT).items():
    elem = np.broadcast_to(np.asarray(elem), out[k].shape)
    np.testing.assert_array_equal(np.asarray(out[k])[elem], np.asarray(cond[k])[elem])
    assert np.all(np.isfinite(np.asarray(out[k])))


# --- a single step, end to end ------------------------------------------------------------------
def affine_eps_apply(params, x, t_bmn, self_cond):
  """ε̂ = 0.3 x + 0.1 + 0.001 t (t per element): known closed form for a hand-computed step."""
  del params, self_cond
  t = LAYOUT.expand_to_latents(t_bmn)
  return {k: 0.3 * x[k] + 0.1 + 0.001 * t[k] for k in x}


def _standard_normal_latents(batch, seed):
  """A given x_T: float32 N(0, I) latents of the layout's shapes, from a numpy seed."""
  rng = np.random.default_rng(seed)
  return {k: rng.standard_normal(s).astype(np.float32)
          for k, s in LAYOUT.latent_shapes(batch).items()}


def test_ddim_two_steps_against_numpy():
  """DDIM η=0, K=2: T -> 500 -> 0, from a given x_T, against Song et al. Eq. 12 in numpy."""
  batch = 3
  x_T = _standard_normal_latents(batch, seed=0)
  spec = samplers.SamplerSpec(sampler="ddim", num_steps=2, self_condition=False)
  out = samplers.sample_latents(affine_eps_apply, None, _zeros(batch), JOINT, jax.random.key(0),
                                schedule=SCHEDULE, layout=LAYOUT, spec=spec, initial_noise=x_T)
  ab = SCHEDULE.alpha_bar_table
  for name in DATA:
    x = x_T[name].astype(np.float64)
    for t, s in ((1000, 500), (500, 0)):
      eps = 0.3 * x + 0.1 + 0.001 * t
      x0 = (x - np.sqrt(1 - ab[t]) * eps) / np.sqrt(ab[t])
      x = np.sqrt(ab[s]) * x0 + np.sqrt(1 - ab[s]) * eps
    np.testing.assert_allclose(out[name], x, rtol=1e-4, atol=1e-4)


def linear_eps_apply(params, x, t_bmn, self_cond):
  """ε̂ = a x + b with params (a, b): two such models combine to another of the same form."""
  del t_bmn, self_cond
  a, b = params
  return {k: a * x[k] + b for k in x}


def test_autoguidance_is_the_extrapolated_model_in_a_ddim_run():
  """(1 + w) D_good - w D_guide: for ε̂ = a x + b the guided model is ε̂ = a' x + b' with
  a' = (1 + w) a_good - w a_guide (b' alike); DDIM with it, in numpy, from the same x_T."""
  batch, w = 2, 1.5
  good, guide = (jnp.float32(0.3), jnp.float32(0.1)), (jnp.float32(0.5), jnp.float32(-0.2))
  a, b = (1 + w) * 0.3 - w * 0.5, (1 + w) * 0.1 - w * -0.2
  x_T = _standard_normal_latents(batch, seed=1)
  spec = samplers.SamplerSpec(sampler="ddim", num_steps=2, self_condition=False)
  out = samplers.sample_latents(samplers.Autoguided(linear_eps_apply, w), (good, guide),
                                _zeros(batch), JOINT, jax.random.key(0), schedule=SCHEDULE,
                                layout=LAYOUT, spec=spec, initial_noise=x_T)
  ab = SCHEDULE.alpha_bar_table
  for name in DATA:
    x = x_T[name].astype(np.float64)
    for t, s in ((1000, 500), (500, 0)):
      eps = a * x + b
      x0 = (x - np.sqrt(1 - ab[t]) * eps) / np.sqrt(ab[t])
      x = np.sqrt(ab[s]) * x0 + np.sqrt(1 - ab[s]) * eps
    np.testing.assert_allclose(out[name], x, rtol=1e-4, atol=1e-4)
  # The guide weighted 0 is the model alone; equal weights make equal compiled samplers.
  alone = samplers.Autoguided(linear_eps_apply, 0.0)(
      (good, guide), x_T, jnp.zeros((batch, 2, N)), None)
  np.testing.assert_allclose(alone["audio"], 0.3 * x_T["audio"] + 0.1, rtol=1e-6)
  assert samplers.Autoguided(linear_eps_apply, w) == samplers.Autoguided(linear_eps_apply, w)
  # Guiding the video alone leaves the audio to the model itself.
  video_only = samplers.Autoguided(linear_eps_apply, w, ("video",))(
      (good, guide), x_T, jnp.zeros((batch, 2, N)), None)
  np.testing.assert_allclose(video_only["video"], a * x_T["video"] + b, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(video_only["audio"], 0.3 * x_T["audio"] + 0.1, rtol=1e-6)
  with pytest.raises(ValueError, match="modalities"):
    samplers.Autoguided(linear_eps_apply, w, ("sound",))


def test_ddim_step_coefficients_against_numpy():
  """One stochastic DDIM step (η = 0.5, K = 10, step 4) from the tabulated coefficients."""
  spec = samplers.SamplerSpec(sampler="ddim", num_steps=10, eta=0.5)
  table = samplers.step_coefficients(SCHEDULE, spec)
  k = 4
  t, s = 600, 500  # loop order: 1000, 900, 800, 700, 600 -> 500
  assert (table["t_cur"][k], table["t_next"][k]) == (t, s)
  ab = SCHEDULE.alpha_bar_table
  rng = np.random.default_rng(1)
  x, x0, eps, z = rng.standard_normal((4, 50))
  sigma = 0.5 * np.sqrt((1 - ab[s]) / (1 - ab[t])) * np.sqrt(1 - ab[t] / ab[s])
  expected = np.sqrt(ab[s]) * x0 + np.sqrt(1 - ab[s] - sigma**2) * eps + sigma * z
  got = (table["c_x"][k] * x + table["c_x0"][k] * x0 + table["c_prev"][k] * x0
         + table["c_eps"][k] * eps + table["c_z"][k] * z)
  np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_timestep_sequence():
  np.testing.assert_array_equal(samplers.timestep_sequence(1000, 4), [1000, 750, 500, 250, 0])
  np.testing.assert_array_equal(samplers.timestep_sequence(1000, 1000), np.arange(1000, -1, -1))
  seq = samplers.timestep_sequence(1000, 7)
  assert seq[0] == 1000 and seq[-1] == 0 and np.all(np.diff(seq) < 0)


# --- conditioning ------------------------------------------------------------------------------
TASK_NAMES = ["joint", "a2v", "v2a", "av_continue", "av_continue_2s", "av_inpaint"]
CUSTOM_MASK = np.array([[False, True, False], [True, False, True]])


def _random_condition(batch, seed=0):
  rng = np.random.default_rng(seed)
  return {k: jnp.asarray(rng.standard_normal(s), jnp.float32)
          for k, s in LAYOUT.latent_shapes(batch).items()}


# Each task with a different sampler, so that every sampler's path is checked for exactness.
BIT_EXACT_CASES = [
    ("joint", "ddpm", "eps"), ("a2v", "ddim", "v"), ("v2a", "dpmpp_2m", "eps"),
    ("av_continue", "ddim", "eps"), ("av_continue_2s", "dpmpp_2m", "v"),
    ("av_inpaint", "ddpm", "v"), ("custom", "ddim", "eps")]


@pytest.mark.parametrize("task,sampler,prediction", BIT_EXACT_CASES)
def test_condition_returned_bit_exact(task, sampler, prediction):
  mask = CUSTOM_MASK if task == "custom" else _task_mask(task)
  cond = _random_condition(4)
  spec = samplers.SamplerSpec(sampler=sampler, num_steps=3, prediction=prediction)
  apply = gaussian_eps_apply if prediction == "eps" else gaussian_v_apply
  out = samplers.sample_latents(apply, _gaussian_params(), cond, mask, jax.random.key(4),
                                schedule=SCHEDULE, layout=LAYOUT, spec=spec)
  elem = {k: np.broadcast_to(np.asarray(v), out[k].shape)
          for k, v in samplers._element_mask(mask, LAYOUT).items()}
  for name in DATA:
    got, given = np.asarray(out[name]), np.asarray(cond[name])
    assert got.dtype == np.float32 and got.shape == given.shape
    np.testing.assert_array_equal(got[elem[name]].view(np.uint32),
                                  given[elem[name]].view(np.uint32))
    generated = ~elem[name]
    if generated.any():
      assert np.all(got[generated] != given[generated])
      assert np.all(np.isfinite(got[generated]))


# A one-factor joint Gaussian over all 150 elements of a clip:
#   x0 = μ + σ (√ρ g + √(1-ρ) u),  g ~ N(0, 1) shared by the clip, u ~ N(0, I).
# Given clean conditioning elements c (n_c of them), a generated element is Gaussian with
#   mean μ + σ ρ S / (n_c ρ + 1 - ρ),  S = Σ_c (c - μ)/σ,
#   variance σ² (1 - ρ + ρ v_g),      v_g = (1 - ρ)/(n_c ρ + 1 - ρ).
RHO, MU, SIGMA = 0.5, 0.3, 0.8


def _joint_gaussian_eps(x, ab):
  """Exact E[ε | x_t] for the one-factor model, per-element ᾱ, via Sherman-Morrison.

  Cov(x_t) = diag(d) + ρσ² a aᵀ with a = √ᾱ, d = a²σ²(1-ρ) + 1 - ᾱ; E[ε|x_t] = √(1-ᾱ) C⁻¹ r.
  """
  names = list(x)
  a = {k: jnp.broadcast_to(jnp.sqrt(ab[k]), x[k].shape) for k in names}
  d = {k: a[k]**2 * SIGMA**2 * (1 - RHO) + 1 - a[k]**2 for k in names}
  r = {k: x[k] - a[k] * MU for k in names}
  per_clip = lambda v: jnp.sum(v.reshape(v.shape[0], -1), axis=1)
  a_dinv_r = sum(per_clip(a[k] * r[k] / d[k]) for k in names)
  a_dinv_a = sum(per_clip(a[k]**2 / d[k]) for k in names)
  factor = RHO * SIGMA**2 * a_dinv_r / (1 + RHO * SIGMA**2 * a_dinv_a)
  out = {}
  for k in names:
    f = factor.reshape((-1,) + (1,) * (x[k].ndim - 1))
    out[k] = jnp.sqrt(1 - a[k]**2) * (r[k] / d[k] - a[k] * f / d[k])
  return out


def checked_joint_apply(params, x, t_bmn, self_cond):
  """The exact joint denoiser, poisoned with NaN unless every conditioning element arrives
  clean (== params["condition"]) with t = 0: a failed check shows up in the sampler's output."""
  del self_cond
  cond_bmn = params["mask"][None]
  bad = jnp.any(jnp.where(cond_bmn, t_bmn != 0, False))
  elem = LAYOUT.expand_to_latents(cond_bmn.astype(jnp.float32))
  for k in x:
    bad |= jnp.any(jnp.where(elem[k] > 0.5, x[k] != params["condition"][k], False))
  eps = _joint_gaussian_eps(x, _alpha_bar_elements(t_bmn))
  return {k: v + jnp.where(bad, jnp.nan, 0.0) for k, v in eps.items()}


def _joint_gaussian_clips(batch, seed):
  rng = np.random.default_rng(seed)
  shapes = LAYOUT.latent_shapes(batch)
  g = rng.standard_normal(batch)
  return {k: jnp.asarray(MU + SIGMA * (np.sqrt(RHO) * g.reshape((-1,) + (1,) * (len(s) - 1))
                                       + np.sqrt(1 - RHO) * rng.standard_normal(s)), jnp.float32)
          for k, s in shapes.items()}


def _conditional_statistics(out, cond, mask):
  """(regression slope of the clip's generated mean on S, residual variance) and the theory's."""
  elem = {k: np.broadcast_to(np.asarray(v), out[k].shape)
          for k, v in samplers._element_mask(mask, LAYOUT).items()}
  batch = out["video"].shape[0]
  flat = lambda tree, sel: np.concatenate(
      [np.where(sel[k], np.asarray(tree[k], np.float64), np.nan).reshape(batch, -1)
       for k in tree], axis=1)
  cond_vals = flat(cond, elem)
  gen_vals = flat(out, {k: ~v for k, v in elem.items()})
  n_c = np.sum(~np.isnan(cond_vals[0]))
  s = np.nansum((cond_vals - MU) / SIGMA, axis=1)
  slope_theory = SIGMA * RHO / (n_c * RHO + 1 - RHO)
  var_theory = SIGMA**2 * (1 - RHO + RHO * (1 - RHO) / (n_c * RHO + 1 - RHO))
  gen_mean = np.nanmean(gen_vals, axis=1)
  slope = np.cov(gen_mean, s)[0, 1] / np.var(s, ddof=1)
  residual = gen_vals - (MU + slope_theory * s)[:, None]
  return slope, np.nanvar(residual), slope_theory, var_theory, np.nanmean(residual)


@pytest.mark.parametrize("task", ["av_continue"])
def test_conditioning_enters_clean_at_t0_and_gives_the_true_conditional(task):
  """MoNL conditioning with the exact joint denoiser samples the exact conditional Gaussian.

  Tolerances: 2000 clips; the slope's standard error is ~1% of it, the residual variance's
  ~0.5%; DPM-Solver++(2M) at 25 steps makes the variance ~2.5% low (measured; cf. the moment
  tests), hence 5%. The residual mean's standard error is below sqrt(var/B) (residuals of a
  clip share only the small posterior variance of its factor), so 4.5 sqrt(var/B) bounds it.
  """
  batch = 2000
  mask = _task_mask(task)
  cond = _joint_gaussian_clips(batch, seed=5)
  params = {"mask": jnp.asarray(mask), "condition": cond}
  spec = samplers.SamplerSpec(sampler="dpmpp_2m", num_steps=25)
  out = samplers.sample_latents(checked_joint_apply, params, cond, mask, jax.random.key(6),
                                schedule=SCHEDULE, layout=LAYOUT, spec=spec)
  for k in out:
    assert np.all(np.isfinite(out[k])), "a conditioning element was not clean or had t != 0"
  slope, var, slope_theory, var_theory, mean = _conditional_statistics(out, cond, mask)
  assert abs(slope / slope_theory - 1) < 0.05, (slope, slope_theory)
  assert abs(var / var_theory - 1) < 0.05, (var, var_theory)
  assert abs(mean) < NUM_STD_ERR * np.sqrt(var_theory / batch)
  # Negative control: the replacement method noises the condition, and the check catches it.
  small = jax.tree.map(lambda v: v[:2], cond)
  replaced = samplers.sample_latents(
      checked_joint_apply, {"mask": params["mask"], "condition": small}, small, mask,
      jax.random.key(6),
      schedule=SCHEDULE, layout=LAYOUT,
      spec=samplers.SamplerSpec(sampler="dpmpp_2m", num_steps=2, method="replacement"))
  assert np.isnan(np.asarray(replaced["video"])).any()


# --- classifier-free guidance for free ------------------------------------------------------------
def test_guided_prediction_formula():
  rng = np.random.default_rng(7)
  shapes = LAYOUT.latent_shapes(2)
  eps_c = {k: jnp.asarray(rng.standard_normal(s), jnp.float32) for k, s in shapes.items()}
  eps_u = {k: jnp.asarray(rng.standard_normal(s), jnp.float32) for k, s in shapes.items()}
  mask = _task_mask("av_inpaint")
  gen = {k: ~v for k, v in samplers._element_mask(mask, LAYOUT).items()}
  w = 1.7
  got = samplers.guided_prediction(eps_c, eps_u, gen, w)
  for k in shapes:
    g = np.broadcast_to(np.asarray(gen[k]), shapes[k])
    expected = np.where(g, (1 + w) * np.asarray(eps_c[k]) - w * np.asarray(eps_u[k]),
                        np.asarray(eps_c[k]))
    np.testing.assert_allclose(got[k], expected, rtol=1e-6, atol=1e-6)
  # For v: guiding v then converting equals guiding the converted ε.
  ab, x = 0.3, {k: jnp.asarray(rng.standard_normal(s), jnp.float32) for k, s in shapes.items()}
  v_c, v_u = eps_c, eps_u
  to_eps = lambda v, xt: schedule_lib.prediction_to_x0_eps(v, xt, ab, "v")[1]
  v_guided = samplers.guided_prediction(v_c, v_u, gen, w)
  eps_guided = samplers.guided_prediction(jax.tree.map(to_eps, v_c, x),
                                          jax.tree.map(to_eps, v_u, x), gen, w)
  for k in shapes:
    np.testing.assert_allclose(to_eps(v_guided[k], x[k]), eps_guided[k], rtol=1e-5, atol=1e-5)


def indicator_eps_apply(params, x, t_bmn, self_cond):
  """ε̂ = 1 if the clip has any element at t = 0 (a conditional pass), else 0."""
  del params, x, self_cond
  has_clean = jnp.any(t_bmn == 0, axis=(1, 2)).astype(jnp.float32)
  shapes = LAYOUT.latent_shapes(t_bmn.shape[0])
  return {k: jnp.broadcast_to(has_clean.reshape((-1,) + (1,) * (len(s) - 1)), s)
          for k, s in shapes.items()}


def _generated(mask, shapes):
  return {k: ~np.broadcast_to(np.asarray(v), shapes[k])
          for k, v in samplers._element_mask(mask, LAYOUT).items()}


def test_guidance_combines_conditional_and_unconditional_passes():
  """One DDIM step T -> 0 returns x̂0 = (x_T - √(1-ᾱ_T) ε̂)/√ᾱ_T; with the indicator denoiser
  ε̂_cond = 1 and ε̂_uncond = 0 (no clean element left), so guidance shifts generated elements
  by -w √(1-ᾱ_T)/√ᾱ_T exactly, and w = 0 is the plain sampler."""
  mask = _task_mask("av_inpaint")
  cond = _random_condition(3)
  shapes = LAYOUT.latent_shapes(3)
  run = lambda spec, uncond=None: samplers.sample_latents(
      indicator_eps_apply, None, cond, mask, jax.random.key(8), schedule=SCHEDULE, layout=LAYOUT,
      spec=spec, guidance_uncond_mask=uncond)
  plain = run(samplers.SamplerSpec(sampler="ddim", num_steps=1))
  w_zero = run(samplers.SamplerSpec(sampler="ddim", num_steps=1, guidance_weight=0.0))
  guided = run(samplers.SamplerSpec(sampler="ddim", num_steps=1, guidance_weight=2.5))
  ab_T = SCHEDULE.alpha_bar_table[T]
  shift = -2.5 * np.sqrt(1 - ab_T) / np.sqrt(ab_T)
  gen = _generated(mask, shapes)
  for k in DATA:
    np.testing.assert_array_equal(w_zero[k], plain[k])
    diff = np.asarray(guided[k], np.float64) - np.asarray(plain[k], np.float64)
    np.testing.assert_allclose(diff[gen[k]], shift, rtol=1e-4)
    np.testing.assert_array_equal(np.asarray(guided[k])[~gen[k]], np.asarray(cond[k])[~gen[k]])
  # Partial guidance (Fig. 11c): noising only the audio condition leaves clean video segments
  # (t = 0) in the unconditional pass, so ε̂_uncond = 1 = ε̂_cond and guidance is a no-op.
  audio_only = mask.copy()
  audio_only[layout_lib.VIDEO] = False
  partial = run(samplers.SamplerSpec(sampler="ddim", num_steps=1, guidance_weight=2.5), audio_only)
  for k in DATA:
    np.testing.assert_allclose(partial[k], plain[k], rtol=1e-6)


def test_guidance_uncond_mask_must_be_a_subset():
  mask = _task_mask("v2a")
  spec = samplers.SamplerSpec(guidance_weight=1.0, num_steps=2)
  with pytest.raises(ValueError, match="subset"):
    samplers.sample_latents(gaussian_eps_apply, _gaussian_params(), _zeros(1), mask,
                            jax.random.key(0), schedule=SCHEDULE, layout=LAYOUT, spec=spec,
                            guidance_uncond_mask=_task_mask("a2v"))


# --- self-conditioning and tracing --------------------------------------------------------------
def test_self_condition_passes_previous_x0():
  """With ε̂ = 0 and ᾱ known, x̂0 at step k is x_{t_k}/√ᾱ; the denoiser echoes self_cond so the
  final x̂0 reveals whether it received zeros first and then the previous x̂0 (DDIM, K = 2)."""

  def apply(params, x, t_bmn, self_cond):
    del params, t_bmn
    assert self_cond is not None
    # A zero first-step self_cond keeps ε̂ = 0; afterwards ε̂ = 0.01 · (previous x̂0).
    return {k: 0.01 * self_cond[k] for k in x}

  batch = 2
  x_T = _standard_normal_latents(batch, seed=3)
  spec = samplers.SamplerSpec(sampler="ddim", num_steps=2, self_condition=True)
  out = samplers.sample_latents(apply, None, _zeros(batch), JOINT, jax.random.key(0),
                                schedule=SCHEDULE, layout=LAYOUT, spec=spec, initial_noise=x_T)
  ab = SCHEDULE.alpha_bar_table
  for k in DATA:
    x0_1 = x_T[k].astype(np.float64) / np.sqrt(ab[1000])  # ε̂ = 0 at the first step
    x_500 = np.sqrt(ab[500]) * x0_1
    eps = 0.01 * x0_1
    expected = (x_500 - np.sqrt(1 - ab[500]) * eps) / np.sqrt(ab[500])
    np.testing.assert_allclose(out[k], expected, rtol=1e-4)


def test_sampler_traces_once():
  traces = []

  def counting_apply(params, x, t_bmn, self_cond):
    traces.append(t_bmn.shape[0])  # runs at trace time only
    return gaussian_eps_apply(params, x, t_bmn, self_cond)

  mask = _task_mask("av_continue")
  spec = samplers.SamplerSpec(sampler="dpmpp_2m", num_steps=6, guidance_weight=0.5)
  run = lambda seed: samplers.sample_latents(
      counting_apply, _gaussian_params(), _random_condition(2, seed), mask.copy(),
      jax.random.key(seed), schedule=SCHEDULE, layout=LAYOUT, spec=spec)
  first = run(0)
  count = len(traces)
  assert count >= 1
  assert set(traces) == {4}, "CFG's two passes must be one network call on a doubled batch"
  second = run(1)
  assert len(traces) == count, "second call with the same statics retraced"
  assert not np.array_equal(first["video"], second["video"])


# --- baselines for a vanilla model -------------------------------------------------------------
def scalar_t_joint_apply(params, x, t_bmn, self_cond):
  """The exact joint denoiser, poisoned with NaN unless every element gets the same t (the
  baselines serve a `vanilla` model, trained with one timestep for the whole clip)."""
  del params, self_cond
  spread = jnp.max(t_bmn) - jnp.min(t_bmn)
  eps = _joint_gaussian_eps(x, _alpha_bar_elements(t_bmn))
  return {k: v + jnp.where(spread != 0, jnp.nan, 0.0) for k, v in eps.items()}


def _assert_condition_kept(out, cond, mask):
  gen = _generated(mask, {k: v.shape for k, v in out.items()})
  for k in DATA:
    got = np.asarray(out[k])
    assert np.all(np.isfinite(got))
    np.testing.assert_array_equal(got[~gen[k]], np.asarray(cond[k])[~gen[k]])
    assert np.all(got[gen[k]] != np.asarray(cond[k])[gen[k]])


def test_baselines_keep_condition_and_reconstruction_pulls_towards_it():
  """Both baselines return the condition exactly. The replacement method under-uses the
  condition (MM-Diffusion §3.4): the generated elements' regression on the condition falls
  short of the true conditional's; reconstruction guidance's gradient strengthens it."""
  batch = 500
  mask = _task_mask("v2a")
  cond = _joint_gaussian_clips(batch, seed=14)
  slopes = {}
  for method in ("replacement", "reconstruction"):
    spec = samplers.SamplerSpec(sampler="ddim", num_steps=25, method=method,
                                reconstruction_lambda=0.02, self_condition=False)
    out = samplers.sample_latents(scalar_t_joint_apply, None, cond, mask, jax.random.key(15),
                                  schedule=SCHEDULE, layout=LAYOUT, spec=spec)
    _assert_condition_kept(out, cond, mask)
    slopes[method], _, slope_theory, _, _ = _conditional_statistics(out, cond, mask)
  # Slopes' standard errors are ~1% of slope_theory at 500 clips (var(S) = n_c(n_c ρ + 1 - ρ)).
  # Measured: replacement ≈ 0.38, reconstruction (λ = 0.02) ≈ 0.93 of the true slope.
  assert slopes["replacement"] < 0.6 * slope_theory, (slopes, slope_theory)
  assert slopes["reconstruction"] > 0.8 * slope_theory, (slopes, slope_theory)


def test_reconstruction_with_zero_lambda_is_replacement():
  mask = _task_mask("av_inpaint")
  cond = _joint_gaussian_clips(4, seed=12)
  outs = []
  for method, lam in (("replacement", 0.02), ("reconstruction", 0.0)):
    spec = samplers.SamplerSpec(sampler="ddpm", num_steps=6, method=method,
                                reconstruction_lambda=lam)
    outs.append(samplers.sample_latents(scalar_t_joint_apply, None, cond, mask,
                                        jax.random.key(13), schedule=SCHEDULE, layout=LAYOUT,
                                        spec=spec))
    _assert_condition_kept(outs[-1], cond, mask)
  for k in DATA:
    np.testing.assert_allclose(outs[0][k], outs[1][k], rtol=1e-6, atol=1e-6)


def test_baselines_on_an_unconditional_task_are_plain_sampling():
  """With nothing to condition on, one scalar t for all elements is MoNL's joint sampling."""
  outs = [samplers.sample_latents(
      gaussian_eps_apply, _gaussian_params(), _zeros(8), JOINT, jax.random.key(3),
      schedule=SCHEDULE, layout=LAYOUT, spec=samplers.SamplerSpec(sampler="ddpm", num_steps=20,
                                                                   method=method))
          for method in ("monl", "reconstruction")]
  for k in DATA:
    np.testing.assert_array_equal(outs[0][k], outs[1][k])


# --- errors ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,match", [
    (dict(sampler="euler"), "unknown sampler"),
    (dict(method="inpaint"), "unknown conditioning method"),
    (dict(prediction="score"), "unknown prediction"),
    (dict(num_steps=0), "num_steps"),
    (dict(eta=-1.0), "eta"),
    (dict(reconstruction_lambda=-0.1), "reconstruction_lambda"),
    (dict(method="replacement", guidance_weight=1.0), "monl"),
    (dict(resample=0), "resample"),
    (dict(resample=1.5), "resample"),
    (dict(resample_fraction=0.0), "resample_fraction"),
    (dict(resample_fraction=1.5), "resample_fraction"),
    (dict(sampler="dpmpp_2m", resample=2), "dpmpp_2m"),
])
def test_bad_spec(kwargs, match):
  with pytest.raises(ValueError, match=match):
    samplers.SamplerSpec(**kwargs)


def test_bad_inputs():
  call = functools.partial(samplers.sample_latents, gaussian_eps_apply, _gaussian_params(),
                           _zeros(1), rng=jax.random.key(0), schedule=SCHEDULE, layout=LAYOUT)
  with pytest.raises(ValueError, match="num_steps"):
    call(JOINT, spec=samplers.SamplerSpec(num_steps=T + 1))
  with pytest.raises(ValueError, match="shape"):
    call(np.zeros((2, N + 1), bool), spec=samplers.SamplerSpec())
  with pytest.raises(ValueError, match="shape"):
    call(np.zeros((N,), bool), spec=samplers.SamplerSpec())
  with pytest.raises(ValueError, match="every element"):
    call(np.ones((2, N), bool), spec=samplers.SamplerSpec())
  with pytest.raises(ValueError, match="shape"):
    samplers.sample_latents(gaussian_eps_apply, None, {"video": jnp.zeros((1, 2, 2, 2, 3)),
                                                       "audio": jnp.zeros((1, 57, 2))},
                            JOINT, jax.random.key(0), schedule=SCHEDULE, layout=LAYOUT,
                            spec=samplers.SamplerSpec())


def test_from_config():
  import importlib.util
  import pathlib
  path = pathlib.Path(__file__).resolve().parents[1] / "configs" / "avdit_synthetic.py"
  module_spec = importlib.util.spec_from_file_location("avdit_synthetic_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  config = module.get_config("tiny")
  spec = samplers.SamplerSpec.from_config(config.sample, config.diffusion)
  assert spec == samplers.SamplerSpec(sampler="ddim", num_steps=4, eta=0.0, guidance_weight=0.0,
                                      method="monl", reconstruction_lambda=0.02,
                                      prediction="x0", self_condition=True)
  spec = samplers.SamplerSpec.from_config(
      {"sampler": "dpmpp_2m", "num_steps": 20, "method": "replacement"},
      {"prediction": "v", "self_condition_rate": 0.0})
  assert (spec.sampler, spec.num_steps, spec.method, spec.prediction, spec.self_condition) == (
      "dpmpp_2m", 20, "replacement", "v", False)
  spec = samplers.SamplerSpec.from_config(
      {"sampler": "ddpm", "resample": 3, "resample_fraction": 0.5}, {})
  assert (spec.resample, spec.resample_fraction) == (3, 0.5)
  with pytest.raises(ValueError, match="resample"):
    samplers.SamplerSpec.from_config({"resample": 1.5}, {})  # refused, not rounded
  config.model.self_condition = False
  assert not samplers.SamplerSpec.from_config(config.sample, config.diffusion,
                                              config.model).self_condition


def test_guidance_by_task_gives_a_named_task_its_own_weight():
  sample = {"guidance_weight": 0.5, "guidance_by_task": " v2a=1, joint = 2.5 "}

  def weight(name):
    task = None if name is None else tasks_lib.parse_task(name, LAYOUT)
    return samplers.SamplerSpec.from_config(sample, {}, task=task).guidance_weight

  names = ("v2a", "joint", "a2v", None, "v:*", "none")
  assert {name: weight(name) for name in names} == {
      "v2a": 1.0, "joint": 2.5, "a2v": 0.5, None: 0.5, "v:*": 1.0, "none": 2.5}
  assert samplers.parse_guidance_by_task("") == {}


@pytest.mark.parametrize("text, message", [
    ("v2a", "must be '<task>=<weight>'"), ("video2audio=1", "must be '<task>=<weight>'"),
    ("v2a=much", "is not a number"), ("v2a=1,=2", "must be '<task>=<weight>'")])
def test_guidance_by_task_rejects_what_it_cannot_read(text, message):
  with pytest.raises(ValueError, match=message):
    samplers.parse_guidance_by_task(text)
