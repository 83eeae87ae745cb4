r"""Preparing a TFDS dataset of audiovisual clips from a folder of video files.

    python -m avdit.data.prepare --dataset=av_folder --manual_dir=DIR --data_dir=OUT \
        --fps=10 --height=64 --width=64 --num_frames=17 --sample_rate=16000 [--stride_frames=17]
    python -m avdit.data.prepare --dataset=aist --manual_dir=DIR --data_dir=OUT       (presets:
    python -m avdit.data.prepare --dataset=landscape --manual_dir=DIR --data_dir=OUT   aist,
    python -m avdit.data.prepare --config=configs/avdit_aist.py --manual_dir=DIR       landscape)

Two stages, the first resumable file by file:

  1. Decode. Every source file of every split is decoded once with `av_decode.decode_file` at the
     geometry's frame rate, frame size and audio rate, and the result (frames, audio, timing) or
     the reason it is unusable is written to one intermediate file per source under
     `<data_dir>/av_folder/_prepare_cache/<H>x<W>_<fps>fps_<sr>hz/`. Each intermediate is written to
     a temporary name and moved into place with `os.replace` (atomic), so after an interruption
     (Ctrl-C, SIGKILL, a lost machine) an intermediate is either complete or absent: a re-run
     reuses the complete ones and decodes the rest. The intermediate's name hashes the file's path,
     size and modification time and the decode geometry, so an edited or replaced file is decoded
     again, and datasets with other clip lengths, strides or split rules reuse the same cache.
  2. Build. The `av_folder` TFDS builder cuts each used file's clips (`av_decode.cut_clips`) from
     its intermediate and writes the ArrayRecord shards. Examples are keyed by (relative path,
     clip index), so the dataset does not depend on the order in which files were decoded or on
     how many runs it took: an interrupted preparation, re-run, equals a clean one. TFDS writes
     into a temporary directory renamed at the end, so a dataset directory is complete or absent.

Nothing about a bad file stops the run: files that cannot give correct clips (`SKIP_REASONS`:
corrupt, truncated, no audio or video stream, absurd frame sizes, shorter than one clip, ...) are
skipped, counted by reason with their names in the preparation report, and logged. The report
(`prepare_report.json` in the dataset directory, also printed) holds the files seen and used,
clips and seconds per split, the skipped files by reason, and the geometry.

Geometry: from the flags (`--dataset=av_folder`), from a preset (`--dataset=aist|landscape`), or
from a config file's `c.clip` and `c.data` (`--config=...`, whose `c.data.tfds_name` names the
dataset). A custom dataset's TFDS name is `av_folder/<--config_name or the geometry spelled out>`;
the report prints the `--config.data...` overrides that train on it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing
import os
import re
import shutil
import sys
import time
from concurrent import futures

from absl import app
from absl import flags
from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from avdit.data import av_decode
from avdit.data import av_folder

# Reasons a file gives no clip: av_decode's, plus two found before or around decoding.
SKIP_REASONS = {
    **av_decode.REASONS,
    "missing": "listed in a split's file list but not found in manual_dir",
    "unexpected_error": "decoding raised an unexpected error (not cached: a re-run retries it)",
}
CACHE_VERSION = 1  # bump to invalidate every intermediate when their content changes
REPORT_NAME = "prepare_report.json"
_SCALARS = ("fps", "sample_rate", "t0_seconds", "source_duration_seconds", "video_end_seconds",
            "audio_end_seconds")


# --------------------------------------------------------------------------------------------
# Stage 1: one intermediate per source file
# --------------------------------------------------------------------------------------------
def cache_dir_for(cache_root: str, geometry: av_folder.ClipGeometry) -> str:
  """The cache sub-folder of a decode geometry (clip length and stride do not matter here)."""
  return os.path.join(cache_root, f"{geometry.height}x{geometry.width}_{geometry.fps:g}fps_"
                                  f"{geometry.sample_rate}hz")


def cache_path_for(cache_dir: str, manual_dir: str, relpath: str,
                   geometry: av_folder.ClipGeometry) -> str:
  """The intermediate of one source file: its name hashes what its content depends on."""
  stat = os.stat(os.path.join(manual_dir, relpath))
  identity = json.dumps([CACHE_VERSION, os.path.realpath(manual_dir), relpath, stat.st_size,
                         stat.st_mtime_ns, geometry.fps, geometry.height, geometry.width,
                         geometry.sample_rate])
  digest = hashlib.sha256(identity.encode("utf-8")).hexdigest()[:20]
  readable = re.sub(r"[^A-Za-z0-9._-]+", "_", relpath)[-80:]  # for people looking at the cache
  return os.path.join(cache_dir, f"{readable}.{digest}.npz")


def _write_atomic(path: str, outcome: dict, arrays: dict[str, np.ndarray] | None = None) -> None:
  """Writes an intermediate under a temporary name, then renames it: complete or absent."""
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "wb") as f:
    np.savez(f, outcome=np.array(json.dumps(outcome)), **(arrays or {}))
    f.flush()
    os.fsync(f.fileno())  # the rename must not land before the data on a power loss
  os.replace(tmp, path)


def read_outcome(path: str) -> dict | None:
  """An intermediate's outcome, or None if it is absent or unreadable (then it is redone)."""
  if not os.path.exists(path):
    return None
  try:
    with np.load(path, allow_pickle=False) as npz:
      return json.loads(str(npz["outcome"]))
  except Exception as err:  # pylint: disable=broad-except  # any damage means: decode again
    logging.warning("Ignoring the unreadable intermediate %s (%s: %s); decoding again.", path,
                    type(err).__name__, err)
    return None


