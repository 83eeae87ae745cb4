"""Checks, before any training or encoding starts, that a run will find what its later stages need.

A run that trains for hours and then fails to sample because the dataset has no held-out split
is the worst outcome for a user; every mode of avdit.main calls `check` first, which raises
`UserError` naming the first problem and its fix:

  workdir          writable (a probe file is written and removed)
  TFDS data        prepared, clips of config.clip's geometry, and every split a stage of this mode
                   reads present with enough clips: data.train_split for training (one batch),
                   data.eval_split for sampling (sample.num_clips) and the task suite
                   (eval.num_clips, eval.curve_num_clips)
  train.init_from  a checkpoint whose model has this config's parameter shapes
  checkpoints      modes that only read a trained AVDiT (sample, eval, curve) find one
  feature weights  I3D / VGGish weight files named by eval.* exist
  sampler          sample.guidance_by_task names known tasks with numeric weights; the sampler
                   settings are valid together (e.g. resample with a sequential ddpm/ddim)
  loss             diffusion.loss_weighting (and its cap) is one the training loss can apply, and
                   the training levels' density (timestep_density, timestep_uniform_fraction) too
  claims           an experiment's claims (experiment.claims) compare rows it has
  pipeline stages  a config that reads a finished pipeline run (`pipeline_workdir`) finds its
                   latent cache and video autoencoder there

Synthetic data is made on the fly and always has what is asked of it; latent-cache data is
checked through `data.raw`, the clips it encodes.
"""
from __future__ import annotations

import os
import uuid

from avdit import checkpointing
from avdit import layout as layout_lib
from avdit import workdir as workdir_lib
from avdit.data import latent_cache
from avdit.data import pipeline
from avdit.diffusion import loss as loss_lib
from avdit.diffusion import schedule as schedule_lib
from avdit.errors import UserError
from avdit.sampling import parallel
from avdit.sampling import samplers
from avdit.training import state as state_lib
from avdit.training import train
from avdit.workflows import experiment

TRAINING_MODES = ("train", "train_and_sample", "pipeline", "experiment")
SAMPLING_MODES = ("sample", "train_and_sample", "pipeline")
SUITE_MODES = ("eval", "experiment")  # and the pipeline, when config.pipeline_eval
READ_ONLY_MODES = ("sample", "eval", "curve")  # need a trained AVDiT in the model directory


def check(config, mode: str, workdir: str) -> None:
  """Raises UserError if a run of `mode` on `config` would fail later for want of something."""
  check_workdir_writable(workdir)
  if config.get("pipeline_workdir"):
    check_pipeline_stages(config)
  check_data(config, mode)
  if mode in SAMPLING_MODES + SUITE_MODES + ("curve",):
    try:
      samplers.parse_guidance_by_task(config.sample.get("guidance_by_task", ""))
      spec = samplers.SamplerSpec.from_config(config.sample, config.diffusion, config.model)
      if config.sample.get("parallel", False):
        parallel.check_sampler_spec(spec)
    except ValueError as e:
      raise UserError(str(e)) from None
  if mode in TRAINING_MODES and "diffusion" in config:
    try:
      state_lib.check_loss_weighting(config.diffusion)
      loss_lib.level_densities(config.diffusion, schedule_lib.from_config(config.diffusion))
      state_lib.condition_weights_at(config, layout_lib.layout_from_config(config).num_segments)
    except ValueError as e:
      raise UserError(str(e)) from None
  if mode == "experiment":
    try:
      experiment.claims(config)
    except ValueError as e:
      raise UserError(str(e)) from None
  if mode in TRAINING_MODES and config.train.get("init_from", ""):
    layout = layout_lib.layout_from_config(config)
    train.check_init_from(config, state_lib.abstract_train_state(config, layout)[1].params)
  if mode in READ_ONLY_MODES:
    try:
      checkpointing.resolve_step(workdir_lib.model_dir(config, workdir),
                                 config.sample.checkpoint_step)
    except FileNotFoundError as e:
      raise UserError(str(e)) from None
  if mode in SUITE_MODES + ("curve", "pipeline"):
    check_feature_weights(config.eval)


def check_workdir_writable(workdir: str) -> None:
  probe = workdir_lib.path(workdir, f".avdit_write_check_{uuid.uuid4().hex}")
  try:
    probe.parent.mkdir(parents=True, exist_ok=True)
    probe.write_text("")
    probe.unlink()
  except OSError as e:
    raise UserError(f"the workdir {workdir} is not writable ({e}); pass a --workdir you can "
                    "write to.") from None


