"""Train state (params, optimizer, EMA, step), the optimizer, and the jitted train step.

The NNX model is split once into a static `graphdef` and its parameter `nnx.State`; the train
step is a pure function of (TrainState, batch) jitted with the state donated, so parameters and
optimizer buffers are updated in place and nothing returns to the host per step. The per-step
RNG is `fold_in(seed, step)`, so a resumed run draws exactly the noise an uninterrupted run draws.
On a mesh, the state is created directly in its shardings (`sharded_train_state`).
"""
from __future__ import annotations

import contextlib
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from avdit import sharding
from avdit.diffusion import loss as loss_lib
from avdit.diffusion import monl
from avdit.diffusion import schedule as schedule_lib
from avdit.diffusion import skip as skip_lib
from avdit.models import avdit as avdit_model
from avdit.models import latent_space as latent_lib


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: optimizer steps taken
  params: Any  # nnx.State of nnx.Param
  opt_state: Any
  ema_params: Any


def learning_rate_schedule(train_config, peak_value: float | None = None) -> optax.Schedule:
  """Linear warm-up over `train.warmup_steps` to `peak_value` (by default
  `train.learning_rate`), then to peak x `train.end_learning_rate_factor` at `train.num_steps`:
  a cosine decay, or with `train.decay_fraction` > 0 the peak held until `train.decay_start`
  (0: the last `decay_fraction` of the steps) and a linear decay from there (warm-up, stable,
  decay: a time-budgeted run starts its decay by the clock, budget.ClockPlan). The one schedule
  of every optimizer here and in the autoencoder trainer."""
  peak = train_config.learning_rate if peak_value is None else peak_value
  end = peak * train_config.end_learning_rate_factor
  num_steps, warmup = train_config.num_steps, train_config.warmup_steps
  if train_config.get("decay_fraction", 0.0) > 0:
    decay_start = decay_start_step(train_config)
    return optax.join_schedules(
        [optax.linear_schedule(0.0, peak, max(warmup, 1)), optax.constant_schedule(peak),
         optax.linear_schedule(peak, end, max(num_steps - decay_start, 1))],
        boundaries=[warmup, decay_start])
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=peak, warmup_steps=warmup,
      decay_steps=max(num_steps, warmup + 1), end_value=end)


def make_optimizer(train_config) -> optax.GradientTransformation:
  """AdamW with `learning_rate_schedule`, global-norm clipping; no weight decay on vectors
  (norms, biases)."""
  decay_mask = lambda params: jax.tree_util.tree_map(lambda p: p.ndim >= 2, params)
  return optax.chain(
      optax.clip_by_global_norm(train_config.grad_clip_norm),
      optax.adamw(learning_rate_schedule(train_config), b1=train_config.b1, b2=train_config.b2,
                  weight_decay=train_config.weight_decay, mask=decay_mask))


def create_train_state(config, layout):
  """(graphdef, TrainState) with freshly initialized parameters."""
  model = avdit_model.build(config.model, layout, config.seed)
  graphdef, params = avdit_model.split_params(model)
  opt_state = make_optimizer(config.train).init(params)
  ema = jax.tree_util.tree_map(jnp.copy, params)
  return graphdef, TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=opt_state,
                              ema_params=ema)


def abstract_train_state(config, layout):
  """(graphdef, TrainState of ShapeDtypeStructs) without allocating parameters."""
  graphdef_box = []

  def init():
    graphdef, state = create_train_state(config, layout)
    graphdef_box.append(graphdef)
    return state

  abstract = jax.eval_shape(init)
  return graphdef_box[0], abstract


def mesh_context(config, mesh):
  """`mesh` set and the config's logical-axis rules on, for building or compiling over it."""
  stack = contextlib.ExitStack()
  stack.enter_context(jax.set_mesh(mesh))
  stack.enter_context(nnx.logical_axis_rules(sharding.logical_axis_rules(config.mesh)))
  return stack