def load_decoded(path: str, source: str) -> av_decode.DecodedAV:
  """The `DecodedAV` stored in a 'decoded' intermediate (exactly what decode_file returned)."""
  with np.load(path, allow_pickle=False) as npz:
    outcome = json.loads(str(npz["outcome"]))
    if outcome["status"] != "decoded":
      raise ValueError(f"{path} holds no decoded streams: {outcome}")
    return av_decode.DecodedAV(
        source=source, frames_thwc=npz["frames_thwc"], audio_l=npz["audio_l"],
        source_frame_seconds=npz["source_frame_seconds"],
        **{key: outcome[key] for key in _SCALARS})


def _check_decoded(decoded: av_decode.DecodedAV, geometry: av_folder.ClipGeometry) -> str | None:
  """Why the decoded arrays are not what the geometry asks for (None if they are)."""
  frames, audio = decoded.frames_thwc, decoded.audio_l
  if frames.dtype != np.uint8 or frames.shape[1:] != (geometry.height, geometry.width, 3):
    return (f"frames {frames.dtype} {frames.shape}, expected uint8 [T, {geometry.height}, "
            f"{geometry.width}, 3]")
  if audio.dtype != np.float32 or audio.ndim != 1 or not np.isfinite(audio).all():
    return f"audio {audio.dtype} {audio.shape} is not finite float32 [L]"
  return None


def decode_to_cache(manual_dir: str, relpath: str, cache_path: str,
                    geometry: av_folder.ClipGeometry) -> dict:
  """Decodes one source file into its intermediate; returns the outcome (never raises on a file).

  Outcomes: {"status": "decoded", "num_frames", "num_samples", <_SCALARS>} or
  {"status": "skipped", "reason", "detail"}; "cached": False marks outcomes not written (an
  unexpected error, retried by the next run).
  """
  path = os.path.join(manual_dir, relpath)
  try:
    decoded = av_decode.decode_file(path, fps=geometry.fps, height=geometry.height,
                                    width=geometry.width, sample_rate=geometry.sample_rate)
    problem = _check_decoded(decoded, geometry)
    if problem:
      raise av_decode.UnusableFile("decode_error", problem, path)
  except av_decode.UnusableFile as err:
    outcome = {"status": "skipped", "reason": err.reason, "detail": err.detail}
    _write_atomic(cache_path, {**outcome, "relpath": relpath})
    return outcome
  except Exception as err:  # pylint: disable=broad-except  # a bad file must never stop the run
    return {"status": "skipped", "reason": "unexpected_error",
            "detail": f"{type(err).__name__}: {err}", "cached": False}
  outcome = {"status": "decoded", "num_frames": decoded.num_frames,
             "num_samples": decoded.num_samples,
             **{key: getattr(decoded, key) for key in _SCALARS}}
  _write_atomic(cache_path, {**outcome, "relpath": relpath}, {
      "frames_thwc": decoded.frames_thwc, "audio_l": decoded.audio_l,
      "source_frame_seconds": decoded.source_frame_seconds})
  return outcome


