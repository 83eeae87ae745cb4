"""Training AVDiT with MoNL: one readable loop in labelled phases.

  1. Setup      layout, latent space, metric writers, the config written next to the checkpoints
  2. Data       the grain iterator (its position is saved with every checkpoint)
  3. State      model + AdamW + EMA, restored exactly from the latest checkpoint if there is one
  4. Step       one jitted train step, state donated, no host sync
  5. Loop       metrics fetched only every `log_every` steps; checkpoints every
                `checkpoint_every` steps, at the end, and on SIGTERM/SIGINT (preemption)

A non-finite loss stops the run with a clear error before anything after the last good
checkpoint is saved.
"""
from __future__ import annotations

import json
import signal
import time

import jax
import numpy as np
from absl import logging
from clu import metric_writers
from clu import periodic_actions

from avdit import checkpointing
from avdit import hardware
from avdit import layout as layout_lib
from avdit import sharding
from avdit import workdir as workdir_lib
from avdit.data import latent_cache
from avdit.data import pipeline
from avdit.models import avdit as avdit_model
from avdit.models import latent_space as latent_lib
from avdit.training import state as state_lib

MODEL_INPUTS = ("video", "audio")  # the rest of a batch is ground truth for metrics


class NonFiniteLossError(FloatingPointError):
  pass


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


def _latent_payload(config, stats) -> dict:
  return {"latent_space": config.latent.name, "stats": latent_lib.stats_to_json(stats)}


def _estimate_latent_stats(config, layout, latent_space):
  """Latent normalization (latent_space.estimate_stats) on the first `stats_clips` train clips."""
  world = pipeline.make_source(config.data, layout)
  clips = [world[i] for i in range(min(config.latent.stats_clips, len(world)))]
  latents = jax.jit(latent_space.encode)(np.stack([c["video"] for c in clips]),
                                         np.stack([c["audio"] for c in clips]))
  def names(field):
    return tuple(filter(None, config.latent.get(field, "").split(",")))
  return latent_lib.estimate_stats(latents, shared=names("shared_stats"), whiten=names("whiten"),
                                   whiten_rank=config.latent.get("whiten_rank", 128))


def _fully_whitened(config, modality: str, channels: int) -> bool:
  """Whitened to unit variance in every direction: the noise left outside the head's span is
  then distributed as the data is there, so ε/v heads narrower than the token are fine."""
  whitened = modality in config.latent.get("whiten", "").split(",")
  return whitened and config.latent.get("whiten_rank", 0) >= channels


def check_finite(pending, step, manager, workdir):
  finite = np.array([float(m["loss_is_finite"]) for m in pending])
  if finite.size and finite.min() < 1.0:
    first_bad = step - len(pending) + 1 + int(np.argmin(finite))
    last_good = manager.latest_step()
    where = (f"the last good checkpoint is step {last_good} in "
             f"{checkpointing.checkpoint_dir(workdir)}" if last_good is not None
             else "no checkpoint had been written yet")
    raise NonFiniteLossError(
        f"the training loss became non-finite at step {first_bad}; stopping without saving. "
        f"{where}. Lower train.learning_rate or check the data.")


