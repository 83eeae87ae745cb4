"""Samplers for the audiovisual latent diffusion model, as one jitted loop (SPEC §6).

Every sampler runs as a single `jax.jit`-compiled function whose step loop is a `lax.scan`;
nothing is synchronized with the host between steps. The compiled function is cached per
(apply_fn, SamplerSpec, condition mask, guidance mask, schedule, layout) and jit caches it per
input shape, so calling `sample_latents` again with the same statics does not retrace. One step
is `SamplerStep`, split around its network call; the parallel (Picard) sampler of
avdit.sampling.parallel runs the same step on a window of steps as one batched call.

Timesteps. With K = `num_steps`, the sampler visits the "trailing" sequence
t_k = round(k T / K), k = K, K-1, ..., 1 (t_K = T; K = T visits every timestep) and steps
from t_k to t_{k-1} (t_0 = 0). Respacing follows Nichol & Dhariwal: the sampler only uses
ᾱ at the visited timesteps, e.g. DDPM's β'_k = 1 - ᾱ_{t_k} / ᾱ_{t_{k-1}}.

Update rules, with t = t_k, s = t_{k-1}, x̂0 / ε̂ the (guided) network estimates at x_t:
  ddpm      ancestral step of Algorithm 3/4 on the respaced schedule, posterior variance
            β̃ = (1 - ᾱ_s)/(1 - ᾱ_t) β'  (x_s = μ̃(x_t, x̂0) + sqrt(β̃) z; no noise into t = 0).
  ddim      Song et al. Eq. 12: x_s = sqrt(ᾱ_s) x̂0 + sqrt(1 - ᾱ_s - σ²) ε̂ + σ z with
            σ = η sqrt((1 - ᾱ_s)/(1 - ᾱ_t)) sqrt(1 - ᾱ_t/ᾱ_s)  (η = 1 is DDPM with β̃).
  dpmpp_2m  DPM-Solver++(2M) (Lu et al. 2022, Alg. 2) on the discrete ᾱ: α = sqrt(ᾱ),
            σ = sqrt(1 - ᾱ), λ = log(α/σ), h = λ_s - λ_t,
            x_s = (σ_s/σ_t) x_t + α_s (1 - e^{-h}) D, D = (1 + 1/(2r)) x̂0 - 1/(2r) x̂0_prev,
            r = h_prev / h; D = x̂0 on the first step; the final step (s = 0, λ = ∞) returns x̂0.
All three are one affine update x_s = c_x x_t + c_x0 x̂0 + c_prev x̂0_prev + c_eps ε̂ + c_z z
whose per-step scalar coefficients are tabulated in float64 by `step_coefficients`.

Conditioning methods (`SamplerSpec.method`):
  monl            (a model trained with vector timesteps; papers/avdit_monl.txt §3.3, Alg. 4)
                  the timestep vector is t_k on generated (modality, segment) elements and 0
                  on conditioning ones, which are fed with their clean values at every step.
  replacement     (baseline for a `vanilla` model: MM-Diffusion §3.4 / Ho et al. 2022) every
                  element gets t_k; before each network call the conditioning elements of x
                  are replaced by q_sample(condition, fresh noise, ᾱ_{t_k}).
  reconstruction  replacement plus reconstruction guidance (papers/avdit_monl.txt Eq. 8-12;
                  MM-Diffusion Eq. 12; Ho et al. "Video Diffusion Models" §3.1). Exactly:
                    L(x_t) = Σ_{conditioning elements} (x̂0(x_t) - x0_cond)²  (per example),
                    x_s^gen <- x_s^gen - λ sqrt(1 - ᾱ_s) ∇_{x_t^gen} L,
                  where x̂0(x_t) is the network's x0 estimate on the conditioning elements from
                  the current (replaced) x_t, the gradient is taken with `jax.grad` through the
                  network w.r.t. the generated elements of x_t only, and x_s^gen is the
                  sampler's output for the generated elements. The weight λ sqrt(1 - ᾱ_s) is
                  Eq. 9/11-12's λ sqrt(1 - ᾱ_t) with ᾱ taken at the step's output timestep
                  (a_t = θ(a_{t+1}, ...) in the paper's indexing), so no correction is applied
                  on the last step into t = 0 (as MM-Diffusion's code, which masks t = 0). The
                  loss is the x̂0 reconstruction error of Ho et al. rather than MM-Diffusion's
                  code's error on the noisy sample; λ = 0.02 is the paper's value (C.2).

Classifier-free guidance "for free" (Appendix E), `monl` only: when w != 0 and the task has
conditioning elements, an unconditional pass replaces the elements of `guidance_uncond_mask`
(default: all conditioning elements) by pure N(0, I) noise (fresh every step) with t = T, and
the generated elements use (1 + w) pred_cond - w pred_uncond. The combination is done on the
raw network output: x̂0 and ε̂ are affine in it with the same coefficients in both passes (same
x_t and ᾱ on generated elements), so this equals ε = (1 + w) ε_cond - w ε_uncond for both
'eps' and 'v' models. Both passes run as one network call on a doubled batch. The
unconditional pass self-conditions on its own previous x̂0 on the noised elements (feeding the
clean condition there would leak it) and on the guided x̂0 elsewhere.

Autoguidance (Karras et al. 2024), any method: `Autoguided` wraps the apply_fn so that every
network call returns (1 + w) D - w D_guide, D_guide a less trained version of the same model
(params = the pair); avdit.sampling.generate.sampling_denoiser builds it from the config.

Resampling (RePaint, Lugmayr et al. 2022, Alg. 1 with jump length 1), any method and ddpm/ddim:
with `resample` = r > 1 each of the first `resample_fraction` of the steps (the noisiest) is
taken r times: after a pass t -> s, x_s is noised back to t with the forward kernel,
x_t = sqrt(ᾱ_t/ᾱ_s) x_s + sqrt(1 - ᾱ_t/ᾱ_s) z (fresh z), and the step is taken again. A
deterministic step commits early to one trajectory (a disc that bounces or goes straight on);
the fresh noise lets later passes, which see the condition again, revise it. The loop stays one
`lax.scan`: a resampled step is r rows of the step table, the repeats with the re-noising
coefficients c_renoise_x, c_renoise_z (1 and 0 on a first pass). Not for dpmpp_2m, whose
multistep update assumes x̂0_prev from the previous timestep.

Self-conditioning: the previous step's x̂0 (zeros at the first step) is passed as `self_cond`.

Randomness: x_T ~ N(0, I) from one half of `rng` (or `initial_noise` when given); step k's
noise (ancestral/DDIM z, the replacement method's forward noise, CFG's unconditional noise,
resampling's re-noising, as used) from `fold_in(other half, k)`, k the step table's row, so runs
with the same rng and the same kinds of draws (e.g. DDIM η = 1 and DDPM, or replacement and
reconstruction) see the same noise.
"""
from __future__ import annotations

