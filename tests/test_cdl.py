"""CDL (avdit/diffusion/cdl.py) against closed forms.

Independent references: the ᾱ table of the linear-β schedule; Gaussian mixtures and correlated
Gaussians, whose exact denoisers (posterior mean of ε for any per-element log-SNR) and noised
densities are closed forms computed here in numpy/scipy; softplus of the exact log-likelihood
ratio. Monte Carlo results are compared within standard errors computed from the draws.
"""
from __future__ import annotations

import functools
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import special
from scipy import stats

from avdit import layout as layout_lib
from avdit.diffusion import cdl
from avdit.diffusion import schedule as schedule_lib

SCHEDULE = schedule_lib.LinearSchedule()
LAYOUT = layout_lib.ClipLayout(num_frames=9, fps=8.0, height=16, width=16, sample_rate=16000,
                               video_channels=3, audio_channels=2)


def sigmoid(v):
  return special.expit(np.asarray(v, np.float64))


# --- Gaussian mixtures with diagonal components: exact denoiser and densities ----------------
class DiagonalMixture:
  """p(x) = Σ_k w_k N(x; μ_k, diag(v_k)) in D dimensions."""

  def __init__(self, weights, means, variances):
    self.weights = np.asarray(weights, np.float64)
    self.means = np.asarray(means, np.float64)  # [C, D]
    self.variances = np.asarray(variances, np.float64)  # [C, D]

  def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
    comp = rng.choice(len(self.weights), n, p=self.weights)
    return self.means[comp] + np.sqrt(self.variances[comp]) * rng.normal(
        size=(n, self.means.shape[1]))

  def log_density(self, x, zeta=None) -> np.ndarray:
    """log p(x), or log p_ζ(x) for z_ζ = sqrt(σ(ζ)) x + sqrt(σ(-ζ)) ε (ζ [n]): float64 [n]."""
    x = np.asarray(x, np.float64)
    if zeta is None:
      mean, var = self.means[None], self.variances[None]
    else:
      signal = sigmoid(zeta)[:, None, None]
      mean, var = np.sqrt(signal) * self.means[None], signal * self.variances[None] + 1 - signal
    log_comp = np.sum(stats.norm.logpdf(x[:, None], mean, np.sqrt(var)), axis=-1)
    return special.logsumexp(np.log(self.weights)[None] + log_comp, axis=1)

  def eps_fn(self, z, logsnr):
    """Exact E[ε | z] for z = sqrt(σ(λ)) x + sqrt(σ(-λ)) ε, λ per example [n] or per dim [n, D]."""
    lam = jnp.broadcast_to(logsnr.reshape(logsnr.shape[0], -1), z.shape)[:, None, :]
    signal, noise = jax.nn.sigmoid(lam), jax.nn.sigmoid(-lam)
    means = jnp.asarray(self.means, jnp.float32)[None]
    mean = jnp.sqrt(signal) * means
    var = signal * jnp.asarray(self.variances, jnp.float32)[None] + noise
    resid = z[:, None, :] - mean
    log_comp = jnp.sum(-0.5 * resid ** 2 / var - 0.5 * jnp.log(var), axis=-1)
    resp = jax.nn.softmax(jnp.log(jnp.asarray(self.weights, jnp.float32))[None] + log_comp, axis=1)
    return jnp.sum(resp[..., None] * jnp.sqrt(noise) * resid / var, axis=1)


MIXTURE_2D = DiagonalMixture([0.5, 0.3, 0.2], [[-1.0, 0.0], [1.0, 0.5], [0.0, -1.0]],
                             [[0.05, 0.02], [0.01, 0.03], [0.04, 0.04]])


def data_and_noisier_points(mixture, rng, n, zeta_range):
  """Half the points from p, half from p_ζ (ζ ~ U[zeta_range] per point): (x, ζ)."""
  x0 = mixture.sample(rng, n)
  zeta = rng.uniform(*zeta_range, n)
  noisier = np.sqrt(sigmoid(zeta))[:, None] * x0 + np.sqrt(sigmoid(-zeta))[:, None] * rng.normal(
      size=x0.shape)
  x = np.where((np.arange(n) % 2 == 0)[:, None], x0, noisier)
  return x.astype(np.float32), zeta.astype(np.float32)


