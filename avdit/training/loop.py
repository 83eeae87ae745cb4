"""The training loop of every model (AVDiT, MAGVIT-v2, SoundStream), in the phases of a run.

A trainer builds what differs between models (its state, its jitted step, its data, what is saved
beside the state, hooks for model-specific work) and hands them to this module, which owns the
cadence. The phases, in order:

  1. Workdir   `open_workdir`: the directory, config.json, the metric writer (logging only off
               the chief process)
  2. Resume    `open_checkpoints`, `restore_latest`: the latest checkpoint restored exactly: the
               state, the data iterator's position and the JSON payloads saved beside them. Its
               own call, before `run`: a trainer needs the payloads (AVDiT's latent statistics,
               the autoencoder's identity) to build its step.
  3. Run       `run`, for every step until `num_steps` (or a stop):
                 a. Step   next(data_iter) -> to_device -> the jitted step, state donated; its
                           metrics stay on the device (nothing waits for the step)
                 b. Stop?  SIGTERM/SIGINT, Orbax's preemption notice, or the end of
                           `steps_this_run` (as a preemption would stop it)
                 c. Log    every `log_every` steps, at the last step and on a stop: the pending
                           metrics fetched, checked finite, averaged, with seconds per step and,
                           given the FLOPs of a step, TFLOP/s per device and MFU; progress with
                           an ETA every `log_every` steps (clu's ReportProgress, work-unit notes)
                 d. Save   every `checkpoint_every` steps, at the last step and on a stop (then
                           forced), each save only after every step since the last check had a
                           finite loss: a non-finite loss raises NonFiniteLossError and nothing
                           after the last good checkpoint is saved
                 e. Plan   after a periodic checkpoint, the `at_checkpoint` hook may move the
                           end of the run and hand over a new step (a time budget kept to the
                           clock: avdit.training.budget.ClockPlan)
               then the pending (asynchronous) saves are waited for.
  4. Evaluate  the `evaluate` hook, once a run reaches `num_steps` (not on a stop): e.g. the
               autoencoders' reconstructions of held-out clips; written as `eval_*` scalars.

A step is `train_step(state, inputs) -> (state, metrics)`: `state` has an integer `step` (the
optimizer steps taken) and `metrics` a `loss_is_finite` entry (1.0 or 0.0).
"""
from __future__ import annotations

import dataclasses
import signal
import time
from typing import Any, Callable, Iterator

import jax
import numpy as np
from absl import logging
from clu import metric_writers
from clu import periodic_actions

from avdit import checkpointing
from avdit import hardware
from avdit import sharding
from avdit import workdir as workdir_lib


class NonFiniteLossError(FloatingPointError):
  pass


@dataclasses.dataclass
class Result:
  state: Any
  step: int
  metrics: dict[str, float]  # the means of the last logged window ({} when no step was taken)
  stopped_by: str | None  # SIGTERM, SIGINT, preemption, steps_this_run; None: reached num_steps
  evaluation: dict[str, float]  # what `evaluate` returned ({} when it did not run)


# --- 1. Workdir -----------------------------------------------------------------------------------
def open_workdir(config, workdir: str) -> metric_writers.MetricWriter:
  """Creates `workdir`, writes config.json there (chief only); the run's metric writer."""
  workdir_lib.path(workdir).mkdir(parents=True, exist_ok=True)
  is_chief = jax.process_index() == 0
  writer = metric_writers.create_default_writer(workdir, just_logging=not is_chief)
  if is_chief:
    workdir_lib.write_text(workdir, "config.json", config.to_json_best_effort(indent=2))
  return writer


# --- 2. Resume ------------------------------------------------------------------------------------
def open_checkpoints(workdir: str, train_config, payload_names: tuple[str, ...]):
  """The run's CheckpointManager: items state, data_iter and one JSON item per payload name;
  `train.keep_checkpoints` kept (and multiples of `train.keep_period`, where set)."""
  return checkpointing.make_manager(
      workdir, keep=train_config.keep_checkpoints, async_save=train_config.async_checkpointing,
      keep_period=train_config.get("keep_period", 0),
      item_names=(*checkpointing.TRAINING_ITEMS, *payload_names))