def sharded_train_state(config, layout, mesh, abstract: bool = False):
  """(graphdef, TrainState created directly in its shardings, TrainState of NamedShardings).

  Parameters are initialized inside one jit whose outputs are sharded by the rules, so no host
  ever holds the full model. `abstract`: the state as ShapeDtypeStructs carrying the shardings,
  nothing allocated (for ahead-of-time compilation).
  """
  with mesh_context(config, mesh):
    graphdef, abstract_state = abstract_train_state(config, layout)
    shardings = sharding.state_shardings(abstract_state, mesh,
                                         sharding.logical_axis_rules(config.mesh))
    if abstract:
      return graphdef, sharding.with_shardings(abstract_state, shardings), shardings
    create = lambda: create_train_state(config, layout)[1]
    state = sharding.create_in_shardings(create, shardings)
  return graphdef, state, shardings


def ema_decay_at(step, decay: float):
  """EMA decay warmed up as min(decay, (1 + step) / (10 + step)) so early averages track."""
  step = step.astype(jnp.float32)
  return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def ema_update(ema_params, params, step, decay: float):
  """The EMA of the parameters after optimizer step `step` (AVDiT's and the autoencoders')."""
  d = ema_decay_at(step, decay)
  # e + (1 - d)(p - e), not d e + (1 - d) p: the same average, and exactly e where p = e (a
  # held parameter, e.g. MAGVIT-v2's encoder while its decoder is fine-tuned, stays bit for bit).
  return jax.tree_util.tree_map(lambda e, p: e + (1.0 - d) * (p - e), ema_params, params)


def sharding_context(config, batch_sharding=None):
  """While tracing: the mesh (abstract) and the config's logical-axis rules, so the model's
  activation constraints and shard_mapped kernels see them; nothing without a mesh."""
  if batch_sharding is None:
    return contextlib.nullcontext()
  stack = contextlib.ExitStack()
  stack.enter_context(jax.sharding.use_abstract_mesh(batch_sharding.mesh.abstract_mesh))
  stack.enter_context(nnx.logical_axis_rules(sharding.logical_axis_rules(config.mesh)))
  return stack


def decay_start_step(train_config) -> int:
  """The step the linear decay starts at (`train.decay_fraction` > 0)."""
  return _phase_start(train_config, "decay")


def late_start_step(train_config) -> int:
  """The step the late phase (diffusion.late_condition_tasks) starts at: the decay's where
  neither `train.late_fraction` nor `train.late_start` is set."""
  own = train_config.get("late_fraction", 0.0) > 0 or train_config.get("late_start", 0) > 0
  return _phase_start(train_config, "late" if own else "decay")


def _phase_start(train_config, phase: str) -> int:
  """`train.{phase}_start` (budget.HOLD until a clock-planned phase starts), or with 0 the last
  `train.{phase}_fraction` of `num_steps`; never inside the warm-up."""
  num_steps = train_config.num_steps
  start = (train_config.get(f"{phase}_start", 0)
           or num_steps - round(train_config[f"{phase}_fraction"] * num_steps))
  return max(start, train_config.warmup_steps)


def condition_weights_at(config, num_segments: int):
  """`step -> task weights` [4] over monl.CONDITION_TASKS of the conditioned examples:
  `diffusion.condition_tasks`, and from the late phase's start `late_condition_tasks` where set
  (the last steps weighted toward what the model learns last, e.g. inpaintings). Both are
  checked here, before any step runs."""
  diffusion, train = config.diffusion, config.train
  weights = monl.parse_condition_tasks(diffusion.get("condition_tasks", "a2v,v2a,continue"))
  monl.check_condition_weights(num_segments, weights)
  late_text = diffusion.get("late_condition_tasks", "")
  if not late_text:
    return lambda step: weights
  if not any(train.get(field, 0) > 0 for field in ("late_fraction", "late_start",
                                                     "decay_fraction")):
    raise ValueError(f"diffusion.late_condition_tasks={late_text!r} weights the conditioned "
                     "examples of the run's last steps; set train.late_fraction > 0 or "
                     "train.late_start (or train.decay_fraction > 0: the learning rate's decay)")
  late_weights = monl.parse_condition_tasks(late_text)
  monl.check_condition_weights(num_segments, late_weights)
  start = late_start_step(train)
  return lambda step: jnp.where(step >= start, late_weights, weights)