def assert_within_standard_errors(estimate, stderr, exact, max_abs_z=4.5, max_mean_z2=2.0):
  """Per point |z| < 4.5 and mean z² < 2 (1 expected): catches both outliers and a bias."""
  z = (np.asarray(estimate, np.float64) - exact) / np.asarray(stderr, np.float64)
  assert np.all(np.isfinite(z))
  assert np.max(np.abs(z)) < max_abs_z, (np.max(np.abs(z)), estimate, exact)
  assert np.mean(z ** 2) < max_mean_z2, (np.mean(z ** 2), estimate, exact)


# --- schedule <-> log-SNR -------------------------------------------------------------------------
# Jitted once per input shape (eager calls would compile every primitive for every shape).
to_logsnr = jax.jit(functools.partial(cdl.timestep_to_logsnr, SCHEDULE))
to_timestep = jax.jit(functools.partial(cdl.logsnr_to_timestep, SCHEDULE))


def test_logsnr_at_integer_timesteps_matches_alpha_bar_table():
  alpha_bar = SCHEDULE.alpha_bar_table  # float64, independent of cdl's table
  expected = np.log(alpha_bar[1:] / (1.0 - alpha_bar[1:]))
  np.testing.assert_allclose(schedule_lib.logsnr_table(SCHEDULE)[1:], expected, rtol=1e-6)
  assert schedule_lib.logsnr_table(SCHEDULE)[0] == np.inf
  t = np.arange(1, SCHEDULE.num_timesteps + 1)
  np.testing.assert_allclose(to_logsnr(t), expected, rtol=1e-5, atol=1e-5)
  lo, hi = cdl.logsnr_bounds(SCHEDULE)
  assert lo == pytest.approx(np.log(4.04e-5), abs=0.02)  # ᾱ_T ≈ 4.04e-5
  assert hi == pytest.approx(np.log((1 - 1e-4) / 1e-4), rel=1e-9)


def test_logsnr_mapping_monotone_round_trip_and_clipping():
  beta_1 = SCHEDULE.betas[1]
  t = np.concatenate([np.linspace(1e-3, 1.0, 500, endpoint=False),
                      np.linspace(1.0, 1000.0, 9991)])
  lam = np.asarray(to_logsnr(t), np.float64)
  assert np.all(np.diff(lam) < 0)  # strictly decreasing
  np.testing.assert_allclose(to_timestep(lam), t, rtol=2e-4, atol=1e-5)
  # On [0, 1] ᾱ is linear between ᾱ_0 = 1 and ᾱ_1: σ(λ) = 1 - t β_1.
  small = t[t < 1]
  np.testing.assert_allclose(sigmoid(-lam[t < 1]), small * beta_1, rtol=1e-4)
  # On [1, T] λ is linear between integer timesteps.
  alpha_bar = SCHEDULE.alpha_bar_table[1:]
  table = np.concatenate([[np.inf], np.log(alpha_bar / (1 - alpha_bar))])
  mid = np.arange(1, 1000) + 0.5
  np.testing.assert_allclose(to_logsnr(mid), 0.5 * (table[1:-1] + table[2:]), rtol=1e-5,
                             atol=1e-5)
  # λ -> t -> λ over the whole representable range, above λ(1) included.
  lam_grid = np.linspace(table[-1] + 1e-3, 40.0, 2000)
  back = to_logsnr(to_timestep(lam_grid))
  np.testing.assert_allclose(back, lam_grid, atol=2e-3, rtol=1e-4)
  # Clipping: below λ(T) -> T; +inf -> 0; t outside [0, T] clipped.
  np.testing.assert_allclose(to_timestep(np.array([-12.0, -30.0, np.inf])), [1000.0, 1000.0, 0.0])
  assert to_logsnr(0.0) == np.inf
  assert float(to_logsnr(1500.0)) == pytest.approx(table[-1], abs=1e-5)


