"""Contrastive Diffusion Loss (CDL): the denoiser as an implicit noise classifier (SPEC §7).

Wu et al. (papers/cdl.txt): per example a label y = ±1; y = +1 keeps the data x_0, y = -1 noises
it at log-SNR ζ ~ U[ζ range]; the loss is softplus(y·LLR(x)) with the log-likelihood ratio from
the denoiser itself,
    LLR(x) = log p_ζ(x) - log p(x) = ½ ∫ dα E_ε[‖ε - ε̂(z_α, α)‖² - ‖ε - b ε̂(z_α, β)‖²],
β = logit(σ(ζ)σ(α)), b = sqrt(σ(-α)/σ(-β)), estimated by Monte Carlo over log-SNR with K draws
per example (2K extra denoiser passes over the batch, one call), along a shifted diagonal for
MoNL's per-element log-SNRs (`estimate_log_likelihood_ratio`, `cdl_forward`; AVDiT adapter
`avdit_cdl_loss`). Log-SNR ↔ timestep of the linear-β schedule: `timestep_to_logsnr`,
`logsnr_to_timestep`.

Config (`diffusion.*`): cdl_weight (0 = off), cdl_logsnr_samples (K), cdl_zeta_range,
cdl_logsnr_max (the top of the integral).

The derivation (the paper's equations, the vector log-SNR path, truncation, variance, the
schedule's log-SNR at float timesteps): docs/cdl.md.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from avdit import layout as layout_lib
from avdit.diffusion import monl
from avdit.diffusion import schedule as schedule_lib

DEFAULT_ZETA_RANGE = (6.0, 15.0)  # the paper's ζ ~ U[6, 15]
DEFAULT_LOGSNR_RANGE = (-10.0, 25.0)
PROPOSALS = ("logistic", "uniform")

EpsFn = Callable[[Any, jax.Array], Any]


# --- the schedule in log-SNR ----------------------------------------------------------------------
def logsnr_bounds(schedule: schedule_lib.LinearSchedule) -> tuple[float, float]:
  """(λ(T), λ(1)): the log-SNRs of the noisiest and the least noisy integer timestep."""
  table = schedule_lib.logsnr_table(schedule)
  return float(table[-1]), float(table[1])


def timestep_to_logsnr(schedule: schedule_lib.LinearSchedule, timesteps) -> jax.Array:
  """Float timesteps (any shape, clipped to [0, T]) -> float32 log-SNR (docs/cdl.md)."""
  t = jnp.clip(jnp.asarray(timesteps, jnp.float32), 0.0, schedule.num_timesteps)
  table = schedule_lib.logsnr_table(schedule)
  grid = jnp.arange(1, schedule.num_timesteps + 1, dtype=jnp.float32)
  upper = jnp.interp(t, grid, jnp.asarray(table[1:], jnp.float32))
  one_minus_alpha_bar = jnp.clip(t, 0.0, 1.0) * schedule.betas[1]  # ᾱ linear on [0, 1]
  lower = jnp.log1p(-one_minus_alpha_bar) - jnp.log(one_minus_alpha_bar)  # +inf at t = 0
  return jnp.where(t < 1.0, lower, upper)


def logsnr_to_timestep(schedule: schedule_lib.LinearSchedule, logsnr) -> jax.Array:
  """Log-SNR (any shape) -> float32 timesteps in [0, T]; λ < λ(T) clips to T, λ = +inf is 0."""
  lam = jnp.asarray(logsnr, jnp.float32)
  table = schedule_lib.logsnr_table(schedule)
  grid = jnp.arange(1, schedule.num_timesteps + 1, dtype=jnp.float32)
  # jnp.interp wants increasing abscissae: -λ grows with t. It clamps outside the table.
  upper = jnp.interp(-lam, jnp.asarray(-table[1:], jnp.float32), grid)
  lower = jax.nn.sigmoid(-lam) / schedule.betas[1]  # 1 - ᾱ = σ(-λ) = t β_1 on [0, 1]
  return jnp.where(lam > table[1], lower, upper)


# --- the log-likelihood ratio --------------------------------------------------------------------
def composed_logsnr(alpha, zeta) -> jax.Array:
  """β = logit(σ(ζ)σ(α)) (Eq. 5): two channels in series, computed in log space."""
  log_signal = jax.nn.log_sigmoid(alpha) + jax.nn.log_sigmoid(zeta)
  return log_signal - jnp.log(-jnp.expm1(log_signal))


def noise_at_logsnr(x, noise, logsnr):
  """z = sqrt(σ(λ)) x + sqrt(σ(-λ)) ε, elementwise in λ (broadcast to x)."""
  return jnp.sqrt(jax.nn.sigmoid(logsnr)) * x + jnp.sqrt(jax.nn.sigmoid(-logsnr)) * noise


class LogLikelihoodRatio(NamedTuple):
  """Monte Carlo estimate of log p_ζ(x) - log p(x) per example."""
  llr: jax.Array  # [B], the mean of `samples` over draws
  stderr: jax.Array  # [B], std of the draws / sqrt(K) (NaN when K = 1)
  samples: jax.Array  # [K, B], one importance-weighted estimate per draw
  denoiser_evaluations: int  # per example: 2K


def _batch_size(tree) -> int:
  leaves = jax.tree_util.tree_leaves(tree)
  if not leaves:
    raise ValueError("x is empty")
  sizes = {leaf.shape[0] if leaf.ndim else None for leaf in leaves}
  if len(sizes) != 1 or None in sizes:
    raise ValueError(f"every leaf of x needs the same leading batch axis, got {sizes}")
  return sizes.pop()


def _per_example_expand(x):
  """Per-example values [N] -> a tree like x of [N, 1, ..., 1]."""
  return lambda values_n: jax.tree_util.tree_map(
      lambda leaf: values_n.reshape(values_n.shape + (1,) * (leaf.ndim - 1)), x)


def _sample_path_coordinate(rng, zeta_b, support_lo_b, support_hi_b, num_samples: int,
                            proposal: str, proposal_scale: float, stratified: bool):
  """(s [K, B], log q(s) [K, B]) from the truncated proposal on [support_lo, support_hi]."""
  u_kb = jax.random.uniform(rng, (num_samples, zeta_b.shape[0]))
  if stratified:
    u_kb = (jnp.arange(num_samples, dtype=jnp.float32)[:, None] + u_kb) / num_samples
  if proposal == "uniform":
    width_b = support_hi_b - support_lo_b
    s_kb = support_lo_b + width_b * u_kb
    return s_kb, jnp.broadcast_to(-jnp.log(width_b), s_kb.shape)
  cdf_lo_b = jax.nn.sigmoid((support_lo_b - zeta_b) / proposal_scale)
  cdf_hi_b = jax.nn.sigmoid((support_hi_b - zeta_b) / proposal_scale)
  p_kb = jnp.clip(cdf_lo_b + (cdf_hi_b - cdf_lo_b) * u_kb, 1e-30, 1.0 - 1e-7)
  s_kb = jnp.clip(zeta_b + proposal_scale * (jnp.log(p_kb) - jnp.log1p(-p_kb)),
                  support_lo_b, support_hi_b)
  scaled_kb = (s_kb - zeta_b) / proposal_scale
  log_q_kb = (jax.nn.log_sigmoid(scaled_kb) + jax.nn.log_sigmoid(-scaled_kb)
              - np.log(proposal_scale) - jnp.log(cdf_hi_b - cdf_lo_b))
  return s_kb, log_q_kb


def estimate_log_likelihood_ratio(
    eps_fn: EpsFn, x, zeta_b, rng, *, num_logsnr_samples: int,
    logsnr_range: Sequence[float] = DEFAULT_LOGSNR_RANGE, proposal: str = "logistic",
    proposal_scale: float = 2.0, stratified: bool = True, logsnr_offsets=None,
    expand_fn: Callable[[jax.Array], Any] | None = None) -> LogLikelihoodRatio:
  """Estimates LLR(x) = log p_ζ(x) - log p(x) per example from a denoiser (docs/cdl.md).

  Args:
    eps_fn: the denoiser, `eps_fn(z, logsnr) -> ε̂` with z like x (batch 2·K·B) and logsnr
      [2KB] (no offsets) or [2KB, *G] (one log-SNR per element group).
    x: points [B, ...] (an array or a pytree of arrays sharing the batch axis).
    zeta_b: [B] log-SNR ζ of the noisier distribution p_ζ, inside `logsnr_range`.
    rng: PRNG key.
    num_logsnr_samples: K, draws of the path coordinate per example.
    logsnr_range: (lo, hi), the integration range of every element's log-SNR.
    proposal: "logistic" (centred at ζ, scale `proposal_scale`) or "uniform", both truncated.
    proposal_scale: scale of the logistic proposal.
    stratified: stratify the K draws in the proposal's CDF.
    logsnr_offsets: optional [B, *G] per-group offsets δ of the path α_j = clip(s + δ_j).
    expand_fn: maps group values [N, *G] to a tree like x of arrays broadcastable to its leaves;
      default: per example without offsets, groups on the axes after the batch for an array x.

  Returns:
    A `LogLikelihoodRatio`.
  """
  batch = _batch_size(x)
  lo, hi = (float(v) for v in logsnr_range)
  if not lo < hi:
    raise ValueError(f"logsnr_range {logsnr_range} must be (lo, hi) with lo < hi")
  if num_logsnr_samples < 1:
    raise ValueError(f"num_logsnr_samples must be >= 1, got {num_logsnr_samples}")
  if proposal not in PROPOSALS:
    raise ValueError(f"unknown proposal {proposal!r}; use one of {PROPOSALS}")
  if proposal_scale <= 0:
    raise ValueError(f"proposal_scale must be positive, got {proposal_scale}")
  zeta_b = jnp.asarray(zeta_b, jnp.float32)
  if zeta_b.shape != (batch,):
    raise ValueError(f"zeta must be [B={batch}], got {zeta_b.shape}")
  k = num_logsnr_samples

  if logsnr_offsets is None:
    offsets_bg = jnp.zeros((batch,), jnp.float32)
    expand = _per_example_expand(x) if expand_fn is None else expand_fn
  else:
    offsets_bg = jnp.asarray(logsnr_offsets, jnp.float32)
    if offsets_bg.ndim < 2 or offsets_bg.shape[0] != batch:
      raise ValueError(f"logsnr_offsets must be [B={batch}, *groups], got {offsets_bg.shape}")
    if expand_fn is None:
      if not isinstance(x, jax.Array | np.ndarray) or x.shape[1:offsets_bg.ndim] != \
          offsets_bg.shape[1:]:
        raise ValueError("without expand_fn, x must be an array [B, *groups, ...] matching "
                         f"logsnr_offsets {offsets_bg.shape}")
      expand = lambda v: v.reshape(v.shape + (1,) * (x.ndim - offsets_bg.ndim))
    else:
      expand = expand_fn
  group_axes = tuple(range(1, offsets_bg.ndim))
  group_ones = (1,) * len(group_axes)

  # s lives where at least one element is inside (lo, hi).
  support_lo_b = lo - (jnp.max(offsets_bg, axis=group_axes) if group_axes else offsets_bg)
  support_hi_b = hi - (jnp.min(offsets_bg, axis=group_axes) if group_axes else offsets_bg)
  s_rng, noise_rng = jax.random.split(rng)
  s_kb, log_q_kb = _sample_path_coordinate(s_rng, zeta_b, support_lo_b, support_hi_b, k,
                                           proposal, proposal_scale, stratified)
  shifted = s_kb.reshape(s_kb.shape + group_ones) + offsets_bg[None]  # [K, B, *G]
  inside = ((shifted > lo) & (shifted < hi)).astype(jnp.float32)
  alpha = jnp.clip(shifted, lo, hi)
  zeta_kbg = zeta_b.reshape((1, batch) + group_ones)
  beta = composed_logsnr(alpha, zeta_kbg)
  b_coef = jnp.exp(0.5 * (jax.nn.log_sigmoid(-alpha) - jax.nn.log_sigmoid(-beta)))
  flat = lambda a: a.reshape((k * batch,) + a.shape[2:])
  alpha_n, beta_n, b_n, inside_n = flat(alpha), flat(beta), flat(b_coef), flat(inside)

  x_n = jax.tree_util.tree_map(
      lambda leaf: jnp.broadcast_to(leaf[None], (k,) + leaf.shape).reshape(
          (k * batch,) + leaf.shape[1:]).astype(jnp.float32), x)
  leaves, treedef = jax.tree_util.tree_flatten(x_n)
  noise_keys = jax.random.split(noise_rng, len(leaves))
  noise_n = jax.tree_util.tree_unflatten(
      treedef, [jax.random.normal(key, leaf.shape) for key, leaf in zip(noise_keys, leaves)])
  z_n = jax.tree_util.tree_map(noise_at_logsnr, x_n, noise_n, expand(alpha_n))

  # One call: ε̂(z, α) for the first half of the batch, ε̂(z, β) for the second.
  eps_hat = eps_fn(jax.tree_util.tree_map(lambda a: jnp.concatenate([a, a]), z_n),
                   jnp.concatenate([alpha_n, beta_n]))
  b_tree, inside_tree = expand(b_n), expand(inside_n)

  def element_terms(eps, eps_both, b_e, inside_e):
    eps_both = eps_both.astype(jnp.float32)
    eps_alpha, eps_beta = eps_both[:k * batch], eps_both[k * batch:]
    if eps_alpha.shape != eps.shape:
      raise ValueError(f"eps_fn returned {eps_both.shape}, expected [{2 * k * batch}, "
                       f"{', '.join(map(str, eps.shape[1:]))}]")
    scaled_beta = b_e * eps_beta
    # ‖ε - ε̂_α‖² - ‖ε - bε̂_β‖² per element, without cancellation.
    diff = (scaled_beta - eps_alpha) * (2.0 * eps - eps_alpha - scaled_beta) * inside_e
    return jnp.sum(diff.reshape(diff.shape[0], -1), axis=1)

  per_leaf = jax.tree_util.tree_map(element_terms, noise_n, eps_hat, b_tree, inside_tree)
  g_n = sum(jax.tree_util.tree_leaves(per_leaf))
  samples_kb = 0.5 * g_n.reshape(k, batch) * jnp.exp(-log_q_kb)
  llr_b = jnp.mean(samples_kb, axis=0)
  if k > 1:
    stderr_b = jnp.std(samples_kb, axis=0, ddof=1) / np.sqrt(k)
  else:
    stderr_b = jnp.full((batch,), jnp.nan)
  return LogLikelihoodRatio(llr_b, stderr_b, samples_kb, 2 * k)


# --- the contrastive loss ------------------------------------------------------------------------
class CDLOutput(NamedTuple):
  """Everything one CDL evaluation computed, per example."""
  loss: jax.Array  # scalar: mean softplus(y · LLR)
  x: Any  # the classified points, like x0
  labels: jax.Array  # [B] float: +1 data, -1 noisier (p_ζ)
  zeta_b: jax.Array  # [B]
  llr: LogLikelihoodRatio


def cdl_forward(eps_fn: EpsFn, x0, rng, *, num_logsnr_samples: int,
                zeta_range: Sequence[float] = DEFAULT_ZETA_RANGE,
                logsnr_range: Sequence[float] = DEFAULT_LOGSNR_RANGE, proposal: str = "logistic",
                proposal_scale: float = 2.0, stratified: bool = True, logsnr_offsets=None,
                expand_fn: Callable[[jax.Array], Any] | None = None) -> CDLOutput:
  """Algorithm 1 on a batch of clean x0 [B, ...] (array or pytree); see `CDLOutput`.

  Per example: ζ ~ U[zeta_range], y = ±1 with probability ½, x = x0 (y = +1) or
  sqrt(σ(ζ)) x0 + sqrt(σ(-ζ)) ε (y = -1), LLR(x) from `estimate_log_likelihood_ratio` (same
  keyword arguments), loss = mean softplus(y · LLR) (Eq. 7).
  """
  batch = _batch_size(x0)
  zeta_lo, zeta_hi = (float(v) for v in zeta_range)
  lo, hi = (float(v) for v in logsnr_range)
  if not lo < zeta_lo <= zeta_hi < hi:
    raise ValueError(f"zeta_range {zeta_range} must lie inside logsnr_range {logsnr_range}")
  zeta_rng, label_rng, noise_rng, llr_rng = jax.random.split(rng, 4)
  zeta_b = jax.random.uniform(zeta_rng, (batch,), minval=zeta_lo, maxval=zeta_hi)
  labels_b = jnp.where(jax.random.bernoulli(label_rng, 0.5, (batch,)), 1.0, -1.0)
  leaves, treedef = jax.tree_util.tree_flatten(x0)
  keys = jax.random.split(noise_rng, len(leaves))

  def make_point(leaf, key):
    leaf = leaf.astype(jnp.float32)
    shape = (batch,) + (1,) * (leaf.ndim - 1)
    noisier = noise_at_logsnr(leaf, jax.random.normal(key, leaf.shape), zeta_b.reshape(shape))
    return jnp.where(labels_b.reshape(shape) > 0, leaf, noisier)

  x = jax.tree_util.tree_unflatten(treedef, [make_point(l, key) for l, key in zip(leaves, keys)])
  llr = estimate_log_likelihood_ratio(
      eps_fn, x, zeta_b, llr_rng, num_logsnr_samples=num_logsnr_samples,
      logsnr_range=logsnr_range, proposal=proposal, proposal_scale=proposal_scale,
      stratified=stratified, logsnr_offsets=logsnr_offsets, expand_fn=expand_fn)
  loss = jnp.mean(jax.nn.softplus(labels_b * llr.llr))
  return CDLOutput(loss, x, labels_b, zeta_b, llr)


def cdl_metrics(output: CDLOutput) -> dict[str, jax.Array]:
  """Scalar metrics of a `CDLOutput`, for logging."""
  is_data = output.labels > 0
  llr = output.llr.llr
  count_data = jnp.maximum(jnp.sum(is_data), 1)
  count_noisy = jnp.maximum(jnp.sum(~is_data), 1)
  metrics = {
      "cdl_loss": output.loss,
      # The implicit classifier: "data" when log p_ζ(x) < log p(x).
      "cdl_accuracy": jnp.mean((llr < 0) == is_data),
      "cdl_llr_data": jnp.sum(jnp.where(is_data, llr, 0.0)) / count_data,
      "cdl_llr_noisier": jnp.sum(jnp.where(is_data, 0.0, llr)) / count_noisy,
      "cdl_extra_denoiser_evaluations": jnp.asarray(output.llr.denoiser_evaluations,
                                                    jnp.float32),
  }
  if output.llr.samples.shape[0] > 1:
    metrics["cdl_llr_stderr"] = jnp.mean(output.llr.stderr)
  return metrics


def contrastive_diffusion_loss(eps_fn: EpsFn, x0, rng, **kwargs):
  """(scalar CDL, scalar metrics) for clean x0; keyword arguments as `cdl_forward`."""
  output = cdl_forward(eps_fn, x0, rng, **kwargs)
  return output.loss, cdl_metrics(output)


# --- the AVDiT adapter ---------------------------------------------------------------------------
def avdit_cdl_forward(model, latents_x0: dict[str, jax.Array], rng, *,
                      schedule: schedule_lib.LinearSchedule, layout: layout_lib.ClipLayout,
                      num_logsnr_samples: int = 1,
                      zeta_range: Sequence[float] = DEFAULT_ZETA_RANGE,
                      logsnr_max: float = DEFAULT_LOGSNR_RANGE[1], offset_range: float = 2.0,
                      mixture_weights=None, prediction: str = "eps", proposal: str = "logistic",
                      proposal_scale: float = 2.0, stratified: bool = True) -> CDLOutput:
  """CDL of the AVDiT denoiser on normalized clean latents; see `CDLOutput`.

  Args:
    model: `model(noisy_latents, timestep_vector_bmn_float, self_cond) -> prediction dict`;
      called once, on a batch of 2·K·B, with self_cond None (zero self-conditioning, the
      MSE loss's first pass; a self-conditioned second pass would double the cost to 4K).
    latents_x0: {"video": [B, N, h, w, d_v], "audio": [B, l_a, d_a]}.
    rng: PRNG key.
    schedule, layout: the discrete schedule (log-SNRs map to float timesteps through
      `logsnr_to_timestep`) and the segment layout (`expand_to_latents`).
    num_logsnr_samples: K; the cost is 2K extra denoiser passes over the batch.
    zeta_range: ζ ~ U[zeta_range] (paper: [6, 15]).
    logsnr_max: upper end of the integral; the lower end is λ(T) of the schedule.
    offset_range: per-(modality, segment) path offsets δ ~ U[-offset_range, offset_range],
      applied with a MoNL strategy per example (0: every element at the same log-SNR).
    mixture_weights: weights over `monl.STRATEGIES` for the offsets (default uniform, "monl").
    prediction: "eps", "v" or "x0" (v and x0 are converted to ε at the log-SNR the model was
      told).
    proposal, proposal_scale, stratified: as `estimate_log_likelihood_ratio`.
  """
  if prediction not in schedule_lib.PREDICTIONS:
    raise ValueError(f"unknown prediction {prediction!r}; use one of {schedule_lib.PREDICTIONS}")
  if offset_range < 0:
    raise ValueError(f"offset_range must be >= 0, got {offset_range}")
  missing = set(layout_lib.MODALITIES) - set(latents_x0)
  if missing:
    raise ValueError(f"latents_x0 lacks {sorted(missing)}")
  batch = latents_x0["video"].shape[0]
  lam_min, _ = logsnr_bounds(schedule)
  if mixture_weights is None:
    mixture_weights = monl.parse_mixture("monl")

  def eps_fn(noisy, logsnr_bmn):
    # β can fall just below λ(T) (docs/cdl.md): evaluate it at t = T, consistently for v.
    logsnr_bmn = jnp.maximum(logsnr_bmn, lam_min)
    output = model(noisy, logsnr_to_timestep(schedule, logsnr_bmn), None)
    if prediction == "eps":
      return output
    alpha_bar = layout.expand_to_latents(jax.nn.sigmoid(logsnr_bmn))
    return {key: schedule_lib.prediction_to_x0_eps(output[key].astype(jnp.float32), noisy[key],
                                                   alpha_bar[key], prediction)[1]
            for key in output}

  offset_rng, strategy_rng, cdl_rng = jax.random.split(rng, 3)
  shape_bmn = (batch, layout_lib.NUM_MODALITIES, layout.num_segments)
  offsets_ref = jax.random.uniform(offset_rng, shape_bmn, minval=-offset_range,
                                   maxval=offset_range)
  strategy = jax.random.choice(strategy_rng, len(monl.STRATEGIES), (batch,),
                               p=jnp.asarray(mixture_weights, jnp.float32))
  offsets_bmn = monl.timesteps_for_strategies(offsets_ref, strategy)
  latents = {key: latents_x0[key] for key in layout_lib.MODALITIES}
  return cdl_forward(
      eps_fn, latents, cdl_rng, num_logsnr_samples=num_logsnr_samples, zeta_range=zeta_range,
      logsnr_range=(lam_min, logsnr_max), proposal=proposal, proposal_scale=proposal_scale,
      stratified=stratified, logsnr_offsets=offsets_bmn, expand_fn=layout.expand_to_latents)


def avdit_cdl_loss(model, latents_x0: dict[str, jax.Array], rng, **kwargs):
  """(scalar CDL, scalar metrics) of the AVDiT denoiser; arguments as `avdit_cdl_forward`.

  To add it to the MoNL objective: loss = diffusion_loss + weight · cdl, with `weight` and
  `num_logsnr_samples` (cost: 2K extra passes) from the config; log the metrics. Scale: the
  MoNL loss is a MEAN over latent elements, while the LLR inside the softplus is a SUM over the
  d elements of a clip (a log-density ratio in nats), so near the decision boundary the CDL
  gradient is O(d) times larger: on the tiny AVDiT of the model tests (d = 4584, untrained) its
  gradient norm was ~4000x that of the MSE loss. A weight of order 1/d makes them comparable.
  """
  output = avdit_cdl_forward(model, latents_x0, rng, **kwargs)
  return output.loss, cdl_metrics(output)
