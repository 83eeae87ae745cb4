"""Mixture of Noise Levels: timestep vectors per training example (SPEC §4, Algorithm 1).

t_ref ~ U{1..T}^(M×N) per example, then per strategy:
  vanilla  t[m, n] = t_ref[0, 0]   (one level for the whole clip: joint training)
  pm       t[m, n] = t_ref[m, 0]   (per modality)
  pt       t[m, n] = t_ref[0, n]   (per time-segment, shared by the modalities)
  ptm      t[m, n] = t_ref[m, n]   (per time-segment and modality)
`monl` draws one of the four uniformly per example; any weighted mixture can be configured.
The vectors are [B, M, N]; `ClipLayout.expand_to_latents` carries them to every latent element
(audio latents through `segment_of_audio`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from avdit import layout as layout_lib

STRATEGIES = ("vanilla", "pm", "pt", "ptm")


def parse_weights(text: str, names: tuple[str, ...], what: str) -> np.ndarray:
  """Normalized weights over `names` from "a,b" (uniform over those listed) or "a:2,b:1"."""
  weights = np.zeros(len(names))
  for part in filter(None, (p.strip() for p in text.replace("/", ",").split(","))):
    name, _, weight = part.partition(":")
    if name not in names:
      raise ValueError(f"unknown {what} {name!r} in {text!r}; use {names}")
    value = float(weight) if weight else 1.0
    if value < 0:
      raise ValueError(f"negative weight for {name!r} in {text!r}")
    weights[names.index(name)] += value
  if weights.sum() <= 0:
    raise ValueError(f"{what} weights {text!r} have no positive weight")
  return weights / weights.sum()


def parse_mixture(text: str) -> np.ndarray:
  """Weights [4] over STRATEGIES (normalized) from "monl", "pt", "pt,pm,ptm" or "pt:2,pm:1"."""
  text = text.strip().lower()
  if text == "monl":
    text = ",".join(STRATEGIES)
  return parse_weights(text, STRATEGIES, "noise strategy (or monl)")


def timesteps_for_strategies(t_ref_bmn: jnp.ndarray, strategy_b: jnp.ndarray,
                             t_shared_b1n: jnp.ndarray | None = None) -> jnp.ndarray:
  """Applies strategy `strategy_b[i]` (index into STRATEGIES) to example i's t_ref [M, N]; the
  strategies that share a level across modalities (vanilla, pt) take it from `t_shared_b1n`
  (default: the first modality's row of t_ref)."""
  shape = t_ref_bmn.shape
  shared = t_ref_bmn[:, :1, :] if t_shared_b1n is None else t_shared_b1n
  candidates = jnp.stack([
      jnp.broadcast_to(shared[:, :, :1], shape),  # vanilla
      jnp.broadcast_to(t_ref_bmn[:, :, :1], shape),  # pm
      jnp.broadcast_to(shared, shape),  # pt
      t_ref_bmn,  # ptm
  ])  # [4, B, M, N]
  return jnp.take_along_axis(candidates, strategy_b[None, :, None, None], axis=0)[0]


def draw_timesteps(rng, shape: tuple[int, ...], num_timesteps: int, log_probs=None) -> jnp.ndarray:
  """int32 timesteps in 1..T: uniform (log_probs None) or from log-probabilities [T] of 1..T
  (schedule.timestep_log_probs)."""
  if log_probs is None:
    return jax.random.randint(rng, shape, 1, num_timesteps + 1)
  return jax.random.categorical(rng, jnp.asarray(log_probs, jnp.float32), shape=shape) + 1


def shared_log_probs(log_probs):
  """[T] log-probabilities of the levels modalities share: per-modality ones [M, T] mixed
  evenly; None or [T] as given."""
  if log_probs is None or np.ndim(log_probs) == 1:
    return log_probs
  return jax.nn.logsumexp(jnp.asarray(log_probs, jnp.float32), axis=0) - np.log(len(log_probs))


def sample_timestep_vectors(rng, batch: int, num_modalities: int, num_segments: int,
                            mixture_weights: np.ndarray, num_timesteps: int,
                            timestep_log_probs=None):
  """(timestep_vector int32 [B, M, N] in 1..T, strategy int32 [B]).

  The reference levels are drawn by `draw_timesteps`: uniform (None), from one density [T], or
  from each modality's own [M, T] (loss.level_densities), where the levels vanilla and pt share
  across modalities come from the modalities' densities mixed evenly (`shared_log_probs`).
  """
  ref_rng, strategy_rng = jax.random.split(rng)
  shape = (batch, num_modalities, num_segments)
  t_shared = None
  if timestep_log_probs is not None and np.ndim(timestep_log_probs) == 2:
    modality_rngs = jax.random.split(ref_rng, num_modalities + 1)
    t_ref = jnp.stack([draw_timesteps(modality_rngs[m], (batch, num_segments), num_timesteps,
                                      timestep_log_probs[m]) for m in range(num_modalities)],
                      axis=1)
    t_shared = draw_timesteps(modality_rngs[-1], (batch, 1, num_segments), num_timesteps,
                              shared_log_probs(timestep_log_probs))
  else:
    t_ref = draw_timesteps(ref_rng, shape, num_timesteps, timestep_log_probs)
  strategy = jax.random.choice(strategy_rng, len(STRATEGIES), (batch,),
                               p=jnp.asarray(mixture_weights, jnp.float32))
  return (timesteps_for_strategies(t_ref, strategy, t_shared).astype(jnp.int32),
          strategy.astype(jnp.int32))


# --- clean conditioning (optional, `diffusion.condition_rate`) ------------------------------------
# MoNL gives the model every task's noise pattern only approximately: the other modality is nearly
# clean (t < 0.1 T) while the generated one is noisy in ~7% of the examples, so the cross-modal
# signal that a2v and v2a need is rare. With `rate` > 0, that fraction of examples gets the
# sampler's exact conditioning instead: the given elements at t = 0 (x_t = x_0), left out of the
# loss, as per-token-timestep models train their conditions (LTX-2, JavisDiT). The other
# elements keep their MoNL levels. "inpaint" gives both ends of the clip, so the generated middle
# must also meet a given future (a continuation is only given its past).
CONDITION_TASKS = ("a2v", "v2a", "continue", "inpaint")
DEFAULT_CONDITION_WEIGHTS = (1.0, 1.0, 1.0, 0.0)  # "a2v,v2a,continue"


def parse_condition_tasks(text: str) -> np.ndarray:
  """Weights [4] over CONDITION_TASKS (normalized) from "a2v,v2a,continue" or "v2a:3,inpaint"."""
  return parse_weights(text.strip().lower(), CONDITION_TASKS, "condition task")


def check_condition_weights(num_segments: int, task_weights) -> None:
  """ValueError where `task_weights` [4] ask for a task the clip has no pattern for (inpainting
  needs >= 3 segments); run before training, as apply_conditioning may be traced."""
  _, task_of_pattern = condition_patterns(num_segments)
  inpaint = CONDITION_TASKS.index("inpaint")
  if np.asarray(task_weights)[inpaint] > 0 and not np.any(task_of_pattern == inpaint):
    raise ValueError(f"inpainting needs >= 3 segments (a given start, a generated middle and a "
                     f"given end), the clip has {num_segments}")


def condition_patterns(num_segments: int) -> tuple[np.ndarray, np.ndarray]:
  """(given bool [K, M, N], the CONDITION_TASKS index of each pattern [K]): audio given (a2v),
  video given (v2a), the first k of N segments of both given (continuation, k = 1..N-1), and the
  first k and last j of both given (inpainting, k, j >= 1, k + j <= N-1)."""
  masks, tasks = [], []
  a2v = np.zeros((2, num_segments), bool)
  a2v[layout_lib.AUDIO] = True
  masks += [a2v, a2v[::-1].copy()]  # a2v, then v2a (video given)
  tasks += [CONDITION_TASKS.index("a2v"), CONDITION_TASKS.index("v2a")]
  for k in range(1, num_segments):
    cont = np.zeros((2, num_segments), bool)
    cont[:, :k] = True
    masks.append(cont)
    tasks.append(CONDITION_TASKS.index("continue"))
  # Appended last: without inpainting, the draws of the other tasks are kept.
  for k, j in [(k, j) for k in range(1, num_segments) for j in range(1, num_segments - k)]:
    inpaint = np.zeros((2, num_segments), bool)
    inpaint[:, :k] = inpaint[:, num_segments - j:] = True
    masks.append(inpaint)
    tasks.append(CONDITION_TASKS.index("inpaint"))
  return np.stack(masks), np.asarray(tasks)


def pattern_probabilities(task_weights, task_of_pattern: np.ndarray) -> jnp.ndarray:
  """Each pattern's probability [K]: its task's weight shared evenly by the task's patterns.
  `task_weights` [4] over CONDITION_TASKS (a2v, v2a, continue a third each by default) may be
  traced (a train step that changes them when its late phase starts)."""
  count = np.bincount(task_of_pattern, minlength=len(CONDITION_TASKS))[task_of_pattern]
  weights = jnp.asarray(task_weights, jnp.float32)[task_of_pattern] / count
  return weights / jnp.sum(weights)


def apply_conditioning(rng, timestep_vector_bmn: jnp.ndarray, rate: float,
                       shared_level: bool = False, num_timesteps: int = 1000,
                       task_weights=DEFAULT_CONDITION_WEIGHTS, timestep_log_probs=None):
  """(timestep vector with the given elements at 0, given bool [B, M, N]).

  `task_weights` over CONDITION_TASKS (pattern_probabilities; may be traced). `shared_level`: the
  generated elements of a conditioned example share one timestep (`draw_timesteps` from
  1..`num_timesteps`, uniform unless `timestep_log_probs`, `shared_log_probs` of per-modality
  ones), as the task's sampler runs them;
  otherwise they keep their MoNL levels, and under per-segment levels a nearly clean neighbouring
  segment of the same modality can answer what the given modality would.
  """
  batch, _, num_segments = timestep_vector_bmn.shape
  masks, task_of_pattern = condition_patterns(num_segments)
  weights = pattern_probabilities(task_weights, task_of_pattern)
  use_rng, kind_rng = jax.random.split(rng)  # as before shared_level: same draws for old runs
  level_rng = jax.random.fold_in(rng, 1)
  use = jax.random.bernoulli(use_rng, rate, (batch,))
  kind = jax.random.choice(kind_rng, len(masks), (batch,), p=weights)
  given = jnp.asarray(masks)[kind] & use[:, None, None]
  if shared_level:
    level_b11 = draw_timesteps(level_rng, (batch, 1, 1), num_timesteps,
                               shared_log_probs(timestep_log_probs))
    timestep_vector_bmn = jnp.where(use[:, None, None],
                                    level_b11.astype(timestep_vector_bmn.dtype),
                                    timestep_vector_bmn)
  return jnp.where(given, 0, timestep_vector_bmn), given
