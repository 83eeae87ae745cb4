"""Training AVDiT with MoNL: the model's setup in labelled phases, run by the shared loop.

  1. Setup      layout, latent space, model, state in its shardings (`avdit.training.setup`, as
                the benchmarks and the AOT compiler build them); with `train.num_steps=0` the
                number of steps a time budget allows on this machine (`budget.fit_budget`);
                metric writers, the config written next to the checkpoints
  2. Data       the grain iterator (its position is saved with every checkpoint)
  3. State      model + AdamW + EMA, restored exactly from the latest checkpoint if there is one,
                with the latent statistics saved beside it (checkpoint item `latent`); a new
                run with `train.init_from=DIR[:step]` starts from that run's parameters and
                EMA instead of random ones (fine-tuning: fresh optimizer, step 0)
  4. Step       one jitted train step, state donated, no host sync
  5. Loop       `avdit.training.loop.run`: metrics fetched only every `log_every` steps (with
                MFU against the analytic FLOPs of a step); checkpoints every `checkpoint_every`
                steps, at the end, and on SIGTERM/SIGINT (preemption); a time budget with
                `train.decay_fraction` kept to the clock at each checkpoint (budget.ClockPlan)

A non-finite loss stops the run with a clear error before anything after the last good
checkpoint is saved (loop.NonFiniteLossError).
"""
from __future__ import annotations

import dataclasses
import json
import time

import jax
import numpy as np
from absl import logging

from avdit import checkpointing
from avdit import sharding
from avdit import workdir as workdir_lib
from avdit.errors import UserError
from avdit.data import latent_cache
from avdit.data import pipeline
from avdit.models import latent_space as latent_lib
from avdit.training import budget
from avdit.training import loop
from avdit.training import setup as setup_lib
from avdit.training import state as state_lib

PAYLOADS = ("latent",)  # saved beside the state: the latent space and its statistics


def _latent_payload(config, stats) -> dict:
  return {"latent_space": config.latent.name, "stats": latent_lib.stats_to_json(stats)}


def _fully_whitened(config, modality: str, channels: int) -> bool:
  """Whitened to unit variance in every direction: the noise left outside the head's span is
  then distributed as the data is there, so ε/v heads narrower than the token are fine."""
  whitened = modality in latent_lib.config_modalities(config.latent, "whiten")
  return whitened and config.latent.get("whiten_rank", 0) >= channels


def train(config, workdir: str, steps_this_run: int | None = None,
          record_batches: bool = False) -> dict:
  """Trains (or resumes) in `workdir`; returns a summary (final step, metrics, batches seen).

  `steps_this_run` stops (with a checkpoint) after that many steps, as a preemption would,
  without changing the schedule, which is defined by `config.train.num_steps`.
  `record_batches` keeps each batch's clip indices in the summary (for resume checks).
  """
  # --- 1. Setup ---------------------------------------------------------------------------------
  # The state is created directly in its shardings over the (data, fsdp, tensor) mesh of
  # config.mesh (setup.setup_train, as the benchmarks and the AOT compiler build it).
  started = time.monotonic()  # the time budget counts from here
  is_chief = jax.process_index() == 0
  setup = setup_lib.setup_train(config, sharding.training_mesh(config))
  config, new_plan = budget.fit_budget(config, workdir, setup)
  setup = dataclasses.replace(setup, config=config)
  layout, mesh, state = setup.layout, setup.mesh, setup.state
  if config.data.name == "latent_cache" and isinstance(setup.latent_space,
                                                     latent_lib.LearnedLatents):
    # Batches already hold latents: the step passes them through; the cache's own statistics
    # normalize them (estimate_latent_stats), and its recorded autoencoders must be the ones
    # the config samples with.
    latent_cache.check_meta(pipeline.make_source(config.data, layout).meta, layout,
                            latent_cache.identity_for_meta(setup.latent_space),
                            config.data.cache_dir)
  writer = loop.open_workdir(config, workdir)

  # --- 2. Data ----------------------------------------------------------------------------------
  train_iter = pipeline.make_train_iterator(config.data, layout)

  # --- 3. State: fresh, or restored exactly (params, optimizer, EMA, step, data position) ----------
  manager = loop.open_checkpoints(workdir, config.train, PAYLOADS)
  state, restored = loop.restore_latest(manager, state, train_iter, PAYLOADS)
  if restored is None and config.train.get("init_from", ""):
    state = init_from_checkpoint(config, state)
  if restored is not None:
    payload = restored["latent"]
    if payload["latent_space"] != config.latent.name:
      raise ValueError(f"checkpoint in {workdir} was trained on latent space "
                       f"{payload['latent_space']!r}, the config says {config.latent.name!r}")
    latent_stats = latent_lib.stats_from_json(payload["stats"])
  else:
    latent_stats = setup_lib.estimate_latent_stats(config, layout, setup.latent_space)
  latent_payload = _latent_payload(config, latent_stats)
  num_params, flops_per_step = setup.num_params, setup.flops_per_step
  logging.info("Mesh %s over %d devices", dict(mesh.shape), mesh.size)
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
  if is_chief and restored is None:
    writer.write_hparams({k: v for k, v in config.to_dict().items() if not isinstance(v, dict)})

  # --- 4. The step ------------------------------------------------------------------------------
  make_step = lambda step_config: dataclasses.replace(setup, config=step_config).make_step(
      latent_stats)
  clock = None
  if new_plan is not None and config.train.get("decay_fraction", 0.0) > 0:
    # Planned now, in this invocation: its deadline is known, so the end follows the clock.
    clock = budget.ClockPlan(config, workdir, started + 60.0 * config.train.budget_minutes,
                             new_plan, make_step)
  train_step = make_step(config if clock is None else clock.held_config)

  # --- 5. Loop ----------------------------------------------------------------------------------
  seen_indices = []  # each batch's clip indices, with record_batches
  record = lambda batch: seen_indices.append(np.asarray(batch["index"]))
  result = loop.run(
      train_step, state, train_iter, to_device=loop.device_inputs(setup_lib.MODEL_INPUTS, mesh),
      manager=manager, writer=writer, payloads={"latent": latent_payload},
      num_steps=config.train.num_steps, log_every=config.train.log_every,
      checkpoint_every=config.train.checkpoint_every, steps_this_run=steps_this_run,
      flops_per_step=flops_per_step, on_batch=record if record_batches else None,
      at_checkpoint=None if clock is None else clock.at_checkpoint)
  return {"step": result.step, "metrics": result.metrics, "batch_indices": seen_indices,
          "stopped_by": result.stopped_by, "num_params": num_params, "state": result.state,
          "latent_stats": latent_stats, "flops_per_step": flops_per_step}