def train(config, workdir: str, steps_this_run: int | None = None,
          record_batches: bool = False) -> dict:
  """Trains (or resumes) in `workdir`; returns a summary (final step, metrics, batches seen).

  `steps_this_run` stops (with a checkpoint) after that many steps, as a preemption would,
  without changing the schedule, which is defined by `config.train.num_steps`.
  `record_batches` keeps each batch's clip indices in the summary (for resume checks).
  """
  # --- 1. Setup ---------------------------------------------------------------------------------
  workdir_lib.path(workdir).mkdir(parents=True, exist_ok=True)
  is_chief = jax.process_index() == 0
  layout = layout_lib.layout_from_config(config)
  latent_space = latent_lib.make_latent_space(config, layout)
  cache_source = None
  if config.data.name == "latent_cache":
    # Batches already hold latents: the step passes them through; the cache's own statistics
    # normalize them, and its recorded autoencoders must be the ones the config samples with.
    cache_source = pipeline.make_source(config.data, layout)
    if isinstance(latent_space, latent_lib.LearnedLatents):
      latent_cache.check_meta(cache_source.meta, layout,
                              latent_cache.identity_for_meta(latent_space),
                              config.data.cache_dir)
    step_latent_space = latent_lib.PrecomputedLatents(layout)
  else:
    step_latent_space = latent_space
  writer = metric_writers.create_default_writer(workdir, just_logging=not is_chief)
  if is_chief:
    workdir_lib.write_text(workdir, "config.json", config.to_json_best_effort(indent=2))

  # --- 2. Data ----------------------------------------------------------------------------------
  train_iter = pipeline.make_train_iterator(config.data, layout)

  # --- 3. State: fresh, or restored exactly (params, optimizer, EMA, step, data position) ----------
  # Created directly in its shardings over the (data, fsdp, tensor) mesh of config.mesh.
  mesh = sharding.training_mesh(config)
  graphdef, state, state_shardings = state_lib.sharded_train_state(config, layout, mesh)
  num_params = sum(x.size for x in jax.tree_util.tree_leaves(state.params))
  manager = checkpointing.make_manager(workdir, keep=config.train.keep_checkpoints,
                                       async_save=config.train.async_checkpointing,
                                       keep_period=config.train.get("keep_period", 0))
  latest = manager.latest_step()
  if latest is not None:
    state, payload = checkpointing.restore_for_training(
        manager, latest, checkpointing.abstract_like(state), train_iter)
    if payload["latent_space"] != config.latent.name:
      raise ValueError(f"checkpoint in {workdir} was trained on latent space "
                       f"{payload['latent_space']!r}, the config says {config.latent.name!r}")
    latent_stats = latent_lib.stats_from_json(payload["stats"])
    logging.info("Resumed from step %d in %s", latest, checkpointing.checkpoint_dir(workdir))
  elif cache_source is not None:
    latent_stats = cache_source.stats
  else:
    latent_stats = _estimate_latent_stats(config, layout, latent_space)
  latent_payload = _latent_payload(config, latent_stats)
  flops_per_step = avdit_model.train_flops_per_step(config.model, layout,
                                                    config.data.batch_size)
  peak_flops, peak_source = hardware.peak_flops_per_device()
  logging.info("Mesh %s over %d devices; MFU against %.1f TFLOP/s per device (%s)",
               dict(mesh.shape), mesh.size, peak_flops / 1e12, peak_source)
  logging.info("AVDiT: %d parameters, %d tokens (%d video + %d audio), N=%d segments, "
               "%.2f GFLOP per train step", num_params, layout.num_tokens,
               layout.num_video_tokens, layout.audio_latents, layout.num_segments,
               flops_per_step / 1e9)
  narrow = [f"{m} ({c} channels)" for m, c in (("video", layout.video_channels *
                                                 config.model.patch_size**2),
                                                ("audio", layout.audio_channels))
            if c > config.model.width and not _fully_whitened(config, m, c)]
  if narrow and config.diffusion.prediction != "x0":
    # The output head is a rank-`width` map: ε (full rank) cannot be predicted beyond a
    # width-dimensional subspace, which floors the loss at ≈ 1 - width / channels, and the noise
    # outside it is never removed (schedule.prediction_to_x0_eps).
    logging.warning("model.width=%d is below the latent channels of %s: the ε/v head cannot "
                    "represent the target; expect a loss floor and noisy samples. Use "
                    "diffusion.prediction=x0, a wider model or a latent space with fewer "
                    "channels.", config.model.width, ", ".join(narrow))
  if is_chief and latest is None:
    writer.write_hparams({k: v for k, v in config.to_dict().items() if not isinstance(v, dict)})

  # --- 4. The step ------------------------------------------------------------------------------
  train_step = state_lib.make_train_step(
      config, layout, graphdef, step_latent_space, latent_stats, state_shardings=state_shardings,
      batch_sharding=sharding.batch_sharding(mesh))

  # --- 5. Loop ----------------------------------------------------------------------------------
  num_steps = config.train.num_steps
  step = int(jax.device_get(state.step))
  stop_step = num_steps if steps_this_run is None else min(num_steps, step + steps_this_run)
  report_progress = periodic_actions.ReportProgress(num_train_steps=num_steps, writer=writer,
                                                    every_steps=config.train.log_every)
  pending, seen_indices, last_metrics = [], [], {}
  stopped_by = None
  window_start, window_steps = time.time(), 0
  with StopSignal() as stop:
    while step < stop_step:
      batch = next(train_iter)
      if record_batches:
        seen_indices.append(np.asarray(batch["index"]))
      state, metrics = train_step(
          state, sharding.global_batch({k: batch[k] for k in MODEL_INPUTS}, mesh))
      step += 1
      window_steps += 1
      pending.append(metrics)
      report_progress(step)
      preempted = stop.received is not None or manager.reached_preemption(step)

      preempted = preempted or step == stop_step < num_steps
      if step % config.train.log_every == 0 or step == num_steps or preempted:
        pending = jax.device_get(pending)
        check_finite(pending, step, manager, workdir)
        last_metrics = {k: float(np.mean([m[k] for m in pending])) for k in pending[0]}
        seconds = (time.time() - window_start) / max(window_steps, 1)
        last_metrics["seconds_per_step"] = seconds
        flops_per_device = flops_per_step / seconds / jax.device_count()
        last_metrics["tflops_per_device"] = flops_per_device / 1e12
        last_metrics["mfu"] = flops_per_device / peak_flops
        writer.write_scalars(step, last_metrics)
        pending, window_start, window_steps = [], time.time(), 0

      if step % config.train.checkpoint_every == 0 or step == num_steps or preempted:
        check_finite(jax.device_get(pending), step, manager, workdir)
        checkpointing.save(manager, step, state, train_iter, latent_payload, force=preempted)
      if preempted:
        stopped_by = stop.received or ("preemption" if step < stop_step else "steps_this_run")
        logging.warning("Stopping at step %d on %s; checkpoint saved, rerun to resume.",
                        step, stopped_by)
        break

  manager.wait_until_finished()
  manager.close()
  writer.flush()
  return {"step": step, "metrics": last_metrics, "batch_indices": seen_indices,
          "stopped_by": stopped_by, "num_params": num_params, "state": state,
          "latent_stats": latent_stats, "flops_per_step": flops_per_step}


def write_summary(workdir: str, summary: dict) -> None:
  """train_summary.json; a rerun of a finished training (no step left, no metrics) keeps the
  summary of the run that finished it."""
  path = workdir_lib.path(workdir, "train_summary.json")
  if not summary["metrics"] and path.exists():
    return
  keep = {k: summary[k] for k in ("step", "metrics", "stopped_by", "num_params", "flops_per_step")}
  workdir_lib.write_text(workdir, "train_summary.json", json.dumps(keep, indent=2))