def test_composed_logsnr_is_two_channels_in_series():
  alpha = np.array([-10.0, -1.0, 0.0, 3.0, 12.0, 30.0])
  zeta = np.array([6.0, 15.0, 1.0, 3.0, 9.0, 40.0])
  beta = np.asarray(cdl.composed_logsnr(alpha, zeta), np.float64)
  np.testing.assert_allclose(sigmoid(beta), sigmoid(alpha) * sigmoid(zeta), rtol=1e-6)
  # Large log-SNRs add in noise-to-signal: e^{-β} ≈ e^{-α} + e^{-ζ}.
  assert beta[-1] == pytest.approx(-np.log(np.exp(-30.0) + np.exp(-40.0)), abs=1e-3)
  assert np.all(beta < np.minimum(alpha, zeta))


# --- log-likelihood ratio against a Gaussian mixture ------------------------------------------
@pytest.mark.parametrize("proposal,use_offsets,stratified", [
    ("logistic", False, False),  # the paper's scalar integral
    # Our per-element path, one log-SNR per dimension (the dimensions are dependent, so this
    # checks the path independence); logistic + offsets is checked by the adapter test.
    ("uniform", True, True),
])
def test_llr_matches_gaussian_mixture_closed_form(proposal, use_offsets, stratified):
  rng = np.random.default_rng(0)
  n = 48
  x, zeta = data_and_noisier_points(MIXTURE_2D, rng, n, (1.0, 5.0))
  exact = MIXTURE_2D.log_density(x, zeta) - MIXTURE_2D.log_density(x)
  assert np.ptp(exact) > 3.0  # the points span clearly different ratios
  offsets = rng.uniform(-3.0, 3.0, (n, 2)).astype(np.float32) if use_offsets else None
  estimate = jax.jit(functools.partial(
      cdl.estimate_log_likelihood_ratio, MIXTURE_2D.eps_fn, num_logsnr_samples=1024,
      proposal=proposal, stratified=stratified))(
          jnp.asarray(x), jnp.asarray(zeta), jax.random.key(1), logsnr_offsets=offsets)
  assert estimate.denoiser_evaluations == 2048
  assert estimate.samples.shape == (1024, n)
  np.testing.assert_allclose(estimate.llr, np.mean(estimate.samples, axis=0), rtol=1e-5,
                             atol=1e-5)
  assert_within_standard_errors(estimate.llr, estimate.stderr, exact)


def test_cdl_loss_matches_softplus_of_exact_llr():
  """Algorithm 1's points and labels, then Eq. 7 against numpy on the exact log-ratio."""
  rng = np.random.default_rng(1)
  x0 = MIXTURE_2D.sample(rng, 256).astype(np.float32)
  num_samples = 512
  out = jax.jit(functools.partial(cdl.cdl_forward, MIXTURE_2D.eps_fn,
                                  num_logsnr_samples=num_samples, zeta_range=(1.0, 5.0),
                                  stratified=False))(jnp.asarray(x0), jax.random.key(2))
  labels, zeta, x = (np.asarray(v, np.float64) for v in (out.labels, out.zeta_b, out.x))
  # y = +1: x = x0; y = -1: (x - sqrt(σ(ζ)) x0) / sqrt(σ(-ζ)) is standard normal.
  assert np.all((zeta >= 1.0) & (zeta <= 5.0))
  assert abs(np.mean(labels > 0) - 0.5) < 0.1
  np.testing.assert_array_equal(x[labels > 0], x0[labels > 0])
  neg = labels < 0
  resid = (x[neg] - np.sqrt(sigmoid(zeta[neg]))[:, None] * x0[neg]) / np.sqrt(
      sigmoid(-zeta[neg]))[:, None]
  assert abs(resid.mean()) < 0.25 and 0.7 < resid.var() < 1.3

  exact = MIXTURE_2D.log_density(x, zeta) - MIXTURE_2D.log_density(x)
  assert_within_standard_errors(out.llr.llr, out.llr.stderr, exact)
  reference = np.mean(np.logaddexp(0.0, labels * exact))  # softplus(y · LLR), Eq. 7
  stderr = np.asarray(out.llr.stderr, np.float64)
  slope = sigmoid(labels * exact)  # |d softplus(yL) / dL|
  tolerance = (4 * np.sqrt(np.sum((slope * stderr) ** 2)) + np.sum(stderr ** 2) / 8) / len(x)
  assert abs(float(out.loss) - reference) < tolerance, (float(out.loss), reference, tolerance)
  assert 0.2 < reference < 0.69  # the classes overlap: neither trivial nor saturated

  metrics = cdl.cdl_metrics(out)
  np.testing.assert_allclose(metrics["cdl_loss"], out.loss)
  llr = np.asarray(out.llr.llr)
  assert float(metrics["cdl_accuracy"]) == pytest.approx(np.mean((llr < 0) == (labels > 0)))
  assert float(metrics["cdl_llr_data"]) == pytest.approx(np.mean(llr[labels > 0]), rel=1e-5)
  assert float(metrics["cdl_llr_noisier"]) == pytest.approx(np.mean(llr[labels < 0]), rel=1e-5)
  assert float(metrics["cdl_extra_denoiser_evaluations"]) == 2 * num_samples
  assert float(metrics["cdl_llr_stderr"]) == pytest.approx(np.mean(stderr), rel=1e-5)


