"""Sampling every configured task from a trained checkpoint, and writing what a person looks at.

For each task and each held-out conditioning clip: the clip is encoded and normalized, the
sampler generates the non-conditioning (modality, segment) elements, the result is decoded and
written as `samples/<task>_<i>.mp4` (the generated clip with sound), `<task>_<i>_compare.mp4`
(condition | generation side by side, given/generated bars) and `<task>_<i>.png` (frames,
waveform, spectrogram); `samples/index.html` lists them and `samples/summary.json` records the
settings and the time of each task (its first call, compilation included; with
`sample.time_tasks` also a second, compiled call and its time per sampler step).
"""
from __future__ import annotations

import dataclasses
import json
import time
from typing import Any, Callable, NamedTuple

import jax
from absl import logging
from flax import nnx

from avdit import checkpointing
from avdit import layout as layout_lib
from avdit import media
from avdit import sharding
from avdit import tasks as tasks_lib
from avdit import workdir as workdir_lib
from avdit.errors import UserError
from avdit.data import pipeline
from avdit.diffusion import schedule as schedule_lib
from avdit.diffusion import skip as skip_lib
from avdit.models import avdit as avdit_model
from avdit.models import latent_space as latent_lib
from avdit.sampling import parallel as parallel_lib
from avdit.sampling import samplers


def make_apply_fn(graphdef):
  """apply_fn(params, noisy, timestep_vector_bmn, self_cond) for the samplers."""

  def apply_fn(params, noisy, timestep_vector_bmn, self_cond):
    return nnx.merge(graphdef, params)(noisy, timestep_vector_bmn, self_cond)

  return apply_fn


def inference_config(config):
  """The config with model.remat off: sampling does not backpropagate through the network
  (remat would only add recompute), and nnx.remat inside the sampler's scan is rejected by
  Flax's trace-level check. Parameters are the same."""
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.model.remat = "none"
  return config


def _restore_denoiser(config, workdir: str, mesh, step: int):
  """(apply_fn, sampling params, latent stats, step) of a checkpoint (the latest for step=-1),
  restored sharded over `mesh` by the config's logical-axis rules (EMA or raw weights per
  `sample.use_ema`); apply_fn carries the config's skip path."""
  layout = layout_lib.layout_from_config(config)
  rules = sharding.logical_axis_rules(config.mesh)
  with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
    graphdef, abstract = avdit_model.abstract_params(config.model, layout)
    shardings = sharding.state_shardings(abstract, mesh, rules)
  params, payload, step = checkpointing.restore_for_sampling(
      workdir, sharding.with_shardings(abstract, shardings), step, ema=config.sample.use_ema)
  if payload["latent_space"] != config.latent.name:
    raise ValueError(f"checkpoint latent space {payload['latent_space']!r} != config "
                     f"{config.latent.name!r}")
  stats = latent_lib.stats_from_json(payload["stats"])
  apply_fn = skip_lib.apply_fn_with_skip(make_apply_fn(graphdef), config.diffusion,
                                         schedule_lib.from_config(config.diffusion), layout, stats)
  return apply_fn, params, stats, step


def load_for_sampling(config, workdir: str, mesh=None):
  """(layout, latent space, apply_fn, params, latent stats, checkpoint step).

  The parameters are restored sharded over `mesh` (default: the config's mesh over all devices)
  by the config's logical-axis rules, as in training: a model trained on a pod samples on a
  smaller slice (SPEC §2: 16 chips) by the same rules, and every host restores only its shards.
  """
  config = inference_config(config)
  layout = layout_lib.layout_from_config(config)
  latent_space = latent_lib.make_latent_space(config, layout)
  mesh = sharding.make_mesh(config.mesh) if mesh is None else mesh
  apply_fn, params, stats, step = _restore_denoiser(config, workdir, mesh,
                                                    config.sample.checkpoint_step)
  return layout, latent_space, apply_fn, params, stats, step


class Denoiser(NamedTuple):
  """What the tasks are sampled with: `apply_fn(params, noisy, t_bmn, self_cond)`, and
  `settings`, the `sample.autoguidance_*` fields with the step of this run's checkpoint that
  guided (`autoguidance_guide_step`) when autoguided, else {} (recorded with the results)."""
  apply_fn: Callable
  params: Any
  settings: dict