def check_pipeline_stages(config) -> None:
  """The latent cache and video autoencoder of the finished pipeline run a config reads
  (`pipeline_workdir`; their directories filled in by workdir.with_stage_dirs)."""
  fix = (f"run the pipeline there first (python -m avdit.main "
         f"--config=configs/avdit_pipeline.py --workdir={config.pipeline_workdir})")
  try:
    latent_cache.read_meta(config.data.cache_dir)
    checkpointing.resolve_step(config.latent.video_autoencoder_workdir)
  except FileNotFoundError as e:
    raise UserError(f"pipeline_workdir={config.pipeline_workdir} is not a finished pipeline "
                    f"run: {e}; {fix}") from None


def needed_splits(config, mode: str) -> list[tuple[str, str, int]]:
  """(split, what reads it, clips it needs) of every TFDS split a run of `mode` reads."""
  data = pipeline.clip_data_config(config)
  train_split = data.get("train_split", None) or "train"
  eval_split = data.get("eval_split", None) or "test"
  needs = []
  if mode in TRAINING_MODES + ("encode",):
    needs.append((train_split, "training (data.train_split, one batch)",
                  config.data.batch_size if mode != "encode" else 1))
  if mode in SAMPLING_MODES:
    needs.append((eval_split, "sampling (data.eval_split, sample.num_clips)",
                  config.sample.num_clips))
  if mode in SUITE_MODES or (mode == "pipeline" and config.get("pipeline_eval", False)):
    needs.append((eval_split, "the task suite (data.eval_split, eval.num_clips)",
                  config.eval.num_clips))
  if mode == "curve":
    needs.append((eval_split, "the learning curve (data.eval_split, eval.curve_num_clips)",
                  config.eval.get("curve_num_clips", config.eval.num_clips)))
  return needs


def check_data(config, mode: str) -> None:
  """A TFDS dataset is prepared at config.clip's geometry with every split the mode reads."""
  data = pipeline.clip_data_config(config)
  needs = needed_splits(config, mode)
  if data.get("name") != "tfds" or not needs:
    return
  from avdit.data import av_folder  # pylint: disable=g-import-not-at-top  # TFDS data only
  name, data_dir = data.get("tfds_name", None), data.get("data_dir", None) or None
  if not name:
    raise UserError("data.name='tfds' needs data.tfds_name (e.g. 'av_folder/aist').")
  try:
    builder = av_folder.load_builder(name, data_dir)
  except FileNotFoundError as e:
    raise UserError(str(e)) from None
  pipeline.check_tfds_geometry(builder, layout_lib.layout_from_config(config))
  splits = builder.info.splits
  train_split = data.get("train_split", None) or "train"
  reads_held_out = mode in SAMPLING_MODES + SUITE_MODES + ("curve",)
  if reads_held_out and (data.get("eval_split", None) or "test") == train_split:
    raise UserError(f"data.eval_split={train_split!r} is the training split: its clips are "
                    "not held out; set data.eval_split to another split of the dataset.")
  for split, reader, clips in needs:
    have = splits[split].num_examples if split in splits else 0
    if have >= clips:
      continue
    where = (f"has no split {split!r} (it has {sorted(splits)})" if split not in splits else
             f"has {have} clips in split {split!r}")
    raise UserError(
        f"TFDS dataset {name} in {data_dir} {where}; --mode={mode} needs {clips} for {reader}. "
        + _split_fix(split, name, data_dir))


def _split_fix(split: str, name: str, data_dir) -> str:
  if split in ("train", "validation", "test"):
    return (f"Prepare the dataset again with a {split!r} split (python -m avdit.data.prepare "
            "... --overwrite: put files in train/ and test/ folders, list them in train.txt / "
            "test.txt, or let the ratio rule hold some out; a folder too small for a file-level "
            "split gets a clip-level one), or point data.train_split / data.eval_split at "
            "splits it has.")
  return f"Set data.train_split / data.eval_split to splits of {name} in {data_dir}."


def check_feature_weights(eval_config) -> None:
  """Weight files named by eval.i3d_weights / eval.vggish_weights exist (the keywords
  "packaged", "none" and "" name no file)."""
  for key in ("i3d_weights", "vggish_weights"):
    value = eval_config.get(key, "")
    if (value and value not in ("packaged", "none") and not workdir_lib.is_remote(value)
        and not os.path.isfile(value)):
      raise UserError(f"eval.{key}={value} is not a file; convert the weights first (python -m "
                      f"avdit.evaluation.convert_features) or set eval.{key}=none to skip.")