def _remove_stale_temporaries(cache_dir: str) -> None:
  """Deletes the half-written intermediates of killed runs (`*.tmp-<pid>`, pid no longer alive)."""
  for name in os.listdir(cache_dir):
    match = re.search(r"\.tmp-(\d+)$", name)
    if not match:
      continue
    try:
      os.kill(int(match.group(1)), 0)  # signal 0: only asks whether the process exists
      continue  # a live preparation is writing it
    except ProcessLookupError:
      pass
    except PermissionError:
      continue  # exists, owned by someone else
    logging.info("Removing %s, left half-written by an interrupted run.", name)
    try:
      os.remove(os.path.join(cache_dir, name))
    except FileNotFoundError:
      pass


def _decode_task(args) -> dict:
  return decode_to_cache(*args)


def decode_all(manual_dir: str, relpaths: list[str], cache_dir: str,
               geometry: av_folder.ClipGeometry, num_workers: int = 1) -> dict[str, dict]:
  """Stage 1 over many files: relpath -> outcome (with "cache_path" and "from_cache").

  Finished intermediates are reused; the others are decoded (in `num_workers` processes when
  > 1), each written as soon as it is done, with progress logged as files complete.
  """
  os.makedirs(cache_dir, exist_ok=True)
  _remove_stale_temporaries(cache_dir)
  outcomes: dict[str, dict] = {}
  todo = []
  for relpath in relpaths:
    if not os.path.isfile(os.path.join(manual_dir, relpath)):
      outcomes[relpath] = {"status": "skipped", "reason": "missing",
                           "detail": "no such file in manual_dir", "cache_path": None,
                           "from_cache": False}
      continue
    cache_path = cache_path_for(cache_dir, manual_dir, relpath, geometry)
    outcome = read_outcome(cache_path)
    if outcome is not None and outcome.get("relpath") == relpath:
      outcomes[relpath] = {**outcome, "cache_path": cache_path, "from_cache": True}
    else:
      todo.append((relpath, cache_path))
  total, reused = len(relpaths), len(relpaths) - len(todo)
  logging.info("Decoding %d of %d files (%d finished earlier, reused from %s) with %d worker(s).",
               len(todo), total, reused, cache_dir, num_workers)
  start = time.time()

  def record(relpath, cache_path, outcome, done):
    outcomes[relpath] = {**outcome, "cache_path": cache_path, "from_cache": False}
    what = (f"skipped ({outcome['reason']}: {outcome['detail']})"
            if outcome["status"] == "skipped" else
            f"{outcome['num_frames']} frames, {outcome['num_samples']} samples")
    logging.info("Decoded %d/%d files (%.0f s): %s: %s", reused + done, total,
                 time.time() - start, relpath, what)

  tasks = [(manual_dir, relpath, cache_path, geometry) for relpath, cache_path in todo]
  if num_workers <= 1 or len(todo) <= 1:
    for done, task in enumerate(tasks, 1):
      record(task[1], task[2], decode_to_cache(*task), done)
  else:
    # spawn, not fork: the parent may hold TensorFlow/FFmpeg threads, which fork would copy
    # mid-flight.
    with futures.ProcessPoolExecutor(max_workers=num_workers,
                                     mp_context=multiprocessing.get_context("spawn")) as pool:
      pending = {pool.submit(_decode_task, task): task for task in tasks}
      try:
        for done, future in enumerate(futures.as_completed(pending), 1):
          task = pending[future]
          record(task[1], task[2], future.result(), done)
      except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)  # finished files stay in the cache
        raise
  return outcomes