def restore_latest(manager, state, data_iter, payload_names: tuple[str, ...]):
  """(state, {name: payload}) of the newest checkpoint that reads back whole, `data_iter` moved
  to its position in place, the state restored onto `state`'s shardings; (state, None) when
  there is none.

  A newer checkpoint that fails to read while an older one reads (a disk or copy fault: the
  same state restores, so it is not a changed config) is set aside in
  <workdir>/damaged_checkpoints/ with a warning. When none reads, nothing is moved and the
  newest one's error is raised: then the config, not the disk, is the likely cause.
  """
  abstract = checkpointing.abstract_like(state)
  failed = []  # (step, error), newest first
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      restored, payloads = checkpointing.restore_for_training(
          manager, step, abstract, data_iter, payload_names)
    except Exception as error:  # pylint: disable=broad-except  # judged once an older one reads
      failed.append((step, error))
      continue
    for bad_step, error in failed:
      where = checkpointing.set_aside(manager, bad_step)
      logging.error("CHECKPOINT OF STEP %d DOES NOT READ BACK (%s: %s). Resuming from step %d "
                    "instead; the damaged checkpoint is kept in %s.", bad_step,
                    type(error).__name__, str(error).splitlines()[0][:300], step, where)
    logging.info("Resumed from step %d in %s", step, manager.directory)
    return restored, payloads
  if failed:
    raise failed[0][1]
  return state, None


# --- 3. Run ---------------------------------------------------------------------------------------
def device_inputs(keys: tuple[str, ...], mesh) -> Callable[[dict], dict]:
  """host batch -> its model inputs `keys` as global arrays over `mesh` (the rest of a batch,
  indices and ground truth for metrics, stays on the host)."""
  return lambda batch: sharding.global_batch({k: batch[k] for k in keys}, mesh)


class StopSignal:
  """Turns SIGTERM/SIGINT into a flag the loop checks between steps (then saves and exits)."""

  def __init__(self):
    self.received = None
    self._previous = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread (e.g. inside some test runners): no handler
        pass
    return self

  def _handle(self, signum, frame):
    del frame
    self.received = signal.Signals(signum).name

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def check_finite(pending: list[dict], step: int, manager) -> None:
  """Raises NonFiniteLossError if a step of `pending` (host metrics of the steps ending at
  `step`) had a non-finite loss, naming it and the last good checkpoint."""
  finite = np.array([float(m["loss_is_finite"]) for m in pending])
  if finite.size and finite.min() < 1.0:
    first_bad = step - len(pending) + 1 + int(np.argmin(finite))
    last_good = manager.latest_step()
    where = (f"the last good checkpoint is step {last_good} in {manager.directory}"
             if last_good is not None else "no checkpoint had been written yet")
    raise NonFiniteLossError(
        f"the training loss became non-finite at step {first_bad}; stopping without saving. "
        f"{where}. Lower train.learning_rate or check the data.")


def _window_metrics(pending: list[dict], seconds: float, steps: int,
                    flops_per_step: float | None, peak_flops: float | None) -> dict[str, float]:
  """The window's mean metrics, seconds per step and, given FLOPs, TFLOP/s per device and MFU."""
  metrics = {k: float(np.mean([m[k] for m in pending])) for k in pending[0]}
  metrics["seconds_per_step"] = seconds / max(steps, 1)
  if flops_per_step:
    flops_per_device = flops_per_step / metrics["seconds_per_step"] / jax.device_count()
    metrics["tflops_per_device"] = flops_per_device / 1e12
    metrics["mfu"] = flops_per_device / peak_flops
  return metrics