import collections
import dataclasses
import math
import threading
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from avdit import layout as layout_lib
from avdit import tasks as tasks_lib
from avdit.diffusion import schedule as schedule_lib

Array = jax.Array
Latents = dict[str, Array]
ApplyFn = Callable[[Any, Latents, Array, "Latents | None"], Latents]

SAMPLERS = ("ddpm", "ddim", "dpmpp_2m")
METHODS = ("monl", "replacement", "reconstruction")
PREDICTIONS = schedule_lib.PREDICTIONS


@dataclasses.dataclass(frozen=True)
class SamplerSpec:
  """Static description of a sampler run; hashable, so it keys the compilation cache."""

  sampler: str = "ddim"  # "ddpm" | "ddim" | "dpmpp_2m"
  num_steps: int = 50
  eta: float = 0.0  # DDIM stochasticity (0 = deterministic, 1 = DDPM's posterior variance)
  guidance_weight: float = 0.0  # w of CFG-for-free: (1 + w) ε_cond - w ε_uncond
  method: str = "monl"  # "monl" | "replacement" | "reconstruction"
  reconstruction_lambda: float = 0.02
  prediction: str = "eps"  # the network's parameterization, "eps" | "v" | "x0"
  self_condition: bool = True
  resample: int = 1  # RePaint: passes per resampled step (1 = none)
  resample_fraction: float = 1.0  # the share of the steps resampled, the noisiest first

  def __post_init__(self):
    if self.sampler not in SAMPLERS:
      raise ValueError(f"unknown sampler {self.sampler!r}; use one of {SAMPLERS}")
    if self.method not in METHODS:
      raise ValueError(f"unknown conditioning method {self.method!r}; use one of {METHODS}")
    if self.prediction not in PREDICTIONS:
      raise ValueError(f"unknown prediction {self.prediction!r}; use one of {PREDICTIONS}")
    if isinstance(self.num_steps, bool) or int(self.num_steps) != self.num_steps:
      raise ValueError(f"num_steps must be an integer, got {self.num_steps!r}")
    if self.num_steps < 1:
      raise ValueError(f"num_steps must be >= 1, got {self.num_steps}")
    if isinstance(self.resample, bool) or int(self.resample) != self.resample \
        or self.resample < 1:
      raise ValueError(f"resample must be an integer >= 1, got {self.resample!r}")
    if not 0 < self.resample_fraction <= 1:
      raise ValueError(f"resample_fraction must be in (0, 1], got {self.resample_fraction}")
    if self.resample > 1 and self.sampler == "dpmpp_2m":
      raise ValueError("resample > 1 needs sampler 'ddpm' or 'ddim': dpmpp_2m's multistep "
                       "update takes x̂0 of the previous timestep, not of a repeat of this one")
    if not self.eta >= 0:
      raise ValueError(f"eta must be >= 0, got {self.eta}")
    if not self.reconstruction_lambda >= 0:
      raise ValueError(f"reconstruction_lambda must be >= 0, got {self.reconstruction_lambda}")
    if not np.isfinite(self.guidance_weight):
      raise ValueError(f"guidance_weight must be finite, got {self.guidance_weight}")
    if self.guidance_weight != 0 and self.method != "monl":
      raise ValueError(
          f"guidance_weight={self.guidance_weight} needs method='monl': classifier-free guidance "
          "for free noises the condition with its own timestep T, which a model trained with one "
          f"scalar timestep (the {self.method!r} baseline) cannot take")

  @classmethod
  def from_config(cls, sample_config, diffusion_config, model_config=None,
                  task: tasks_lib.Task | None = None) -> SamplerSpec:
    """From `config.sample` and `config.diffusion` (ConfigDicts or plain dicts).

    `task`: the task this spec samples; its weight in `sample.guidance_by_task` (see
    `parse_guidance_by_task`), when named there, replaces `sample.guidance_weight`. A task is
    known by its mask's spec, as the suite's noise knows it: 'v:*' is v2a.

    `self_condition` is `sample_config.self_condition` when present; otherwise whether the model
    was trained with self-conditioning: `diffusion_config.self_condition_rate > 0` and, when
    `model_config` is given, `model_config.self_condition`.
    """

    def get(cfg, name, default):
      if isinstance(cfg, dict):
        return cfg.get(name, default)
      return getattr(cfg, name, default)

    self_condition = get(sample_config, "self_condition", None)
    if self_condition is None:
      self_condition = float(get(diffusion_config, "self_condition_rate", 0.0)) > 0
      if model_config is not None:
        self_condition = self_condition and bool(get(model_config, "self_condition", True))
    defaults = cls()
    guidance_weight = float(get(sample_config, "guidance_weight", defaults.guidance_weight))
    if task is not None:
      by_spec = {tasks_lib.NAMED_TASKS[name]: weight for name, weight in
                 parse_guidance_by_task(get(sample_config, "guidance_by_task", "")).items()}
      guidance_weight = by_spec.get(task.spec, guidance_weight)
    return cls(
        sampler=str(get(sample_config, "sampler", defaults.sampler)),
        num_steps=int(get(sample_config, "num_steps", defaults.num_steps)),
        eta=float(get(sample_config, "eta", defaults.eta)),
        guidance_weight=guidance_weight,
        method=str(get(sample_config, "method", defaults.method)),
        reconstruction_lambda=float(
            get(sample_config, "reconstruction_lambda", defaults.reconstruction_lambda)),
        resample=get(sample_config, "resample", defaults.resample),  # 1.5 is refused, not cut
        resample_fraction=float(
            get(sample_config, "resample_fraction", defaults.resample_fraction)),
        prediction=str(get(diffusion_config, "prediction", defaults.prediction)),
        self_condition=bool(self_condition),
    )