def test_paper_defaults():
  for fn in (cdl.cdl_forward, cdl.avdit_cdl_forward):
    assert inspect.signature(fn).parameters["zeta_range"].default == (6.0, 15.0)


def test_bad_arguments_raise():
  x0 = jnp.zeros((4, 2))
  with pytest.raises(ValueError, match="inside logsnr_range"):
    cdl.cdl_forward(MIXTURE_2D.eps_fn, x0, jax.random.key(0), num_logsnr_samples=2,
                    zeta_range=(6.0, 30.0))
  with pytest.raises(ValueError, match="proposal"):
    cdl.estimate_log_likelihood_ratio(MIXTURE_2D.eps_fn, x0, jnp.full(4, 6.0), jax.random.key(0),
                                      num_logsnr_samples=2, proposal="gaussian")
  with pytest.raises(ValueError, match="num_logsnr_samples"):
    cdl.estimate_log_likelihood_ratio(MIXTURE_2D.eps_fn, x0, jnp.full(4, 6.0), jax.random.key(0),
                                      num_logsnr_samples=0)
  with pytest.raises(ValueError, match="zeta"):
    cdl.estimate_log_likelihood_ratio(MIXTURE_2D.eps_fn, x0, jnp.full(3, 6.0), jax.random.key(0),
                                      num_logsnr_samples=2)
  with pytest.raises(ValueError, match="logsnr_offsets"):
    cdl.estimate_log_likelihood_ratio(MIXTURE_2D.eps_fn, x0, jnp.full(4, 6.0), jax.random.key(0),
                                      num_logsnr_samples=2, logsnr_offsets=jnp.zeros((4, 3)))
  with pytest.raises(ValueError, match="prediction"):
    cdl.avdit_cdl_forward(None, {"video": x0, "audio": x0}, jax.random.key(0),
                          schedule=SCHEDULE, layout=LAYOUT, prediction="score")


# --- the AVDiT adapter on correlated Gaussian latents -----------------------------------------
LATENT_SCALE, LATENT_CORRELATION = 0.05, 0.6  # Σ = s² (ρ 11ᵀ + (1 - ρ) I) over all elements


class CorrelatedGaussianOracle:
  """The exact denoiser of Σ-Gaussian latents at the timestep vector it is given.

  It reads the log-SNR back from the float timesteps, so the adapter's log-SNR -> timestep map,
  the layout expansion and the v conversion must all agree for it to be exact.
  """

  def __init__(self, prediction):
    self.prediction, self.calls, self.timesteps = prediction, 0, None

  def __call__(self, noisy, timesteps_bmn, self_cond):
    assert self_cond is None
    self.calls += 1
    self.timesteps = timesteps_bmn
    lam = LAYOUT.expand_to_latents(cdl.timestep_to_logsnr(SCHEDULE, timesteps_bmn))
    n = noisy["video"].shape[0]
    flat = lambda tree: jnp.concatenate(
        [jnp.broadcast_to(tree[k], noisy[k].shape).reshape(n, -1) for k in ("video", "audio")], 1)
    z, lam = flat(noisy), flat(lam)
    s2, rho = LATENT_SCALE ** 2, LATENT_CORRELATION
    a = jnp.sqrt(jax.nn.sigmoid(lam))
    c = jax.nn.sigmoid(lam) * (1 - rho) * s2 + jax.nn.sigmoid(-lam)
    # Cov(z) = diag(c) + ρ s² a aᵀ; Sherman-Morrison for Cov(z)⁻¹ z.
    a_over_c = a / c
    solve = z / c - rho * s2 * a_over_c * jnp.sum(a_over_c * z, 1, keepdims=True) / (
        1 + rho * s2 * jnp.sum(a * a_over_c, 1, keepdims=True))
    eps = jnp.sqrt(jax.nn.sigmoid(-lam)) * solve
    if self.prediction == "v":
      alpha_bar = jax.nn.sigmoid(lam)
      x0 = (z - jnp.sqrt(1 - alpha_bar) * eps) / jnp.sqrt(alpha_bar)
      eps = jnp.sqrt(alpha_bar) * eps - jnp.sqrt(1 - alpha_bar) * x0
    split = noisy["video"][0].size
    return {"video": eps[:, :split].reshape(noisy["video"].shape),
            "audio": eps[:, split:].reshape(noisy["audio"].shape)}


