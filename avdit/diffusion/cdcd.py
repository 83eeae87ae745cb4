"""CDCD carried to continuous latents: an InfoNCE over denoising errors (SPEC §7).

Zhu et al., "Discrete Contrastive Diffusion" (papers/cdcd.txt, CDCD) maximize the mutual
information I(x; c) between a condition c and the generated data x with an InfoNCE (their Eq. 2)
whose log density ratios come from the diffusion model itself: the negative variational bound
(step-wise, Eq. 3) or the negative x0 log-likelihood -log p(z0 | z_t, c) (sample-wise, Eq. 4) plays
the role of log p(x | c). This module carries that to the MoNL setting, where a condition is a set
of clean (modality, segment) elements of the same clip and the denoiser is Gaussian, so
-log p(x | c) is, up to constants and scale, a squared error.

What is contrasted. CDCD keeps c and draws negative *data* x^j; here the negatives are negative
*conditions* for the same generated elements: the InfoNCE classifies which of N + 1 conditions
(the true one at index 0, N negatives) explains the generated part best. This suits a denoiser:
the density ratio f(x, c) = p(x | c) / p(x) of Eq. 2 has the same p(x) for every candidate, so the
conditional log-likelihood proxy alone gives the right logits (CDCD, contrasting negative data,
has to approximate p(x^j)); x_t and ε are shared, so the errors differ only through the condition.
With inter-negatives (draws from the marginal of c) the InfoNCE bounds I(x; c) >= log(N + 1) - L;
intra-negatives are hard negatives, not marginal draws, as in CDCD.

One training example (`cdcd_loss`), with everything random drawn by `sample_plan` from one rng:
  1. Condition mask [2, N] (True = clean condition), one per example, drawn as follows: a kind is
     chosen uniformly from `mask_kinds`, then
       "a2v"       audio every segment given, video generated  (MoNL `pm` with the audio level 0),
       "v2a"       video every segment given, audio generated  (MoNL `pm` with the video level 0),
       "continue"  the first k segments of both modalities given, the rest generated, with
                   k ~ U{k_min..N-1}: k_min = 2 when intra-negatives are used (a single given
                   segment cannot be shuffled), else 1.
     a2v/v2a are the masks of `avdit.tasks` (so the same elements as the sampler tasks).
  2. One noise level t ~ U{1..T} per example for all generated elements (as in the sampler, whose
     generated elements share t_k); condition elements are clean with t = 0. ε ~ N(0, I).
  3. Negative conditions (clean latents of the condition elements; generated elements keep the
     positive's x_t, and the timestep vector is the positive's):
       intra  the same clip with its condition's time-segments shuffled (CDCD §3.3 shuffles audio
              chunks). A permutation π of the given segments, identity elsewhere: slot n shows
              source segment π[n]. π is uniform over the permutations of the given set S, except
              that the identity (probability 1/|S|!) is replaced by the rotation by one within S,
              so π is never the identity when |S| >= 2 (with |S| = 2 every intra-negative is the
              swap). Both modalities draw from the same random scores, so when they have the same
              given segments (continuation) they get the same π and the audio-video alignment
              inside the condition is kept; only the order in time changes.
              Video segments are one latent frame each: slot n gets frame π[n]. Audio segments
              (`ClipLayout.segment_of_audio`) have unequal lengths (6, 25, 25, 25, 26 latents at
              the paper geometry), so whole segments are *concatenated* in slot order
              π[s_0], π[s_1], ... (s_0 < s_1 < ... the given segments) and the result is written
              into the given positions in order. For a contiguous given set (all of this module's
              masks) that is exactly "whole segments moved, total length kept"; segment
              boundaries then no longer coincide with `segment_of_audio`, as chunk boundaries of
              CDCD's shuffled audio do not. For a non-contiguous set a moved segment may straddle
              the gap. The multiset of audio latents and the generated positions are unchanged.
       inter  other clips' conditions from the batch: negative j of example b takes clip
              (b + s_j) mod B's clean latents on b's condition elements, with N distinct shifts
              s_j ~ U{1..B-1} without replacement (shared by the batch), so no example is ever its
              own negative; N <= B - 1 is required. Inside a jitted program over a global batch
              sharded over devices/hosts this gather over the batch axis is a cross-device
              collective that XLA inserts (at worst an all-gather of the clean latents, small
              next to the activations), so the negatives already come from other hosts' clips.
       mixed  ceil(N/2) intra-negatives followed by N - ceil(N/2) inter-negatives.
  4. One denoiser call on the (N + 1)·B stacked inputs (positive first), no self-conditioning
     (`self_cond=None`, the zero estimate the model also sees in training). Cost: N·B extra
     denoiser evaluations per step over the positive (11x the forward/backward FLOPs and
     activation memory of one pass at the paper's N = 10); pass a sub-batch to bound it.
     `aux["cdcd_extra_denoiser_evaluations"]` reports N, extra passes over the batch (as CDL's
     2K), i.e. N·B evaluations of one example.
  5. error_j per example = mean squared error over the generated elements (all channels):
       step    ε-space: ||ε̂_j - ε||² at the step's noise level — CDCD's step-wise variant, whose
               log density is the variational bound, a weighted sum of per-step ε-errors.
       sample  x0-space: ||x̂0_j - x0||² of the sample the denoiser predicts from x_t —
               CDCD's sample-wise variant contrasts -log p(z0 | z_t, c), the likelihood of the
               final sample given the step (their Eq. 4 / 10e). For an ε-model with one ᾱ over
               the generated elements this is ((1 - ᾱ)/ᾱ)·ε-error, i.e. in ε units it weighs
               the noisy steps (where the sample depends most on the condition) far more; a
               well-trained model keeps it <= Var(x0) ≈ 1 per element, an untrained one can give
               errors of ~1/ᾱ_T ≈ 2.5e4 at t = T (large, saturated logits early in training).
  6. logits_j = -error_j / temperature and loss = mean_b [-log softmax(logits_b)[0]]
     (`info_nce_from_errors`). CDCD's logits are exact (summed) log-likelihoods; a Gaussian
     denoiser's is -Σ err / (2σ²) over D generated elements, i.e. temperature 2σ²/D on the
     *mean* error, which for D ~ 1e5 latents saturates the softmax. The temperature is therefore
     a free scale on the per-element mean error (default 0.1: a 0.05 gap in mean squared error,
     10% of a typical error, is a logit gap of 0.5).

The total objective is diffusion_loss + λ·cdcd_loss, integrated by the caller (paper: λ = 5e-5,
N = 10; `DEFAULT_WEIGHT`, `DEFAULT_NUM_NEGATIVES`). Note that CDCD's λ was tuned against a loss
summed over tokens; this InfoNCE is O(log(N + 1)) ≈ 2.4 per example, so λ = 5e-5 makes it a very
small term next to the MoNL MSE and the weight deserves tuning.
"""
from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from avdit import layout as layout_lib
from avdit import tasks as tasks_lib
from avdit.diffusion import schedule as schedule_lib

