"""Parallel sampling by Picard iteration with a sliding window (ParaDiGMS; SPEC §7).

The sequential samplers of `avdit.sampling.samplers` run K steps one after another,
    (x_{k+1}, c_{k+1}) = F_k(x_k, c_k),   k = 0 .. K-1,
where x_0 = x_T, F_k is `SamplerStep` (the same code as the sequential loop: task masks,
conditioning method, classifier-free guidance, self-conditioning, step k's noise drawn from
fold_in(loop_key, k)) and the carry c_k = (x̂0 of step k-1, CFG's unconditional x̂0 of step k-1)
feeds self-conditioning and dpmpp_2m's x̂0_prev. Picard iteration (Shih et al. 2023,
"Parallel Sampling of Diffusion Models", Alg. 1) instead guesses the whole trajectory and
refines every step of it at once; a window of W steps keeps memory at O(W) latents:

  window   positions s .. s+W of the trajectory with iterates (x_j, c_j); position s is final.
  evaluate F_j(x_j, c_j) for the W steps j = s .. s+W-1 as ONE network call: the window axis
           is folded into the batch axis (example-major, so an example-sharded batch stays
           sharded: rows [B, W] -> [B·W]; with CFG the cond/uncond doubling is in the batch too,
           [2B·W] rows), then the step's elementwise update runs vmapped over the window.
  update   x^{new}_{j+1} = x_s + Σ_{i=s}^{j} (F_i(x_i) - x_i), computed in the equal residual
           form x^{new}_{j+1} = F_j(x_j) + Σ_{i=s}^{j-1} (F_i(x_i) - x_{i+1}): the first step of
           the window is then exactly F_s(x_s), and once a prefix of the window is a fixed point
           its residuals are exactly 0, so a converged trajectory is bit-for-bit the sequential
           one (x_s + (F - x_s) would round). The carry is taken from the evaluation itself,
           c^{new}_{j+1} = (x̂0, x̂0_uncond) of step j at the current iterate (x_j, c_j).
  converge error_j = max over the batch of the mean over an example's generated elements of
           (x^{new}_j - x^{old}_j)² (conditioning elements never change); position j has
           converged when error_j <= τ² σ_j² with σ_j² = β̃ = (1-ᾱ_{t_{j+1}})/(1-ᾱ_{t_j})
           (1-ᾱ_{t_j}/ᾱ_{t_{j+1}}), the DDPM posterior variance of the step leaving t_j
           (ParaDiGMS' scale: the noise an ancestral step adds there). The same σ² serves every
           sampler (DDPM's own noise, DDIM whatever η, DPM-Solver++), so τ means the same for
           all. σ² = 0 at the last two positions (no noise into t = 0): those become final
           only through the slide below, once their predecessors have converged.
           One change to ParaDiGMS: a position whose old value is a refill (never evaluated)
           has not converged, whatever its error. Early steps barely move x, so a first
           evaluation can land within τ σ of the refill by chance and be taken as final (seen:
           RMS error 1.6 τ against the sequential sampler at τ = 0.01 without this rule).
           The carry is not part of the error, as in ParaDiGMS: what matters is its effect on
           x, which the next position's error sees. (Measuring it too, e.g. x̂0 errors in x_t
           units √ᾱ |Δx̂0|, stalls the slide on carries that barely move x, such as CFG's
           unconditional x̂0 on noised elements, whose chain converges one position per
           iteration.) So with τ = 0 a position whose x is bit-for-bit unchanged is final even
           if a carry that left every element of x unchanged still moved.
  slide    with d the first position (from s+1) that has not converged, every position before
           it is final and so is d itself (computed from a converged predecessor): the window
           moves to start at d (at least one step, at most W), and new positions are filled
           with the last iterate. The loop ends when the window start reaches K.
With τ = 0 a position counts as converged only when it is bit-for-bit unchanged, and the
result equals the sequential sampler's to float round-off (XLA compiles the batched evaluation
for other shapes; W = 1 is bit-for-bit the sequential loop on XLA:CPU, except the
reconstruction method's gradient: ~1e-8); this takes K iterations for W > 1 (each finalizes one
more position of a generic trajectory) and for W = 1 (one step per iteration). With τ > 0 the
stopping rule bounds the change between iterates, not the distance to the sequential
trajectory, so there is no rigorous bound: on the tests' smooth analytic denoisers (K = 12-100,
W = 5-100, τ = 0.01-0.2) the RMS error against the sequential sampler over generated elements
was <= 0.63 τ, and the tests check RMS <= τ and max <= 4 τ (latents of unit variance). At the
default τ = 0.05, W = 16: DDIM K = 50 took 11 iterations (RMS error 0.023), DPM-Solver++ with
CFG K = 50 took 19 (0.011), DDPM K = 100 took 32 (3e-4); DDPM's noise makes each step far from
the identity, so Picard needs more of them. τ = 0.1 saves a few more iterations (8, 14, 26).

Statistics: `iterations` (parallel Picard iterations, the sequential sampler's being K),
`nfe` (denoiser evaluations: the steps inside the trajectory evaluated per iteration,
Σ min(W, K - s), ParaDiGMS' count; a CFG cond/uncond pair counts once, as the sequential
sampler's K does, so the network runs 2 nfe passes with CFG) and `padded_nfe` (iterations × W:
what the static-shape batched calls computed, including window slots past the last step).

Everything runs in one jitted function, a `lax.while_loop` over Picard iterations with no host
synchronization; it is cached per (apply_fn, SamplerSpec, window, masks, schedule, layout) like
the sequential sampler, and the tolerance is a traced argument (sweeping it does not retrace).
Step noise is drawn per iteration for the window's steps with the sequential sampler's
fold_in(loop_key, k) (the same values), rather than pre-drawn for all K steps, which would cost
K latents of memory.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from avdit import layout as layout_lib
from avdit.diffusion import schedule as schedule_lib
from avdit.sampling import samplers

Array = jax.Array
Latents = dict[str, Array]

DEFAULT_WINDOW = 16
DEFAULT_TOLERANCE = 0.05


@dataclasses.dataclass(frozen=True)
class ParallelSpec:
  """Picard sampler settings: window size W (steps evaluated per iteration) and tolerance τ."""

  parallel_window: int = DEFAULT_WINDOW
  parallel_tolerance: float = DEFAULT_TOLERANCE

  def __post_init__(self):
    window = self.parallel_window
    if isinstance(window, bool) or int(window) != window or window < 1:
      raise ValueError(f"parallel_window must be an integer >= 1, got {window!r}")
    if not (np.isfinite(self.parallel_tolerance) and self.parallel_tolerance >= 0):
      raise ValueError(f"parallel_tolerance must be finite and >= 0, got "
                       f"{self.parallel_tolerance!r}")

  @classmethod
  def from_config(cls, sample_config) -> ParallelSpec:
    """From `config.sample.parallel_window` / `parallel_tolerance` (defaults when absent)."""

    def get(name, default):
      if isinstance(sample_config, dict):
        return sample_config.get(name, default)
      return getattr(sample_config, name, default)

    return cls(parallel_window=int(get("parallel_window", DEFAULT_WINDOW)),
               parallel_tolerance=float(get("parallel_tolerance", DEFAULT_TOLERANCE)))


def convergence_variance(schedule: schedule_lib.LinearSchedule, spec: samplers.SamplerSpec
                         ) -> np.ndarray:
  """float64 [K + 1]: σ_j² of trajectory position j (timestep t_j), scaling the tolerance.

  β̃ of the respaced step t_j -> t_{j+1} (the DDPM posterior variance), 0 for j = K.
  """
  ts = samplers.timestep_sequence(schedule.num_timesteps, spec.num_steps)
  table = schedule.alpha_bar_table
  ab_t, ab_s = table[ts[:-1]], table[ts[1:]]
  beta_tilde = (1.0 - ab_s) / (1.0 - ab_t) * (1.0 - ab_t / ab_s)
  return np.concatenate([beta_tilde, [0.0]])


def _fold(rows: dict, window: int) -> dict:
  """Window-stacked rows, leaves [W, R or 1, ...] -> [R·W, ...] (example-major)."""
  num_rows = max(v.shape[1] for v in jax.tree.leaves(rows))

  def fold(v):
    v = jnp.broadcast_to(v, (window, num_rows) + v.shape[2:])
    return jnp.swapaxes(v, 0, 1).reshape((num_rows * window,) + v.shape[2:])

  return jax.tree.map(fold, rows)


def _unfold(outputs: dict, window: int) -> dict:
  """[R·W, ...] -> [W, R, ...], the inverse of `_fold`."""

  def unfold(v):
    v = v.reshape((v.shape[0] // window, window) + v.shape[1:])
    return jnp.swapaxes(v, 0, 1)

  return jax.tree.map(unfold, outputs)


def _build_parallel_sampler(apply_fn: samplers.ApplyFn, spec: samplers.SamplerSpec,
                            window: int, cond_mn: np.ndarray, uncond_mn: np.ndarray,
                            schedule: schedule_lib.LinearSchedule,
                            layout: layout_lib.ClipLayout) -> Callable:
  """The jitted `run(params, condition, rng, initial_noise, tolerance) -> (latents, stats)`."""
  num_steps = spec.num_steps
  window = min(window, num_steps)
  variance = np.asarray(convergence_variance(schedule, spec), np.float32)
  tables = samplers.step_tables(schedule, spec)

  def run(params, condition: Latents, rng: Array, initial_noise: Latents | None,
          tolerance: Array) -> tuple[Latents, dict[str, Array]]:
    step_fn = samplers.SamplerStep(apply_fn, spec, cond_mn, uncond_mn, schedule, layout,
                                   condition)
    x_init, loop_key = step_fn.initial(rng, initial_noise)
    gen_elem = step_fn.gen_elem
    shapes = {k: v.shape[1:] for k, v in step_fn.condition.items()}
    # Generated elements per example (conditioning elements never change).
    num_generated = sum(jnp.sum(jnp.broadcast_to(gen_elem[k][0], shapes[k]), dtype=jnp.float32)
                        for k in shapes)
    threshold_scale = jnp.asarray(tolerance, jnp.float32)**2 * variance
    step_tables = jax.tree.map(jnp.asarray, tables)
    stack = lambda tree: jax.tree.map(
        lambda v: jnp.broadcast_to(v, (window + 1,) + v.shape), tree)
    head = lambda tree: jax.tree.map(lambda v: v[:window], tree)
    tail = lambda tree: jax.tree.map(lambda v: v[1:], tree)
    offsets = jnp.arange(window, dtype=jnp.int32)

    def generated_mean_square(new, old):
      """Mean over an example's generated elements of (new - old)², max over examples: [W]."""
      total = 0.0
      for k in new:
        squared = jnp.where(gen_elem[k], (new[k] - old[k])**2, 0.0)
        total = total + jnp.sum(squared.reshape(squared.shape[:2] + (-1,)), axis=-1)
      return jnp.max(total, axis=1) / num_generated

    def body(state):
      start = state["start"]
      step_index = start + offsets
      active = step_index < num_steps  # [W]: window slots inside the trajectory
      step_index = jnp.minimum(step_index, num_steps - 1)
      steps = jax.tree.map(lambda v: v[step_index], step_tables)
      draws = jax.vmap(lambda index: step_fn.draws(loop_key, index))(steps["index"])
      x, x0_prev, x0_uncond = state["x"], state["x0_prev"], state["x0_uncond"]
      rows, aux = jax.vmap(step_fn.inputs)(head(x), head(x0_prev), head(x0_uncond), steps,
                                           draws)
      outputs = _unfold(step_fn.evaluate(params, _fold(rows, window)), window)
      x_step, x0_hat, x0_hat_uncond = jax.vmap(step_fn.update)(
          outputs, aux, head(x0_prev), head(x0_uncond), steps, draws)

      def slot(v):  # active, broadcast against a window-stacked leaf
        return active.reshape((window,) + (1,) * (v.ndim - 1))

      # Residuals F_j(x_j) - x_{j+1} and their exclusive cumulative sums (the Picard update).
      residual = jax.tree.map(lambda f, old: jnp.where(slot(f), f - old, 0.0), x_step, tail(x))
      correction = jax.tree.map(
          lambda r: jnp.concatenate([jnp.zeros_like(r[:1]), jnp.cumsum(r[:-1], axis=0)]),
          residual)
      x_new = step_fn.keep_condition(jax.tree.map(jnp.add, x_step, correction))
      keep_old = lambda new, old: jax.tree.map(lambda n, o: jnp.where(slot(n), n, o), new, old)
      x_new = keep_old(x_new, tail(x))
      x0_prev_new = keep_old(x0_hat, tail(x0_prev))
      x0_uncond_new = keep_old(x0_hat_uncond, tail(x0_uncond))

      position = jnp.minimum(start + 1 + offsets, num_steps)
      error = generated_mean_square(x_new, tail(x))
      # A change measured against a refilled value (never evaluated) says nothing about
      # convergence: only positions whose old iterate was computed can have converged.
      converged = active & state["computed"][1:] & (error <= threshold_scale[position])
      first_open = jnp.argmax(jnp.concatenate([~converged, jnp.ones((1,), bool)]))
      in_trajectory = jnp.minimum(window, num_steps - start)
      advance = jnp.minimum(first_open + 1, in_trajectory).astype(jnp.int32)
      # Slide: position p of the new window is p + advance of this one, the last one refilling.
      positions = jnp.arange(window + 1)
      shift = jnp.minimum(positions + advance, window)
      gather = lambda first, rest: jax.tree.map(
          lambda f, r: jnp.concatenate([f[:1], r], axis=0)[shift], first, rest)
      computed = jnp.concatenate([jnp.ones((1,), bool), active | state["computed"][1:]])
      return {"start": start + advance,
              "iterations": state["iterations"] + 1,
              "nfe": state["nfe"] + in_trajectory,
              "computed": computed[shift] & (positions + advance <= window),
              "x": gather(x, x_new),
              "x0_prev": gather(x0_prev, x0_prev_new),
              "x0_uncond": gather(x0_uncond, x0_uncond_new)}

    zeros = step_fn.zeros
    state = {"start": jnp.int32(0), "iterations": jnp.int32(0), "nfe": jnp.int32(0),
             "computed": jnp.arange(window + 1) == 0,
             "x": stack(x_init), "x0_prev": stack(zeros), "x0_uncond": stack(zeros)}
    state = jax.lax.while_loop(lambda st: st["start"] < num_steps, body, state)
    latents = step_fn.keep_condition(jax.tree.map(lambda v: v[0], state["x"]))
    stats = {"iterations": state["iterations"], "nfe": state["nfe"],
             "padded_nfe": state["iterations"] * window}
    return latents, stats

  return jax.jit(run)


