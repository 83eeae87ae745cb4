"""The parallel (Picard, sliding window) sampler against the sequential sampler and a numpy
reference of ParaDiGMS' Algorithm 1.

References, independent of avdit/sampling/parallel.py:
  * the sequential sampler (`samplers.sample_latents`, one step after another, same noise): at
    tolerance 0 the parallel result must equal it to float round-off, and with a tolerance τ
    its RMS error stays below τ (σ² <= 1; measured <= 0.63 τ on these denoisers);
  * `_picard_reference`, Algorithm 1 written in float64 numpy with the update in ParaDiGMS' own
    form x_s + Σ (F_i(x_i) - x_i) (and the module's rule that a refilled position cannot have
    converged), on DDIM with the exact (affine) Gaussian denoiser: same iteration count, NFE
    and result.
Denoisers are analytic (no network), so a whole case compiles and runs in about a second.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from avdit import layout as layout_lib
from avdit import tasks as tasks_lib
from avdit.diffusion import schedule as schedule_lib
from avdit.sampling import parallel
from avdit.sampling import samplers

LAYOUT = layout_lib.ClipLayout(num_frames=9, fps=8.0, height=16, width=16, sample_rate=16000,
                               video_channels=3, audio_channels=2, spatial_factor=8,
                               temporal_factor=4, audio_hop=320)
SCHEDULE = schedule_lib.LinearSchedule()
T = SCHEDULE.num_timesteps
N = LAYOUT.num_segments  # 3 segments; video [3, 2, 2, 3] and audio [57, 2] latents per clip
DATA = {"video": (0.5, 0.6), "audio": (-0.8, 1.3)}  # per-modality (μ, σ) of the Gaussian toy
BATCH = 2


def _task_mask(name: str) -> np.ndarray:
  return tasks_lib.parse_task(name, LAYOUT).condition_mask


def _alpha_bar_elements(t_bmn):
  return LAYOUT.expand_to_latents(SCHEDULE.alpha_bar(t_bmn))


def _posterior_eps(x, ab, mu, sigma):
  """E[ε | x_t] for x0 ~ N(μ, σ²) elementwise: affine in x_t."""
  return jnp.sqrt(1.0 - ab) * (x - jnp.sqrt(ab) * mu) / (ab * sigma**2 + 1.0 - ab)


def smooth_apply(params, x, t_bmn, self_cond):
  """A smooth nonlinear denoiser: the Gaussian posterior ε plus a clip-wide coupling (so the
  condition matters to generated elements) and a self-conditioning term (so the carried x̂0
  matters), both switched off at t = 0 by their √(1-ᾱ) factor."""
  del params
  ab = _alpha_bar_elements(t_bmn)
  clip_mean = sum(jnp.mean(v.reshape(v.shape[0], -1), axis=1) for v in x.values())
  out = {}
  for k, v in x.items():
    mixing = jnp.tanh(clip_mean).reshape((-1,) + (1,) * (v.ndim - 1))
    eps = _posterior_eps(v, ab[k], *DATA[k]) + 0.05 * jnp.sqrt(1.0 - ab[k]) * mixing
    if self_cond is not None:
      eps = eps + 0.05 * jnp.sqrt(1.0 - ab[k]) * jnp.tanh(self_cond[k])
    out[k] = eps
  return out


def gaussian_apply(params, x, t_bmn, self_cond):
  """The exact ε-predictor of i.i.d. N(μ, σ²) data: DDIM is then affine per element."""
  del params, self_cond
  ab = _alpha_bar_elements(t_bmn)
  return {k: _posterior_eps(v, ab[k], *DATA[k]) for k, v in x.items()}


def _random_condition(batch, seed=0):
  rng = np.random.default_rng(seed)
  return {k: jnp.asarray(rng.standard_normal(s), jnp.float32)
          for k, s in LAYOUT.latent_shapes(batch).items()}


def _condition_elements(mask, batch):
  return {k: np.broadcast_to(np.asarray(v), LAYOUT.latent_shapes(batch)[k])
          for k, v in samplers._element_mask(mask, LAYOUT).items()}


# --- parallel == sequential for every task, sampler and conditioning method ------------------
# (task, sampler, method, guidance weight, window, extra SamplerSpec fields). The default run
# covers every task, every sampler, every method, CFG with two samplers (one with a partial
# guidance mask), windows 1 (the sequential loop), 1 < W < K, W = K and W > K, and no
# self-conditioning; the slow run adds the other pairings and the full product.
NUM_STEPS = 12
CASES = [
    ("joint", "ddim", "monl", 0.0, 24, {"num_steps": 16}),
    ("a2v", "ddpm", "monl", 1.5, 4, {}),
    ("v2a", "dpmpp_2m", "reconstruction", 0.0, 5, {}),
    ("av_continue", "ddim", "replacement", 0.0, 1, {"self_condition": False}),
    ("av_continue_2s", "dpmpp_2m", "monl", 2.0, 12, {"partial_guidance": True}),
    ("av_inpaint", "ddpm", "replacement", 0.0, 3, {}),
]
SLOW_CASES = [
    ("av_inpaint", "ddim", "reconstruction", 0.0, 3, {"eta": 0.0}),
    ("a2v", "dpmpp_2m", "replacement", 0.0, 1, {"prediction": "v"}),
    ("v2a", "ddpm", "reconstruction", 0.0, 6, {}),
    ("av_continue", "ddim", "monl", 1.0, 1, {}),
    ("av_continue_2s", "ddpm", "monl", 1.5, 16, {}),
    ("joint", "dpmpp_2m", "monl", 0.0, 20, {"num_steps": 20}),
]
TOLERANCE = parallel.DEFAULT_TOLERANCE


def _check_case(task, sampler, method, weight, window, extra):
  extra = dict(extra)
  num_steps = extra.pop("num_steps", NUM_STEPS)
  mask = _task_mask(task)
  uncond = None
  if extra.pop("partial_guidance", False):
    uncond = mask.copy()
    uncond[layout_lib.VIDEO] = False  # noise only the audio condition (Fig. 11c)
  spec = samplers.SamplerSpec(sampler=sampler, num_steps=num_steps, method=method,
                              guidance_weight=weight, **extra)
  cond = _random_condition(BATCH, seed=1)
  rng = jax.random.key(2)
  kwargs = dict(schedule=SCHEDULE, layout=LAYOUT, spec=spec, guidance_uncond_mask=uncond)
  sequential = samplers.sample_latents(smooth_apply, None, cond, mask, rng, **kwargs)
  run = parallel.compiled_parallel_sampler(smooth_apply, mask, schedule=SCHEDULE, layout=LAYOUT,
                                           spec=spec, window=window,
                                           guidance_uncond_mask=uncond)
  exact, exact_stats = run(None, cond, rng, None, jnp.float32(0.0))
  loose, loose_stats = run(None, cond, rng, None, jnp.float32(TOLERANCE))
  elem = _condition_elements(mask, BATCH)
  diffs = []
  for name in DATA:
    seq = np.asarray(sequential[name], np.float64)
    gen = ~elem[name]
    for out in (exact, loose):
      got = np.asarray(out[name])
      assert got.dtype == np.float32 and got.shape == seq.shape
      assert np.all(np.isfinite(got))
      np.testing.assert_array_equal(got[elem[name]].view(np.uint32),
                                    np.asarray(cond[name])[elem[name]].view(np.uint32))
    # Tolerance 0: the sequential result up to float round-off of the batched evaluation.
    np.testing.assert_allclose(exact[name], seq, rtol=0, atol=2e-5)
    diffs.append(np.asarray(loose[name], np.float64)[gen] - seq[gen])
  # Tolerance τ: within the documented bound (RMS over generated elements <= τ; σ² <= 1).
  diff = np.concatenate(diffs)
  assert np.sqrt(np.mean(diff**2)) <= TOLERANCE, np.sqrt(np.mean(diff**2))
  assert np.max(np.abs(diff)) <= 4 * TOLERANCE, np.max(np.abs(diff))
  width = min(window, num_steps)
  for stats in (exact_stats, loose_stats):
    iterations, nfe = int(stats["iterations"]), int(stats["nfe"])
    # A window finalizes at least one and at most W positions per iteration.
    assert -(-num_steps // width) <= iterations <= num_steps
    assert num_steps <= nfe <= iterations * width
    assert int(stats["padded_nfe"]) == iterations * width
  if window == 1:
    # One step per iteration: the sequential loop, bit for bit (same arithmetic per step) except
    # the reconstruction gradient, which XLA compiles for the folded rows' shapes.
    for stats in (exact_stats, loose_stats):
      assert int(stats["iterations"]) == num_steps and int(stats["nfe"]) == num_steps
    for name in DATA:
      if method == "reconstruction":
        np.testing.assert_allclose(loose[name], sequential[name], rtol=0, atol=1e-6)
      else:
        np.testing.assert_array_equal(np.asarray(loose[name]), np.asarray(sequential[name]))
  else:
    # Tolerance 0 finalizes one position per iteration (a generic trajectory never repeats a
    # value bit for bit before it is final); a tolerance saves iterations.
    assert int(exact_stats["iterations"]) == num_steps
    assert int(loose_stats["iterations"]) < num_steps, loose_stats
    if window >= num_steps and sampler != "ddpm":
      # The deterministic samplers with the whole trajectory in the window save a good part of
      # the sequential steps (measured: DDIM 7 of 16, DPM-Solver++ with CFG 8 of 12).
      assert int(loose_stats["iterations"]) <= 0.75 * num_steps, loose_stats


@pytest.mark.parametrize("task,sampler,method,weight,window,extra", CASES)
def test_parallel_matches_sequential(task, sampler, method, weight, window, extra):
  _check_case(task, sampler, method, weight, window, extra)


@pytest.mark.slow
@pytest.mark.parametrize("task,sampler,method,weight,window,extra", SLOW_CASES)
def test_parallel_matches_sequential_more_cases(task, sampler, method, weight, window, extra):
  _check_case(task, sampler, method, weight, window, extra)


@pytest.mark.slow
@pytest.mark.parametrize("task", sorted(tasks_lib.NAMED_TASKS))
@pytest.mark.parametrize("sampler", samplers.SAMPLERS)
@pytest.mark.parametrize("method,weight", [("monl", 0.0), ("monl", 1.5), ("replacement", 0.0),
                                           ("reconstruction", 0.0)])
def test_parallel_matches_sequential_all_combinations(task, sampler, method, weight):
  _check_case(task, sampler, method, weight, 5, {})


# --- Algorithm 1 in numpy ---------------------------------------------------------------------
def _ddim_maps(num_steps, mu, sigma):
  """Step j of DDIM (η = 0) with the exact Gaussian denoiser, x -> a_j x + b_j, float64."""
  ab = SCHEDULE.alpha_bar_table
  ts = [int(round(T * k / num_steps)) for k in range(num_steps, -1, -1)]
  maps = []
  for j in range(num_steps):
    a_t, a_s = ab[ts[j]], ab[ts[j + 1]]
    g = np.sqrt(1 - a_t) / (a_t * sigma**2 + 1 - a_t)  # ε̂ = g (x - √ᾱ_t μ)
    eps = lambda x, g=g, a_t=a_t: g * (x - np.sqrt(a_t) * mu)
    maps.append(lambda x, eps=eps, a_t=a_t, a_s=a_s: (
        np.sqrt(a_s) * (x - np.sqrt(1 - a_t) * eps(x)) / np.sqrt(a_t)
        + np.sqrt(1 - a_s) * eps(x)))
  # σ_j²: the DDPM posterior variance of the step leaving t_j; none after t = 0.
  variance = [(1 - ab[ts[j + 1]]) / (1 - ab[ts[j]]) * (1 - ab[ts[j]] / ab[ts[j + 1]])
              for j in range(num_steps)] + [0.0]
  return maps, variance


def _picard_reference(maps, variance, x_init, window, tolerance):
  """ParaDiGMS Algorithm 1 (sliding window, refill with the last iterate), float64, with the
  module's one change: a position whose previous value was a refill cannot have converged.

  x_init: [B, D] (generated elements). Returns (x_K, iterations, nfe, margin) where margin is
  the smallest |log(error / threshold)| of a convergence decision (how far from flipping).
  """
  num_steps = len(maps)
  window = min(window, num_steps)
  buffer = [x_init.copy() for _ in range(window + 1)]
  evaluated = [True] + [False] * window  # x_T is given; the rest are refills
  start = iterations = nfe = 0
  margin = np.inf
  while start < num_steps:
    width = min(window, num_steps - start)
    drifts = [maps[start + i](buffer[i]) - buffer[i] for i in range(width)]
    new = [buffer[0]] + [buffer[0] + np.sum(drifts[:i + 1], axis=0) for i in range(width)]
    first_open = width
    for i in range(1, width + 1):
      error = np.max(np.mean((new[i] - buffer[i])**2, axis=1))
      threshold = tolerance**2 * variance[start + i]
      if threshold > 0 and evaluated[i]:
        margin = min(margin, abs(np.log(error / threshold)))
      if not (evaluated[i] and error <= threshold):
        first_open = i - 1
        break
    advance = min(first_open + 1, width)
    new = new + [new[-1]] * (window + 1 - len(new))
    evaluated = [True] * (width + 1) + evaluated[width + 1:]
    buffer = [new[min(p + advance, window)] for p in range(window + 1)]
    evaluated = [p + advance <= window and evaluated[p + advance] for p in range(window + 1)]
    start += advance
    iterations += 1
    nfe += width
  return buffer[0], iterations, nfe, margin


@pytest.mark.parametrize("window", [3, 8])
def test_against_numpy_algorithm_one(window):
  """v2a with DDIM and the exact Gaussian denoiser (affine steps): the generated audio, the
  iteration count and the NFE equal the numpy reference's."""
  num_steps, tolerance = 10, 0.1
  mask = _task_mask("v2a")
  cond = _random_condition(BATCH, seed=5)
  rng = np.random.default_rng(6)
  x_init = {k: rng.standard_normal(s).astype(np.float32)
            for k, s in LAYOUT.latent_shapes(BATCH).items()}
  spec = samplers.SamplerSpec(sampler="ddim", num_steps=num_steps, self_condition=False)
  out, stats = parallel.sample_latents_parallel(
      gaussian_apply, None, cond, mask, jax.random.key(0), schedule=SCHEDULE, layout=LAYOUT,
      spec=spec, initial_noise=x_init,
      parallel=parallel.ParallelSpec(parallel_window=window, parallel_tolerance=tolerance))
  maps, variance = _ddim_maps(num_steps, *DATA["audio"])
  audio_init = x_init["audio"].reshape(BATCH, -1).astype(np.float64)
  expected, iterations, nfe, margin = _picard_reference(maps, variance, audio_init, window,
                                                        tolerance)
  assert margin > 0.01, "a convergence decision is too close to call in float32"
  assert (int(stats["iterations"]), int(stats["nfe"])) == (iterations, nfe)
  assert iterations < num_steps
  np.testing.assert_allclose(np.asarray(out["audio"]).reshape(BATCH, -1), expected,
                             rtol=1e-4, atol=1e-5)
  np.testing.assert_array_equal(out["video"], cond["video"])
  # And the reference with tolerance 0 is the plain K-step DDIM recursion.
  sequential = audio_init
  for step in maps:
    sequential = step(sequential)
  exact, iterations, _, _ = _picard_reference(maps, variance, audio_init, window, 0.0)
  np.testing.assert_allclose(exact, sequential, rtol=1e-10, atol=1e-10)
  assert iterations == num_steps