Array = jax.Array
Latents = dict[str, Array]
Model = Callable[[Latents, Array, Any], Latents]

DEFAULT_WEIGHT = 5e-5  # λ of CDCD (their §4 and Appendix), for the caller
DEFAULT_NUM_NEGATIVES = 10  # N of CDCD
DEFAULT_TEMPERATURE = 0.1
MASK_KINDS = ("a2v", "v2a", "continue")
NEGATIVE_KINDS = ("intra", "inter", "mixed")
VARIANTS = ("step", "sample")


class CdcdPlan(NamedTuple):
  """Every random choice of one CDCD evaluation, so tests and callers can rebuild it.

  Attributes:
    condition_mask: bool [B, 2, N]; True = clean condition element.
    timestep: int32 [B]; the noise level of the example's generated elements, in 1..T.
    noise: the ε of the generated elements, with the structure and shapes of the latents.
    intra_permutation: int32 [B, K_intra, 2, N]; slot n of modality m shows source segment
      π[b, j, m, n] (identity outside the condition's segments).
    inter_source: int32 [B, K_inter]; the batch index whose clean condition negative j of example
      b uses, (b + shift_j) mod B, never b.
  """

  condition_mask: Array
  timestep: Array
  noise: Latents
  intra_permutation: Array
  inter_source: Array


