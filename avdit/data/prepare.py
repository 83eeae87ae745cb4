r"""Preparing a TFDS dataset of audiovisual clips from a folder of video files.

    python -m avdit.data.prepare --dataset=av_folder --manual_dir=DIR --data_dir=OUT \
        --fps=10 --height=64 --width=64 --num_frames=17 --sample_rate=16000 [--stride_frames=17]
    python -m avdit.data.prepare --dataset=aist --manual_dir=DIR --data_dir=OUT       (presets:
    python -m avdit.data.prepare --dataset=landscape --manual_dir=DIR --data_dir=OUT   aist,
    python -m avdit.data.prepare --config=configs/avdit_aist.py --manual_dir=DIR       landscape)

Two stages, the first resumable file by file; the `av_folder` TFDS builder runs both (their code
is in avdit/data/av_folder.py), this module is the command line and the checks around it:

  1. Decode (`av_folder.decode_and_plan`). Every source file of every split is decoded once with
     `av_decode.decode_file` at the geometry's frame rate, frame size and audio rate, and the
     result (frames, audio, timing) or the reason it is unusable is written to one intermediate
     file per source under `<data_dir>/av_folder/_prepare_cache/<H>x<W>_<fps>fps_<sr>hz/`. Each
     intermediate is written to a temporary name and moved into place with `os.replace` (atomic),
     so after an interruption (Ctrl-C, SIGKILL, a lost machine) an intermediate is either complete
     or absent: a re-run reuses the complete ones and decodes the rest. The intermediate's name
     hashes the file's path, size and modification time and the decode geometry, so an edited or
     replaced file is decoded again, and datasets with other clip lengths, strides or split rules
     reuse the same cache.
  2. Build. The `av_folder` TFDS builder cuts each used file's clips (`av_decode.cut_clips`) from
     its intermediate and writes the ArrayRecord shards. Examples are keyed by (relative path,
     clip index), so the dataset does not depend on the order in which files were decoded or on
     how many runs it took: an interrupted preparation, re-run, equals a clean one. TFDS writes
     into a temporary directory renamed at the end, so a dataset directory is complete or absent.

Nothing about a bad file stops the run: files that cannot give correct clips
(`av_folder.SKIP_REASONS`: corrupt, truncated, no audio or video stream, absurd frame sizes,
shorter than one clip, ...) are skipped, counted by reason with their names in the preparation
report, and logged. The report (`prepare_report.json` in the dataset directory, also printed)
holds the files seen and used, clips and seconds per split, the skipped files by reason, and the
geometry.

Geometry: from the flags (`--dataset=av_folder`), from a preset (`--dataset=aist|landscape`), or
from a config file's `c.clip` and `c.data` (`--config=...`, whose `c.data.tfds_name` names the
dataset). Splits: `av_folder.SPLIT_RULES`; a ratio split of a folder too small to put a file in
`test` holds out clips instead (reported in `split_rule.clip_level`; `--noclip_fallback` keeps
the file-level split). A custom dataset's TFDS name is `av_folder/<--config_name or the geometry spelled out>`;
the report prints the `--config.data...` overrides that train on it.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time

from absl import app
from absl import flags
from absl import logging
import tensorflow_datasets as tfds

from avdit.data import av_folder
from avdit.data import pipeline


# --------------------------------------------------------------------------------------------
# Stage 2 and the whole preparation
# --------------------------------------------------------------------------------------------
def _recorded_settings(dataset_dir) -> dict | None:
  path = os.path.join(os.fspath(dataset_dir), "metadata.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    metadata = json.load(f)
  split = metadata.get("split")
  if split is not None:
    # Prepared before the clip-level fallback existed: the same dataset unless its test split
    # came out empty (then --overwrite prepares the fallback).
    split.setdefault("clip_fallback", True)
  return {"geometry": metadata.get("geometry"), "split": split}


def prepare_dataset(manual_dir, data_dir, config: av_folder.AvFolderConfig, *,
                    num_workers: int = 1, overwrite: bool = False,
                    keep_cache: bool = True) -> dict:
  """Prepares `av_folder/<config.name>` in data_dir from manual_dir; returns the report.

  An existing dataset of the same name is kept (its report returned) if it was prepared with the
  same geometry and split settings, rebuilt if `overwrite` (the decode cache is reused), and an
  error otherwise. `keep_cache=False` deletes this geometry's decode cache after a success.

  Raises:
    FileNotFoundError: no manual_dir.
    ValueError: bad geometry or split settings, no video file, no clip, or an existing dataset
      prepared differently.
  """
  manual_dir = av_folder.check_manual_dir(manual_dir)
  if not data_dir:
    raise ValueError("no data_dir given: where the TFDS dataset is written (--data_dir).")
  data_dir = os.fspath(data_dir)
  builder = av_folder.AvFolder(config=config, data_dir=data_dir, file_format="array_record",
                               num_workers=num_workers)
  dataset_dir = builder.data_dir
  recorded = _recorded_settings(dataset_dir)
  wanted = {"geometry": config.geometry.to_dict(), "split": config.split_settings}
  if recorded is not None and not overwrite:
    if recorded != wanted:
      raise ValueError(f"{dataset_dir} already holds av_folder/{config.name} prepared with "
                       f"{recorded}, not {wanted}; pass --overwrite to rebuild it or "
                       "--config_name to prepare under another name.")
    logging.info("av_folder/%s is already prepared in %s; nothing to do (--overwrite rebuilds "
                 "it).", config.name, dataset_dir)
    return av_folder.read_report(dataset_dir) or {"dataset": f"av_folder/{config.name}",
                                                  "dataset_dir": dataset_dir}
  # A killed TFDS build leaves its temporary directory behind; nothing can resume from it.
  config_dir = os.path.dirname(dataset_dir)
  if os.path.isdir(config_dir):
    for name in os.listdir(config_dir):
      if name.startswith("incomplete."):
        logging.info("Removing %s, left by an interrupted build.", name)
        shutil.rmtree(os.path.join(config_dir, name), ignore_errors=True)
  mode = (tfds.download.GenerateMode.FORCE_REDOWNLOAD if overwrite
          else tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS)
  start = time.time()
  builder.download_and_prepare(
      # Nothing is downloaded; this keeps TFDS's empty downloads/ folder out of data_dir.
      download_dir=os.path.join(builder.cache_root, "tfds_downloads"),
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir, download_mode=mode))
  report = av_folder.read_report(dataset_dir)
  report["data_dir"] = os.path.abspath(data_dir)
  report["build_seconds"] = round(time.time() - start, 2)
  av_folder.write_report(report, dataset_dir)
  if not keep_cache:
    shutil.rmtree(report["cache"]["dir"], ignore_errors=True)
    logging.info("Deleted the decode cache %s.", report["cache"]["dir"])
  logging.info("Prepared %s in %s: %d clips (%s) from %d of %d files; %d skipped.",
               report["dataset"], dataset_dir, report["clips"],
               ", ".join(f"{s} {i['clips']}" for s, i in report["splits"].items()),
               report["files_used"], report["files_seen"], report["files_skipped"])
  return report


# --------------------------------------------------------------------------------------------
# Resolving what to prepare (flags, presets, config files)
# --------------------------------------------------------------------------------------------
GEOMETRY_FLAGS = ("fps", "height", "width", "num_frames", "sample_rate", "stride_frames")
SPLIT_FLAGS = ("split_rule", "test_fraction", "split_seed", "clip_fallback")


def resolve_config(dataset: str | None = "av_folder", config=None, config_name: str | None = None,
                   **values) -> av_folder.AvFolderConfig:
  """The `AvFolderConfig` to prepare from one source of geometry (see the module docstring).

  Args:
    dataset: "av_folder" (geometry from `values` or `config`), or a preset name.
    config: an avdit ConfigDict: geometry from `config.clip` (+ `config.data.stride_frames`,
      default back to back), the dataset from `config.data.tfds_name` ("av_folder/NAME");
      `config.data.raw` for a pipeline config (data.name "latent_cache").
    config_name: name of a custom dataset (default: the geometry spelled out).
    **values: GEOMETRY_FLAGS and SPLIT_FLAGS; None means not given.

  Raises:
    ValueError: an unknown dataset, geometry given twice or not at all, or bad values.
  """
  given = {k: v for k, v in values.items() if v is not None}
  unknown = set(given) - set(GEOMETRY_FLAGS) - set(SPLIT_FLAGS)
  if unknown:
    raise ValueError(f"unknown settings {sorted(unknown)}")
  if config is not None:
    data = pipeline.clip_data_config(config)
    tfds_name = data.get("tfds_name", None)
    if data.get("name") != "tfds" or not tfds_name or not tfds_name.startswith("av_folder/"):
      raise ValueError("--config must describe a TFDS av_folder dataset (c.data.name='tfds', "
                       f"c.data.tfds_name='av_folder/NAME'), got data.name="
                       f"{data.get('name')!r}, tfds_name={tfds_name!r}")
    name = tfds_name.split("/", 1)[1]
    if dataset not in (None, "av_folder", name):
      raise ValueError(f"--dataset={dataset} disagrees with the config's tfds_name {tfds_name}")
    if given.keys() & set(GEOMETRY_FLAGS) or config_name:
      raise ValueError("with --config the geometry and name come from the config; drop "
                       f"{sorted(given.keys() & set(GEOMETRY_FLAGS))} / --config_name or "
                       "override --config.clip.* instead")
    clip = config.clip
    geometry = av_folder.ClipGeometry(
        fps=clip.fps, height=clip.height, width=clip.width, num_frames=clip.num_frames,
        sample_rate=clip.sample_rate,
        stride_frames=data.get("stride_frames", None) or clip.num_frames)
    split = {"split_rule": data.get("split_rule", "auto"),
             "test_fraction": data.get("test_fraction", 0.1),
             "split_seed": data.get("split_seed", 0),
             "clip_fallback": data.get("clip_fallback", True)}
    split.update({k: v for k, v in given.items() if k in SPLIT_FLAGS})
    if name in av_folder.PRESETS:
      preset = av_folder.PRESETS[name]
      settings = av_folder.AvFolderConfig.from_geometry(geometry, name=name, **split)
      if (preset.geometry, preset.split_settings) != (settings.geometry,
                                                      settings.split_settings):
        raise ValueError(
            f"config.clip and config.data ({settings.geometry}, split {settings.split_settings}) "
            f"are not the {name} preset's ({preset.geometry}, split {preset.split_settings}); "
            "set c.data.tfds_name to another av_folder/NAME to prepare other settings")
      return preset
    return av_folder.AvFolderConfig.from_geometry(geometry, name=name, **split)
  dataset = dataset or "av_folder"
  if dataset in av_folder.PRESETS:
    if given or config_name:
      extra = sorted(given) + (["config_name"] if config_name else [])
      raise ValueError(f"the {dataset} preset fixes the geometry and split rule "
                       f"({av_folder.PRESETS[dataset].geometry}); use --dataset=av_folder to "
                       f"choose them (got {', '.join('--' + k for k in extra)}).")
    return av_folder.PRESETS[dataset]
  if dataset != "av_folder":
    raise ValueError(f"unknown --dataset={dataset!r}: av_folder, "
                     f"{', '.join(av_folder.PRESETS)}")
  missing = [k for k in GEOMETRY_FLAGS if k != "stride_frames" and k not in given]
  if missing:
    raise ValueError("--dataset=av_folder needs the clip geometry: missing "
                     + ", ".join(f"--{k}" for k in missing)
                     + " (or pass --config=configs/....py, or --dataset=aist|landscape)")
  geometry = av_folder.ClipGeometry(
      **{k: given[k] for k in GEOMETRY_FLAGS if k != "stride_frames"},
      stride_frames=given.get("stride_frames", given["num_frames"]))
  if config_name is not None and not re.fullmatch(r"[\w\-.+]+", config_name):
    raise ValueError(f"--config_name={config_name!r}: use letters, digits, '_', '-', '.', '+'")
  return av_folder.AvFolderConfig.from_geometry(
      geometry, name=config_name, **{k: given[k] for k in SPLIT_FLAGS if k in given})


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------
def define_flags(flag_values: flags.FlagValues = flags.FLAGS,
                 argv: list[str] | None = None) -> None:
  """The command's flags (defined on demand: this module is imported by the TFDS builder).

  `argv`: the command line `--config.*` overrides are read from (default sys.argv).
  """
  from ml_collections import config_flags  # only the command line needs it
  config_flags.DEFINE_config_file(
      "config", None, "An avdit config (path[:variant]) whose c.clip and c.data "
      "(tfds_name, data_dir) say what to prepare.", flag_values=flag_values, lock_config=True,
      sys_argv=argv)
  flags.DEFINE_string("dataset", None, "av_folder (geometry from the flags), or a preset: "
                      + ", ".join(av_folder.PRESETS) + ". Default av_folder.",
                      flag_values=flag_values)
  flags.DEFINE_string("manual_dir", None, "The folder of video files.", flag_values=flag_values)
  flags.DEFINE_string("data_dir", None, "TFDS data_dir to write to (default: the config's "
                      "c.data.data_dir).", flag_values=flag_values)
  flags.DEFINE_string("config_name", None, "Name of a custom av_folder dataset (default: its "
                      "geometry, e.g. 64x64_10fps_17f_16000hz_s17).", flag_values=flag_values)
  flags.DEFINE_float("fps", None, "Output frame rate.", flag_values=flag_values)
  flags.DEFINE_integer("height", None, "Output frame height.", flag_values=flag_values)
  flags.DEFINE_integer("width", None, "Output frame width.", flag_values=flag_values)
  flags.DEFINE_integer("num_frames", None, "Frames per clip, 1 + 4k.", flag_values=flag_values)
  flags.DEFINE_integer("sample_rate", None, "Audio rate (Hz), mono.", flag_values=flag_values)
  flags.DEFINE_integer("stride_frames", None, "Frames between clip starts (default num_frames: "
                       "back to back).", flag_values=flag_values)
  flags.DEFINE_enum("split_rule", None, list(av_folder.SPLIT_RULES), "How files are split "
                    "(default auto).", flag_values=flag_values)
  flags.DEFINE_float("test_fraction", None, "Split rule 'ratio': share of files in test "
                     "(default 0.1).", flag_values=flag_values)
  flags.DEFINE_integer("split_seed", None, "Split rule 'ratio': hash seed (default 0).",
                       flag_values=flag_values)
  flags.DEFINE_bool("clip_fallback", None, "Split rule 'ratio': when no file lands in test "
                    "(a small folder), hold out the last clips of each file instead (default "
                    "true); --noclip_fallback keeps the file-level split.",
                    flag_values=flag_values)
  flags.DEFINE_integer("num_workers", 1, "Processes decoding files.", flag_values=flag_values)
  flags.DEFINE_bool("overwrite", False, "Rebuild an existing dataset (decode cache reused).",
                    flag_values=flag_values)
  flags.DEFINE_bool("keep_cache", True, "Keep the decoded files under <data_dir>/av_folder/"
                    "_prepare_cache (fast rebuilds at other clip lengths / splits).",
                    flag_values=flag_values)


def run_from_flags(fv: flags.FlagValues = flags.FLAGS) -> dict:
  """Resolves the parsed flags and prepares; returns the report."""
  config = fv.config
  data_dir = fv.data_dir or (pipeline.clip_data_config(config).get("data_dir", None)
                             if config is not None else None)
  values = {k: fv[k].value for k in GEOMETRY_FLAGS + SPLIT_FLAGS}
  builder_config = resolve_config(fv.dataset, config=config, config_name=fv.config_name,
                                  **values)
  return prepare_dataset(fv.manual_dir, data_dir, builder_config, num_workers=fv.num_workers,
                         overwrite=fv.overwrite, keep_cache=fv.keep_cache)


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  try:
    report = run_from_flags(flags.FLAGS)
  except (ValueError, FileNotFoundError) as err:
    sys.exit(f"avdit.data.prepare: error: {err}")  # a clear message, not a traceback
  print(json.dumps(report, indent=2))
  if report.get("data_dir"):
    config = flags.FLAGS.config
    if config is not None and config.data.get("name") == "latent_cache":
      print(f"\nTrain on it with: --config.data.raw.data_dir={report['data_dir']}")
    else:
      print(f"\nTrain on it with: --config.data.name=tfds --config.data.tfds_name="
            f"{report['dataset']} --config.data.data_dir={report['data_dir']}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