def sampling_denoiser(config, workdir: str, loaded, mesh) -> Denoiser:
  """The loaded model's own denoiser, or, with `sample.autoguidance_weight` w != 0, the model
  guided by a worse one (samplers.Autoguided; twice the network calls): its own EMA at the
  earlier checkpoint `autoguide_step`, or the model of another run on the same latents,
  `sample.autoguidance_workdir` (its latest checkpoint, or `autoguidance_step`; its model config
  from its config.json)."""
  _, _, apply_fn, params, _, step = loaded
  weight = float(config.sample.get("autoguidance_weight", 0.0))
  if weight == 0:
    return Denoiser(apply_fn, params, {})
  settings = {name: config.sample[name] for name in config.sample
              if name.startswith("autoguidance")}
  guide_workdir = config.sample.get("autoguidance_workdir", "")
  if guide_workdir:
    guide_step = int(config.sample.get("autoguidance_step", -1))
  else:
    guide_step = settings["autoguidance_guide_step"] = autoguide_step(config.sample, workdir, step)
  logging.info("autoguidance: w = %s, the guide %s at step %s", weight,
               guide_workdir or "this run", "latest" if guide_step == -1 else guide_step)
  guide_config = _with_model_of(config, guide_workdir) if guide_workdir else config
  guide_apply, guide_params, _, _ = _restore_denoiser(
      inference_config(guide_config), guide_workdir or workdir, mesh, guide_step)
  modalities = tuple(config.sample.get("autoguidance_modalities", "video,audio").split(","))
  try:
    guided = samplers.Autoguided(apply_fn, weight, modalities, guide_apply)
  except ValueError as e:
    raise UserError(f"sample.autoguidance_modalities: {e}") from None
  return Denoiser(guided, (params, guide_params), settings)


def autoguide_step(sample_config, workdir: str, step: int) -> int:
  """The step of the same run's checkpoint that guides the model at `step`:
  `autoguidance_step` where it is set (>= 0), else, with `autoguidance_fraction` f > 0, the kept
  checkpoint before `step` nearest f * step (a third: the rule measured in
  docs/learning_the_link.md, "Autoguidance")."""
  guide_step = int(sample_config.get("autoguidance_step", -1))
  fraction = float(sample_config.get("autoguidance_fraction", 0.0))
  earlier = [s for s in checkpointing.checkpoint_steps(workdir) if s < step]
  if guide_step < 0 and fraction > 0 and earlier:
    guide_step = min(earlier, key=lambda s: abs(s - fraction * step))
  if guide_step not in earlier:
    raise UserError(
        f"sample.autoguidance_weight={sample_config.autoguidance_weight} needs an earlier "
        f"checkpoint of the same run as its guide: sample.autoguidance_step (one of {earlier}, "
        f"got {guide_step}) or sample.autoguidance_fraction (> 0: the kept one nearest that "
        f"fraction of step {step}); or another run in sample.autoguidance_workdir")
  return guide_step


def _with_model_of(config, run_workdir: str):
  """`config` with the `model` fields of the run in `run_workdir` (its config.json)."""
  saved = json.loads(workdir_lib.path(run_workdir, "config.json").read_text())["model"]
  config = config.copy_and_resolve_references()
  with config.unlocked():
    for name, value in saved.items():
      current = config.model.get(name)
      config.model[name] = tuple(value) if isinstance(current, tuple) else value
  return config


def held_out_seed(config, seed: int) -> int:
  """The data seed of held-out clips for a sampling/eval seed (never the training world's)."""
  return config.data.seed + 1_000_003 + seed


def encode_condition(latent_space, stats, clips, mesh):
  """(normalized latents sharded over data x fsdp, number of real rows) of held-out clips.

  Every host holds the same clips; the batch is padded to divide the mesh's batch axes.
  """
  model_inputs, num_clips = sharding.replicated_batch(
      {k: clips[k] for k in ("video", "audio")}, mesh, pad_to_mesh=True)
  condition = latent_lib.normalize(
      jax.jit(latent_space.encode)(model_inputs["video"], model_inputs["audio"]), stats)
  return condition, num_clips


def make_decoder(latent_space, stats):
  """jitted normalized latents -> (video uint8 [B, F, H, W, 3], audio float32 [B, L])."""
  return jax.jit(lambda z: latent_space.decode(latent_lib.denormalize(z, stats)))