# --------------------------------------------------------------------------------------------
# Planning the clips, and the report
# --------------------------------------------------------------------------------------------
def count_clips(num_frames: int, num_samples: int, geometry: av_folder.ClipGeometry) -> int:
  """How many clips `cut_clips` cuts from a decoded file of that many frames and samples.

  Runs `av_decode.iter_clips` itself on zero-stride stand-in arrays (no memory), so the count is
  the clip cutter's own rule, not a re-derivation of it.
  """
  stand_in = av_decode.DecodedAV(
      source="", frames_thwc=np.broadcast_to(
          np.zeros((), np.uint8), (num_frames, geometry.height, geometry.width, 3)),
      audio_l=np.broadcast_to(np.zeros((), np.float32), (num_samples,)), fps=geometry.fps,
      sample_rate=geometry.sample_rate, t0_seconds=0.0, source_frame_seconds=np.zeros((0,)),
      source_duration_seconds=0.0, video_end_seconds=0.0, audio_end_seconds=0.0)
  return sum(1 for _ in av_decode.iter_clips(stand_in, num_frames=geometry.num_frames,
                                             stride_frames=geometry.stride_frames))


@dataclasses.dataclass(frozen=True)
class FileEntry:
  """One source file's fate: `num_clips` > 0 (used) or a skip `reason`."""

  relpath: str
  split: str
  num_clips: int
  cache_path: str | None
  reason: str | None = None
  detail: str | None = None
  video_seconds: float = 0.0
  audio_seconds: float = 0.0


@dataclasses.dataclass(frozen=True)
class Plan:
  """What the build writes: every file's entry, and the report."""

  entries: list[FileEntry]
  report: dict

  def nonempty_splits(self) -> list[str]:
    return [split for split, info in self.report["splits"].items() if info["clips"]]

  def used_files(self, split: str) -> list[FileEntry]:
    return [e for e in self.entries if e.split == split and e.num_clips]


def check_manual_dir(manual_dir) -> str:
  if not manual_dir:
    raise ValueError("no manual_dir given: the folder of video files to prepare (--manual_dir).")
  manual_dir = os.fspath(manual_dir)
  if not os.path.isdir(manual_dir):
    raise FileNotFoundError(f"manual_dir {manual_dir} does not exist or is not a directory.")
  return manual_dir