def check_loss_weighting(diffusion_config) -> None:
  """Raises ValueError for a `diffusion.loss_weighting` (and cap) the loss cannot apply."""
  weighting = diffusion_config.get("loss_weighting", "uniform")
  weighted = set(loss_lib.loss_weightings(weighting).values()) != {"uniform"}
  if weighted and not diffusion_config.get("x0_skip", False):
    # Weighted by 1 / (1 - ᾱ), a plain x0 head's error at the lowest levels is scaled ~1e4.
    raise ValueError(f"diffusion.loss_weighting={weighting!r} needs "
                     "diffusion.x0_skip=True (the skip path makes the low-noise error small)")
  if diffusion_config.get("loss_weight_cap", 0.0) > 0 and not weighted:
    raise ValueError(f"diffusion.loss_weight_cap={diffusion_config.loss_weight_cap} caps "
                     f"loss_weighting='snr_plus_one'; it is {weighting!r}")


def make_train_step(config, layout, graphdef, latent_space, latent_stats, *,
                    state_shardings=None, batch_sharding=None):
  """The jitted `train_step(state, batch) -> (state, metrics)` with the state donated.

  With `state_shardings` (a TrainState of NamedShardings) and `batch_sharding`, the step is one
  `jax.jit` with explicit in/out shardings over the mesh (metrics replicated); otherwise it is
  placed on the default device.
  """
  schedule = schedule_lib.from_config(config.diffusion)
  mixture = monl.parse_mixture(config.diffusion.noise_mixture)
  check_loss_weighting(config.diffusion)
  condition_weights = condition_weights_at(config, layout.num_segments)
  # The density of the training levels (None: uniform), checked before any step.
  timestep_log_probs = loss_lib.level_densities(config.diffusion, schedule)
  optimizer = make_optimizer(config.train)
  lr_schedule = learning_rate_schedule(config.train)
  # Host constants, placed by jit: nothing here may run eagerly on a (possibly abstract) mesh.
  stats = {k: np.asarray(v, np.float32) for k, v in latent_stats.items()}
  channel_weights = loss_lib.loss_channel_weights(config.diffusion, stats)
  contrastive = (config.diffusion.get("cdl_weight", 0.0) > 0
                 or config.diffusion.get("cdcd_weight", 0.0) > 0)

  def train_step(state: TrainState, batch):
    with sharding_context(config, batch_sharding):
      return _train_step(state, batch)

  def _train_step(state: TrainState, batch):
    rng = jax.random.fold_in(jax.random.key(config.seed), state.step)
    latents = latent_lib.normalize(latent_space.encode(batch["video"], batch["audio"]), stats)

    def loss_fn(params):
      model = skip_lib.maybe_with_skip(nnx.merge(graphdef, params), config.diffusion, schedule,
                                       layout, stats)
      loss, aux = loss_lib.diffusion_loss(
          model, latents, rng, schedule=schedule, layout=layout, mixture_weights=mixture,
          prediction=config.diffusion.prediction, self_condition=config.model.self_condition,
          self_condition_rate=config.diffusion.self_condition_rate,
          condition_rate=config.diffusion.get("condition_rate", 0.0),
          condition_shared_level=config.diffusion.get("condition_shared_level", False),
          condition_weights=condition_weights(state.step),
          loss_weighting=config.diffusion.get("loss_weighting", "uniform"),
          loss_weight_cap=config.diffusion.get("loss_weight_cap", 0.0),
          modality_balance=config.diffusion.get("modality_balance", False),
          channel_weights=channel_weights, timestep_log_probs=timestep_log_probs)
      if contrastive:  # CDL / CDCD (SPEC §7), on their own stream of randomness
        extra, extra_aux = loss_lib.contrastive_terms(
            model, latents, jax.random.fold_in(rng, 1), diffusion_config=config.diffusion,
            schedule=schedule, layout=layout, mixture_weights=mixture)
        aux = dict(aux, **extra_aux, loss_monl=loss)
        loss = loss + extra
        aux["loss"] = loss
      return loss, aux

    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = ema_update(state.ema_params, params, state.step, config.train.ema_decay)
    metrics = dict(aux, grad_norm=optax.tree.norm(grads), learning_rate=lr_schedule(state.step),
                   loss_is_finite=jnp.isfinite(loss).astype(jnp.float32))
    new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state,
                           ema_params=ema)
    return new_state, metrics

  return sharding.jit_step(train_step, state_shardings, batch_sharding)