# --- batching, tracing, caching --------------------------------------------------------------
def test_window_is_one_batched_network_call():
  """Each Picard iteration calls the network once on W·B rows (2·W·B with CFG), example-major:
  row b·W + w of the first iteration is example b at step w's timestep."""
  traced_batches, first_t = [], []

  def recording_apply(params, x, t_bmn, self_cond):
    traced_batches.append((x["video"].shape[0], x["audio"].shape[0], t_bmn.shape[0],
                           None if self_cond is None else self_cond["audio"].shape[0]))

    def record(t):
      if not first_t:
        first_t.append(np.asarray(t))

    jax.debug.callback(record, t_bmn)
    return smooth_apply(params, x, t_bmn, self_cond)

  num_steps, window = 6, 4
  mask = _task_mask("av_continue")
  cond = _random_condition(BATCH, seed=7)
  kwargs = dict(schedule=SCHEDULE, layout=LAYOUT)
  # Without CFG: W·B rows (tracing is enough to see the shapes).
  spec = samplers.SamplerSpec(sampler="ddim", num_steps=num_steps)
  parallel.compiled_parallel_sampler(recording_apply, mask, spec=spec, window=window,
                                     **kwargs).lower(None, cond, jax.random.key(8), None, 0.1)
  assert traced_batches == [(window * BATCH,) * 4], traced_batches
  # With CFG: 2·W·B rows, conditional pass first; run it to see the rows' timesteps.
  traced_batches.clear()
  spec = samplers.SamplerSpec(sampler="ddim", num_steps=num_steps, guidance_weight=1.0)
  out, _ = parallel.sample_latents_parallel(
      recording_apply, None, cond, mask, jax.random.key(8), spec=spec,
      parallel=parallel.ParallelSpec(parallel_window=window), **kwargs)
  jax.block_until_ready(out)
  assert traced_batches == [(2 * window * BATCH,) * 4], traced_batches
  ts = samplers.timestep_sequence(T, num_steps)
  t_rows = first_t[0].reshape(2, BATCH, window, 2, N)  # (pass, example, window slot, M, N)
  for w in range(window):
    # Generated elements at step w's timestep in both passes; conditioning elements clean
    # (t = 0) in the conditional pass and pure noise (t = T) in the unconditional one.
    np.testing.assert_array_equal(t_rows[:, :, w][:, :, ~mask], ts[w])
    np.testing.assert_array_equal(t_rows[0, :, w][:, mask], 0)
    np.testing.assert_array_equal(t_rows[1, :, w][:, mask], T)

  # A second call with other inputs and another tolerance reuses the compiled sampler.
  count = len(traced_batches)
  again, _ = parallel.sample_latents_parallel(
      recording_apply, None, _random_condition(BATCH, seed=9), mask, jax.random.key(9),
      spec=spec, parallel=parallel.ParallelSpec(parallel_window=window, parallel_tolerance=0.2),
      **kwargs)
  jax.block_until_ready(again)
  assert len(traced_batches) == count, "same statics retraced"