def specs_by_task(config, task_list) -> dict[str, SamplerSpec]:
  """{task name: its SamplerSpec} for `config.sample` (each task's own guidance weight)."""
  return {task.name: SamplerSpec.from_config(config.sample, config.diffusion, config.model,
                                             task=task) for task in task_list}


def parse_guidance_by_task(text: str) -> dict[str, float]:
  """{task name: guidance weight} from 'v2a=1' or 'v2a=1,joint=0.5' ('' is none).

  A weight per task because guidance helps some tasks and hurts others (on the main job's model
  it pulls v2a's tone onto the disc but costs a2v many of its discs, docs/learning_the_link.md).
  Names are those of avdit.tasks.NAMED_TASKS; a task not named keeps `sample.guidance_weight`.
  """
  weights = {}
  for item in filter(None, (i.strip() for i in str(text or "").split(","))):
    name, sep, value = (part.strip() for part in item.partition("="))
    if not sep or name not in tasks_lib.NAMED_TASKS:
      raise ValueError(f"sample.guidance_by_task={text!r}: {item!r} must be '<task>=<weight>' "
                       f"with a task in {sorted(tasks_lib.NAMED_TASKS)}")
    try:
      weights[name] = float(value)
    except ValueError:
      raise ValueError(f"sample.guidance_by_task={text!r}: the weight of {name!r} is not a "
                       f"number: {value!r}") from None
  return weights


# --- timesteps and per-step coefficients (host side, float64) ---------------------------------
def timestep_sequence(num_timesteps: int, num_steps: int) -> np.ndarray:
  """int64 [num_steps + 1]: t_K = T, ..., t_1, t_0 = 0 with t_k = round(k T / K) ("trailing")."""
  if not 1 <= num_steps <= num_timesteps:
    raise ValueError(f"num_steps={num_steps} must be in 1..T={num_timesteps}")
  k = np.arange(num_steps, -1, -1)
  # Spacing T/K >= 1 keeps the rounded timesteps strictly decreasing.
  return np.round(k * num_timesteps / num_steps).astype(np.int64)


def step_coefficients(schedule: schedule_lib.LinearSchedule, spec: SamplerSpec
                      ) -> dict[str, np.ndarray]:
  """Per-step tables, in loop order (k = K..1), each [K] float64 (t_cur/t_next int64).

  Keys: t_cur, t_next, alpha_bar_cur, alpha_bar_next, and the update's coefficients
  c_x, c_x0, c_prev, c_eps, c_z of x_s = c_x x_t + c_x0 x̂0 + c_prev x̂0_prev + c_eps ε̂ + c_z z.
  """
  ts = timestep_sequence(schedule.num_timesteps, spec.num_steps)
  table = schedule.alpha_bar_table
  t_cur, t_next = ts[:-1], ts[1:]
  ab_t, ab_s = table[t_cur], table[t_next]
  zeros = np.zeros_like(ab_t)
  c_x, c_x0, c_prev, c_eps, c_z = (zeros.copy() for _ in range(5))
  if spec.sampler == "ddpm":
    beta = 1.0 - ab_t / ab_s  # respaced β'_k
    c_x0 = np.sqrt(ab_s) * beta / (1.0 - ab_t)
    c_x = np.sqrt(1.0 - beta) * (1.0 - ab_s) / (1.0 - ab_t)
    c_z = np.sqrt(beta * (1.0 - ab_s) / (1.0 - ab_t))  # β̃, 0 on the final step into t = 0
  elif spec.sampler == "ddim":
    sigma = spec.eta * np.sqrt((1.0 - ab_s) / (1.0 - ab_t) * (1.0 - ab_t / ab_s))
    c_x0 = np.sqrt(ab_s)
    c_eps = np.sqrt(np.maximum(1.0 - ab_s - sigma**2, 0.0))
    c_z = sigma
  else:  # dpmpp_2m
    alpha_t, alpha_s = np.sqrt(ab_t), np.sqrt(ab_s)
    sigma_t, sigma_s = np.sqrt(1.0 - ab_t), np.sqrt(1.0 - ab_s)
    final = t_next == 0
    with np.errstate(divide="ignore"):
      lam_t = np.log(alpha_t) - np.log(sigma_t)
      lam_s = np.where(final, np.inf, np.log(alpha_s) - np.log(np.where(final, 1.0, sigma_s)))
    h = lam_s - lam_t
    c_data = np.where(final, 1.0, alpha_s * -np.expm1(-np.where(final, 0.0, h)))
    rho = np.zeros_like(h)  # 1/(2r): the second-order weight on x̂0_prev
    if len(h) > 1:
      rho[1:] = h[1:] / (2.0 * h[:-1])  # 1/(2 r_k) with r_k = h_{k-1}/h_k
    rho[final] = 0.0  # the step into t = 0 returns x̂0 (Lu et al., λ = ∞)
    c_x = np.where(final, 0.0, sigma_s / sigma_t)
    c_x0 = c_data * (1.0 + rho)
    c_prev = -c_data * rho
  return dict(t_cur=t_cur, t_next=t_next, alpha_bar_cur=ab_t, alpha_bar_next=ab_s,
              c_x=c_x, c_x0=c_x0, c_prev=c_prev, c_eps=c_eps, c_z=c_z)