def decode_and_plan(manual_dir, config: av_folder.AvFolderConfig, cache_root: str,
                    num_workers: int = 1, dataset_dir: str | None = None) -> Plan:
  """Stage 1 and the clip plan of stage 2 (called by the builder's `_split_generators`).

  Raises:
    FileNotFoundError / ValueError: no manual_dir, no video file for the split rule, no clip at
      all (the report's skip counts are in the message).
  """
  manual_dir = check_manual_dir(manual_dir)
  geometry = config.geometry
  assignment = av_folder.assign_splits(manual_dir, config.split_rule, config.test_fraction,
                                       config.split_seed)
  if not assignment.num_files:
    raise ValueError(
        f"manual_dir {manual_dir} holds no video file for split rule {assignment.rule!r} "
        f"(extensions {', '.join(av_folder.VIDEO_EXTENSIONS)}; {len(assignment.ignored)} other "
        f"files ignored).")
  logging.info("Split rule %r: %s; %d files ignored.", assignment.rule,
               ", ".join(f"{s} {len(f)} files" for s, f in assignment.splits.items()),
               len(assignment.ignored))
  start = time.time()
  cache_dir = cache_dir_for(cache_root, geometry)
  relpaths = [f for files in assignment.splits.values() for f in files]
  outcomes = decode_all(manual_dir, relpaths, cache_dir, geometry, num_workers)

  entries = []
  for split, files in assignment.splits.items():
    for relpath in files:
      outcome = outcomes[relpath]
      if outcome["status"] == "skipped":
        entries.append(FileEntry(relpath, split, 0, outcome["cache_path"], outcome["reason"],
                                 outcome["detail"]))
        continue
      num_clips = count_clips(outcome["num_frames"], outcome["num_samples"], geometry)
      seconds = dict(video_seconds=outcome["num_frames"] / geometry.fps,
                     audio_seconds=outcome["num_samples"] / geometry.sample_rate)
      if num_clips:
        entries.append(FileEntry(relpath, split, num_clips, outcome["cache_path"], **seconds))
      else:  # decodable, but shorter than one clip of this geometry
        entries.append(FileEntry(
            relpath, split, 0, outcome["cache_path"], "too_short",
            f"{outcome['num_frames']} frames / {outcome['num_samples']} samples hold no clip of "
            f"{geometry.num_frames} frames", **seconds))
  report = make_report(entries, assignment, config, manual_dir, cache_dir, outcomes,
                       dataset_dir, time.time() - start)
  if not report["clips"]:
    raise ValueError(f"no clip could be cut from the {report['files_seen']} files of "
                     f"{manual_dir}; skipped: " + ", ".join(
                         f"{reason} {info['count']}" for reason, info in report["skipped"].items()))
  for split, info in report["splits"].items():
    if not info["clips"]:
      logging.warning("Split %r has no clip (%d files, none usable); it is left out of the "
                      "dataset (TFDS cannot write an empty split).", split, info["files"])
  for reason, info in report["skipped"].items():
    logging.warning("Skipped %d file(s) as %s: %s", info["count"], reason,
                    ", ".join(sorted(info["files"])))
  return Plan(entries=entries, report=report)


def make_report(entries: list[FileEntry], assignment: av_folder.SplitAssignment,
                config: av_folder.AvFolderConfig, manual_dir: str, cache_dir: str,
                outcomes: dict[str, dict], dataset_dir: str | None,
                decode_seconds: float) -> dict:
  """The preparation report (a JSON-able dict; see the module docstring)."""
  geometry = config.geometry
  splits = {}
  for split in assignment.splits:
    mine = [e for e in entries if e.split == split]
    used = [e for e in mine if e.num_clips]
    clips = sum(e.num_clips for e in used)
    splits[split] = {
        "files": len(mine), "files_used": len(used), "clips": clips,
        "clip_seconds": round(clips * geometry.clip_seconds, 3),
        "video_seconds": round(sum(e.video_seconds for e in used), 3),
        "audio_seconds": round(sum(e.audio_seconds for e in used), 3),
        "in_dataset": bool(clips),
    }
  skipped: dict[str, dict] = {}
  for e in sorted(entries, key=lambda e: e.relpath):
    if not e.num_clips:
      info = skipped.setdefault(e.reason, {"count": 0, "meaning": SKIP_REASONS[e.reason],
                                           "files": {}})
      info["count"] += 1
      info["files"][e.relpath] = e.detail
  used = [e for e in entries if e.num_clips]
  return {
      "dataset": f"av_folder/{config.name}",
      "dataset_dir": dataset_dir,
      "manual_dir": os.path.abspath(manual_dir),
      "geometry": geometry.to_dict(),
      "split_rule": {"requested": config.split_rule, "applied": assignment.rule,
                     "test_fraction": config.test_fraction, "seed": config.split_seed},
      "files_seen": len(entries),
      "files_used": len(used),
      "files_skipped": len(entries) - len(used),
      "clips": sum(e.num_clips for e in used),
      "splits": splits,
      "skipped": dict(sorted(skipped.items())),
      "ignored": {"count": len(assignment.ignored), "files": assignment.ignored[:100]},
      "seconds": {"video": round(sum(e.video_seconds for e in used), 3),
                  "audio": round(sum(e.audio_seconds for e in used), 3),
                  "in_clips": round(sum(e.num_clips for e in used) * geometry.clip_seconds, 3)},
      "cache": {"dir": cache_dir,
                "reused": sum(bool(o.get("from_cache")) for o in outcomes.values()),
                "decoded": sum(o.get("cache_path") is not None and not o.get("from_cache")
                               for o in outcomes.values())},
      "decode_seconds": round(decode_seconds, 2),
  }


