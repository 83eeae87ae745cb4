"""The MoNL training objective (Eq. 6 / Algorithm 2) with self-conditioning.

Each (modality, segment) element is noised with its own ᾱ from the timestep vector; the loss is
the mean squared error of the network's ε (or v, or x_0) over every latent element of both
modalities.
Self-conditioning (W.A.L.T, rate 0.9): for a `rate` fraction of the examples, a first pass with
zero self-conditioning gives x̂_0 (no gradient), which the second pass receives on the channel axis.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from avdit import layout as layout_lib
from avdit.diffusion import monl
from avdit.diffusion import schedule as schedule_lib


def noise_latents(latents_x0, timestep_vector_bmn, rng, *, schedule, layout):
  """(x_t, noise, ᾱ per element) for clean latents and a timestep vector [B, M, N]."""
  alpha_bar = layout.expand_to_latents(schedule.alpha_bar(timestep_vector_bmn))
  # Sorted names: jit hands dicts over in sorted key order, so eager and jitted calls with one
  # rng draw the same noise.
  keys = dict(zip(sorted(latents_x0), jax.random.split(rng, len(latents_x0))))
  noise = {k: jax.random.normal(keys[k], v.shape, v.dtype) for k, v in latents_x0.items()}
  noisy = {k: schedule_lib.q_sample(latents_x0[k], noise[k], alpha_bar[k]) for k in latents_x0}
  return noisy, noise, alpha_bar


LOSS_WEIGHTINGS = ("uniform", "snr_plus_one")


def loss_weight(weighting: str, prediction: str, alpha_bar, cap: float = 0.0):
  """Per-element weight of the squared error at noise level ᾱ (broadcast like `alpha_bar`).

  "snr_plus_one" = 1 + ᾱ / (1 - ᾱ) = 1 / (1 - ᾱ): the x0 error weighted as v-prediction weighs
  it (Salimans & Ho 2022). Why: the uniform x0 error is dominated by high noise levels, where it
  is irreducible; there its gradient is noise, and the low levels, where the structure of a clip
  is learnable, get ~(1 - ᾱ) of the weight. Under `diffusion.x0_skip` this is EDM's 1 / c_out²
  for a unit-variance channel: the network's own output is fitted at unit scale at every level.
  Given elements (ᾱ = 1) are not counted, so their weight is kept finite, not used.

  `cap` > 0 (`diffusion.loss_weight_cap`, "snr_plus_one" only): min(1 + SNR, cap), as Min-SNR
  weighting caps the low levels (Hang et al. 2023): below ~SNR = cap the network cannot tell the
  noise from the latent, its unit-scale error there is irreducible, and uncapped it would be as
  much of the gradient's noise as any learnable level. High levels keep the uniform x0 weight 1.
  """
  if weighting == "uniform":
    return 1.0
  if weighting != "snr_plus_one":
    raise ValueError(f"unknown diffusion.loss_weighting {weighting!r}; one of {LOSS_WEIGHTINGS}")
  if prediction != "x0":
    raise ValueError(f"diffusion.loss_weighting={weighting!r} weighs the x0 error; prediction "
                     f"{prediction!r} has its own weighting (use 'uniform')")
  weight = 1.0 / jnp.maximum(1.0 - alpha_bar, 1e-6)
  return jnp.minimum(weight, cap) if cap > 0 else weight


def per_modality(text: str, field: str, choices=None, default=None) -> dict:
  """{modality: value} from a config string: one value for both modalities ("snr_plus_one") or
  MODALITY:VALUE pairs ("video:snr_plus_one"; a modality not named gets `default`). With
  `choices`, each value must be one of them; `field` names the config field in errors."""
  if ":" not in text:
    pairs = [(name, text.strip()) for name in layout_lib.MODALITIES]
  else:
    pairs = [part.strip().partition(":")[::2] for part in text.split(",") if part.strip()]
  values = dict.fromkeys(layout_lib.MODALITIES, default)
  for name, value in pairs:
    if name not in values or (choices is not None and value.strip() not in choices):
      allowed = f"one of {choices}" if choices is not None else "one value"
      raise ValueError(f"{field}={text!r}: use {allowed}, or MODALITY:VALUE pairs with a "
                       f"modality of {layout_lib.MODALITIES}")
    values[name] = value.strip()
  return values


def loss_weightings(text: str) -> dict[str, str]:
  """{modality: weighting} from `diffusion.loss_weighting`: one weighting for both modalities
  ("snr_plus_one") or per modality ("video:snr_plus_one"; a modality not named is "uniform")."""
  return per_modality(text, "diffusion.loss_weighting", LOSS_WEIGHTINGS, "uniform")


def _fraction(text: str, field: str) -> float:
  try:
    value = float(text)
  except ValueError:
    value = -1.0
  if not 0.0 <= value <= 1.0:
    raise ValueError(f"{field}: {text!r} is not a fraction in [0, 1]")
  return value


def level_densities(diffusion_config, schedule: schedule_lib.LinearSchedule):
  """Log-probabilities of the training levels of `diffusion.timestep_density` for
  monl.sample_timestep_vectors: None (uniform, DDPM's), one density [T] for both modalities
  ("logsnr_normal"; schedule.timestep_log_probs), or one per modality [M, T] ("video:
  logsnr_normal", a modality not named "uniform"), the levels they share mixing the two.
  `diffusion.timestep_uniform_fraction` ("0.3" or "audio:0.5"; a modality not named 0) mixes
  that fraction of uniform draws into a modality's density.

  Why per modality (measured, docs/learning_the_link.md): the video is learned at the middle
  levels, while the audio reads the video's disc at the high ones (its cross-modal gain lies at
  t = 800), which a density that leaves them for both modalities starves (v2a at chance); half of
  the audio's draws uniform keeps v2a and most of the video's gain.
  """
  densities = per_modality(diffusion_config.get("timestep_density", "uniform"),
                           "diffusion.timestep_density", schedule_lib.TIMESTEP_DENSITIES,
                           "uniform")
  field = "diffusion.timestep_uniform_fraction"
  fractions = {name: _fraction(value, field) for name, value in per_modality(
      str(diffusion_config.get("timestep_uniform_fraction", "0")), field, None, "0").items()}
  mean = diffusion_config.get("timestep_logsnr_mean", 0.0)
  std = diffusion_config.get("timestep_logsnr_std", 2.0)
  per_modality_log_probs = [schedule_lib.timestep_log_probs(
      schedule, densities[name], mean, std, fractions[name]) for name in layout_lib.MODALITIES]
  if all(lp is None for lp in per_modality_log_probs):
    return None
  uniform = np.full(schedule.num_timesteps, -np.log(schedule.num_timesteps), np.float32)
  stacked = np.stack([uniform if lp is None else lp for lp in per_modality_log_probs])
  return stacked[0] if np.array_equal(stacked[0], stacked[1]) else stacked


LOSS_SPECTRA = ("normalized", "natural", "mixed")


def loss_channel_weights(diffusion_config, stats) -> dict | None:
  """Per-channel loss weights of `diffusion.loss_spectrum`, from the latent statistics
  (latent_space.estimate_stats): None for "normalized" (the error of the latents as normalized);
  for "natural", {modality: [k]} for each whitened modality, direction i's scale squared over
  their mean; "mixed" is the mean of the two weightings (1 + natural) / 2.

  The weighted error is then the error of the per-channel normalized latents (projected on the
  kept directions), up to one factor, while the diffusion noise stays isotropic in the whitened
  space. Why: whitening lets the disc survive the noise (v2a reads it) but spreads the loss over
  the detail directions; at the natural spectrum the flat background that a clip's tokens share
  is most of the loss, and pooling the clip's tokens removes most of it (probe --measure=pooling).
  "mixed" keeps half of the weight on the detail directions (the disc): measured (README), under
  "natural" the audio no longer reads the disc from the video (v2a at chance), presumably because
  the video's own objective no longer asks its tokens to represent it.
  """
  spectrum = diffusion_config.get("loss_spectrum", "normalized")
  if spectrum not in LOSS_SPECTRA:
    raise ValueError(f"diffusion.loss_spectrum must be one of {LOSS_SPECTRA}, got {spectrum!r}")
  if spectrum == "normalized":
    return None
  weights = {}
  for name in ("video", "audio"):
    if f"{name}_direction_std" in stats:
      variance = np.square(np.asarray(stats[f"{name}_direction_std"], np.float64))
      natural = variance / variance.mean()
      weights[name] = (natural if spectrum == "natural" else (1.0 + natural) / 2).astype(
          np.float32)
  if not weights:
    raise ValueError(f"diffusion.loss_spectrum={spectrum!r} weighs whitened modalities; none "
                     "is (set latent.whiten)")
  return weights


def diffusion_loss(model, latents_x0, rng, *, schedule: schedule_lib.LinearSchedule,
                   layout: layout_lib.ClipLayout, mixture_weights, prediction: str,
                   self_condition: bool, self_condition_rate: float,
                   condition_rate: float = 0.0, condition_shared_level: bool = False,
                   condition_weights=monl.DEFAULT_CONDITION_WEIGHTS,
                   loss_weighting: str = "uniform", loss_weight_cap: float = 0.0,
                   modality_balance: bool = False, channel_weights=None,
                   timestep_log_probs=None):
  """(scalar loss, aux metrics) for normalized clean latents {"video", "audio"}.

  `timestep_log_probs`: the density of the training levels, `level_densities` (None: uniform
  over 1..T).

  `condition_rate`: the fraction of examples given a task's exact condition (monl.
  apply_conditioning); their given elements are left out of the loss, and with
  `condition_shared_level` their generated elements share one noise level; `condition_weights`
  [4] over monl.CONDITION_TASKS (monl.parse_condition_tasks; may be traced) weight the tasks.
  `loss_weighting` (x0 prediction only): "uniform", the x0 squared error as it is, or
  "snr_plus_one", each element's error times 1 + SNR = 1 / (1 - ᾱ) of its noise level, at most
  `loss_weight_cap` where that is > 0 (`loss_weight`); per modality as "video:snr_plus_one"
  (`loss_weightings`).
  `modality_balance`: the loss is the mean of the two modalities' mean errors instead of the mean
  over all elements, so a modality with few latent elements (64-channel video tokens against
  107 x 320 audio values: 13% of the elements) still gets half of the gradient.
  `channel_weights` {modality: [C]}: each latent channel's squared error times its weight
  (diffusion.loss_spectrum: `loss_channel_weights`).
  """
  batch = latents_x0["video"].shape[0]
  t_rng, noise_rng, sc_rng = jax.random.split(rng, 3)
  timestep_vector, strategy = monl.sample_timestep_vectors(
      t_rng, batch, layout_lib.NUM_MODALITIES, layout.num_segments, mixture_weights,
      schedule.num_timesteps, timestep_log_probs)
  given = jnp.zeros(timestep_vector.shape, bool)
  if condition_rate > 0:
    timestep_vector, given = monl.apply_conditioning(jax.random.fold_in(rng, 7), timestep_vector,
                                                     condition_rate, condition_shared_level,
                                                     schedule.num_timesteps,
                                                     condition_weights, timestep_log_probs)
  noisy, noise, alpha_bar = noise_latents(latents_x0, timestep_vector, noise_rng,
                                          schedule=schedule, layout=layout)
  t_float = timestep_vector.astype(jnp.float32)

  self_cond = None
  if self_condition:
    first = model(noisy, t_float, None)
    use = jax.random.bernoulli(sc_rng, self_condition_rate, (batch,))
    self_cond = {}
    for k, pred in first.items():
      x0_hat, _ = schedule_lib.prediction_to_x0_eps(pred, noisy[k], alpha_bar[k], prediction)
      keep = use.reshape((batch,) + (1,) * (pred.ndim - 1))
      self_cond[k] = jnp.where(keep, jax.lax.stop_gradient(x0_hat), 0.0)

  output = model(noisy, t_float, self_cond)
  if prediction == "eps":
    target = noise
  elif prediction == "v":
    target = {k: schedule_lib.v_target(latents_x0[k], noise[k], alpha_bar[k]) for k in noise}
  elif prediction == "x0":
    target = latents_x0
  else:
    raise ValueError(f"unknown prediction {prediction!r}; use one of {schedule_lib.PREDICTIONS}")

  squared = {k: jnp.square(output[k].astype(jnp.float32) - target[k]) for k in target}
  for k, weight_c in (channel_weights or {}).items():
    squared[k] = squared[k] * jnp.asarray(weight_c, jnp.float32)
  # Counted: every generated element, not the given ones (all of them without conditioning).
  counted = {k: jnp.broadcast_to(w, squared[k].shape) for k, w in layout.expand_to_latents(
      1.0 - given.astype(jnp.float32)).items()}
  weightings = loss_weightings(loss_weighting)
  weighted = {k: counted[k] * loss_weight(weightings[k], prediction, alpha_bar[k],
                                           loss_weight_cap) * squared[k]
              for k in squared}
  per_modality = {k: jnp.sum(weighted[k]) / jnp.maximum(jnp.sum(counted[k]), 1.0)
                  for k in squared}
  if modality_balance:
    loss = sum(per_modality.values()) / len(per_modality)
  else:
    loss = (sum(jnp.sum(w) for w in weighted.values())
            / jnp.maximum(sum(jnp.sum(c) for c in counted.values()), 1.0))
  aux = {"loss": loss}
  for k in squared:
    aux[f"loss_{k}"] = per_modality[k]
  aux["condition_fraction"] = jnp.mean(jnp.any(given, axis=(1, 2)))
  for i, name in enumerate(monl.STRATEGIES):
    aux[f"strategy_fraction_{name}"] = jnp.mean(strategy == i)
  return loss, aux


def contrastive_terms(model, latents_x0, rng, *, diffusion_config, schedule, layout,
                      mixture_weights):
  """(weighted sum of the optional contrastive terms, aux metrics) — SPEC §7, off by default.

  CDL (avdit.diffusion.cdl) when `diffusion_config.cdl_weight > 0`: 2K extra denoiser passes
  (K = cdl_logsnr_samples). CDCD (avdit.diffusion.cdcd) when `cdcd_weight > 0`: N extra
  passes (N = cdcd_num_negatives) plus the positive. The extra passes are logged
  (`*_extra_denoiser_evaluations`); the MFU of the training log counts the MoNL passes only.
  """
  from avdit.diffusion import cdcd  # pylint: disable=g-import-not-at-top
  from avdit.diffusion import cdl  # pylint: disable=g-import-not-at-top
  get = lambda name, default: diffusion_config.get(name, default)
  total = jnp.zeros((), jnp.float32)
  aux = {}
  cdl_rng, cdcd_rng = jax.random.split(rng)
  if get("cdl_weight", 0.0) > 0:
    value, metrics = cdl.avdit_cdl_loss(
        model, latents_x0, cdl_rng, schedule=schedule, layout=layout,
        num_logsnr_samples=int(get("cdl_logsnr_samples", 1)),
        zeta_range=tuple(get("cdl_zeta_range", cdl.DEFAULT_ZETA_RANGE)),
        logsnr_max=float(get("cdl_logsnr_max", cdl.DEFAULT_LOGSNR_RANGE[1])),
        mixture_weights=mixture_weights, prediction=diffusion_config.prediction)
    total = total + diffusion_config.cdl_weight * value
    aux.update(metrics)
  if get("cdcd_weight", 0.0) > 0:
    value, metrics = cdcd.cdcd_loss(
        model, latents_x0, cdcd_rng, schedule=schedule, layout=layout,
        num_negatives=int(get("cdcd_num_negatives", cdcd.DEFAULT_NUM_NEGATIVES)),
        negative_kind=get("cdcd_negatives", "mixed"), variant=get("cdcd_variant", "step"),
        mask_kinds=tuple(get("cdcd_masks", "a2v,v2a,continue").split(",")),
        temperature=float(get("cdcd_temperature", cdcd.DEFAULT_TEMPERATURE)),
        prediction=diffusion_config.prediction)
    total = total + diffusion_config.cdcd_weight * value
    aux.update(metrics)
  return total, aux