# --- the InfoNCE ----------------------------------------------------------------------------------
def info_nce_from_errors(errors_bk, positive_index: int = 0,
                         temperature: float = DEFAULT_TEMPERATURE) -> Array:
  """Mean over b of -log softmax(-errors_bk[b] / temperature)[positive_index].

  Args:
    errors_bk: [B, K] denoising errors of K >= 2 candidates per example (lower = more likely).
    positive_index: the column of the positive candidate.
    temperature: > 0; logits are -error / temperature.

  Returns:
    float32 scalar.
  """
  errors_bk = jnp.asarray(errors_bk, jnp.float32)
  if errors_bk.ndim != 2 or errors_bk.shape[1] < 2:
    raise ValueError(f"errors_bk must be [B, K] with K >= 2 candidates, got {errors_bk.shape}")
  if not 0 <= positive_index < errors_bk.shape[1]:
    raise ValueError(f"positive_index={positive_index} is outside 0..{errors_bk.shape[1] - 1}")
  if not temperature > 0:
    raise ValueError(f"temperature must be > 0, got {temperature}")
  log_probs = jax.nn.log_softmax(-errors_bk / temperature, axis=-1)
  return -jnp.mean(log_probs[:, positive_index])


# --- condition masks ------------------------------------------------------------------------------
def _check_kinds(mask_kinds: Sequence[str], negative_kind: str, num_negatives: int):
  if isinstance(mask_kinds, str):
    mask_kinds = tuple(k.strip() for k in mask_kinds.split(",") if k.strip())
  mask_kinds = tuple(mask_kinds)
  if not mask_kinds or any(k not in MASK_KINDS for k in mask_kinds):
    raise ValueError(f"mask_kinds {mask_kinds!r} must be a non-empty subset of {MASK_KINDS}")
  if negative_kind not in NEGATIVE_KINDS:
    raise ValueError(f"unknown negative_kind {negative_kind!r}; use one of {NEGATIVE_KINDS}")
  if isinstance(num_negatives, bool) or int(num_negatives) != num_negatives or num_negatives < 1:
    raise ValueError(f"num_negatives must be an integer >= 1, got {num_negatives!r}")
  return mask_kinds


def negative_counts(num_negatives: int, negative_kind: str) -> tuple[int, int]:
  """(K_intra, K_inter) for `negative_kind`; "mixed" puts ceil(N/2) intra first."""
  if negative_kind == "intra":
    return num_negatives, 0
  if negative_kind == "inter":
    return 0, num_negatives
  if negative_kind == "mixed":
    intra = (num_negatives + 1) // 2
    return intra, num_negatives - intra
  raise ValueError(f"unknown negative_kind {negative_kind!r}; use one of {NEGATIVE_KINDS}")


def condition_mask_table(layout: layout_lib.ClipLayout, mask_kinds: Sequence[str],
                         min_continuation_segments: int = 1) -> tuple[np.ndarray, np.ndarray]:
  """(masks bool [C, 2, N], probabilities float [C]) of the per-example mask draw.

  A kind is uniform over `mask_kinds`; "continue" then spreads its share uniformly over
  k = min_continuation_segments..N-1 given segments.
  """
  mask_kinds = _check_kinds(mask_kinds, "intra", 1)
  n = layout.num_segments
  masks, probs = [], []
  for kind in mask_kinds:
    if kind in ("a2v", "v2a"):
      masks.append(tasks_lib.parse_task(kind, layout).condition_mask)
      probs.append(1.0)
      continue
    ks = range(max(1, min_continuation_segments), n)
    if not ks:
      raise ValueError(
          f"mask kind 'continue' needs k in {min_continuation_segments}..N-1 given segments but "
          f"this clip has N = {n} segments (intra-negatives need k >= 2, so N >= 3)")
    for k in ks:
      masks.append(tasks_lib.parse_task(f"v:0..{k - 1};a:0..{k - 1}", layout).condition_mask)
      probs.append(1.0 / len(ks))
  probs = np.asarray(probs) / len(mask_kinds)
  return np.stack(masks), probs / probs.sum()


