r"""avdit entry point: runs a mode of the job a config names (`config.job`).

  python -m avdit.main --config=configs/avdit_synthetic.py:default --workdir=/tmp/avdit \
      [--mode=MODE] [--config.train.num_steps=100 ...]

Jobs and their modes (the first is the default; `JOBS` below is the table, and a mode that is not
one of the job's is a usage error naming the job's modes):

train_and_sample  one AVDiT (the configs/avdit_*.py but the pipelines):
  train_and_sample  train, then sample
  train             trains (or resumes from the latest checkpoint in --workdir)
  sample            samples every task in config.sample.tasks from the latest checkpoint
  eval              runs the task suite on the latest checkpoint: metrics of every task in
                    config.eval.tasks, <workdir>/eval/{results.json,table.md,metrics.png,samples/}
  curve             the suite's metrics on eval.curve_tasks at every kept checkpoint:
                    <workdir>/eval/learning_curve.{png,json}
  encode            writes the latent cache of a config with latent.name=learned
  describe          prints the clip/token layout and the parameter count, builds nothing
pipeline          configs/avdit_pipeline.py (the autoencoders, the latent cache, AVDiT and the
                  samples, each stage resumable) and configs/avdit_fixed_latents.py (AVDiT,
                  samples, suite and curve on fixed latents):
  pipeline          all of its stages; then every mode of train_and_sample, on the AVDiT the
                    pipeline keeps in <workdir>/avdit (workdir.model_dir)
experiment        configs/{monl,contrastive}_ablation.py:
  experiment        trains and evaluates every setting, writes <workdir>/comparison.md
  describe
autoencoder       configs/{magvit2,soundstream}_synthetic.py (config.kind = magvit2 | soundstream):
  train             train, then reconstruct held-out clips
  sample            reconstructions from the latest checkpoint

Every AVDiT mode first checks what its later stages need (avdit/workflows/preflight.py: the
workdir, the dataset's splits and geometry, train.init_from, checkpoints); a problem a user
fixes ends the run with one `error: ...` line and exit status 1, no traceback.
"""
from __future__ import annotations

import json
import logging as logging_std
import os
import sys

import jax
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from avdit import layout as layout_lib
from avdit import workdir as workdir_lib
from avdit.errors import UserError
from avdit.models import layers
from avdit.training import state as state_lib

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (path[:variant]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and samples.")
_MODE = flags.DEFINE_string(
    "mode", None, "What to run: one of the modes of the config's job (config.job, see JOBS); "
    "default: the job's first.")


def describe(config, workdir: str | None = None) -> dict:
  """Prints (and returns) the clip/token layout and the parameter count; builds nothing."""
  del workdir  # nothing is written
  layout = layout_lib.layout_from_config(config)
  _, abstract = state_lib.abstract_train_state(config, layout)
  num_params = layers.count_params(abstract.params)
  info = {"num_params": num_params, "num_segments": layout.num_segments,
          "video_tokens": layout.num_video_tokens, "audio_tokens": layout.audio_latents,
          "tokens": layout.num_tokens, "video_latent_shape": layout.video_latent_shape,
          "audio_latent_shape": layout.audio_latent_shape,
          "audio_samples": layout.audio_samples}
  for k, v in info.items():
    print(f"{k}: {v}")
  return info


class _QuietLibraries(logging_std.Filter):
  """Drops INFO chatter of orbax/grain (dozens of lines per checkpoint); keeps their warnings."""

  def filter(self, record):
    noisy = ("orbax" in record.pathname or "/grain/" in record.pathname
             or "xla_bridge" in record.pathname)
    return record.levelno >= logging_std.WARNING or not noisy


def maybe_initialize_distributed() -> None:
  """jax.distributed on multi-host runs; a single host, and AOT compilation, never initialize it.

  A TPU slice with several workers is detected by JAX itself. Elsewhere (GPU/CPU clusters, the
  multi-process test) set JAX_COORDINATOR_ADDRESS=host:port, JAX_NUM_PROCESSES and
  JAX_PROCESS_ID on every process.
  """
  hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
  if "JAX_COORDINATOR_ADDRESS" in os.environ:
    num_processes = os.environ.get("JAX_NUM_PROCESSES")
    process_id = os.environ.get("JAX_PROCESS_ID")
    jax.distributed.initialize(
        num_processes=None if num_processes is None else int(num_processes),
        process_id=None if process_id is None else int(process_id))
  elif len([h for h in hosts.split(",") if h]) > 1:
    jax.distributed.initialize()


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = _CONFIG.value
  if config is None:
    raise app.UsageError("--config is required, e.g. --config=configs/avdit_synthetic.py:tiny")
  logging.get_absl_handler().addFilter(_QuietLibraries())
  try:
    run(config)
  except _user_errors() as e:
    # A problem the user fixes (config, data, workdir): its message, not a traceback.
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)