# --- small pieces exposed for tests -------------------------------------------------------------
def guided_prediction(pred_cond: Latents, pred_uncond: Latents, generate_mask: Latents,
                      guidance_weight: float) -> Latents:
  """(1 + w) pred_cond - w pred_uncond on generated elements, pred_cond elsewhere.

  Args:
    pred_cond / pred_uncond: network outputs of the two passes, {"video": [B, N, h, w, d_v],
      "audio": [B, l_a, d_a]}.
    generate_mask: bool, broadcastable to the latents ({"video": [1, N, 1, 1, 1], ...}).
  Linear in the prediction, so for 'eps' this is ε = (1 + w) ε_c - w ε_u and for 'v' it gives
  the same ε after conversion (ε = sqrt(1-ᾱ) x_t + sqrt(ᾱ) v, shared x_t and ᾱ).
  """
  w = guidance_weight
  return jax.tree.map(lambda c, u, g: jnp.where(g, (1.0 + w) * c - w * u, c),
                      pred_cond, pred_uncond, generate_mask)


@dataclasses.dataclass(frozen=True)
class Autoguided:
  """An apply_fn guided by a worse version of the same model (autoguidance, Karras et al. 2024,
  "Guiding a diffusion model with a bad version of itself"): (1 + w) D_good - w D_bad.

  Called with params = (good params, guide params); the guide runs through `guide_apply_fn`
  when it is another network (Karras et al.'s best guides are smaller as well as less trained).
  A weak denoiser hedges between the samples it cannot tell apart (two faint discs where one
  belongs, a click smeared over frames); a less trained guide hedges the same way, more, so
  stepping away from it sharpens the sample without CFG's pull towards the condition. Combined
  on the raw outputs, as `guided_prediction`: x̂0 and ε̂ are affine in them with the same
  coefficients for both models (same x_t and ᾱ). Modalities not in `modalities` keep the
  model's own output. Frozen and hashable, so the compiled sampler is cached per value like any
  apply_fn.
  """

  apply_fn: ApplyFn
  weight: float
  modalities: tuple[str, ...] = layout_lib.MODALITIES  # the others keep D's own output
  guide_apply_fn: ApplyFn | None = None  # a guide of another shape (None: apply_fn's)

  def __post_init__(self):
    if not self.modalities or set(self.modalities) - set(layout_lib.MODALITIES):
      raise ValueError(f"autoguidance modalities must be some of {layout_lib.MODALITIES}, got "
                       f"{self.modalities}")

  def __call__(self, params_pair, noisy: Latents, timestep_vector_bmn: Array,
               self_cond: Latents | None) -> Latents:
    good_params, guide_params = params_pair
    good = self.apply_fn(good_params, noisy, timestep_vector_bmn, self_cond)
    guide = (self.guide_apply_fn or self.apply_fn)(guide_params, noisy, timestep_vector_bmn,
                                                     self_cond)
    w = self.weight
    return {k: (1.0 + w) * good[k] - w * guide[k] if k in self.modalities else good[k]
            for k in good}


def _mask_key(mask: np.ndarray | None, layout: layout_lib.ClipLayout, what: str
              ) -> tuple[tuple[bool, ...], ...]:
  """A (2, N) bool mask as a hashable tuple; ValueError on a shape that is not the layout's."""
  expected = (layout_lib.NUM_MODALITIES, layout.num_segments)
  mask = np.asarray(mask)
  if mask.shape != expected:
    raise ValueError(f"{what} has shape {mask.shape}, the layout needs (M, N) = {expected}")
  if mask.dtype != bool:
    if not np.isin(mask, (0, 1)).all():
      raise ValueError(f"{what} must be boolean (True = clean condition), got {mask.dtype}")
    mask = mask.astype(bool)
  return tuple(tuple(bool(v) for v in row) for row in mask)


def _element_mask(mask_mn: np.ndarray, layout: layout_lib.ClipLayout) -> Latents:
  """bool {"video": [1, N, 1, 1, 1], "audio": [1, l_a, 1]} from a (2, N) mask."""
  expanded = layout.expand_to_latents(jnp.asarray(mask_mn[None], jnp.float32))
  return {k: v > 0.5 for k, v in expanded.items()}