def correlated_gaussian_log_density(x_flat, zeta=None):
  d = x_flat.shape[1]
  s2, rho = LATENT_SCALE ** 2, LATENT_CORRELATION
  out = []
  for i, x in enumerate(x_flat):
    signal = 1.0 if zeta is None else sigmoid(zeta[i])
    cov = signal * s2 * (rho * np.ones((d, d)) + (1 - rho) * np.eye(d)) + (1 - signal) * np.eye(d)
    out.append(stats.multivariate_normal.logpdf(x, np.zeros(d), cov))
  return np.asarray(out)


def test_avdit_adapter_llr_matches_correlated_gaussian():
  """v prediction: exercises the v -> ε conversion on top of everything the ε path does."""
  prediction = "v"
  rng = np.random.default_rng(5)
  batch, k = 12, 256
  shapes = LAYOUT.latent_shapes(batch)
  d = sum(int(np.prod(s[1:])) for s in shapes.values())
  shared = rng.normal(size=(batch, 1))
  x_flat = LATENT_SCALE * (np.sqrt(LATENT_CORRELATION) * shared
                           + np.sqrt(1 - LATENT_CORRELATION) * rng.normal(size=(batch, d)))
  split = int(np.prod(shapes["video"][1:]))
  latents = {"video": jnp.asarray(x_flat[:, :split].reshape(shapes["video"]), jnp.float32),
             "audio": jnp.asarray(x_flat[:, split:].reshape(shapes["audio"]), jnp.float32)}
  oracle = CorrelatedGaussianOracle(prediction)

  @jax.jit
  def run(latents, rng):
    out = cdl.avdit_cdl_forward(oracle, latents, rng, schedule=SCHEDULE, layout=LAYOUT,
                                num_logsnr_samples=k, prediction=prediction, stratified=False,
                                zeta_range=(6.0, 9.0))
    return out, oracle.timesteps

  out, timesteps = run(latents, jax.random.key(6))
  assert oracle.calls == 1  # one denoiser call on 2·K·B examples
  timesteps = np.asarray(timesteps)
  assert timesteps.shape == (2 * k * batch, 2, LAYOUT.num_segments)
  assert timesteps.min() >= 0.0 and timesteps.max() <= SCHEDULE.num_timesteps
  assert np.mean((timesteps > 0) & (timesteps < 1)) > 0.05  # λ > λ(1) is evaluated
  per_row_spread = timesteps.reshape(len(timesteps), -1).std(axis=1)
  assert np.mean(per_row_spread > 1e-3) > 0.3  # elements see different log-SNRs
  assert out.llr.denoiser_evaluations == 2 * k
  x_back = np.concatenate([np.asarray(out.x[m]).reshape(batch, -1) for m in ("video", "audio")],
                          axis=1).astype(np.float64)
  zeta = np.asarray(out.zeta_b, np.float64)
  exact = correlated_gaussian_log_density(x_back, zeta) - correlated_gaussian_log_density(x_back)
  assert np.ptp(exact) > 2.0
  assert_within_standard_errors(out.llr.llr, out.llr.stderr, exact)