def _user_errors() -> tuple[type[Exception], ...]:
  """What main reports as a message: a user's problem (a missing file or checkpoint, a config
  or dataset that cannot work) or a diverged training, never a bug."""
  from avdit.training import loop  # pylint: disable=g-import-not-at-top  # keeps describe light
  return (UserError, FileNotFoundError, loop.NonFiniteLossError)


def _prepare(config, mode: str, workdir: str):
  """Before any AVDiT mode but describe: the distributed runtime, the pipeline's stage
  directories and the checks of what the mode's later stages need; the config to run."""
  maybe_initialize_distributed()
  # Imported here so that `describe` stays light.
  from avdit.workflows import preflight  # pylint: disable=g-import-not-at-top
  logging.info("JAX devices: %s", jax.devices())
  if workdir_lib.is_pipeline(config):
    config = workdir_lib.with_stage_dirs(config, workdir)
  elif "pipeline_workdir" in config:  # an experiment on a finished pipeline run's stages
    if not config.pipeline_workdir:
      raise UserError("this config reads a finished pipeline run's latent cache and video "
                      "decoder: give --config.pipeline_workdir=DIR (a workdir of "
                      "configs/avdit_pipeline.py)")
    config = workdir_lib.with_stage_dirs(config, config.pipeline_workdir)
  preflight.check(config, mode, workdir)  # before any step: nothing fails late
  return config


def run_pipeline(config, workdir: str) -> None:
  from avdit.workflows import end_to_end  # pylint: disable=g-import-not-at-top
  results = end_to_end.run(config, workdir)
  if results.get("stopped_by"):
    print(f"stopped by {results['stopped_by']} in stage {results['stage']}; rerun the same "
          "command to resume")
    return
  print(f"pipeline done: {json.dumps({k: v for k, v in results.items() if k != 'samples'})}")
  print(f"open {workdir_lib.model_dir(config, workdir)}/samples/index.html")


def run_experiment(config, workdir: str) -> None:
  from avdit.workflows import experiment  # pylint: disable=g-import-not-at-top
  results = experiment.run(config, workdir)
  if results.get("stopped_by"):
    print(f"stopped by {results['stopped_by']} while training {results['setting']}; rerun "
          "the same command to resume")
    return
  print(f"compared {len(results)} settings; see {workdir}/comparison.md")


def run_eval(config, workdir: str) -> None:
  from avdit.evaluation import suite  # pylint: disable=g-import-not-at-top
  model_dir = workdir_lib.model_dir(config, workdir)
  suite.evaluate(config, model_dir)
  print(f"wrote {model_dir}/eval/table.md and results.json")


def run_curve(config, workdir: str) -> None:
  from avdit.evaluation import curve  # pylint: disable=g-import-not-at-top
  model_dir = workdir_lib.model_dir(config, workdir)
  curve.run(config, model_dir)
  print(f"wrote {model_dir}/eval/learning_curve.png and learning_curve.json")


def run_encode(config, workdir: str) -> None:
  from avdit.workflows import end_to_end  # pylint: disable=g-import-not-at-top
  meta = end_to_end.encode(config, workdir)
  print(f"encoded {meta['num_clips']} clips into {config.data.cache_dir}")


