"""CDCD carried to continuous latents: an InfoNCE over denoising errors (SPEC §7).

Zhu et al.'s Discrete Contrastive Diffusion (papers/cdcd.txt) adapted to MoNL: for the generated
elements of a clip, the denoiser is run under the true condition (clean given elements) and N
negative conditions (the clip's given segments shuffled in time, "intra", or other clips' given
elements, "inter"), sharing x_t and ε, and an InfoNCE picks the true one:
    logits_j = -error_j / temperature,  loss = mean_b[-log softmax(logits_b)[0]],
with error_j the mean squared ε-error ("step") or x0-error ("sample") over the generated
elements (`cdcd_loss`; the plan of masks, noise and negatives from `sample_plan`). The total
objective is diffusion_loss + λ·cdcd_loss (paper λ = 5e-5, N = 10: `DEFAULT_WEIGHT`,
`DEFAULT_NUM_NEGATIVES`); it costs N extra denoiser passes over the batch.

Config (`diffusion.*`): cdcd_weight (λ; 0 = off), cdcd_num_negatives (N), cdcd_negatives
(intra | inter | mixed), cdcd_variant (step | sample), cdcd_masks (a2v, v2a, continue),
cdcd_temperature.

The derivation, what is contrasted and why, and each step of one example in detail:
docs/cdcd.md.
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
  condition segments moved by `permutation_bkmn` [B, K, 2, N] (docs/cdcd.md)."""
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
  """All random draws of `cdcd_loss` for this rng (steps 1-3 of docs/cdcd.md)."""
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

  "step": ε-space error; "sample": x0-space error of the predicted x̂0 (docs/cdcd.md, step 5).
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