def sample_condition_masks(rng, batch: int, layout: layout_lib.ClipLayout,
                           mask_kinds: Sequence[str], min_continuation_segments: int = 1) -> Array:
  """bool [B, 2, N]: one condition mask per example from `condition_mask_table`."""
  masks, probs = condition_mask_table(layout, mask_kinds, min_continuation_segments)
  index = jax.random.categorical(rng, jnp.log(jnp.asarray(probs, jnp.float32)), shape=(batch,))
  return jnp.asarray(masks)[index]


# --- negatives ------------------------------------------------------------------------------------
def sample_segment_permutations(rng, condition_mask_bmn, num_permutations: int) -> Array:
  """int32 [B, K, 2, N]: per example, K permutations of each modality's condition segments.

  Slot n of modality m shows source segment π[b, k, m, n]; segments outside the condition are
  fixed. Uniform over permutations of the condition set S, with the identity replaced by the
  rotation by one within S, so π is never the identity when |S| >= 2. The random scores are
  shared by the two modalities, so equal condition sets get the same π.
  """
  condition_mask_bmn = jnp.asarray(condition_mask_bmn, bool)
  if condition_mask_bmn.ndim != 3 or condition_mask_bmn.shape[1] != layout_lib.NUM_MODALITIES:
    raise ValueError(f"condition_mask must be [B, 2, N], got {condition_mask_bmn.shape}")
  batch, _, n = condition_mask_bmn.shape
  scores = jax.random.uniform(rng, (batch, num_permutations, n))
  arange = jnp.arange(n)
  per_modality = []
  for m in range(layout_lib.NUM_MODALITIES):
    given = condition_mask_bmn[:, None, m, :]  # [B, 1, N]
    count = jnp.sum(given, axis=-1, keepdims=True)  # [B, 1, 1]
    rank = jnp.clip(jnp.cumsum(given, axis=-1) - 1, 0, n - 1)  # slot's rank within S
    # The given segments in random order first, then the others (scores are < 2).
    shuffled = jnp.argsort(jnp.where(given, scores, 2.0), axis=-1)
    perm = jnp.where(given, jnp.take_along_axis(shuffled, jnp.broadcast_to(rank, shuffled.shape),
                                                axis=-1), arange)
    ascending = jnp.argsort(jnp.where(given, arange, n + arange), axis=-1)  # S ascending first
    next_rank = (rank + 1) % jnp.maximum(count, 1)
    rotation = jnp.where(given, jnp.take_along_axis(ascending, next_rank, axis=-1), arange)
    is_identity = jnp.all(perm == arange, axis=-1, keepdims=True)
    perm = jnp.where(is_identity & (count >= 2), jnp.broadcast_to(rotation, perm.shape), perm)
    per_modality.append(perm)
  return jnp.stack(per_modality, axis=2).astype(jnp.int32)


def _segment_gather_index(permutation_bkn, given_bn, segment_of_position: np.ndarray) -> Array:
  """int32 [B, K, L]: source position of each position after moving whole segments.

  The given positions P (those whose segment is given) are filled, in order, with the given
  segments' positions concatenated in slot order π[s_0], π[s_1], ...; other positions map to
  themselves. With equal-length segments this is slot n <- segment π[n].
  """
  length = len(segment_of_position)
  segment = jnp.asarray(segment_of_position, jnp.int32)
  position = jnp.arange(length)
  slot_of_segment = jnp.argsort(permutation_bkn, axis=-1)  # inverse permutation [B, K, N]
  given_pos = jnp.take(given_bn, segment, axis=1)[:, None, :]  # [B, 1, L]
  slot_of_source = jnp.take(slot_of_segment, segment, axis=-1)  # [B, K, L]
  # Given sources sorted by (slot, position); non-given ones after them.
  order = jnp.argsort(jnp.where(given_pos, slot_of_source * length + position,
                                length * (permutation_bkn.shape[-1] + 1) + position), axis=-1)
  rank = jnp.clip(jnp.cumsum(given_pos, axis=-1) - 1, 0, length - 1)
  source = jnp.take_along_axis(order, jnp.broadcast_to(rank, order.shape), axis=-1)
  return jnp.where(given_pos, source, position).astype(jnp.int32)