def sample_task_latents(config, apply_fn, params, condition, task, rng, *, schedule, layout,
                        spec) -> tuple[dict, dict]:
  """(latents, stats) of one task: the sequential sampler, or Picard iteration when
  `config.sample.parallel` (stats: parallel iterations and denoiser evaluations; else {})."""
  if config.sample.get("parallel", False):
    return parallel_lib.sample_latents_parallel(
        apply_fn, params, condition, task.condition_mask, rng, schedule=schedule, layout=layout,
        spec=spec, parallel=parallel_lib.ParallelSpec.from_config(config.sample))
  return samplers.sample_latents(apply_fn, params, condition, task.condition_mask, rng,
                                 schedule=schedule, layout=layout, spec=spec), {}


def _run_timed(run, num_steps: int, time_compiled: bool) -> tuple[dict, dict]:
  """(latents, timing) of `run() -> (latents, sampler stats)`: its first call, compilation
  included, and the sampler stats (parallel iterations, NFE); with `time_compiled` a second,
  compiled call times the sampler itself (off by default: it samples the task twice)."""
  start = time.time()
  latents, stats = jax.block_until_ready(run())
  timing = {"first_call_s": time.time() - start}
  if time_compiled:
    start = time.time()
    latents, stats = jax.block_until_ready(run())
    seconds = time.time() - start
    timing.update(seconds=seconds, seconds_per_step=seconds / num_steps)
  return latents, {**timing, **{k: int(v) for k, v in stats.items()}}


def sample(config, workdir: str) -> list[dict]:
  """Samples every task in `config.sample.tasks`; returns the index entries written."""
  mesh = sharding.make_mesh(config.mesh)
  loaded = load_for_sampling(config, workdir, mesh)
  layout, latent_space, _, _, stats, step = loaded
  denoiser = sampling_denoiser(config, workdir, loaded, mesh)
  schedule = schedule_lib.from_config(config.diffusion)
  task_list = tasks_lib.parse_tasks(config.sample.tasks, layout)
  clips = pipeline.make_eval_clips(config.data, layout, config.sample.num_clips,
                                   seed=held_out_seed(config, config.sample.seed))
  condition, num_clips = encode_condition(latent_space, stats, clips, mesh)
  decode = make_decoder(latent_space, stats)
  is_chief = jax.process_index() == 0
  entries, timings, generated = [], {}, {}
  specs = samplers.specs_by_task(config, task_list)
  rng = jax.random.key(config.sample.seed)
  for task_index, task in enumerate(task_list):
    task_rng = jax.random.fold_in(rng, task_index)
    spec = specs[task.name]

    def run():
      with jax.set_mesh(mesh):
        return sample_task_latents(config, denoiser.apply_fn, denoiser.params, condition, task,
                                   task_rng, schedule=schedule, layout=layout, spec=spec)

    latents, timings[task.name] = _run_timed(run, spec.num_steps,
                                             config.sample.get("time_tasks", False))
    logging.info("task %s (%d %s steps): %s", task.name, spec.num_steps, spec.sampler,
                 timings[task.name])
    generated[task.name] = sharding.fetch(decode(latents))
  if not is_chief:
    return entries
  # Written locally (PyAV, matplotlib), then copied when the workdir is a bucket. File names in
  # the index and summary are relative to samples/.
  with workdir_lib.local_staging(workdir_lib.path(workdir, "samples")) as samples_dir:
    for task in task_list:
      video, audio = generated[task.name]
      for i in range(num_clips):
        stem = f"{task.name}_{i}"
        media.write_mp4(samples_dir / f"{stem}.mp4", video[i], audio[i], layout.fps,
                        layout.sample_rate)
        media.write_comparison_mp4(samples_dir / f"{stem}_compare.mp4", clips["video"][i],
                                   video[i], audio[i], task.condition_mask, layout)
        media.write_strip_png(samples_dir / f"{stem}.png", clips["video"][i], video[i],
                              clips["audio"][i], audio[i], task.condition_mask, layout,
                              title=f"{task.name} ({task.spec or 'unconditional'}), clip {i}, "
                              f"step {step}")
        entries.append({"title": f"{task.name} #{i}", "task": task.name, "spec": task.spec,
                        "sampler": dataclasses.asdict(specs[task.name]),
                        "videos": [f"{stem}_compare.mp4", f"{stem}.mp4"], "png": f"{stem}.png",
                        "checkpoint_step": step})
    media.write_index_html(samples_dir, entries)
    (samples_dir / "summary.json").write_text(json.dumps(
        {"checkpoint_step": step,
         "sampler": {name: dataclasses.asdict(spec) for name, spec in specs.items()},
         "denoiser": denoiser.settings,
         "timings": timings,
         "files": [e["videos"] + [e["png"]] for e in entries]}, indent=2))
  return entries
