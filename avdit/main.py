r"""avdit entry point.

  python -m avdit.main --config=configs/avdit_synthetic.py:default --workdir=/tmp/avdit \
      [--mode=train_and_sample|train|sample|describe] [--config.train.num_steps=100 ...]

train             trains (or resumes from the latest checkpoint in --workdir)
sample            samples every task in config.sample.tasks from the latest checkpoint
train_and_sample  both (the default for AVDiT configs)
describe          prints the clip/token layout and the parameter count, builds nothing
eval              runs the task suite on the latest checkpoint: metrics of every task in
                  config.eval.tasks, <workdir>/eval/{results.json,table.md,metrics.png,samples/}
curve             the suite's metrics on eval.curve_tasks at every kept checkpoint:
                  <workdir>/eval/learning_curve.{png,json}
experiment        configs/monl_ablation.py: trains and evaluates every noise setting, writes
                  <workdir>/comparison.md (the default for that config)
encode            writes the latent cache of a config with latent.name=learned
pipeline          configs/avdit_pipeline.py: both autoencoders, the latent cache, AVDiT and
                  the samples, each stage resumable (the default for that config);
                  configs/avdit_fixed_latents.py: AVDiT, samples, suite and curve on fixed
                  latents.
                  Every mode of a pipeline config keeps the AVDiT in <workdir>/avdit
                  (workdir.model_dir).

Every mode first checks what its later stages need (avdit/preflight.py: the workdir, the
dataset's splits and geometry, train.init_from, checkpoints); a problem a user fixes ends the
run with one `error: ...` line and exit status 1, no traceback.

Autoencoder configs (config.kind = magvit2 | soundstream) take --mode=train (train, then
reconstruct held-out clips) or --mode=sample (reconstructions from the latest checkpoint).
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
_MODE = flags.DEFINE_enum(
    "mode", None, ["train", "sample", "train_and_sample", "describe", "encode", "pipeline", "eval",
                   "curve", "experiment"],
    "What to run (default: pipeline for configs with autoencoders, else train_and_sample).")


def describe(config) -> dict:
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


def run(config) -> None:
  """Runs the mode of `config` (see the module docstring), after checking what it needs."""
  is_pipeline = workdir_lib.is_pipeline(config)
  is_experiment = "experiment" in config
  kind = config.get("kind", "avdit")
  mode = _MODE.value or ("pipeline" if is_pipeline else "experiment" if is_experiment else
                         "train" if kind != "avdit" else "train_and_sample")
  if kind != "avdit":
    if not _WORKDIR.value:
      raise app.UsageError("--workdir is required")
    maybe_initialize_distributed()
    run_autoencoder(config, mode, _WORKDIR.value)
    return
  if mode == "pipeline" and not is_pipeline:
    raise app.UsageError("--mode=pipeline needs a pipeline config (configs/avdit_pipeline.py, "
                         "configs/avdit_fixed_latents.py)")
  if mode == "experiment" and not is_experiment:
    raise app.UsageError("--mode=experiment needs a config with an `experiment` section "
                         "(configs/monl_ablation.py)")
  if mode in ("eval", "curve") and is_experiment:
    raise app.UsageError(f"--mode={mode} takes one model's config; the experiment config "
                         "evaluates its settings itself (--mode=experiment)")
  if mode == "describe":
    describe(config)
    return
  if not _WORKDIR.value:
    raise app.UsageError("--workdir is required for mode " + mode)
  workdir = _WORKDIR.value
  maybe_initialize_distributed()
  # Imported here so `describe` stays light.
  from avdit import preflight  # pylint: disable=g-import-not-at-top
  logging.info("JAX devices: %s", jax.devices())
  if is_pipeline:
    config = workdir_lib.with_stage_dirs(config, workdir)
  preflight.check(config, mode, workdir)  # before any step: nothing fails late
  model_dir = workdir_lib.model_dir(config, workdir)
  if mode == "pipeline":
    from avdit import end_to_end  # pylint: disable=g-import-not-at-top
    results = end_to_end.run(config, workdir)
    if results.get("stopped_by"):
      print(f"stopped by {results['stopped_by']} in stage {results['stage']}; rerun the same "
            "command to resume")
      return
    print(f"pipeline done: {json.dumps({k: v for k, v in results.items() if k != 'samples'})}")
    print(f"open {model_dir}/samples/index.html")
  elif mode == "experiment":
    from avdit import experiment  # pylint: disable=g-import-not-at-top
    results = experiment.run(config, workdir)
    if results.get("stopped_by"):
      print(f"stopped by {results['stopped_by']} while training {results['setting']}; rerun "
            "the same command to resume")
      return
    print(f"compared {len(results)} settings; see {workdir}/comparison.md")
  elif mode in ("eval", "curve"):
    from avdit.evaluation import curve  # pylint: disable=g-import-not-at-top
    from avdit.evaluation import suite  # pylint: disable=g-import-not-at-top
    if mode == "eval":
      suite.evaluate(config, model_dir)
    else:
      curve.run(config, model_dir)
    print(f"wrote {model_dir}/eval/" + ("table.md and results.json" if mode == "eval" else
                                        "learning_curve.png and learning_curve.json"))
  elif mode == "encode":
    from avdit import end_to_end  # pylint: disable=g-import-not-at-top
    meta = end_to_end.encode(config, workdir)
    print(f"encoded {meta['num_clips']} clips into {config.data.cache_dir}")
  else:
    train_and_sample(config, mode, model_dir)


def train_and_sample(config, mode: str, model_dir: str) -> None:
  """--mode=train, sample or train_and_sample in `model_dir`."""
  from avdit.sampling import generate  # pylint: disable=g-import-not-at-top
  from avdit.training import train  # pylint: disable=g-import-not-at-top
  if mode in ("train", "train_and_sample"):
    summary = train.train(config, model_dir)
    if jax.process_index() == 0:
      train.write_summary(model_dir, summary)
    if summary["stopped_by"]:
      print(f"stopped by {summary['stopped_by']} at step {summary['step']}; checkpoint saved in "
            f"{model_dir}, rerun the same command to resume")
      return
  if mode in ("sample", "train_and_sample"):
    entries = generate.sample(config, model_dir)
    print(f"wrote {len(entries)} samples; open {model_dir}/samples/index.html")


def run_autoencoder(config, mode: str, workdir: str) -> None:
  from avdit.models import autoencoders  # pylint: disable=g-import-not-at-top
  from avdit.training import autoencoder  # pylint: disable=g-import-not-at-top
  if mode in ("train", "train_and_sample"):
    summary = autoencoder.train(config, workdir)
    print(f"{summary['kind']} at step {summary['step']}: {json.dumps(summary['eval'])}")
  elif mode == "sample":
    model, _, step = autoencoders.load_autoencoder(workdir)
    result = autoencoder.evaluate(config, model, workdir if jax.process_index() == 0 else None)
    print(f"reconstructions of step {step} in {workdir}/reconstructions: {json.dumps(result)}")
  else:
    raise app.UsageError(f"--mode={mode} does not apply to an autoencoder config")


if __name__ == "__main__":
  app.run(main)
