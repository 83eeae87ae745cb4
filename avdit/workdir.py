"""The run's working directory: a local path or a bucket (gs://...) alike.

Orbax checkpoints and clu's TensorBoard writers handle `gs://` themselves. Everything else avdit
writes (config.json, train_summary.json, samples) goes through `etils.epath` here; files made by
libraries that only write local files (PyAV's mp4 muxer, matplotlib) are written to a local
staging directory and copied to the bucket when it closes. A pipeline's stages each have their
own sub-directory (`with_stage_dirs`), the AVDiT's included (`model_dir`).
"""
from __future__ import annotations

import contextlib
import pathlib
import shutil
import tempfile
from typing import Iterator

from etils import epath


def is_remote(workdir) -> bool:
  return "://" in str(workdir)


def path(workdir, *parts: str) -> epath.Path:
  """`workdir/parts...`, absolute for local paths, created parent directories not included."""
  base = epath.Path(workdir)
  if not is_remote(workdir):
    base = base.resolve()
  return base.joinpath(*parts)


def write_text(workdir, name: str, text: str) -> epath.Path:
  target = path(workdir, name)
  target.parent.mkdir(parents=True, exist_ok=True)
  target.write_text(text)
  return target


@contextlib.contextmanager
def local_staging(target_dir) -> Iterator[pathlib.Path]:
  """A local directory whose files end up in `target_dir` (itself when it is local)."""
  target = path(target_dir)
  target.mkdir(parents=True, exist_ok=True)
  if not is_remote(target_dir):
    yield pathlib.Path(str(target))
    return
  staging = pathlib.Path(tempfile.mkdtemp(prefix="avdit_staging_"))
  try:
    yield staging
    for source in staging.rglob("*"):
      if source.is_file():
        destination = target / source.relative_to(staging)
        destination.parent.mkdir(parents=True, exist_ok=True)
        epath.Path(source).copy(destination, overwrite=True)
  finally:
    shutil.rmtree(staging, ignore_errors=True)


def is_pipeline(config) -> bool:
  """A pipeline config (`config.job`): autoencoders, cache, AVDiT, samples and eval
  (avdit_pipeline.py), or the last three on fixed latents (avdit_fixed_latents.py)."""
  return config.get("job", None) == "pipeline"


def model_dir(config, workdir: str) -> str:
  """Where the AVDiT of a run lives: <workdir>/avdit for a pipeline config, else the workdir.

  The one answer for every mode (train, sample, eval, curve, pipeline), so that each finds the
  run the others made.
  """
  return str(path(workdir, "avdit")) if is_pipeline(config) else str(workdir)


def with_stage_dirs(config, workdir: str):
  """A pipeline's AVDiT config with its autoencoder workdirs and cache directory filled in.

  The pipeline (avdit/workflows/end_to_end.py) runs each stage in its own sub-directory of the
  workdir; every tool that reads a stage's output (the pipeline itself, main's modes, the
  probes) names them here, so they agree.
  """
  config = config.copy_and_resolve_references()
  if config.latent.name != "learned":  # fixed latents: no autoencoders or cache to name
    return config
  with config.unlocked():
    if config.get("finetune_video_decoder", False):
      # MAGVIT-v2 trains in magvit2/; the run with the fine-tuned decoder is the one that
      # encodes and decodes (its encoder is magvit2/'s).
      if not config.video_decoder.train.init_from:
        config.video_decoder.train.init_from = str(path(workdir, "magvit2"))
      if not config.latent.video_autoencoder_workdir:
        config.latent.video_autoencoder_workdir = str(path(workdir, "magvit2_decoder"))
    elif not config.latent.video_autoencoder_workdir:
      config.latent.video_autoencoder_workdir = str(path(workdir, "magvit2"))
    if not config.latent.audio_autoencoder_workdir:
      config.latent.audio_autoencoder_workdir = str(path(workdir, "soundstream"))
    if config.data.name == "latent_cache" and not config.data.cache_dir:
      config.data.cache_dir = str(path(workdir, "latent_cache"))
  return config