def write_report(report: dict, directory) -> str:
  """Writes `prepare_report.json` in directory (atomically: a reader never sees half of it)."""
  path = os.path.join(os.fspath(directory), REPORT_NAME)
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(report, f, indent=2)
  os.replace(tmp, path)
  return path


def read_report(dataset_dir) -> dict | None:
  path = os.path.join(os.fspath(dataset_dir), REPORT_NAME)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


# --------------------------------------------------------------------------------------------
# Stage 2 and the whole preparation
# --------------------------------------------------------------------------------------------
def _recorded_settings(dataset_dir) -> dict | None:
  path = os.path.join(os.fspath(dataset_dir), "metadata.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    metadata = json.load(f)
  return {"geometry": metadata.get("geometry"), "split": metadata.get("split")}


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
  manual_dir = check_manual_dir(manual_dir)
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
    return read_report(dataset_dir) or {"dataset": f"av_folder/{config.name}",
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
  report = read_report(dataset_dir)
  report["data_dir"] = os.path.abspath(data_dir)
  report["build_seconds"] = round(time.time() - start, 2)
  write_report(report, dataset_dir)
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
SPLIT_FLAGS = ("split_rule", "test_fraction", "split_seed")


def resolve_config(dataset: str | None = "av_folder", config=None, config_name: str | None = None,
                   **values) -> av_folder.AvFolderConfig:
  """The `AvFolderConfig` to prepare from one source of geometry (see the module docstring).

  Args:
    dataset: "av_folder" (geometry from `values` or `config`), or a preset name.
    config: an avdit ConfigDict: geometry from `config.clip` (+ `config.data.stride_frames`,
      default back to back), the dataset from `config.data.tfds_name` ("av_folder/NAME").
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
    tfds_name = config.data.get("tfds_name", None)
    if config.data.get("name") != "tfds" or not tfds_name or not tfds_name.startswith(
        "av_folder/"):
      raise ValueError("--config must describe a TFDS av_folder dataset (c.data.name='tfds', "
                       f"c.data.tfds_name='av_folder/NAME'), got data.name="
                       f"{config.data.get('name')!r}, tfds_name={tfds_name!r}")
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
        stride_frames=config.data.get("stride_frames", None) or clip.num_frames)
    split = {"split_rule": config.data.get("split_rule", "auto"),
             "test_fraction": config.data.get("test_fraction", 0.1),
             "split_seed": config.data.get("split_seed", 0)}
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
  flags.DEFINE_integer("num_workers", 1, "Processes decoding files.", flag_values=flag_values)
  flags.DEFINE_bool("overwrite", False, "Rebuild an existing dataset (decode cache reused).",
                    flag_values=flag_values)
  flags.DEFINE_bool("keep_cache", True, "Keep the decoded files under <data_dir>/av_folder/"
                    "_prepare_cache (fast rebuilds at other clip lengths / splits).",
                    flag_values=flag_values)


def run_from_flags(fv: flags.FlagValues = flags.FLAGS) -> dict:
  """Resolves the parsed flags and prepares; returns the report."""
  config = fv.config
  data_dir = fv.data_dir or (config.data.get("data_dir", None) if config is not None else None)
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
    print(f"\nTrain on it with: --config.data.name=tfds --config.data.tfds_name="
          f"{report['dataset']} --config.data.data_dir={report['data_dir']}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