# --- training a small denoiser with and without CDL -------------------------------------------
# 1-D two modes (as the paper's Fig. 1, scaled to unit range). ζ ~ U[0, 3] instead of the paper's
# [6, 15]: in one dimension noise of std ≤ e^{-3} barely changes the density (the Bayes classifier
# is then near chance); in high-dimensional latents small noise is easy to detect.
TOY = DiagonalMixture([0.5, 0.5], [[-1.0], [1.0]], [[0.01], [0.01]])
TOY_ZETA_RANGE, TOY_LOGSNR_RANGE = (0.0, 3.0), (-8.0, 10.0)
TOY_FREQUENCIES = jnp.arange(1, 9, dtype=jnp.float32) * 0.35


def toy_init(key, hidden=32):
  dims = [(1 + 16, hidden), (hidden, hidden), (hidden, 1)]
  return [(jax.random.normal(k, (i, o)) / np.sqrt(i), jnp.zeros(o))
          for k, (i, o) in zip(jax.random.split(key, len(dims)), dims)]


def toy_eps(params, z, logsnr):
  angles = logsnr.reshape(-1, 1) * TOY_FREQUENCIES
  h = jnp.concatenate([z, jnp.sin(angles), jnp.cos(angles)], axis=-1)
  for w, b in params[:-1]:
    h = jax.nn.silu(h @ w + b)
  return h @ params[-1][0] + params[-1][1]


def toy_data(key, n):
  comp_key, noise_key = jax.random.split(key)
  comp = jax.random.bernoulli(comp_key, 0.5, (n, 1))
  return jnp.where(comp, 1.0, -1.0) + 0.1 * jax.random.normal(noise_key, (n, 1))


@functools.lru_cache(maxsize=None)
def toy_trainer(batch=32, num_logsnr_samples=32, learning_rate=2e-3):
  """jitted (params, step keys, cdl weight) -> params; the MSE batches depend on the keys only."""
  optimizer = optax.adam(learning_rate)

  def loss_fn(params, key, weight):
    data_key, lam_key, noise_key, cdl_data_key, cdl_key = jax.random.split(key, 5)
    x0 = toy_data(data_key, batch)
    lam = jax.random.uniform(lam_key, (batch,), minval=TOY_LOGSNR_RANGE[0],
                             maxval=TOY_LOGSNR_RANGE[1])
    eps = jax.random.normal(noise_key, x0.shape)
    z = cdl.noise_at_logsnr(x0, eps, lam[:, None])
    mse = jnp.mean((toy_eps(params, z, lam) - eps) ** 2)
    contrastive = lambda: cdl.contrastive_diffusion_loss(
        functools.partial(toy_eps, params), toy_data(cdl_data_key, batch), cdl_key,
        num_logsnr_samples=num_logsnr_samples, zeta_range=TOY_ZETA_RANGE,
        logsnr_range=TOY_LOGSNR_RANGE)[0]
    # The baseline (weight 0) skips the CDL evaluations instead of multiplying them by 0.
    return mse + jax.lax.cond(weight > 0, lambda: weight * contrastive(), lambda: 0.0)

  def step(carry, key):
    params, opt_state, weight = carry
    grads = jax.grad(loss_fn)(params, key, weight)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state, weight), None

  @jax.jit
  def train(params, keys, weight):
    (params, _, _), _ = jax.lax.scan(step, (params, optimizer.init(params), weight), keys)
    return params

  return train


@jax.jit
def toy_evaluate(params, key):
  """(accuracy of the implicit noise classifier, denoiser errors vs the exact denoiser).

  Errors are mean ‖ε̂_θ(z, λ) - ε̂*(z, λ)‖² at: on-path z ~ p_λ; "noisier" z ~ p_β evaluated at
  λ, β = logit(σ(λ)σ(ζ)) < λ (more noise than the level the denoiser is told, as a sampler's
  discretization error leaves); "cleaner" z ~ p_λ evaluated at β.
  """
  n = 4000
  data_key, lam_key, zeta_key, noise_key, cdl_key = jax.random.split(key, 5)
  x0 = toy_data(data_key, n)
  lam = jax.random.uniform(lam_key, (n,), minval=-4.0, maxval=8.0)
  zeta = jax.random.uniform(zeta_key, (n,), minval=TOY_ZETA_RANGE[0], maxval=TOY_ZETA_RANGE[1])
  beta = cdl.composed_logsnr(lam, zeta)
  eps = jax.random.normal(noise_key, x0.shape)
  error = lambda z, level: jnp.mean((toy_eps(params, z, level) - TOY.eps_fn(z, level)) ** 2)
  on_path = cdl.noise_at_logsnr(x0, eps, lam[:, None])
  errors = {"on_path": error(on_path, lam),
            "noisier": error(cdl.noise_at_logsnr(x0, eps, beta[:, None]), lam),
            "cleaner": error(on_path, beta)}
  out = cdl.cdl_forward(functools.partial(toy_eps, params), x0[:1000], cdl_key,
                        num_logsnr_samples=64, zeta_range=TOY_ZETA_RANGE,
                        logsnr_range=TOY_LOGSNR_RANGE)
  accuracy = jnp.mean((out.llr.llr < 0) == (out.labels > 0))
  return accuracy, errors