def check_init_from(config, params) -> tuple[str, int]:
  """(run directory, step) of `train.init_from` ('DIR[:step]', latest step by default), after
  checking that its model is this config's: every parameter of `params` (arrays or their
  ShapeDtypeStructs) saved there with the same shape, and the same latent space.

  Raises:
    UserError: no such checkpoint, or the first parameter whose shape differs, with both shapes.
  """
  spec = config.train.init_from
  source, step = checkpointing.parse_run_spec(spec)
  try:
    step = checkpointing.resolve_step(source, step)
  except FileNotFoundError as e:
    raise UserError(f"train.init_from={spec}: {e}") from None
  saved = checkpointing.saved_state_shapes(source, step)
  saved = {k.split("/", 1)[1]: v for k, v in saved.items() if k.startswith("params/")}
  ours = {checkpointing.path_name(path): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}
  for name in [*ours, *(k for k in saved if k not in ours)]:
    if saved.get(name) != ours.get(name):
      raise UserError(
          f"train.init_from={spec}: the model in {source} (step {step}) does not match "
          f"config.model: parameter {name} is {saved.get(name, 'absent')} there and "
          f"{ours.get(name, 'absent')} here. Fine-tune with that run's config.model (width, "
          "depth, heads, patch size) and clip geometry.")
  latent = checkpointing.read_payload(source, step, "latent")["latent_space"]
  if latent != config.latent.name:
    raise UserError(f"train.init_from={spec}: that run was trained on latent space "
                    f"{latent!r}, this config uses {config.latent.name!r}.")
  return source, step


def init_from_checkpoint(config, state: state_lib.TrainState) -> state_lib.TrainState:
  """`state` (as created: step 0, fresh optimizer moments) with the parameters and EMA of the
  run `train.init_from`, on `state`'s shardings. The learning-rate schedule, warm-up included,
  starts again; the latent statistics are this run's own (estimated on its data)."""
  source, step = check_init_from(config, state.params)
  abstract = checkpointing.abstract_like({"params": state.params,
                                          "ema_params": state.ema_params})
  restored = checkpointing.restore_subtrees(source, step, abstract)
  logging.info("Initialized the parameters and EMA from %s, step %d (fine-tuning: optimizer "
               "and step start fresh).", source, step)
  return state.replace(params=restored["params"], ema_params=restored["ema_params"])


def write_summary(workdir: str, summary: dict) -> None:
  """train_summary.json; a rerun of a finished training (no step left, no metrics) keeps the
  summary of the run that finished it."""
  path = workdir_lib.path(workdir, "train_summary.json")
  if not summary["metrics"] and path.exists():
    return
  keep = {k: summary[k] for k in ("step", "metrics", "stopped_by", "num_params", "flops_per_step")}
  workdir_lib.write_text(workdir, "train_summary.json", json.dumps(keep, indent=2))