# --- one sampler step, shared by the sequential loop and the parallel sampler ------------------
def step_tables(schedule: schedule_lib.LinearSchedule, spec: SamplerSpec
                ) -> dict[str, np.ndarray]:
  """The step loop's inputs, one row per pass in loop order (t = T first), each [rows].

  float32 alpha_bar_cur, alpha_bar_next, c_x, c_x0, c_prev, c_eps, c_z, t_cur and the
  re-noising c_renoise_x, c_renoise_z; int32 index (the row). One row per step (K rows) unless
  `spec.resample` repeats the noisiest steps (module docstring). numpy, not jnp: host constants
  that jit places, so building runs nothing eagerly (an AOT compile for a TPU topology has no
  device to run on).
  """
  coeffs = step_coefficients(schedule, spec)
  num_resampled = math.ceil(spec.resample_fraction * spec.num_steps - 1e-9)
  passes = np.where(np.arange(spec.num_steps) < num_resampled, spec.resample, 1)
  rows = np.repeat(np.arange(spec.num_steps), passes)
  repeat = np.concatenate([np.arange(p) > 0 for p in passes])  # a second or later pass
  tables = {name: np.asarray(coeffs[name][rows], np.float32)
            for name in ("alpha_bar_cur", "alpha_bar_next", "c_x", "c_x0", "c_prev", "c_eps",
                         "c_z", "t_cur")}
  # x_t = sqrt(ᾱ_t/ᾱ_s) x_s + sqrt(1 - ᾱ_t/ᾱ_s) z from the previous pass's output x_s.
  ratio = coeffs["alpha_bar_cur"][rows] / coeffs["alpha_bar_next"][rows]
  tables["c_renoise_x"] = np.where(repeat, np.sqrt(ratio), 1.0).astype(np.float32)
  tables["c_renoise_z"] = np.where(repeat, np.sqrt(1.0 - ratio), 0.0).astype(np.float32)
  tables["index"] = np.arange(len(rows), dtype=np.int32)
  return tables