# --- configuration and errors ----------------------------------------------------------------
def test_parallel_spec_and_config():
  assert parallel.ParallelSpec() == parallel.ParallelSpec(parallel.DEFAULT_WINDOW,
                                                          parallel.DEFAULT_TOLERANCE)
  spec = parallel.ParallelSpec.from_config({"parallel_window": 8, "parallel_tolerance": 0.01,
                                            "num_steps": 50})
  assert spec == parallel.ParallelSpec(parallel_window=8, parallel_tolerance=0.01)
  assert parallel.ParallelSpec.from_config({}) == parallel.ParallelSpec()
  for kwargs, match in ((dict(parallel_window=0), "parallel_window"),
                        (dict(parallel_window=2.5), "parallel_window"),
                        (dict(parallel_tolerance=-1e-3), "parallel_tolerance"),
                        (dict(parallel_tolerance=float("nan")), "parallel_tolerance")):
    with pytest.raises(ValueError, match=match):
      parallel.ParallelSpec(**kwargs)
  with pytest.raises(ValueError, match="sequential"):
    parallel.compiled_parallel_sampler(
        lambda *a: None, np.zeros((2, 3), bool), schedule=SCHEDULE, layout=LAYOUT,
        spec=samplers.SamplerSpec(num_steps=4, resample=2), window=2)