def intra_negative_latents(latents_x0: Latents, permutation_bkmn, condition_mask_bmn,
                           layout: layout_lib.ClipLayout) -> Latents:
  """Clean latents {"video": [B, K, N, h, w, d_v], "audio": [B, K, l_a, d_a]} with each clip's
  condition segments moved by `permutation_bkmn` [B, K, 2, N] (see the module docstring)."""
  condition_mask_bmn = jnp.asarray(condition_mask_bmn, bool)
  out = {}
  for m, name in enumerate(layout_lib.MODALITIES):
    x = latents_x0[name]
    segment_of_position = (np.arange(layout.num_segments) if name == "video"
                           else layout.segment_of_audio)
    if x.shape[1] != len(segment_of_position):
      raise ValueError(f"{name} latents have {x.shape[1]} positions on axis 1, the layout "
                       f"expects {len(segment_of_position)}")
    index = _segment_gather_index(permutation_bkmn[:, :, m], condition_mask_bmn[:, m],
                                  segment_of_position)  # [B, K, L]
    index = index.reshape(index.shape + (1,) * (x.ndim - 2))
    out[name] = jnp.take_along_axis(x[:, None], index, axis=2)
  return out


def sample_batch_sources(rng, batch: int, num_negatives: int) -> Array:
  """int32 [B, K]: (b + s_k) mod B with K distinct shifts s_k in 1..B-1; never b."""
  if num_negatives > batch - 1:
    raise ValueError(f"{num_negatives} inter-negatives need batch size >= {num_negatives + 1} "
                     f"(other clips of the batch), got batch {batch}")
  if num_negatives == 0:
    return jnp.zeros((batch, 0), jnp.int32)
  # The first K of a uniformly random order of 1..B-1 (cheaper to compile than random.choice).
  shifts = 1 + jnp.argsort(jax.random.uniform(rng, (batch - 1,)))[:num_negatives]
  return ((jnp.arange(batch)[:, None] + shifts[None, :]) % batch).astype(jnp.int32)


def inter_negative_latents(latents_x0: Latents, source_bk) -> Latents:
  """Clean latents [B, K, ...] of the clips `source_bk` [B, K] (a gather over the batch axis)."""
  return {k: jnp.take(v, source_bk, axis=0) for k, v in latents_x0.items()}


# --- the plan and the errors ----------------------------------------------------------------------
def sample_plan(rng, latents_x0: Latents, *, schedule: schedule_lib.LinearSchedule,
                layout: layout_lib.ClipLayout, num_negatives: int = DEFAULT_NUM_NEGATIVES,
                negative_kind: str = "intra",
                mask_kinds: Sequence[str] = MASK_KINDS) -> CdcdPlan:
  """All random draws of `cdcd_loss` for this rng (steps 1-3 of the module docstring)."""
  mask_kinds = _check_kinds(mask_kinds, negative_kind, num_negatives)
  batch = latents_x0["video"].shape[0]
  num_intra, num_inter = negative_counts(num_negatives, negative_kind)
  if num_intra and layout.num_segments < 2:
    raise ValueError("intra-negatives shuffle time-segments; this clip has only N = 1 segment")
  if num_inter > batch - 1:  # checked before any draw (also in sample_batch_sources)
    raise ValueError(f"{num_inter} inter-negatives need batch size >= {num_inter + 1} "
                     f"(other clips of the batch), got batch {batch}")
  mask_rng, t_rng, perm_rng, batch_rng, noise_rng = jax.random.split(rng, 5)
  condition_mask = sample_condition_masks(mask_rng, batch, layout, mask_kinds,
                                          2 if num_intra else 1)
  timestep = jax.random.randint(t_rng, (batch,), 1, schedule.num_timesteps + 1).astype(jnp.int32)
  # Sorted names: jit flattens dicts in sorted order, so insertion order must not pick the keys.
  names = sorted(latents_x0)
  keys = dict(zip(names, jax.random.split(noise_rng, len(names))))
  noise = {k: jax.random.normal(keys[k], v.shape, jnp.float32) for k, v in latents_x0.items()}
  return CdcdPlan(condition_mask=condition_mask, timestep=timestep, noise=noise,
                  intra_permutation=sample_segment_permutations(perm_rng, condition_mask,
                                                                num_intra),
                  inter_source=sample_batch_sources(batch_rng, batch, num_inter))