def run(train_step: Callable, state, data_iter: Iterator, *, to_device: Callable, manager,
        writer: metric_writers.MetricWriter, payloads: dict[str, dict], num_steps: int,
        log_every: int, checkpoint_every: int, steps_this_run: int | None = None,
        flops_per_step: float | None = None, on_batch: Callable[[dict], None] | None = None,
        evaluate: Callable[[Any], dict[str, float]] | None = None,
        at_checkpoint: Callable[[int], tuple[int, Callable | None]] | None = None) -> Result:
  """Trains from `state` (fresh or restored) to `num_steps`; closes `manager` when it is done.

  train_step       the jitted step `(state, to_device(batch)) -> (state, metrics)`, state donated
  data_iter        a checkpointable grain iterator of host batches (saved with every checkpoint)
  payloads         JSON saved beside the state, one checkpoint item per name (see
                   `open_checkpoints`)
  steps_this_run   stop (with a checkpoint) after that many steps, as a preemption would; the
                   schedule stays that of `num_steps`
  flops_per_step   model FLOPs of one step (all devices), for TFLOP/s and MFU; None: not logged
  on_batch         hook called with each host batch before its step
  evaluate         hook called with the final state once the run reaches `num_steps`
  at_checkpoint    hook called with the step after each periodic checkpoint before the end:
                   (the run's new `num_steps`, a new train_step or None to keep this one)
  """
  step = int(jax.device_get(state.step))
  run_end = None if steps_this_run is None else step + steps_this_run
  stop_step = num_steps if run_end is None else min(num_steps, run_end)
  peak_flops = None
  if flops_per_step:
    peak_flops, peak_source = hardware.peak_flops_per_device()
    logging.info("MFU against %.1f TFLOP/s per device (%s)", peak_flops / 1e12, peak_source)
  report_progress = periodic_actions.ReportProgress(num_train_steps=num_steps, writer=writer,
                                                    every_steps=log_every)
  pending, last_metrics, stopped_by = [], {}, None  # pending: metrics not yet fetched/checked
  window_start, window_steps = time.time(), 0
  try:
    with StopSignal() as stop:
      while step < stop_step:
        # a. Step.
        batch = next(data_iter)
        if on_batch is not None:
          on_batch(batch)
        state, metrics = train_step(state, to_device(batch))
        step += 1
        window_steps += 1
        pending.append(metrics)
        report_progress(step)

        # b. Stop?
        stopping = (stop.received is not None or manager.reached_preemption(step)
                    or step == stop_step < num_steps)
        last = step == num_steps

        # c. Log.
        if step % log_every == 0 or last or stopping:
          pending = jax.device_get(pending)
          check_finite(pending, step, manager)
          last_metrics = _window_metrics(pending, time.time() - window_start, window_steps,
                                         flops_per_step, peak_flops)
          writer.write_scalars(step, last_metrics)
          pending, window_start, window_steps = [], time.time(), 0

        # d. Save.
        if step % checkpoint_every == 0 or last or stopping:
          pending = jax.device_get(pending)
          check_finite(pending, step, manager)
          checkpointing.save(manager, step, state, data_iter, payloads, force=stopping)

        if stopping:
          stopped_by = stop.received or ("preemption" if step < stop_step else "steps_this_run")
          logging.warning("Stopping at step %d on %s; checkpoint saved, rerun to resume.",
                          step, stopped_by)
          break

        # e. Plan.
        if at_checkpoint is not None and step % checkpoint_every == 0 and not last:
          planned, new_step = at_checkpoint(step)
          train_step = new_step or train_step
          if planned != num_steps:
            num_steps = planned
            stop_step = num_steps if run_end is None else min(num_steps, run_end)
            report_progress = periodic_actions.ReportProgress(
                num_train_steps=num_steps, writer=writer, every_steps=log_every)
  finally:  # saves already started are finished, even when a non-finite loss stops the run
    manager.wait_until_finished()
    manager.close()

  # 4. Evaluate.
  evaluation = {}
  if evaluate is not None and step == num_steps:
    evaluation = evaluate(state)
    writer.write_scalars(step, {f"eval_{k}": v for k, v in evaluation.items()})
  writer.flush()
  return Result(state=state, step=step, metrics=last_metrics, stopped_by=stopped_by,
                evaluation=evaluation)