def test_convergence_variance_is_the_posterior_variance():
  spec = samplers.SamplerSpec(sampler="ddim", num_steps=4)
  variance = parallel.convergence_variance(SCHEDULE, spec)
  ab = SCHEDULE.alpha_bar_table
  expected = [(1 - ab[s]) / (1 - ab[t]) * (1 - ab[t] / ab[s])
              for t, s in ((1000, 750), (750, 500), (500, 250), (250, 0))] + [0.0]
  np.testing.assert_allclose(variance, expected, rtol=1e-12)
  # The DDPM sampler's own noise is exactly this variance (c_z² of its steps).
  table = samplers.step_coefficients(SCHEDULE, samplers.SamplerSpec(sampler="ddpm", num_steps=4))
  np.testing.assert_allclose(variance[:-1], table["c_z"]**2, rtol=1e-12)


def test_bad_inputs():
  spec = samplers.SamplerSpec(num_steps=4)
  call = lambda mask, **kw: parallel.sample_latents_parallel(
      smooth_apply, None, kw.pop("cond", _random_condition(1)), mask, jax.random.key(0),
      schedule=SCHEDULE, layout=LAYOUT, spec=kw.pop("spec", spec),
      parallel=parallel.ParallelSpec(), **kw)
  with pytest.raises(ValueError, match="nothing to generate"):
    call(np.ones((2, N), bool))
  with pytest.raises(ValueError, match="shape"):
    call(np.zeros((2, N + 1), bool))
  with pytest.raises(ValueError, match="subset"):
    call(_task_mask("v2a"), guidance_uncond_mask=_task_mask("a2v"))
  with pytest.raises(ValueError, match="num_steps"):
    call(_task_mask("v2a"), spec=samplers.SamplerSpec(num_steps=T + 1))
  with pytest.raises(ValueError, match="shape"):
    call(_task_mask("v2a"), cond={"video": jnp.zeros((1, 2, 2, 2, 3)),
                                  "audio": jnp.zeros((1, 57, 2))})
  with pytest.raises(ValueError, match="parallel_window"):
    parallel.compiled_parallel_sampler(smooth_apply, _task_mask("v2a"), schedule=SCHEDULE,
                                       layout=LAYOUT, spec=spec, window=0)