class SamplerStep:
  """One step (x_{k+1}, x̂0_k, x̂0u_k) = F_k(x_k, x̂0_{k-1}, x̂0u_{k-1}) of a task's sampler.

  The state carried between steps is x, the previous x̂0 (self-conditioning and dpmpp_2m's
  x̂0_prev) and CFG's previous unconditional x̂0. A step is split around its one network call
  so that the same code serves the sequential loop and the parallel (Picard) sampler:
    `inputs`   state and step scalars -> the network's input rows and what `update` needs;
    `evaluate` the network call on rows of any count (one step's batch here; a window of steps
               folded into the batch in avdit.sampling.parallel);
    `update`   the network outputs -> the next state.
  `inputs` and `update` are elementwise per example with scalar step values, so the parallel
  sampler vmaps them over a window of steps. Build it inside the jitted function: it holds the
  traced condition. See the module docstring for the algorithms.
  """

  def __init__(self, apply_fn: ApplyFn, spec: SamplerSpec, cond_mn: np.ndarray,
               uncond_mn: np.ndarray, schedule: schedule_lib.LinearSchedule,
               layout: layout_lib.ClipLayout, condition: Latents):
    self.apply_fn, self.spec, self.layout = apply_fn, spec, layout
    self.tables = step_tables(schedule, spec)
    self.num_t = schedule.num_timesteps
    self.monl = spec.method == "monl"
    self.reconstruct = spec.method == "reconstruction"
    self.has_condition = bool(cond_mn.any())
    self.guided = (self.monl and self.has_condition and spec.guidance_weight != 0
                   and bool(uncond_mn.any()))
    self.stochastic = bool(np.any(step_coefficients(schedule, spec)["c_z"] > 0))  # float64
    self.replace = (not self.monl) and self.has_condition
    self.resampled = spec.resample > 1
    self.draw_names = [name for name, used in (("step", self.stochastic),
                                               ("replace", self.replace),
                                               ("uncond", self.guided),
                                               ("renoise", self.resampled)) if used]
    self.ab_max_t = float(schedule.alpha_bar_table[self.num_t])
    self.condition = {k: jnp.asarray(condition[k], jnp.float32) for k in layout_lib.MODALITIES}
    self.batch = self.condition["video"].shape[0]
    self.cond_elem = _element_mask(cond_mn, layout)
    self.gen_elem = jax.tree.map(jnp.logical_not, self.cond_elem)
    self.uncond_elem = _element_mask(uncond_mn, layout)
    self.cond_bmn = jnp.asarray(cond_mn)[None]  # [1, 2, N]
    self.uncond_bmn = jnp.asarray(uncond_mn)[None]
    self._leaves, self._treedef = jax.tree.flatten(self.condition)
    self._offsets = np.cumsum([0] + [math.prod(x.shape) for x in self._leaves])
    self.zeros = jax.tree.map(jnp.zeros_like, self.condition)

  def normal_trees(self, key: Array, count: int) -> list[Latents]:
    """`count` latent dicts of N(0, I) noise from one flat draw.

    XLA:CPU compiles one 1-D threefry draw several times faster than a multi-dimensional
    draw per leaf and per use (seconds per sampler otherwise).
    """
    offsets = self._offsets
    total = int(offsets[-1])
    flat = jax.random.normal(key, (count * total,), jnp.float32)
    return [jax.tree.unflatten(self._treedef, [
        flat[c * total + offsets[i]:c * total + offsets[i + 1]].reshape(x.shape)
        for i, x in enumerate(self._leaves)]) for c in range(count)]

  def keep_condition(self, tree: Latents) -> Latents:
    """Conditioning elements exactly as given (bit-identical), generated ones from `tree`.

    `tree` may carry extra leading axes (a window of steps): the masks broadcast from the right.
    """
    return jax.tree.map(jnp.where, self.cond_elem, self.condition, tree)

  def initial(self, rng: Array, initial_noise: Latents | None) -> tuple[Latents, Array]:
    """(x_T, the key whose fold_in(·, k) gives step k's noise) from `rng`."""
    init_key, loop_key = jax.random.split(rng)
    if initial_noise is None:
      x_init, = self.normal_trees(init_key, 1)
    else:
      x_init = {k: jnp.asarray(initial_noise[k], jnp.float32) for k in layout_lib.MODALITIES}
    x_init = self.keep_condition(x_init) if self.monl else x_init
    return x_init, loop_key

  def draws(self, loop_key: Array, index: Array) -> dict[str, Latents]:
    """All of step `index`'s noise in one draw: ancestral/DDIM noise, the replacement method's
    forward noise of the condition, CFG's unconditional noise (those that are used)."""
    if not self.draw_names:
      return {}
    return dict(zip(self.draw_names, self.normal_trees(jax.random.fold_in(loop_key, index),
                                                       len(self.draw_names))))

  def to_x0_eps(self, pred: Latents, x_in: Latents, ab: Latents) -> tuple[Latents, Latents]:
    out = jax.tree.map(
        lambda p, x, a: schedule_lib.prediction_to_x0_eps(p, x, a, self.spec.prediction),
        pred, x_in, ab)
    return ({k: v[0] for k, v in out.items()}, {k: v[1] for k, v in out.items()})

  def inputs(self, x: Latents, x0_prev: Latents, x0_uncond_prev: Latents,
             step: dict[str, Array], draws: dict[str, Latents]) -> tuple[dict, dict]:
    """(network input rows, aux for `update`) of one step.

    Rows: {"x", "t" [R, 2, N], "self_cond" (or None)} with R = B, or R = 2B (conditional then
    unconditional pass) with CFG; the reconstruction method adds "ab" (ᾱ per element) and
    "target" (the condition) for its loss. Leaves with a leading 1 broadcast over the rows.
    """
    spec, batch = self.spec, self.batch
    t_cur, ab_t = step["t_cur"], step["alpha_bar_cur"]
    if self.monl:
      # Conditioning elements: clean values with t = 0 (ᾱ = 1); generated: t_k.
      x_in = self.keep_condition(x)
      t_bmn = jnp.broadcast_to(jnp.where(self.cond_bmn, 0.0, t_cur),
                               (batch, layout_lib.NUM_MODALITIES, self.layout.num_segments))
      ab_elem = jax.tree.map(lambda c: jnp.where(c, 1.0, ab_t), self.cond_elem)
    else:
      # One scalar timestep for all elements; the condition is noised afresh to t_k.
      x_in = x
      if self.replace:
        noised = jax.tree.map(lambda c, n: schedule_lib.q_sample(c, n, ab_t),
                              self.condition, draws["replace"])
        x_in = jax.tree.map(jnp.where, self.cond_elem, noised, x)
      t_bmn = jnp.full((batch, layout_lib.NUM_MODALITIES, self.layout.num_segments), t_cur)
      ab_elem = jax.tree.map(lambda c: jnp.broadcast_to(ab_t, c.shape), self.cond_elem)
    self_cond = x0_prev if spec.self_condition else None
    aux = {"x_in": x_in, "ab": ab_elem}
    if self.reconstruct and self.has_condition:
      rows = {"x": x_in, "t": t_bmn, "self_cond": self_cond, "ab": ab_elem,
              "target": self.condition}
    elif self.guided:
      # Unconditional pass: the guidance-masked conditioning elements are pure noise at t=T.
      noise_u = draws["uncond"]
      x_u = jax.tree.map(jnp.where, self.uncond_elem, noise_u, x_in)
      t_u = jnp.where(self.uncond_bmn, float(self.num_t), t_bmn)
      ab_u = jax.tree.map(lambda u, a: jnp.where(u, self.ab_max_t, a), self.uncond_elem, ab_elem)
      both = lambda a, b: jnp.concatenate([a, b], axis=0)
      self_both = None
      if spec.self_condition:
        self_u = jax.tree.map(jnp.where, self.uncond_elem, x0_uncond_prev, x0_prev)
        self_both = jax.tree.map(both, x0_prev, self_u)
      rows = {"x": jax.tree.map(both, x_in, x_u), "t": both(t_bmn, t_u), "self_cond": self_both}
      aux.update(x_u=x_u, ab_u=ab_u)
    else:
      rows = {"x": x_in, "t": t_bmn, "self_cond": self_cond}
    return rows, aux

  def evaluate(self, params, rows: dict) -> dict:
    """The step's one network call on `rows` (any number of rows, examples independent).

    Returns {"pred"}, or for the reconstruction method {"x0", "eps", "grad"} with the gradient
    of its loss w.r.t. the rows' x.
    """
    apply_fn = self.apply_fn
    if "target" not in rows:
      return {"pred": apply_fn(params, rows["x"], rows["t"], rows["self_cond"])}

    def recon_loss(x_t):
      pred = apply_fn(params, x_t, rows["t"], rows["self_cond"])
      x0_hat, eps_hat = self.to_x0_eps(pred, x_t, rows["ab"])
      # Σ over conditioning elements; a sum over the batch keeps examples independent.
      loss = sum(jnp.sum(jnp.where(self.cond_elem[k], (x0_hat[k] - rows["target"][k])**2, 0.0))
                 for k in layout_lib.MODALITIES)
      return loss, (x0_hat, eps_hat)

    grad, (x0_hat, eps_hat) = jax.grad(recon_loss, has_aux=True)(rows["x"])
    return {"x0": x0_hat, "eps": eps_hat, "grad": grad}

  def update(self, outputs: dict, aux: dict, x0_prev: Latents, x0_uncond_prev: Latents,
             step: dict[str, Array], draws: dict[str, Latents]
             ) -> tuple[Latents, Latents, Latents]:
    """(x_next, x̂0, unconditional x̂0) of the step from `evaluate`'s outputs on its rows."""
    spec, batch = self.spec, self.batch
    x_in, ab_elem = aux["x_in"], aux["ab"]
    recon_grad = None
    x0_uncond = x0_uncond_prev
    if "grad" in outputs:
      recon_grad, x0_hat, eps_hat = outputs["grad"], outputs["x0"], outputs["eps"]
    elif self.guided:
      pred_both = outputs["pred"]
      pred_c = jax.tree.map(lambda p: p[:batch], pred_both)
      pred_u = jax.tree.map(lambda p: p[batch:], pred_both)
      x0_uncond, _ = self.to_x0_eps(pred_u, aux["x_u"], aux["ab_u"])
      pred = guided_prediction(pred_c, pred_u, self.gen_elem, spec.guidance_weight)
      x0_hat, eps_hat = self.to_x0_eps(pred, x_in, ab_elem)
    else:
      x0_hat, eps_hat = self.to_x0_eps(outputs["pred"], x_in, ab_elem)
    if self.monl:
      x0_hat = self.keep_condition(x0_hat)  # exact at t = 0 whatever the network says there

    noise = draws["step"] if self.stochastic else self.zeros
    x_next = jax.tree.map(
        lambda xt, x0, xp, e, z: (step["c_x"] * xt + step["c_x0"] * x0 + step["c_prev"] * xp
                                  + step["c_eps"] * e + step["c_z"] * z),
        x_in, x0_hat, x0_prev, eps_hat, noise)
    if recon_grad is not None:
      scale = spec.reconstruction_lambda * jnp.sqrt(1.0 - step["alpha_bar_next"])
      x_next = jax.tree.map(lambda xn, g, gen: jnp.where(gen, xn - scale * g, xn),
                            x_next, recon_grad, self.gen_elem)
    x_next = self.keep_condition(x_next)
    return x_next, x0_hat, x0_uncond

  def __call__(self, params, state: tuple[Latents, Latents, Latents], step: dict[str, Array],
               loop_key: Array) -> tuple[Latents, Latents, Latents]:
    """The whole step, as the sequential loop runs it."""
    x, x0_prev, x0_uncond_prev = state
    draws = self.draws(loop_key, step["index"])
    if self.resampled:  # back to t_k on a repeat pass (identity on a first pass)
      x = jax.tree.map(lambda v, z: step["c_renoise_x"] * v + step["c_renoise_z"] * z,
                       x, draws["renoise"])
    rows, aux = self.inputs(x, x0_prev, x0_uncond_prev, step, draws)
    outputs = self.evaluate(params, rows)
    return self.update(outputs, aux, x0_prev, x0_uncond_prev, step, draws)