def run_train(config, workdir: str) -> bool:
  """Trains the AVDiT in the workdir's model_dir; False when a stop (preemption) ended it."""
  from avdit.training import train  # pylint: disable=g-import-not-at-top
  model_dir = workdir_lib.model_dir(config, workdir)
  summary = train.train(config, model_dir)
  if jax.process_index() == 0:
    train.write_summary(model_dir, summary)
  if summary["stopped_by"]:
    print(f"stopped by {summary['stopped_by']} at step {summary['step']}; checkpoint saved in "
          f"{model_dir}, rerun the same command to resume")
    return False
  return True


def run_sample(config, workdir: str) -> None:
  from avdit.sampling import generate  # pylint: disable=g-import-not-at-top
  model_dir = workdir_lib.model_dir(config, workdir)
  entries = generate.sample(config, model_dir)
  print(f"wrote {len(entries)} samples; open {model_dir}/samples/index.html")


def run_train_and_sample(config, workdir: str) -> None:
  if run_train(config, workdir):
    run_sample(config, workdir)


def train_autoencoder(config, workdir: str) -> None:
  from avdit.training import autoencoder  # pylint: disable=g-import-not-at-top
  summary = autoencoder.train(config, workdir)
  print(f"{summary['kind']} at step {summary['step']}: {json.dumps(summary['eval'])}")


def reconstruct_autoencoder(config, workdir: str) -> None:
  from avdit.models import autoencoders  # pylint: disable=g-import-not-at-top
  from avdit.training import autoencoder  # pylint: disable=g-import-not-at-top
  model, _, step = autoencoders.load_autoencoder(workdir)
  result = autoencoder.evaluate(config, model, workdir if jax.process_index() == 0 else None)
  print(f"reconstructions of step {step} in {workdir}/reconstructions: {json.dumps(result)}")


# The modes of one AVDiT model (in its workdir, or a pipeline's <workdir>/avdit).
_MODEL_MODES = {"train_and_sample": run_train_and_sample, "train": run_train,
                "sample": run_sample, "eval": run_eval, "curve": run_curve, "encode": run_encode,
                "describe": describe}
# (config.job, --mode) -> what runs, `fn(config, workdir)`; a job's first mode is its default.
JOBS = {
    "train_and_sample": _MODEL_MODES,
    "pipeline": {"pipeline": run_pipeline, **_MODEL_MODES},
    "experiment": {"experiment": run_experiment, "describe": describe},
    "autoencoder": {"train": train_autoencoder, "sample": reconstruct_autoencoder},
}
_NO_WORKDIR = ("describe",)  # modes that write nothing


def mode_function(job: str, mode: str | None):
  """(mode, its function) of `job` (config.job); `mode` None: the job's default mode.

  Raises:
    app.UsageError: an unknown job, or a mode that is not one of the job's.
  """
  if job not in JOBS:
    named = f"config.job={job!r} is not a job" if job else "the config names no job (config.job)"
    raise app.UsageError(f"{named}; jobs are {', '.join(JOBS)}")
  modes = JOBS[job]
  mode = mode or next(iter(modes))
  if mode not in modes:
    raise app.UsageError(f"--mode={mode} is not a mode of job {job}; its modes are "
                         f"{', '.join(modes)}")
  return mode, modes[mode]


def run(config) -> None:
  """Runs --mode (default: the job's first) of `config.job`, after checking what it needs."""
  mode, function = mode_function(config.get("job", None), _MODE.value)
  if mode in _NO_WORKDIR:
    function(config, None)
    return
  if not _WORKDIR.value:
    raise app.UsageError("--workdir is required for mode " + mode)
  workdir = _WORKDIR.value
  if config.job == "autoencoder":
    maybe_initialize_distributed()
  else:
    config = _prepare(config, mode, workdir)
  function(config, workdir)


if __name__ == "__main__":
  app.run(main)