@pytest.mark.slow  # compiles both samplers around the tiny AVDiT: ~13 s
def test_config_switches_generate_to_the_parallel_sampler(tiny_config):
  """`sample.parallel` routes sampling (generate, the eval suite) through Picard iteration."""
  from avdit.sampling import generate
  from avdit.training import state as state_lib
  config = tiny_config
  layout = layout_lib.layout_from_config(config)
  graphdef, state = state_lib.create_train_state(generate.inference_config(config), layout)
  apply_fn = generate.make_apply_fn(graphdef)
  latents_rng = jax.random.key(5)
  condition = {k: jax.random.normal(jax.random.fold_in(latents_rng, i), s)
               for i, (k, s) in enumerate(layout.latent_shapes(2).items())}
  task = tasks_lib.parse_task("av_inpaint", layout)
  spec = samplers.SamplerSpec.from_config(config.sample, config.diffusion, config.model)
  schedule = schedule_lib.from_config(config.diffusion)
  kwargs = dict(schedule=schedule, layout=layout, spec=spec)
  sequential, no_stats = generate.sample_task_latents(config, apply_fn, state.params, condition,
                                                      task, jax.random.key(1), **kwargs)
  assert no_stats == {}
  with config.unlocked():
    config.sample.update(parallel=True, parallel_window=2, parallel_tolerance=0.0)
  picard, stats = generate.sample_task_latents(config, apply_fn, state.params, condition, task,
                                               jax.random.key(1), **kwargs)
  assert int(stats["iterations"]) == spec.num_steps  # tolerance 0: no early acceptance
  for k in sequential:
    np.testing.assert_allclose(picard[k], sequential[k], atol=2e-5)
