"""AVDiT trained for a time budget: the steps that fit `train.budget_minutes` on this machine.

`train.num_steps=0` asks for it (the main job does: its hour, less what its earlier stages took).

  1. Measure  `measure_step_seconds`: 30 steps after 60 warm-up ones, on a copy of the initial
              state and a fresh data iterator, so the run itself starts untouched
  2. Plan     `budget_steps`: minutes x 60 / step time, less the time of
              `budget_reserve_clips` training clips (`reserve_steps`) for what follows training
              (the main job's evaluation), rounded down to checkpoints;
              `budget_kept_checkpoints` kept over them for the learning curve. Saved in
              DIR/step_budget.json (`fit_budget`)
  3. Clock    with `train.decay_fraction` > 0 (`ClockPlan`): the learning rate stays at its peak
              after the warm-up, and every checkpoint re-plans the end from the minutes left at
              the median step time of the last `SPEED_INTERVALS` checkpoint intervals (read from
              the last one alone, one slow interval started the main job's decay early and left
              ~9 of its 60 minutes unused); the decay (the last `decay_fraction` of the steps)
              starts at the checkpoint where the minutes left hold only it and the reserve. A
              machine that slows down (a shared one drifts by tens of percent within minutes)
              then moves the end of the run, not the deadline. The step is compiled again once,
              when the decay is fixed. A late phase (`train.late_fraction` > 0: the conditioned
              examples weighted by diffusion.late_condition_tasks) starts the same way, the step
              compiled again when it does. With the cosine schedule (decay_fraction 0) the count
              must be known from the start: the first plan is final.

A resumed run keeps the plan saved last (the deadline belonged to the invocation that set it).
"""
from __future__ import annotations

import collections
import json
import math
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from avdit import workdir as workdir_lib
from avdit.data import pipeline
from avdit.errors import UserError
from avdit.training import loop
from avdit.training import setup as setup_lib

BUDGET_FILE = "step_budget.json"  # the steps a time budget chose: a resumed run keeps them
HOLD = 2**30  # train.decay_start (late_start) while the clock has not started it: the peak held
SPEED_INTERVALS = 3  # checkpoint intervals whose median step time the clock plans with
PHASE_NAMES = {"decay": "learning rate decays", "late": "late conditioning (late_condition_tasks)"}


def reserve_steps(config) -> float:
  """The step-times kept for what follows training: `train.budget_reserve_clips` training clips
  at `data.batch_size` a step. Counted in clips, not seconds or steps, because the evaluation's
  time follows the machine's speed as a training clip's does (the main job's took ~2600 step-times
  of batch 8 on a 2-core AVX2 EPYC and on an AVX-512/AMX Xeon, 14.6 and 10.3 min), and a step's
  time follows the batch: the same steps at half the batch would keep half the minutes."""
  return config.train.get("budget_reserve_clips", 0) / config.data.batch_size