def train_with_and_without_cdl(seed, steps=1500, weight=0.3):
  """Same init, same MSE batches; only the CDL term differs. Returns both evaluations."""
  train = toy_trainer()
  params = toy_init(jax.random.key(seed))
  keys = jax.random.split(jax.random.key(seed + 1000), steps)
  evaluation_key = jax.random.key(12345)
  return (toy_evaluate(train(params, keys, 0.0), evaluation_key),
          toy_evaluate(train(params, keys, weight), evaluation_key))


def check_cdl_training(seed):
  (acc_base, err_base), (acc_cdl, err_cdl) = train_with_and_without_cdl(seed)
  report = (f"seed {seed}: accuracy {float(acc_base):.3f} -> {float(acc_cdl):.3f}; errors "
            + ", ".join(f"{k} {float(err_base[k]):.4f} -> {float(err_cdl[k]):.4f}"
                        for k in err_base))
  # The implicit noise classifier of the CDL-trained model is well above chance (0.5); the
  # Bayes classifier reaches ≈ 0.79 here.
  assert float(acc_cdl) > 0.65, report
  # Lower error where z carries more noise than the level the denoiser is told.
  assert float(err_cdl["noisier"]) < 0.9 * float(err_base["noisier"]), report


def test_cdl_trained_mlp_classifies_noise_and_denoises_noisier_points_better():
  """Default, one seed. At an EQUAL number of MSE steps (not equal compute: CDL costs 2K = 64
  extra evaluations per example); see check_cdl_training."""
  check_cdl_training(seed=0)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_cdl_trained_mlp_more_seeds(seed):
  check_cdl_training(seed)


@pytest.mark.slow
def test_avdit_model_cdl_gradient_is_finite():
  """The real AVDiT (tiny, self-conditioning, v) under jit + grad: shapes and float timesteps."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from avdit.models.avdit import AVDiT  # pylint: disable=g-import-not-at-top
  config = ml_collections.ConfigDict(dict(
      width=32, depth=2, num_heads=4, mlp_ratio=4.0, patch_size=1, timestep_embed_dim=16,
      adaln="lora", adaln_lora_rank=4, qk_norm=True, self_condition=True, dtype="float32",
      remat="none", attention="xla", attention_chunk=16))
  layout = layout_lib.ClipLayout(num_frames=9, fps=8.0, height=32, width=32, sample_rate=16000,
                                 video_channels=48, audio_channels=40)
  model = AVDiT(config, layout, rngs=nnx.Rngs(0))
  latents = {k: jax.random.normal(jax.random.key(i), shape)
             for i, (k, shape) in enumerate(layout.latent_shapes(2).items())}

  @nnx.jit
  def loss_and_grads(model, latents, key):
    loss_fn = lambda m: cdl.avdit_cdl_loss(m, latents, key, schedule=SCHEDULE, layout=layout,
                                           num_logsnr_samples=2, prediction="v")
    return nnx.value_and_grad(loss_fn, has_aux=True)(model)

  (loss, metrics), grads = loss_and_grads(model, latents, jax.random.key(3))
  assert np.isfinite(float(loss)) and float(metrics["cdl_extra_denoiser_evaluations"]) == 4.0
  leaves = jax.tree_util.tree_leaves(grads)
  assert leaves and all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
  assert sum(float(jnp.sum(g ** 2)) for g in leaves) > 0