def check_sampler_spec(spec: samplers.SamplerSpec) -> None:
  """ValueError for what the Picard sampler cannot run: RePaint's resampling."""
  if spec.resample > 1:
    raise ValueError(f"resample={spec.resample} needs the sequential sampler (sample.parallel="
                     "False): a Picard window iterates steps, not a step's repeated passes")


def compiled_parallel_sampler(apply_fn: samplers.ApplyFn, condition_mask: np.ndarray, *,
                              schedule: schedule_lib.LinearSchedule,
                              layout: layout_lib.ClipLayout, spec: samplers.SamplerSpec,
                              window: int, guidance_uncond_mask: np.ndarray | None = None
                              ) -> Callable:
  """The cached jitted `run(params, condition, rng, initial_noise | None, tolerance)` of a task.

  Returns (latents, stats) as `sample_latents_parallel`; the tolerance is traced, so one
  compilation serves every tolerance. A window larger than the step count is the step count.
  """
  ParallelSpec(parallel_window=window)  # validates the window
  check_sampler_spec(spec)
  cond_key, uncond_key = samplers.check_task_masks(condition_mask, guidance_uncond_mask,
                                                   schedule=schedule, layout=layout, spec=spec)
  window = min(int(window), spec.num_steps)
  return samplers.cached_build(
      ("parallel", spec, window, cond_key, uncond_key, schedule, layout), apply_fn,
      lambda: _build_parallel_sampler(apply_fn, spec, window, np.array(cond_key, bool),
                                      np.array(uncond_key, bool), schedule, layout))