def budget_steps(train_config, seconds_per_step: float, reserve: float) -> dict[str, int]:
  """{num_steps, keep_period} of `train.budget_minutes` at `seconds_per_step`.

  The steps that fit once `reserve` step-times are set aside (`reserve_steps`, for the
  evaluation that follows training), rounded down to a multiple of `checkpoint_every` and at
  least the first multiple past the warm-up; the kept checkpoints (the learning curve's points)
  spread over them, `budget_kept_checkpoints` of them, on multiples of `checkpoint_every`.
  """
  every = train_config.checkpoint_every
  fit = train_config.budget_minutes * 60.0 / seconds_per_step - reserve
  least = every * math.ceil((train_config.warmup_steps + 1) / every)
  num_steps = max(least, int(fit // every) * every)
  kept = train_config.get("budget_kept_checkpoints", 0)
  keep_period = max(every, round(num_steps / kept / every) * every) if kept else 0
  return {"num_steps": num_steps, "keep_period": keep_period}


def clock_phases(train_config) -> dict[str, float]:
  """{phase: the last fraction of the steps it covers} of the phases a clock starts: the
  learning rate's decay, and the late conditioning where `train.late_fraction` > 0."""
  phases = {"decay": train_config.decay_fraction}
  if train_config.get("late_fraction", 0.0) > 0:
    phases["late"] = train_config.late_fraction
  return phases


def clock_end(step: int, seconds_left: float, seconds_per_step: float, reserve: float,
              train_config) -> tuple[int, list[str]]:
  """(the step the run should end at, the phases (`clock_phases`) that must start now), at
  checkpoint `step` with `seconds_left` of the budget at `seconds_per_step`.

  The end: `step` plus the steps that fit the time left less `reserve` step-times, on multiples of
  `checkpoint_every`, at least one more interval. A phase covers its last fraction (rounded); it
  starts now when it would start before the next checkpoint.
  """
  every = train_config.checkpoint_every
  fit = seconds_left / seconds_per_step - reserve
  end = step + max(every, int(fit // every) * every)
  return end, [phase for phase, fraction in clock_phases(train_config).items()
               if end - round(fraction * end) < step + every]


def fit_budget(config, workdir: str, setup: setup_lib.TrainSetup):
  """(`config` with `train.num_steps`, `keep_period`, `decay_start` (and `late_start`) set by its
  time budget, the plan when it was made now, else None) where `train.num_steps` is 0: read back
  from DIR/step_budget.json when this run planned before (a resumed run keeps its schedule),
  else planned from the step time measured now on this machine (`budget_steps`) and saved there.
  (`config`, None) where `num_steps` is given."""
  if config.train.num_steps > 0:
    return config, None
  if config.train.get("budget_minutes", 0.0) <= 0:
    raise UserError("train.num_steps=0 trains for a time budget, and train.budget_minutes is "
                    f"{config.train.get('budget_minutes', 0.0)}: give train.num_steps, or the "
                    "minutes (the pipeline sets them from job_minutes)")
  path = workdir_lib.path(workdir, BUDGET_FILE)
  planned_now = not path.exists()
  if not planned_now:
    chosen = json.loads(path.read_text())
  else:
    seconds = measure_step_seconds(config, setup)
    if jax.process_count() > 1:  # every host trains the chief's count (one schedule)
      seconds = float(multihost_utils.broadcast_one_to_all(np.float32(seconds)))
    reserve = reserve_steps(config)
    chosen = dict(budget_steps(config.train, seconds, reserve), seconds_per_step=seconds,
                  budget_minutes=config.train.budget_minutes, reserve_steps=reserve)
    _save(workdir, chosen)
  logging.info("Time budget: %d steps (%.3f s a step on this machine, %.1f min, %.0f step-times "
               "kept for what follows), checkpoints kept every %d steps; %s",
               chosen["num_steps"], chosen["seconds_per_step"], chosen["budget_minutes"],
               chosen["reserve_steps"], chosen["keep_period"], path)
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.train.num_steps = chosen["num_steps"]
    config.train.keep_period = chosen["keep_period"]
    for phase in clock_phases(config.train):
      config.train[f"{phase}_start"] = chosen.get(f"{phase}_start", 0)
  return config, chosen if planned_now else None


def _save(workdir: str, chosen: dict) -> None:
  if jax.process_index() == 0:
    workdir_lib.write_text(workdir, BUDGET_FILE, json.dumps(chosen, indent=2))


def measure_step_seconds(config, setup: setup_lib.TrainSetup, steps: int = 30,
                         warmup_steps: int = 60) -> float:
  """Seconds a train step takes here, data included: `steps` steps after `warmup_steps` that
  compile and warm up, on a copy of the initial state (the step donates it) and a fresh data
  iterator, so the run itself starts untouched. The warm-up is long because the first ~60 steps
  of a new process run up to twice as slow as the later ones on the CPU (measured with one
  batch reused, so not the data): five of them made the main job plan for half the steps that
  fit. A snapshot still: a shared machine's speed drifts by tens of percent over minutes
  (`ClockPlan` follows it)."""
  layout = setup.layout
  train_step = setup.make_step(setup_lib.estimate_latent_stats(config, layout,
                                                               setup.latent_space))
  state = jax.tree_util.tree_map(jnp.copy, setup.state)
  data = pipeline.make_train_iterator(config.data, layout)
  to_device = loop.device_inputs(setup_lib.MODEL_INPUTS, setup.mesh)
  for timed in (False, True):
    start = time.perf_counter()
    for _ in range(steps if timed else warmup_steps):
      state, _ = train_step(state, to_device(next(data)))
    jax.block_until_ready(state)
  return (time.perf_counter() - start) / steps


class ClockPlan:
  """A budgeted run kept to its deadline (module docstring, 3): `held_config` is the run's
  config with the peak learning rate held (and the late conditioning not started); the loop
  calls `at_checkpoint(step)` after each periodic checkpoint and trains to the end it returns,
  with the step it returns (one compiled again as each phase starts) or the one it has."""

  def __init__(self, config, workdir: str, deadline: float, plan: dict, make_step: Callable):
    self.config, self.workdir, self.deadline = config, workdir, deadline
    self.plan = dict(plan)  # as saved in DIR/step_budget.json, updated at each checkpoint
    self._make_step = make_step
    self._last = None  # (step, time) of the previous checkpoint
    # A step's time in the last intervals (not the first: it holds a compile).
    self._interval_seconds = collections.deque(maxlen=SPEED_INTERVALS)
    self.held_config = _with_plan(config, config.train.num_steps, self._starts())

  def _starts(self) -> dict[str, int]:
    return {phase: self.plan.get(f"{phase}_start", HOLD)
            for phase in clock_phases(self.config.train)}

  def at_checkpoint(self, step: int) -> tuple[int, Callable | None]:
    if "decay_start" in self.plan:  # the end is fixed once the decay has started
      return self.plan["num_steps"], None
    now = time.monotonic()
    if self._last is not None:
      self._interval_seconds.append((now - self._last[1]) / (step - self._last[0]))
    self._last = (step, now)
    speed = (np.median(self._interval_seconds) if self._interval_seconds
             else self.plan["seconds_per_step"])  # until one is measured: the plan's
    seconds = np.array([self.deadline - now, speed], np.float64)
    if jax.process_count() > 1:  # every host plans the chief's end (one schedule)
      seconds = np.asarray(multihost_utils.broadcast_one_to_all(seconds.astype(np.float32)))
    end, starting = clock_end(step, float(seconds[0]), float(seconds[1]),
                              self.plan["reserve_steps"], self.config.train)
    starting = [phase for phase in starting if f"{phase}_start" not in self.plan]
    self.plan.update(num_steps=end, replanned_at=step, seconds_per_step_now=float(seconds[1]))
    self.plan.update({f"{phase}_start": step for phase in starting})
    if "decay" in starting:  # the end is now fixed, and with it a shorter phase's start
      for phase, fraction in clock_phases(self.config.train).items():
        self.plan.setdefault(f"{phase}_start", end - round(fraction * end))
    _save(self.workdir, self.plan)
    self.config = _with_plan(self.config, end, self._starts())
    logging.info("Time budget at step %d: %.3f s a step, %.1f min left -> the run ends at step "
                 "%d%s", step, seconds[1], seconds[0] / 60, end,
                 "".join(f"; the {PHASE_NAMES[phase]} from now (step {step})"
                         for phase in starting))
    return end, self._make_step(self.config) if starting else None


def _with_plan(config, num_steps: int, starts: dict[str, int]):
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.train.num_steps = num_steps
    for phase, start in starts.items():
      config.train[f"{phase}_start"] = start
  return config