# --- the jitted sampler --------------------------------------------------------------------------
_CACHE_SIZE = 64
_cache: collections.OrderedDict = collections.OrderedDict()
_cache_lock = threading.Lock()


def _fn_key(fn: Callable) -> Any:
  """The apply_fn as a cache key: itself when hashable, else its id (the entry keeps it alive)."""
  try:
    hash(fn)
    return fn
  except TypeError:
    return ("id", id(fn))


def cached_build(key: tuple, apply_fn: ApplyFn, build: Callable[[], Callable]) -> Callable:
  """`build()` once per (apply_fn, key): the compiled-sampler cache both samplers share.

  `key` holds the statics (hashable); apply_fn is keyed by itself or its id and kept alive by
  the entry, so an id is never reused while cached. Least recently used entries are dropped.
  """
  key = (_fn_key(apply_fn),) + tuple(key)
  with _cache_lock:
    if key in _cache:
      _cache.move_to_end(key)
      return _cache[key][1]
  fn = build()
  with _cache_lock:
    _cache[key] = (apply_fn, fn)
    while len(_cache) > _CACHE_SIZE:
      _cache.popitem(last=False)
  return fn


def _get_sampler(apply_fn, spec, cond_key, uncond_key, schedule, layout):
  return cached_build(
      ("sequential", spec, cond_key, uncond_key, schedule, layout), apply_fn,
      lambda: _build_sampler(apply_fn, spec, np.array(cond_key, bool),
                             np.array(uncond_key, bool), schedule, layout))