def sample_latents_parallel(apply_fn: samplers.ApplyFn, params, condition: dict[str, Array],
                            condition_mask: np.ndarray, rng: Array, *,
                            schedule: schedule_lib.LinearSchedule,
                            layout: layout_lib.ClipLayout, spec: samplers.SamplerSpec,
                            parallel: ParallelSpec,
                            guidance_uncond_mask: np.ndarray | None = None,
                            initial_noise: dict[str, Array] | None = None
                            ) -> tuple[dict[str, Array], dict[str, Array]]:
  """`samplers.sample_latents` by parallel Picard iteration; see the module docstring.

  Arguments are those of `samplers.sample_latents` plus `parallel` (window and tolerance). The
  same rng gives the same x_T and step noise as the sequential sampler, so with tolerance 0 the
  result is the sequential one; conditioning elements are returned exactly as given.

  Returns:
    (float32 latents with the shapes of `condition`, stats {"iterations", "nfe", "padded_nfe"}:
    int32 scalars, see the module docstring).
  """
  run = compiled_parallel_sampler(apply_fn, condition_mask, schedule=schedule, layout=layout,
                                  spec=spec, window=parallel.parallel_window,
                                  guidance_uncond_mask=guidance_uncond_mask)
  samplers.check_latent_inputs(condition, initial_noise, layout)
  return run(params, dict(condition), rng, None if initial_noise is None else dict(initial_noise),
             jnp.float32(parallel.parallel_tolerance))