def candidate_inputs(latents_x0: Latents, plan: CdcdPlan, *, schedule: schedule_lib.LinearSchedule,
                     layout: layout_lib.ClipLayout) -> tuple[Latents, Array, Latents]:
  """(inputs [K+1, B, ...], timestep_vector float32 [B, 2, N], ᾱ per element [B, ...]).

  Candidate 0 is the positive; then the intra- and the inter-negatives. Every candidate has the
  positive's x_t on the generated elements and its own clean condition on the given ones.
  """
  mask = plan.condition_mask
  t_bmn = jnp.where(mask, 0, plan.timestep[:, None, None])
  alpha_bar = layout.expand_to_latents(schedule.alpha_bar(t_bmn))
  given = layout.expand_to_latents(mask)
  intra = intra_negative_latents(latents_x0, plan.intra_permutation, mask, layout)
  inter = inter_negative_latents(latents_x0, plan.inter_source)
  inputs = {}
  for k, x0 in latents_x0.items():
    x0 = x0.astype(jnp.float32)
    x_t = schedule_lib.q_sample(x0, plan.noise[k], alpha_bar[k])
    conditions = jnp.concatenate([x0[:, None], intra[k].astype(jnp.float32),
                                  inter[k].astype(jnp.float32)], axis=1)  # [B, K+1, ...]
    candidates = jnp.where(given[k][:, None], conditions, x_t[:, None])
    inputs[k] = jnp.swapaxes(candidates, 0, 1)
  return inputs, t_bmn.astype(jnp.float32), alpha_bar


def denoising_errors(model: Model, latents_x0: Latents, plan: CdcdPlan, *,
                     schedule: schedule_lib.LinearSchedule, layout: layout_lib.ClipLayout,
                     variant: str = "step", prediction: str = "eps") -> Array:
  """float32 [B, K+1]: mean squared error over each example's generated elements per candidate.

  "step": ε-space error; "sample": x0-space error of the predicted x̂0 (module docstring, step 5).
  One model call on the (K+1)·B stacked candidates.
  """
  if variant not in VARIANTS:
    raise ValueError(f"unknown CDCD variant {variant!r}; use one of {VARIANTS}")
  inputs, t_bmn, alpha_bar = candidate_inputs(latents_x0, plan, schedule=schedule, layout=layout)
  num_candidates, batch = inputs["video"].shape[:2]
  flat = {k: v.reshape((num_candidates * batch,) + v.shape[2:]) for k, v in inputs.items()}
  t_flat = jnp.tile(t_bmn, (num_candidates, 1, 1))
  output = model(flat, t_flat, None)
  generated = layout.expand_to_latents(~plan.condition_mask)
  total = jnp.zeros((num_candidates, batch), jnp.float32)
  count = jnp.zeros((batch,), jnp.float32)
  for k, x0 in latents_x0.items():
    pred = output[k].astype(jnp.float32).reshape(inputs[k].shape)
    x0_hat, eps_hat = schedule_lib.prediction_to_x0_eps(pred, inputs[k], alpha_bar[k][None],
                                                        prediction)
    if variant == "step":
      squared = jnp.square(eps_hat - plan.noise[k][None])
    else:
      squared = jnp.square(x0_hat - x0.astype(jnp.float32)[None])
    weight = generated[k].astype(jnp.float32)  # [B, L, 1...]: 1 on generated elements
    axes = tuple(range(2, squared.ndim))
    total = total + jnp.sum(squared * weight[None], axis=axes)
    count = count + jnp.sum(jnp.broadcast_to(weight, x0.shape), axis=tuple(range(1, x0.ndim)))
  return (total / jnp.maximum(count, 1.0)).T