def _build_sampler(apply_fn: ApplyFn, spec: SamplerSpec, cond_mn: np.ndarray,
                   uncond_mn: np.ndarray, schedule: schedule_lib.LinearSchedule,
                   layout: layout_lib.ClipLayout):
  """The jitted `run(params, condition, rng, initial_noise) -> latents` for fixed statics."""

  def run(params, condition: Latents, rng: Array, initial_noise: Latents | None) -> Latents:
    step_fn = SamplerStep(apply_fn, spec, cond_mn, uncond_mn, schedule, layout, condition)
    x_init, loop_key = step_fn.initial(rng, initial_noise)
    zeros = step_fn.zeros
    body = lambda state, step: (step_fn(params, state, step, loop_key), None)
    (x_final, _, _), _ = jax.lax.scan(body, (x_init, zeros, zeros), step_fn.tables)
    return step_fn.keep_condition(x_final)

  return jax.jit(run)


def sample_latents(apply_fn: ApplyFn, params, condition: dict[str, Array],
                   condition_mask: np.ndarray, rng: Array, *,
                   schedule: schedule_lib.LinearSchedule, layout: layout_lib.ClipLayout,
                   spec: SamplerSpec, guidance_uncond_mask: np.ndarray | None = None,
                   initial_noise: dict[str, Array] | None = None) -> dict[str, Array]:
  """Samples latents for a task; conditioning elements are returned exactly as given.

  Args:
    apply_fn: `apply_fn(params, noisy_latents, timestep_vector_bmn float32 [B, 2, N],
      self_cond latents | None) -> prediction latents` (ε or v per `spec.prediction`). Pass the
      same function object across calls (not a fresh lambda) to reuse the compiled sampler.
    params: the network parameters (a traced argument).
    condition: {"video": [B, N, h, w, d_v], "audio": [B, l_a, d_a]}; values on conditioning
      elements (mask True) are used clean, the rest are ignored. B comes from here.
    condition_mask: bool [2, N], True = clean condition (e.g. `Task.condition_mask`).
    rng: a PRNG key.
    schedule, layout, spec: statics (hashable); see the module docstring for the algorithms.
    guidance_uncond_mask: bool [2, N], the conditioning elements noised in the unconditional
      CFG pass (default: all of condition_mask); must be a subset of condition_mask.
    initial_noise: optional x_T (latent dict); default N(0, I) drawn from `rng`.

  Returns:
    float32 latents with the shapes of `condition`.
  """
  run = compiled_sampler(apply_fn, condition_mask, schedule=schedule, layout=layout, spec=spec,
                         guidance_uncond_mask=guidance_uncond_mask)
  check_latent_inputs(condition, initial_noise, layout)
  return run(params, dict(condition), rng, None if initial_noise is None else dict(initial_noise))


def compiled_sampler(apply_fn: ApplyFn, condition_mask: np.ndarray, *,
                     schedule: schedule_lib.LinearSchedule, layout: layout_lib.ClipLayout,
                     spec: SamplerSpec, guidance_uncond_mask: np.ndarray | None = None):
  """The cached jitted `run(params, condition, rng, initial_noise | None) -> latents` of a task.

  `sample_latents` calls it; it is public so the whole sampling loop can be lowered and compiled
  ahead of time (`avdit.tools.train_compile --mode=sample`) from abstract, sharded inputs.
  """
  cond_key, uncond_key = check_task_masks(condition_mask, guidance_uncond_mask,
                                          schedule=schedule, layout=layout, spec=spec)
  return _get_sampler(apply_fn, spec, cond_key, uncond_key, schedule, layout)


def check_task_masks(condition_mask: np.ndarray, guidance_uncond_mask: np.ndarray | None, *,
                     schedule: schedule_lib.LinearSchedule, layout: layout_lib.ClipLayout,
                     spec: SamplerSpec) -> tuple[tuple, tuple]:
  """(condition mask, guidance mask) as hashable (2, N) tuples; ValueError on bad input.

  Shared by the sequential and the parallel sampler: the step count must fit the schedule, the
  masks the layout, the guidance mask must be a subset of the condition mask, and something
  must be left to generate.
  """
  if not 1 <= spec.num_steps <= schedule.num_timesteps:
    raise ValueError(f"num_steps={spec.num_steps} must be in 1..T={schedule.num_timesteps}")
  cond_key = _mask_key(condition_mask, layout, "condition_mask")
  if guidance_uncond_mask is None:
    uncond_key = cond_key
  else:
    uncond_key = _mask_key(guidance_uncond_mask, layout, "guidance_uncond_mask")
    if np.any(np.array(uncond_key) & ~np.array(cond_key)):
      raise ValueError("guidance_uncond_mask must be a subset of condition_mask: only "
                       "conditioning elements can be replaced by noise in the unconditional pass")
  if np.all(cond_key):
    raise ValueError("condition_mask conditions on every element: nothing to generate")
  return cond_key, uncond_key


def check_latent_inputs(condition: dict[str, Array], initial_noise: dict[str, Array] | None,
                        layout: layout_lib.ClipLayout) -> None:
  """ValueError unless `condition` (and `initial_noise`) are latent dicts of the layout's shapes."""
  if set(condition) != set(layout_lib.MODALITIES):
    raise ValueError(f"condition must have keys {layout_lib.MODALITIES}, got {sorted(condition)}")
  batch = np.shape(condition["video"])[0]
  expected = layout.latent_shapes(batch)
  for name in layout_lib.MODALITIES:
    if tuple(np.shape(condition[name])) != expected[name]:
      raise ValueError(f"condition[{name!r}] has shape {np.shape(condition[name])}, the layout "
                       f"needs {expected[name]}")
    if initial_noise is not None and tuple(np.shape(initial_noise[name])) != expected[name]:
      raise ValueError(f"initial_noise[{name!r}] has shape {np.shape(initial_noise[name])}, "
                       f"expected {expected[name]}")
