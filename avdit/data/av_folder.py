"""TFDS datasets of audiovisual clips cut from a folder of video files (`manual_dir`).

    manual_dir/**/*.mp4 ...
      -> split rule (file lists | train/ test/ folders | hashed ratio)   `assign_splits`
      -> each file decoded once, cached (`decode_and_plan`)               `DecodedAV` per file
      -> `av_decode.cut_clips` at the config's geometry                   clips of F frames
      -> ArrayRecord shards {video uint8 [F, H, W, 3], audio float32 [L], source, start_seconds,
         clip_index}, read with `tfds.data_source(...)` (random access, for grain)

One generic builder, `av_folder`, whose `AvFolderConfig` carries the clip geometry (fps, height,
width, num_frames = 1 + 4k, sample_rate, stride_frames) and the split rule, so the dataset's name
and directory (`<data_dir>/av_folder/<config name>/<version>`) identify exactly what is in it. The
geometry is also written to the dataset's metadata (`metadata.json`, `builder.info.metadata`), where
the input pipeline checks it against `config.clip` before training.

Presets (`BUILDER_CONFIGS`) follow MM-Diffusion's AIST++ and Landscape data (64x64, 10 fps, 16 kHz,
`train/` and `test/` sub-folders): `av_folder/aist` and `av_folder/landscape`. Their clips are 17
frames (1.7 s) cut back to back: MM-Diffusion trains on 16 frames (1.6 s, 25 600 samples) at 10 fps,
and 17 = 1 + 4 * 4 is the 1 + 4k length that holds those 16 frames plus the frame the causal video
autoencoder encodes alone; 21 frames (2.1 s, nearer the "≈2 s" of SPEC §2) would cut a fifth
fewer clips from each file and match no baseline setting. Any other geometry is a custom config (`AvFolderConfig(name=..., ...)`, named by
`ClipGeometry.default_name()` unless given a name).

Video and audio are stored as raw-bytes `tfds.features.Tensor`s (not an encoded video feature):
reads are bit-exact copies of what `av_decode` produced, with no codec in the training input path.

Splits (`SPLIT_RULES`):
  lists    `train.txt`, `validation.txt`, `test.txt` in manual_dir, one relative path per line
           ('#' comments); other files are ignored (and counted as such).
  folders  files under the top-level `train/`, `validation/`, `test/` folders (MM-Diffusion's
           layout); files elsewhere are ignored.
  ratio    every video file; `test` if a hash of (split_seed, relative path) falls below
           test_fraction, else `train`. A file's split depends only on its own path, so adding
           files never moves existing ones between splits.
  auto     lists if any list file exists, else folders if any split folder exists, else ratio.
A folder too small for a file-level ratio split (e.g. 2 files at test_fraction 0.1: both in
`train`) gets a clip-level one instead (`clip_level_split`, unless `clip_fallback=False`): the
last round(test_fraction x clips) clips of each file are held out in `test`, whole clips, and
with clips cut closer than their length (stride < F) the training clips that would share a
frame with them are dropped, so no frame is in both splits. The report (`split_rule.clip_level`)
and the log say so.
Example keys are `<relative path>#<clip index>`; TFDS orders records by a hash of the key, so
record order is stable across runs and interleaves files (the first records of a split are
spread over many files).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import multiprocessing
import os
import posixpath
import re
import time
from concurrent import futures

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from avdit.data import av_decode

TEMPORAL_FACTOR = 4  # the video autoencoder's temporal stride: clips are 1 + 4k frames
SPLIT_NAMES = ("train", "validation", "test")
SPLIT_RULES = ("auto", "lists", "folders", "ratio")
# Extensions taken as video files when walking manual_dir (lowercase); listed files are taken
# whatever their extension.
VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".flv", ".mpg", ".mpeg",
                    ".ts", ".3gp", ".ogv", ".wmv")
FORMAT_VERSION = 1  # of the metadata written next to the examples
# Tensors stored as their raw bytes: exact and read without per-value parsing (the default
# tf.Example lists would store each uint8 pixel as an int64 varint, and float64 as float32).
# ArrayRecord compresses the records on disk either way.
_RAW = tfds.features.Encoding.BYTES
# Reasons a file gives no clip: av_decode's, plus two found before or around decoding.
SKIP_REASONS = {
    **av_decode.REASONS,
    "missing": "listed in a split's file list but not found in manual_dir",
    "unexpected_error": "decoding raised an unexpected error (not cached: a re-run retries it)",
}
CACHE_VERSION = 2  # bump to invalidate every intermediate when their content changes
REPORT_NAME = "prepare_report.json"
_SCALARS = ("fps", "sample_rate", "t0_seconds", "source_duration_seconds", "video_end_seconds",
            "audio_end_seconds", "damaged_at_seconds")


# --------------------------------------------------------------------------------------------
# Clip geometry
# --------------------------------------------------------------------------------------------
def _positive_int(name: str, value) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f"{name} must be a positive integer, got {value!r}")
  return int(value)


@dataclasses.dataclass(frozen=True)
class ClipGeometry:
  """What one clip is: frame rate and size, frames per clip, audio rate, stride between clips.

  Attributes:
    fps: output frame rate (frames picked by timestamp, `av_decode`).
    height, width: output frame size (scale to cover, centre crop).
    num_frames: F = 1 + 4k frames per clip.
    sample_rate: mono audio rate (Hz).
    stride_frames: frames between the starts of consecutive clips of a file (F: back to back).
  """

  fps: float
  height: int
  width: int
  num_frames: int
  sample_rate: int
  stride_frames: int

  def __post_init__(self):
    try:
      fps = float(self.fps)
    except (TypeError, ValueError):
      raise ValueError(f"fps must be a positive number, got {self.fps!r}") from None
    if isinstance(self.fps, bool) or not math.isfinite(fps) or fps <= 0:
      raise ValueError(f"fps must be a positive number, got {self.fps!r}")
    object.__setattr__(self, "fps", fps)
    for name in ("height", "width", "num_frames", "sample_rate", "stride_frames"):
      object.__setattr__(self, name, _positive_int(name, getattr(self, name)))
    if (self.num_frames - 1) % TEMPORAL_FACTOR:
      below = 1 + TEMPORAL_FACTOR * ((self.num_frames - 1) // TEMPORAL_FACTOR)
      raise ValueError(
          f"num_frames={self.num_frames} is not 1 + {TEMPORAL_FACTOR}k: the video autoencoder "
          f"encodes the first frame alone and the rest in groups of {TEMPORAL_FACTOR} "
          f"(nearest: {below} or {below + TEMPORAL_FACTOR}).")

  @property
  def audio_samples(self) -> int:
    """L, the audio samples of a clip (the `ClipLayout.audio_samples` rule)."""
    return av_decode.clip_audio_samples(self.num_frames, self.fps, self.sample_rate)

  @property
  def clip_seconds(self) -> float:
    return self.num_frames / self.fps

  def to_dict(self) -> dict:
    return {"fps": self.fps, "height": self.height, "width": self.width,
            "num_frames": self.num_frames, "sample_rate": self.sample_rate,
            "stride_frames": self.stride_frames, "audio_samples": self.audio_samples,
            "clip_seconds": self.clip_seconds}

  @classmethod
  def from_dict(cls, values: dict) -> ClipGeometry:
    return cls(**{f.name: values[f.name] for f in dataclasses.fields(cls)})

  def default_name(self) -> str:
    """A TFDS config name that spells the geometry, e.g. '64x64_10fps_17f_16000hz_s17'."""
    fps = f"{self.fps:g}".replace("+", "")
    return (f"{self.height}x{self.width}_{fps}fps_{self.num_frames}f_{self.sample_rate}hz"
            f"_s{self.stride_frames}")

  def mismatches(self, layout) -> list[str]:
    """'name dataset vs config' for each clip field that differs from a `ClipLayout`."""
    out = []
    for name in ("num_frames", "fps", "height", "width", "sample_rate"):
      ours, theirs = getattr(self, name), getattr(layout, name)
      if float(ours) != float(theirs):
        out.append(f"{name} {ours:g} (dataset) vs {theirs:g} (config.clip)")
    return out


# --------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class SplitAssignment:
  """Which files go to which split, and how that was decided.

  Attributes:
    rule: the rule applied ("lists", "folders" or "ratio"; never "auto").
    splits: split name -> sorted relative paths (posix); every split of the rule, maybe empty.
    ignored: video (or other) files of manual_dir that no split takes, sorted.
  """

  rule: str
  splits: dict[str, list[str]]
  ignored: list[str]

  @property
  def num_files(self) -> int:
    return sum(len(files) for files in self.splits.values())


def _is_hidden(name: str) -> bool:
  # Dot files include macOS '._name.mp4' resource forks, which are not videos.
  return name.startswith(".")


def list_files(manual_dir: str) -> list[str]:
  """Every non-hidden file under manual_dir, as sorted posix paths relative to it."""
  out = []
  for root, dirs, files in os.walk(manual_dir):
    dirs[:] = sorted(d for d in dirs if not _is_hidden(d))
    rel_root = os.path.relpath(root, manual_dir)
    for name in files:
      if _is_hidden(name):
        continue
      rel = name if rel_root == os.curdir else os.path.join(rel_root, name)
      out.append(rel.replace(os.sep, "/"))
  return sorted(out)


def is_video_file(relpath: str) -> bool:
  return os.path.splitext(relpath)[1].lower() in VIDEO_EXTENSIONS


def ratio_split(relpath: str, test_fraction: float, seed: int) -> str:
  """'test' or 'train' for one file, from a hash of (seed, path) alone (stable as files come)."""
  digest = hashlib.sha256(f"{seed}\0{relpath}".encode("utf-8")).digest()
  unit = int.from_bytes(digest[:8], "big") / 2.0 ** 64  # uniform in [0, 1)
  return "test" if unit < test_fraction else "train"


def _normalize_listed(line: str, list_file: str) -> str:
  path = posixpath.normpath(line.replace("\\", "/"))
  if posixpath.isabs(path) or path == ".." or path.startswith("../"):
    raise ValueError(f"{list_file} lists {line!r}: paths must be relative to manual_dir and stay "
                     "inside it.")
  return path


def _read_list(path: str) -> list[str]:
  entries = []
  with open(path, encoding="utf-8") as f:
    for raw in f:
      line = raw.strip()
      if line and not line.startswith("#"):
        entries.append(_normalize_listed(line, os.path.basename(path)))
  return entries


def detect_split_rule(manual_dir: str) -> str:
  """The rule "auto" resolves to for manual_dir (see the module docstring)."""
  if any(os.path.isfile(os.path.join(manual_dir, f"{s}.txt")) for s in SPLIT_NAMES):
    return "lists"
  if any(os.path.isdir(os.path.join(manual_dir, s)) for s in SPLIT_NAMES):
    return "folders"
  return "ratio"


def assign_splits(manual_dir: str, rule: str = "auto", test_fraction: float = 0.1,
                  seed: int = 0) -> SplitAssignment:
  """Splits the files of manual_dir by `rule` (module docstring).

  Raises:
    ValueError: unknown rule, a file listed in two splits, a path leaving manual_dir, a bad
      test_fraction, or a rule whose lists/folders are absent.
  """
  if rule not in SPLIT_RULES:
    raise ValueError(f"unknown split rule {rule!r}; one of {', '.join(SPLIT_RULES)}")
  if rule == "auto":
    rule = detect_split_rule(manual_dir)
  files = list_files(manual_dir)
  if rule == "lists":
    splits, owner = {}, {}
    for split in SPLIT_NAMES:
      list_path = os.path.join(manual_dir, f"{split}.txt")
      if not os.path.isfile(list_path):
        continue
      entries = []
      for entry in _read_list(list_path):
        if entry in owner:
          if owner[entry] != split:
            raise ValueError(f"{entry} is listed in both {owner[entry]}.txt and {split}.txt; a "
                             "file must belong to one split.")
          continue  # listed twice in one list: once is enough (no duplicated clips)
        owner[entry] = split
        entries.append(entry)
      splits[split] = sorted(entries)
    if not splits:
      raise ValueError(f"split rule 'lists' needs train.txt / test.txt in {manual_dir}")
    lists = {f"{s}.txt" for s in splits}
    ignored = [f for f in files if f not in owner and f not in lists]
  elif rule == "folders":
    present = [s for s in SPLIT_NAMES if os.path.isdir(os.path.join(manual_dir, s))]
    if not present:
      raise ValueError(f"split rule 'folders' needs train/ and test/ sub-folders in {manual_dir}")
    splits = {s: [] for s in present}
    ignored = []
    for f in files:
      top = f.split("/", 1)[0]
      if top in splits and "/" in f and is_video_file(f):
        splits[top].append(f)
      else:
        ignored.append(f)
  else:
    if not 0.0 <= test_fraction < 1.0:
      raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    splits = {"train": [], "test": []}
    ignored = []
    for f in files:
      if is_video_file(f):
        splits[ratio_split(f, test_fraction, seed)].append(f)
      else:
        ignored.append(f)
  return SplitAssignment(rule=rule, splits=splits, ignored=ignored)


# --------------------------------------------------------------------------------------------
# Preparation, stage 1 (run by the builder): one intermediate per source file
# --------------------------------------------------------------------------------------------
def cache_dir_for(cache_root: str, geometry: ClipGeometry) -> str:
  """The cache sub-folder of a decode geometry (clip length and stride do not matter here)."""
  return os.path.join(cache_root, f"{geometry.height}x{geometry.width}_{geometry.fps:g}fps_"
                                  f"{geometry.sample_rate}hz")


def cache_path_for(cache_dir: str, manual_dir: str, relpath: str,
                   geometry: ClipGeometry) -> str:
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


def _check_decoded(decoded: av_decode.DecodedAV, geometry: ClipGeometry) -> str | None:
  """Why the decoded arrays are not what the geometry asks for (None if they are)."""
  frames, audio = decoded.frames_thwc, decoded.audio_l
  if frames.dtype != np.uint8 or frames.shape[1:] != (geometry.height, geometry.width, 3):
    return (f"frames {frames.dtype} {frames.shape}, expected uint8 [T, {geometry.height}, "
            f"{geometry.width}, 3]")
  if audio.dtype != np.float32 or audio.ndim != 1 or not np.isfinite(audio).all():
    return f"audio {audio.dtype} {audio.shape} is not finite float32 [L]"
  return None


def decode_to_cache(manual_dir: str, relpath: str, cache_path: str,
                    geometry: ClipGeometry) -> dict:
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
               geometry: ClipGeometry, num_workers: int = 1) -> dict[str, dict]:
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
def count_clips(num_frames: int, num_samples: int, geometry: ClipGeometry) -> int:
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
  video_seconds: float = 0.0  # of the whole file
  audio_seconds: float = 0.0
  first_clip: int = 0  # this entry's clips are [first_clip, first_clip + num_clips) of the file's
  file_clips: int | None = None  # all clips the file gives (None: num_clips, the whole file)

  @property
  def all_clips(self) -> int:
    return self.num_clips if self.file_clips is None else self.file_clips


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


def decode_and_plan(manual_dir, config: AvFolderConfig, cache_root: str,
                    num_workers: int = 1, dataset_dir: str | None = None) -> Plan:
  """Stage 1 and the clip plan of stage 2 (called by the builder's `_split_generators`).

  Raises:
    FileNotFoundError / ValueError: no manual_dir, no video file for the split rule, no clip at
      all (the report's skip counts are in the message).
  """
  manual_dir = check_manual_dir(manual_dir)
  geometry = config.geometry
  assignment = assign_splits(manual_dir, config.split_rule, config.test_fraction,
                             config.split_seed)
  if not assignment.num_files:
    raise ValueError(
        f"manual_dir {manual_dir} holds no video file for split rule {assignment.rule!r} "
        f"(extensions {', '.join(VIDEO_EXTENSIONS)}; {len(assignment.ignored)} other "
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
  clip_level = None
  if (assignment.rule == "ratio" and config.clip_fallback and config.test_fraction > 0
      and not any(e.num_clips for e in entries if e.split == "test")):
    entries, clip_level = clip_level_split(entries, config.test_fraction, geometry)
  report = make_report(entries, assignment, config, manual_dir, cache_dir, outcomes,
                       dataset_dir, time.time() - start, clip_level)
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
  for relpath, info in report["damaged"]["files"].items():
    logging.warning("%s: damaged data at %.2f s; its %d clips before it are kept", relpath,
                    info["damaged_at_seconds"], info["clips_kept_before"])
  return Plan(entries=entries, report=report)


def held_out_tail(file_clips: int, test_clips: int, geometry: ClipGeometry) -> int:
  """Training clips left in front of a file's last `test_clips` clips: those whose frames all
  come before the first held-out frame (all of the rest when clips do not overlap)."""
  boundary = (file_clips - test_clips) * geometry.stride_frames  # first held-out frame
  if boundary < geometry.num_frames:
    return 0
  return min(file_clips - test_clips,
             (boundary - geometry.num_frames) // geometry.stride_frames + 1)


def clip_level_split(entries: list[FileEntry], test_fraction: float, geometry: ClipGeometry
                     ) -> tuple[list[FileEntry], dict | None]:
  """(entries, report) with the last clips of each used file held out in `test` (module
  docstring); the entries unchanged and None when the files have too few clips to split.

  Each file holds out round(test_fraction x its clips); at least one clip is held out in all
  (from the file with the most clips), and the training clips overlapping a held-out one are
  dropped.
  """
  used = [e for e in entries if e.num_clips]
  held = {e.relpath: min(e.num_clips, int(math.floor(test_fraction * e.num_clips + 0.5)))
          for e in used}
  if used and not sum(held.values()):
    held[max(used, key=lambda e: e.num_clips).relpath] = 1
  kept = {e.relpath: held_out_tail(e.num_clips, held[e.relpath], geometry) for e in used}
  if not sum(kept.values()):
    logging.warning("The file-level split left 'test' empty and the %d clip(s) of %d file(s) are "
                    "too few to hold any out by clip; 'test' stays empty.",
                    sum(e.num_clips for e in used), len(used))
    return entries, None
  out = [e for e in entries if not e.num_clips]
  for e in used:
    common = dict(relpath=e.relpath, cache_path=e.cache_path, video_seconds=e.video_seconds,
                  audio_seconds=e.audio_seconds, file_clips=e.num_clips)
    if kept[e.relpath]:
      out.append(FileEntry(split="train", num_clips=kept[e.relpath], **common))
    if held[e.relpath]:
      out.append(FileEntry(split="test", num_clips=held[e.relpath],
                           first_clip=e.num_clips - held[e.relpath], **common))
  report = {"train_clips": sum(kept.values()), "test_clips": sum(held.values()),
            "dropped_overlapping_clips": sum(e.num_clips - held[e.relpath] - kept[e.relpath]
                                             for e in used),
            "why": f"the file-level ratio rule put all {len(used)} usable files in 'train' "
                   f"(test_fraction {test_fraction:g}); the last clips of each file are held "
                   "out instead (clip_fallback=False keeps the file-level split)"}
  logging.warning("Clip-level split: %s: %d test clips, %d train clips, %d clips dropped so that "
                  "no frame is in both splits.", report["why"], report["test_clips"],
                  report["train_clips"], report["dropped_overlapping_clips"])
  return out, report


def make_report(entries: list[FileEntry], assignment: SplitAssignment,
                config: AvFolderConfig, manual_dir: str, cache_dir: str,
                outcomes: dict[str, dict], dataset_dir: str | None,
                decode_seconds: float, clip_level: dict | None = None) -> dict:
  """The preparation report (a JSON-able dict; see the module docstring). A file split at
  clip level counts once in the totals and in each split it has clips in."""
  geometry = config.geometry
  splits = {}
  for split in assignment.splits:
    mine = [e for e in entries if e.split == split]
    used = [e for e in mine if e.num_clips]
    clips = sum(e.num_clips for e in used)
    splits[split] = {
        "files": len(mine), "files_used": len(used), "clips": clips,
        "clip_seconds": round(clips * geometry.clip_seconds, 3),
        # A file split at clip level counts here by its share of clips.
        "video_seconds": round(sum(e.video_seconds * e.num_clips / e.all_clips for e in used), 3),
        "audio_seconds": round(sum(e.audio_seconds * e.num_clips / e.all_clips for e in used), 3),
        "in_dataset": bool(clips),
    }
  skipped: dict[str, dict] = {}
  for e in sorted(entries, key=lambda e: e.relpath):
    if not e.num_clips:
      info = skipped.setdefault(e.reason, {"count": 0, "meaning": SKIP_REASONS[e.reason],
                                           "files": {}})
      info["count"] += 1
      info["files"][e.relpath] = e.detail
  used = list({e.relpath: e for e in entries if e.num_clips}.values())  # one per file
  seen = {e.relpath for e in entries}
  damaged = {e.relpath: {"damaged_at_seconds": outcomes[e.relpath]["damaged_at_seconds"],
                         "clips_kept_before": e.all_clips}
             for e in used if outcomes[e.relpath].get("damaged_at_seconds") is not None}
  return {
      "dataset": f"av_folder/{config.name}",
      "dataset_dir": dataset_dir,
      "manual_dir": os.path.abspath(manual_dir),
      "geometry": geometry.to_dict(),
      "split_rule": {"requested": config.split_rule, "applied": assignment.rule,
                     "test_fraction": config.test_fraction, "seed": config.split_seed,
                     "clip_fallback": config.clip_fallback, "clip_level": clip_level},
      "files_seen": len(seen),
      "files_used": len(used),
      "files_skipped": len(seen) - len(used),
      "clips": sum(info["clips"] for info in splits.values()),
      "splits": splits,
      "skipped": dict(sorted(skipped.items())),
      # Used files with damaged data inside: their clips end before it (av_decode.decode_file).
      "damaged": {"count": len(damaged), "files": dict(sorted(damaged.items()))},
      "ignored": {"count": len(assignment.ignored), "files": assignment.ignored[:100]},
      "seconds": {"video": round(sum(e.video_seconds for e in used), 3),
                  "audio": round(sum(e.audio_seconds for e in used), 3),
                  "in_clips": round(sum(info["clips"] for info in splits.values())
                                    * geometry.clip_seconds, 3)},
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
# The TFDS builder
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(eq=False)
class AvFolderConfig(tfds.core.BuilderConfig):
  """An `av_folder` dataset: the clip geometry and the split rule (module docstring)."""

  fps: float = 10.0
  height: int = 64
  width: int = 64
  num_frames: int = 17
  sample_rate: int = 16000
  stride_frames: int = 17
  split_rule: str = "auto"
  test_fraction: float = 0.1
  split_seed: int = 0
  clip_fallback: bool = True  # rule ratio, test split empty: hold out clips instead

  @property
  def geometry(self) -> ClipGeometry:
    return ClipGeometry(fps=self.fps, height=self.height, width=self.width,
                        num_frames=self.num_frames, sample_rate=self.sample_rate,
                        stride_frames=self.stride_frames)

  @property
  def split_settings(self) -> dict:
    return {"rule": self.split_rule, "test_fraction": float(self.test_fraction),
            "seed": int(self.split_seed), "clip_fallback": bool(self.clip_fallback)}

  @classmethod
  def from_geometry(cls, geometry: ClipGeometry, name: str | None = None,
                    split_rule: str = "auto", test_fraction: float = 0.1,
                    split_seed: int = 0, clip_fallback: bool = True) -> AvFolderConfig:
    return cls(name=name or geometry.default_name(), fps=geometry.fps, height=geometry.height,
               width=geometry.width, num_frames=geometry.num_frames,
               sample_rate=geometry.sample_rate, stride_frames=geometry.stride_frames,
               split_rule=split_rule, test_fraction=test_fraction, split_seed=split_seed,
               clip_fallback=clip_fallback,
               description=f"clips of {geometry.default_name()}, split rule {split_rule}")


_MM_DIFFUSION = dict(fps=10.0, height=64, width=64, num_frames=17, sample_rate=16000,
                     stride_frames=17, split_rule="folders")
PRESETS = {
    "aist": AvFolderConfig(
        name="aist", description="AIST++ street dance as MM-Diffusion lays it out: train/ and "
        "test/ folders of mp4s; 64x64, 10 fps, 16 kHz, 17-frame (1.7 s) clips.",
        **_MM_DIFFUSION),
    "landscape": AvFolderConfig(
        name="landscape", description="Landscape nature scenes as MM-Diffusion lays them out: "
        "train/ and test/ folders of mp4s; 64x64, 10 fps, 16 kHz, 17-frame (1.7 s) clips.",
        **_MM_DIFFUSION),
}


class AvFolder(tfds.core.GeneratorBasedBuilder):
  """Audiovisual clips cut from the video files of a folder (module docstring)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Clips of video uint8 [F, H, W, 3] and mono audio float32 [L]."}
  BUILDER_CONFIGS = list(PRESETS.values())
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  Put the video files (with their audio) in manual_dir, in train/ and test/ folders, or list
  them in train.txt / test.txt (paths relative to manual_dir), or leave them anywhere to split
  by a hashed ratio. Then: python -m avdit.data.prepare --manual_dir=DIR --data_dir=OUT ...
  """

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls):
    """None: no checksums or metadata files live next to this builder's code.

    TFDS 4.9 resolves the source path of a builder inside a package through the
    `importlib_resources` backport, which it only installs on Python < 3.9 (ModuleNotFoundError
    in `download_and_prepare` otherwise); the path is only used to find such files.
    """
    return None

  def __init__(self, *, num_workers: int = 1, **kwargs):
    """`num_workers`: processes decoding source files during preparation (1: in-process)."""
    self._num_workers = int(num_workers)
    super().__init__(**kwargs)
    config = self.builder_config
    _ = config.geometry  # validates it before anything is written
    if config.split_rule not in SPLIT_RULES:
      raise ValueError(f"unknown split rule {config.split_rule!r}; one of "
                       f"{', '.join(SPLIT_RULES)}")
    if not 0.0 <= config.test_fraction < 1.0:
      raise ValueError(f"test_fraction must be in [0, 1), got {config.test_fraction}")
    self.preparation = None  # the report of the last preparation (avdit.data.prepare)

  def _info(self) -> tfds.core.DatasetInfo:
    geometry = self.builder_config.geometry
    return tfds.core.DatasetInfo(
        builder=self,
        description="Audiovisual clips cut from a folder of video files (avdit.data.av_folder).",
        features=tfds.features.FeaturesDict({
            "video": tfds.features.Tensor(
                shape=(geometry.num_frames, geometry.height, geometry.width, 3), dtype=np.uint8,
                encoding=_RAW),
            "audio": tfds.features.Tensor(shape=(geometry.audio_samples,), dtype=np.float32,
                                          encoding=_RAW),
            "source": tfds.features.Text(),  # path relative to manual_dir
            # On the source's clock; raw bytes keep float64 (a tf.Example float list is float32).
            "start_seconds": tfds.features.Tensor(shape=(), dtype=np.float64, encoding=_RAW),
            "clip_index": tfds.features.Scalar(dtype=np.int64),  # within the source file
        }),
        metadata=tfds.core.MetadataDict(
            format_version=FORMAT_VERSION, geometry=geometry.to_dict(),
            split=self.builder_config.split_settings),
    )

  @property
  def cache_root(self) -> str:
    """Where preparation keeps the decoded files: `<data_dir>/av_folder/_prepare_cache`."""
    return os.path.join(os.fspath(self.data_dir_root), self.name, "_prepare_cache")

  def _split_generators(self, dl_manager):
    plan = decode_and_plan(
        dl_manager.manual_dir, self.builder_config, cache_root=self.cache_root,
        num_workers=self._num_workers,
        dataset_dir=os.path.join(os.fspath(self.data_dir_root), self.info.full_name))
    self.preparation = plan.report
    # Into the dataset's (still temporary) directory: it appears with the dataset, atomically.
    write_report(plan.report, self.data_dir)
    return {split: self._generate_examples(plan, split) for split in plan.nonempty_splits()}

  def _generate_examples(self, plan, split: str):
    geometry = self.builder_config.geometry
    for entry in plan.used_files(split):
      decoded = load_decoded(entry.cache_path, source=entry.relpath)
      clips = av_decode.cut_clips(decoded, num_frames=geometry.num_frames,
                                  stride_frames=geometry.stride_frames)
      if len(clips) != entry.all_clips:  # the plan was counted on the same cache entry
        raise RuntimeError(f"{entry.relpath}: {len(clips)} clips now, {entry.all_clips} when "
                           "planned; was the cache changed during preparation?")
      for clip in clips[entry.first_clip:entry.first_clip + entry.num_clips]:
        yield f"{entry.relpath}#{clip.index}", {
            "video": np.ascontiguousarray(clip.video, np.uint8),
            "audio": np.ascontiguousarray(clip.audio, np.float32),
            "source": entry.relpath,
            "start_seconds": float(clip.start_seconds),
            "clip_index": int(clip.index),
        }


# --------------------------------------------------------------------------------------------
# Reading (the input pipeline)
# --------------------------------------------------------------------------------------------
def load_builder(tfds_name: str, data_dir: str | None):
  """The builder of a prepared dataset, with a clear error when it has not been prepared."""
  config_name = tfds_name.split("/", 1)[-1]
  how = (f"--dataset={config_name}" if config_name in PRESETS
         else "--config=YOUR_CONFIG (its c.clip and c.data.tfds_name)")
  hint = (f"prepare it first: python -m avdit.data.prepare {how} --manual_dir=YOUR_VIDEOS "
          f"--data_dir={data_dir or '~/tensorflow_datasets'}")
  try:
    builder = tfds.builder(tfds_name, data_dir=data_dir)
  except (tfds.core.registered.DatasetNotFoundError, ValueError, AssertionError) as err:
    raise FileNotFoundError(f"no TFDS dataset {tfds_name!r} in data_dir {data_dir!r}; "
                            f"{hint}") from err
  if not (builder.data_path / "dataset_info.json").exists():
    raise FileNotFoundError(f"TFDS dataset {tfds_name!r} is not prepared in {builder.data_dir}; "
                            f"{hint}")
  return builder


def dataset_geometry(builder) -> ClipGeometry | None:
  """The geometry recorded in a prepared dataset's metadata (None for foreign datasets)."""
  metadata = builder.info.metadata
  if metadata is None or "geometry" not in metadata:
    return None
  return ClipGeometry.from_dict(metadata["geometry"])