def cdcd_loss(model: Model, latents_x0: Latents, rng, *, schedule: schedule_lib.LinearSchedule,
              layout: layout_lib.ClipLayout, num_negatives: int = DEFAULT_NUM_NEGATIVES,
              negative_kind: str = "intra", variant: str = "step",
              mask_kinds: Sequence[str] = MASK_KINDS, temperature: float = DEFAULT_TEMPERATURE,
              prediction: str = "eps") -> tuple[Array, dict[str, Array]]:
  """(scalar InfoNCE, aux scalars) for normalized clean latents {"video", "audio"}.

  Args:
    model: `model(noisy, timestep_vector [B', 2, N] float, None) -> {"video", "audio"}`
      predictions (ε or v per `prediction`).
    latents_x0: {"video": [B, N, h, w, d_v], "audio": [B, l_a, d_a]}.
    rng: PRNG key; `sample_plan(rng, ...)` with the same arguments gives every random draw.
    schedule, layout: the diffusion schedule and clip layout.
    num_negatives: N negatives per example (paper: 10).
    negative_kind: "intra" | "inter" | "mixed" (ceil(N/2) intra + the rest inter).
    variant: "step" (ε-error at the step) | "sample" (x0-error of the predicted sample).
    mask_kinds: subset of ("a2v", "v2a", "continue") drawn uniformly per example.
    temperature: logits are -error / temperature.
    prediction: "eps" | "v" | "x0", the model's parameterization.

  Returns:
    (loss, aux) with aux["cdcd_extra_denoiser_evaluations"] = N (passes over the batch), the InfoNCE accuracy (the
    positive has the strictly lowest error) and the mean positive and negative errors.
  """
  if variant not in VARIANTS:
    raise ValueError(f"unknown CDCD variant {variant!r}; use one of {VARIANTS}")
  if prediction not in schedule_lib.PREDICTIONS:
    raise ValueError(f"unknown prediction {prediction!r}; use one of {schedule_lib.PREDICTIONS}")
  shapes = layout.latent_shapes(latents_x0["video"].shape[0])
  for k, shape in shapes.items():
    if k not in latents_x0 or tuple(latents_x0[k].shape) != shape:
      raise ValueError(f"latents_x0[{k!r}] must have shape {shape} for this layout, got "
                       f"{None if k not in latents_x0 else tuple(latents_x0[k].shape)}")
  plan = sample_plan(rng, latents_x0, schedule=schedule, layout=layout,
                     num_negatives=num_negatives, negative_kind=negative_kind,
                     mask_kinds=mask_kinds)
  errors = denoising_errors(model, latents_x0, plan, schedule=schedule, layout=layout,
                            variant=variant, prediction=prediction)
  loss = info_nce_from_errors(errors, 0, temperature)
  aux = {
      "cdcd_loss": loss,
      "cdcd_accuracy": jnp.mean(jnp.all(errors[:, :1] < errors[:, 1:], axis=1)),
      "cdcd_error_positive": jnp.mean(errors[:, 0]),
      "cdcd_error_negative": jnp.mean(errors[:, 1:]),
      "cdcd_chance_loss": jnp.asarray(math.log(num_negatives + 1), jnp.float32),
      "cdcd_extra_denoiser_evaluations": jnp.asarray(num_negatives, jnp.float32),
  }
  return loss, aux
