"""The whole pipeline in one command: autoencoders -> latent cache -> AVDiT -> samples -> eval.

Every stage runs in its own sub-directory of the workdir and is resumable: a finished stage is
recognised (its final checkpoint, or a complete latent cache) and skipped, an interrupted one
resumes from its last checkpoint. See configs/avdit_pipeline.py; on fixed latents
(configs/avdit_fixed_latents.py) the autoencoder and cache stages do not apply: it starts at
AVDiT.
"""
from __future__ import annotations

import json
import time

from absl import logging

from avdit import layout as layout_lib
from avdit import workdir as workdir_lib
from avdit.data import latent_cache
from avdit.data import pipeline
from avdit.models import latent_space as latent_lib


def encode(config, workdir: str) -> dict:
  """Writes the latent cache of `config.encode.num_clips` training clips (data.raw)."""
  config = workdir_lib.with_stage_dirs(config, workdir)
  layout = layout_lib.layout_from_config(config)
  space = latent_lib.make_latent_space(config, layout)
  source = pipeline.make_source(config.data.raw, layout)
  return latent_cache.write_cache(source, config.data.raw, layout, space, config.data.cache_dir,
                                  num_clips=config.encode.num_clips,
                                  batch_size=config.encode.batch_size)


def _cache_is_current(config) -> bool:
  try:
    meta = latent_cache.read_meta(config.data.cache_dir)
  except FileNotFoundError:
    return False
  layout = layout_lib.layout_from_config(config)
  space = latent_lib.make_latent_space(config, layout)
  try:
    latent_cache.check_meta(meta, layout, latent_cache.identity_for_meta(space),
                            config.data.cache_dir)
  except ValueError as e:
    logging.info("re-encoding: %s", e)
    return False
  # A folder with fewer clips than encode.num_clips is encoded whole (latent_cache.write_cache).
  available = len(pipeline.make_source(config.data.raw, layout))
  return meta["num_clips"] == min(config.encode.num_clips, available)


def _autoencoder_stages(config) -> list[tuple[str, object, str]]:
  """(name, config, workdir) of the autoencoders to train, in order: MAGVIT-v2, its decoder
  fine-tuned (`finetune_video_decoder`; the run that then encodes and decodes), and SoundStream
  unless the audio latents are a fixed transform (latent.audio_transform, e.g. logmag)."""
  if config.get("finetune_video_decoder", False):
    stages = [("video_autoencoder", config.video_autoencoder,
               config.video_decoder.train.init_from),
              ("video_decoder", config.video_decoder, config.latent.video_autoencoder_workdir)]
  else:
    stages = [("video_autoencoder", config.video_autoencoder,
               config.latent.video_autoencoder_workdir)]
  if config.latent.get("audio_transform", "soundstream") == "soundstream":
    stages.append(("audio_autoencoder", config.audio_autoencoder,
                   config.latent.audio_autoencoder_workdir))
  return stages


def train_autoencoders(config) -> dict:
  """Trains the stages `_autoencoder_stages` lists that are not finished, in order, for a config
  with its stage directories (workdir.with_stage_dirs): {name: step, eval, num_params}, or
  {stopped_by, stage} if one was interrupted."""
  from avdit.training import autoencoder  # pylint: disable=g-import-not-at-top
  results = {}
  for name, ae_config, ae_dir in _autoencoder_stages(config):
    summary = autoencoder.finished_summary(ae_config, ae_dir)
    if summary is None:
      logging.info("pipeline: training the %s in %s", name, ae_dir)
      summary = autoencoder.train(ae_config, ae_dir)
    else:
      logging.info("pipeline: the %s in %s is trained (step %d)", name, ae_dir, summary["step"])
    if summary["stopped_by"]:
      return {"stopped_by": summary["stopped_by"], "stage": name}
    results[name] = {k: summary[k] for k in ("step", "eval", "num_params")}
  return results


def run(config, workdir: str) -> dict:
  from avdit.evaluation import curve  # pylint: disable=g-import-not-at-top
  from avdit.evaluation import suite  # pylint: disable=g-import-not-at-top
  from avdit.sampling import generate  # pylint: disable=g-import-not-at-top
  from avdit.training import train  # pylint: disable=g-import-not-at-top
  started = time.monotonic()
  config = workdir_lib.with_stage_dirs(config, workdir)
  learned = config.latent.name == "learned"  # else fixed latents: stages 1-3 do not apply
  results = train_autoencoders(config) if learned else {}
  if "stopped_by" in results:
    return results
  if learned and not _cache_is_current(config):
    logging.info("pipeline: encoding %d clips into %s", config.encode.num_clips,
                 config.data.cache_dir)
    encode(config, workdir)
  avdit_dir = workdir_lib.model_dir(config, workdir)
  summary = train.train(_with_job_budget(config, started), avdit_dir)
  train.write_summary(avdit_dir, summary)
  if summary["stopped_by"]:
    return {"stopped_by": summary["stopped_by"], "stage": "avdit"}
  results["avdit"] = {k: summary[k] for k in ("step", "metrics", "num_params")}
  results["samples"] = generate.sample(config, avdit_dir)
  if config.get("pipeline_eval", False):
    # 6. The task suite beside its real and chance rows, then the learning curve over the kept
    # checkpoints (both resumable: a finished curve step is read back).
    done = workdir_lib.path(avdit_dir, suite.EVAL_DIR, "results.json")
    evaluated = json.loads(done.read_text()) if done.exists() else None
    if evaluated is None or evaluated["checkpoint_step"] != summary["step"]:
      evaluated = suite.evaluate(config, avdit_dir)
    results["eval"] = _oracle_summary(evaluated)
    if config.train.get("keep_period", 0):
      curve.run(config, avdit_dir)
  return results


def _with_job_budget(config, started: float):
  """`config` with AVDiT's time budget where the job has one (`job_minutes` > 0 and
  `train.num_steps` = 0): the job's minutes less those its earlier stages took in this
  invocation (a stage finished by an earlier one counts nothing). AVDiT then trains what fits,
  leaving the time of `train.budget_reserve_clips` training clips for the samples, the suite and
  the curve (training.budget.reserve_steps)."""
  if config.get("job_minutes", 0.0) <= 0 or config.train.num_steps > 0:
    return config
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.train.budget_minutes = config.job_minutes - (time.monotonic() - started) / 60.0
  logging.info("pipeline: %.1f of the job's %.0f minutes left for AVDiT and its evaluation",
               config.train.budget_minutes, config.job_minutes)
  return config


def _oracle_summary(eval_results: dict) -> dict:
  """{task: {metric: value}} of the suite's headline metrics (for the pipeline's printout)."""
  keys = ("av_height_error_px", "sync_f1", "subject_disc_found_fraction", "continuity_jump_px")
  return {task: {k: round(entry["metrics"][k], 3) for k in keys if k in entry["metrics"]}
          for task, entry in eval_results["tasks"].items()}
