"""Tests of dataset preparation (avdit/data/prepare.py) and the av_folder TFDS builder.

A manual_dir of small fixture videos (tests/av_fixtures.py: a few good files, one at an odd size
and rates, and one of each kind of broken file) is prepared once at 32x32, 10 fps, 9-frame clips,
16 kHz; the tests read it back through `tfds.data_source` and compare it with direct `av_decode`
decodes of the same files, with the durations the fixtures were written with, and with
preparations that were interrupted (a SIGKILLed command, a Ctrl-C in the middle of the build) and
then re-run.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

from absl import flags
import numpy as np
import pytest
import tensorflow_datasets as tfds

import av_fixtures as fx
from avdit.data import av_decode
from avdit.data import av_folder
from avdit.data import prepare

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FPS, SIZE, FRAMES, STRIDE, SR = 10.0, 32, 9, 9, 16000
GEOMETRY = av_folder.ClipGeometry(fps=FPS, height=SIZE, width=SIZE, num_frames=FRAMES,
                                  sample_rate=SR, stride_frames=STRIDE)
CONFIG = av_folder.AvFolderConfig.from_geometry(GEOMETRY)
NAME = f"av_folder/{CONFIG.name}"
GEOMETRY_FLAGS = [f"--fps={FPS}", f"--height={SIZE}", f"--width={SIZE}",
                  f"--num_frames={FRAMES}", f"--sample_rate={SR}"]
SRC = dict(width=48, height=32)  # small sources: fast to write and to decode

# Good files: name -> write_av arguments (seconds = video duration, audio to its end).
GOOD = {
    "train/a.mp4": dict(seconds=2.0),
    "train/odd.mp4": dict(fps=30, width=70, height=50, sample_rate=44100, channels=2,
                          seconds=3.0),  # odd frame size and rates: scaled and resampled, used
    "train/c.mkv": dict(seconds=1.0),
    "test/d.mp4": dict(seconds=2.0),
}
SKIPPED = {"train/cut.mp4": "truncated", "train/garbage.mp4": "unreadable",
           "train/silent.mp4": "no_audio_stream", "test/short.mp4": "too_short"}
IGNORED = ["notes.txt", "other/x.mp4"]  # not a video / outside the train/ and test/ folders


def implied_clips(seconds: float) -> int:
  """Clips of FRAMES frames every STRIDE frames in `seconds` of video resampled to FPS."""
  frames = int(round(seconds * FPS))
  return 0 if frames < FRAMES else (frames - FRAMES) // STRIDE + 1


def write_good(path, **kwargs):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  return fx.write_av(path, **{"fps": 25, **SRC, **kwargs})


@pytest.fixture(scope="module")
def manual_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("videos")
  for name, kwargs in GOOD.items():
    write_good(root / name, **kwargs)
  long = write_good(tmp_path_factory.mktemp("src") / "long.mp4", seconds=4.0)
  fx.write_truncated(long.path, root / "train" / "cut.mp4")  # header says 4 s, data stops ~2 s
  fx.write_garbage(root / "train" / "garbage.mp4")
  write_good(root / "train" / "silent.mp4", with_audio=False)
  write_good(root / "test" / "short.mp4", seconds=0.5)  # 5 frames at 10 fps < one clip
  write_good(root / "other" / "x.mp4")
  (root / "notes.txt").write_text("not a video")
  return str(root)


@pytest.fixture(scope="module", autouse=True)
def quiet_tfds():
  tfds.disable_progress_bar()


@pytest.fixture(scope="module")
def clean(manual_dir, tmp_path_factory):
  """A clean, uninterrupted preparation: (data_dir, report)."""
  data_dir = str(tmp_path_factory.mktemp("clean"))
  return data_dir, prepare.prepare_dataset(manual_dir, data_dir, CONFIG)


def read_all(data_dir, name=NAME) -> dict[str, list[dict]]:
  builder = tfds.builder(name, data_dir=data_dir)
  out = {}
  for split in builder.info.splits:
    source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    out[split] = [source[i] for i in range(len(source))]
  return out


def assert_same_dataset(data_dir_a, data_dir_b, name=NAME):
  a, b = read_all(data_dir_a, name), read_all(data_dir_b, name)
  assert a.keys() == b.keys()
  for split in a:
    assert len(a[split]) == len(b[split]), split
    for x, y in zip(a[split], b[split]):  # the same records in the same order
      assert x.keys() == y.keys()
      for key in x:
        assert np.asarray(x[key]).tobytes() == np.asarray(y[key]).tobytes(), (split, key)


def comparable(report):
  """A report without what legitimately differs between runs (dirs, timings, cache use)."""
  drop = {"dataset_dir", "data_dir", "cache", "decode_seconds", "build_seconds"}
  return {k: v for k, v in report.items() if k not in drop}


def sources(records):
  return [r["source"].decode() for r in records]


# --------------------------------------------------------------------------------------------
# The report and the clips
# --------------------------------------------------------------------------------------------
def test_report_counts_each_skip_reason_with_its_files(clean):
  data_dir, report = clean
  assert {reason: sorted(info["files"]) for reason, info in report["skipped"].items()} == {
      reason: [name] for name, reason in SKIPPED.items()}
  assert all(info["count"] == len(info["files"]) for info in report["skipped"].values())
  assert "4.000 s" in report["skipped"]["truncated"]["files"]["train/cut.mp4"]  # the detail
  assert report["files_seen"] == len(GOOD) + len(SKIPPED)
  assert report["files_used"] == len(GOOD)
  assert report["files_skipped"] == len(SKIPPED)
  assert report["ignored"] == {"count": len(IGNORED), "files": IGNORED}
  assert report["split_rule"]["applied"] == "folders"
  assert report["geometry"] == {**GEOMETRY.to_dict(), "audio_samples": 14400, "clip_seconds": 0.9}
  assert report["cache"] == {"dir": report["cache"]["dir"], "reused": 0, "decoded": 8}
  # Written next to the dataset, and recorded in its metadata for the input pipeline.
  dataset_dir = os.path.join(data_dir, "av_folder", CONFIG.name, "1.0.0")
  assert report["dataset_dir"] == dataset_dir
  with open(os.path.join(dataset_dir, "prepare_report.json")) as f:
    assert json.load(f) == report
  builder = tfds.builder(NAME, data_dir=data_dir)
  assert av_folder.dataset_geometry(builder) == GEOMETRY


def test_clip_counts_and_seconds_follow_the_fixture_durations(clean):
  data_dir, report = clean
  records = read_all(data_dir)
  for split in ("train", "test"):
    expected = {name: implied_clips(kw["seconds"]) for name, kw in GOOD.items()
                if name.startswith(split + "/")}
    got = {name: sources(records[split]).count(name) for name in set(sources(records[split]))}
    assert got == expected, split
    assert report["splits"][split]["clips"] == sum(expected.values()) == len(records[split])
    assert report["splits"][split]["video_seconds"] == pytest.approx(
        sum(GOOD[name]["seconds"] for name in expected))
    assert report["splits"][split]["clip_seconds"] == pytest.approx(
        sum(expected.values()) * FRAMES / FPS)
  assert report["clips"] == sum(implied_clips(kw["seconds"]) for kw in GOOD.values()) == 8


def test_examples_equal_a_direct_decode_of_their_file(clean, manual_dir):
  data_dir, _ = clean
  records = read_all(data_dir)
  by_file = {}
  for split, split_records in records.items():
    for record in split_records:
      assert record["video"].shape == (FRAMES, SIZE, SIZE, 3)
      assert record["video"].dtype == np.uint8
      assert record["audio"].shape == (GEOMETRY.audio_samples,)
      assert record["audio"].dtype == np.float32
      by_file.setdefault(record["source"].decode(), []).append(record)
  assert sorted(by_file) == sorted(GOOD)
  for name, file_records in by_file.items():
    decoded = av_decode.decode_file(os.path.join(manual_dir, name), fps=FPS, height=SIZE,
                                    width=SIZE, sample_rate=SR)
    clips = av_decode.cut_clips(decoded, num_frames=FRAMES, stride_frames=STRIDE)
    # Every clip exactly once: none lost, none duplicated.
    assert sorted(int(r["clip_index"]) for r in file_records) == list(range(len(clips)))
    for record in file_records:
      clip = clips[int(record["clip_index"])]
      np.testing.assert_array_equal(record["video"], clip.video)
      np.testing.assert_array_equal(record["audio"], clip.audio)
      assert float(record["start_seconds"]) == clip.start_seconds


# --------------------------------------------------------------------------------------------
# Interruptions
# --------------------------------------------------------------------------------------------
# The command, with the decode of file number FILES_BEFORE_HANG + 1 hanging, so the kill always
# lands after exactly FILES_BEFORE_HANG files were decoded (one process decodes in order).
FILES_BEFORE_HANG = 2
SLOW_COMMAND = f"""
import time
from absl import app
from avdit.data import av_decode
from avdit.data import prepare
decode_file = av_decode.decode_file
calls = []
def hanging_decode_file(*args, **kwargs):
  calls.append(args)
  if len(calls) > {FILES_BEFORE_HANG}:
    time.sleep(3600)
  return decode_file(*args, **kwargs)
av_decode.decode_file = hanging_decode_file
prepare.define_flags()
app.run(prepare.main)
"""


def command_env():
  return {**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3",
          "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}


def cache_files(data_dir):
  cache = av_folder.cache_dir_for(os.path.join(data_dir, "av_folder", "_prepare_cache"), GEOMETRY)
  return sorted(f for f in os.listdir(cache) if f.endswith(".npz")) if os.path.isdir(cache) else []


def test_killed_command_rerun_equals_a_clean_run(clean, manual_dir, tmp_path):
  data_dir = str(tmp_path / "resumed")
  args = [f"--manual_dir={manual_dir}", f"--data_dir={data_dir}", *GEOMETRY_FLAGS]
  proc = subprocess.Popen([sys.executable, "-c", SLOW_COMMAND, *args], cwd=ROOT,
                          env=command_env(), stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  try:
    deadline = time.time() + 60
    while (len(cache_files(data_dir)) < FILES_BEFORE_HANG and proc.poll() is None
           and time.time() < deadline):
      time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
  finally:
    proc.wait()
  left_by_kill = cache_files(data_dir)
  done_at_kill = len(left_by_kill)
  # Each file's intermediate is written as soon as it is decoded, not at the end of the run.
  assert done_at_kill == FILES_BEFORE_HANG
  cache = av_folder.cache_dir_for(os.path.join(data_dir, "av_folder", "_prepare_cache"), GEOMETRY)
  for name in left_by_kill:  # every intermediate the kill left is complete (written atomically)
    outcome = av_folder.read_outcome(os.path.join(cache, name))
    assert outcome is not None and outcome["status"] in ("decoded", "skipped"), (name, outcome)
    if outcome["status"] == "decoded":
      decoded = av_folder.load_decoded(os.path.join(cache, name), outcome["relpath"])
      assert decoded.frames_thwc.shape[1:] == (GEOMETRY.height, GEOMETRY.width, 3)
      assert decoded.audio_l.size > 0
  assert not os.path.exists(os.path.join(data_dir, "av_folder", CONFIG.name, "1.0.0"))

  # The real command line finishes the job.
  result = subprocess.run([sys.executable, "-m", "avdit.data.prepare", *args], cwd=ROOT,
                          env=command_env(), capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"--config.data.tfds_name={NAME} --config.data.data_dir={data_dir}" in result.stdout
  assert "Decoded 8/8 files" in result.stderr  # progress, counting the files done before
  report = av_folder.read_report(os.path.join(data_dir, "av_folder", CONFIG.name, "1.0.0"))
  assert report["cache"]["reused"] == done_at_kill
  assert report["cache"]["decoded"] == len(GOOD) + len(SKIPPED) - done_at_kill
  assert comparable(report) == comparable(clean[1])
  assert_same_dataset(data_dir, clean[0])


def test_interrupted_build_and_damaged_cache_rerun_equals_a_clean_run(clean, manual_dir,
                                                                       tmp_path, monkeypatch):
  data_dir = str(tmp_path / "interrupted")
  load_decoded = av_folder.load_decoded
  calls = []

  def interrupt_second_file(*args, **kwargs):
    calls.append(args)
    if len(calls) == 2:
      raise KeyboardInterrupt  # Ctrl-C while TFDS writes the shards
    return load_decoded(*args, **kwargs)

  monkeypatch.setattr(av_folder, "load_decoded", interrupt_second_file)
  with pytest.raises(KeyboardInterrupt):
    prepare.prepare_dataset(manual_dir, data_dir, CONFIG)
  monkeypatch.undo()
  config_dir = os.path.join(data_dir, "av_folder", CONFIG.name)
  assert os.listdir(config_dir) == []  # no dataset, no half-written one
  assert len(cache_files(data_dir)) == len(GOOD) + len(SKIPPED)  # stage 1 had finished

  # Damage the cache as a crash or a full disk might: a half-written temporary file of a dead
  # process, and an intermediate that is not a valid file.
  damaged = av_folder.cache_path_for(
      av_folder.cache_dir_for(os.path.join(data_dir, "av_folder", "_prepare_cache"), GEOMETRY),
      manual_dir, "train/a.mp4", GEOMETRY)
  with open(damaged, "r+b") as f:
    f.truncate(100)
  stale = f"{damaged}.tmp-{2 ** 22 + 7}"  # above Linux's pid_max: no such process
  shutil.copy(damaged, stale)

  report = prepare.prepare_dataset(manual_dir, data_dir, CONFIG)
  assert report["cache"] == {"dir": report["cache"]["dir"], "reused": 7, "decoded": 1}
  assert not os.path.exists(stale)
  assert comparable(report) == comparable(clean[1])
  assert_same_dataset(data_dir, clean[0])
  # Once prepared, a re-run is a no-op that returns the same report.
  assert prepare.prepare_dataset(manual_dir, data_dir, CONFIG) == report


def test_unexpected_decoder_errors_skip_the_file_and_are_retried(manual_dir, tmp_path,
                                                                   monkeypatch):
  root = tmp_path / "videos"
  for name in ("a.mp4", "b.mp4"):
    write_good(root / name, seconds=1.0)
  decode_file = av_decode.decode_file

  def failing(path, **kwargs):
    if path.endswith("b.mp4"):
      raise RuntimeError("decoder bug")
    return decode_file(path, **kwargs)

  monkeypatch.setattr(av_decode, "decode_file", failing)
  config = av_folder.AvFolderConfig.from_geometry(GEOMETRY, split_rule="ratio",
                                                  test_fraction=0.0)
  report = prepare.prepare_dataset(root, tmp_path / "out", config)
  assert report["skipped"] == {"unexpected_error": {
      "count": 1, "meaning": av_folder.SKIP_REASONS["unexpected_error"],
      "files": {"b.mp4": "RuntimeError: decoder bug"}}}
  assert report["splits"]["test"] == {**report["splits"]["test"], "clips": 0,
                                      "in_dataset": False}  # empty: left out of the dataset
  monkeypatch.undo()
  report = prepare.prepare_dataset(root, tmp_path / "out", config, overwrite=True)
  assert report["skipped"] == {} and report["files_used"] == 2
  assert report["cache"]["reused"] == 1 and report["cache"]["decoded"] == 1


# --------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------
def test_split_by_file_lists(tmp_path):
  root = tmp_path / "videos"
  for name in ("a.mp4", "b.mp4", "sub/c.mp4", "unlisted.mp4"):
    write_good(root / name, seconds=1.0)
  (root / "train.txt").write_text("# training files\na.mp4\n\nsub/../b.mp4\nmissing.mp4\n")
  (root / "test.txt").write_text("sub/c.mp4\n")
  report = prepare.prepare_dataset(root, tmp_path / "out", CONFIG)
  assert report["split_rule"]["applied"] == "lists"
  records = read_all(tmp_path / "out")
  assert sorted(sources(records["train"])) == ["a.mp4", "b.mp4"]
  assert sources(records["test"]) == ["sub/c.mp4"]
  assert report["skipped"] == {"missing": {
      "count": 1, "meaning": av_folder.SKIP_REASONS["missing"],
      "files": {"missing.mp4": "no such file in manual_dir"}}}
  assert report["ignored"]["files"] == ["unlisted.mp4"]
  (root / "test.txt").write_text("sub/c.mp4\na.mp4\n")
  with pytest.raises(ValueError, match="both train.txt and test.txt"):
    av_folder.assign_splits(str(root))
  (root / "test.txt").write_text("../outside.mp4\n")
  with pytest.raises(ValueError, match="inside"):
    av_folder.assign_splits(str(root))


def test_split_by_ratio_is_stable_when_files_are_added(tmp_path):
  root = tmp_path / "videos"
  root.mkdir()
  for i in range(200):
    (root / f"clip_{i:03d}.mp4").write_bytes(b"")  # listing only: contents do not matter
  before = av_folder.assign_splits(str(root), "auto", test_fraction=0.2, seed=3)
  assert before.rule == "ratio"
  assert 20 <= len(before.splits["test"]) <= 60  # ~40 expected
  assert sorted(before.splits["train"] + before.splits["test"]) == sorted(os.listdir(root))
  for i in range(200, 300):
    (root / f"clip_{i:03d}.mp4").write_bytes(b"")
  after = av_folder.assign_splits(str(root), "auto", test_fraction=0.2, seed=3)
  for split in ("train", "test"):
    assert set(before.splits[split]) <= set(after.splits[split])
  other_seed = av_folder.assign_splits(str(root), "ratio", test_fraction=0.2, seed=4)
  assert other_seed.splits["test"] != after.splits["test"]


def test_prepared_ratio_split_follows_the_hash(tmp_path):
  root = tmp_path / "videos"
  names = ["a.mp4", "b.mp4", "c.mp4", "d.mp4"]
  for name in names:
    write_good(root / name, seconds=1.0)
  seed = next(s for s in range(100)  # a seed that puts files in both splits
              if 0 < sum(av_folder.ratio_split(n, 0.5, s) == "test" for n in names) < 4)
  config = av_folder.AvFolderConfig.from_geometry(GEOMETRY, split_rule="ratio",
                                                  test_fraction=0.5, split_seed=seed)
  prepare.prepare_dataset(root, tmp_path / "out", config)
  records = read_all(tmp_path / "out")
  for split in ("train", "test"):
    assert sorted(sources(records[split])) == [
        n for n in names if av_folder.ratio_split(n, 0.5, seed) == split]


# --------------------------------------------------------------------------------------------
# Errors and the command line
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("changes, match", [
    (dict(num_frames=8), r"not 1 \+ 4k.*nearest: 5 or 9"),
    (dict(fps=0.0), "fps must be a positive"),
    (dict(height=0), "height must be a positive integer"),
    (dict(width=32.5), "width must be a positive integer"),
    (dict(stride_frames=0), "stride_frames"),
])
def test_bad_geometry_is_a_clear_error(changes, match):
  values = {**GEOMETRY.to_dict(), **changes}
  values = {k: values[k] for k in ("fps", "height", "width", "num_frames", "sample_rate",
                                   "stride_frames")}
  with pytest.raises(ValueError, match=match):
    av_folder.ClipGeometry(**values)


def test_manual_dir_and_dataset_errors(tmp_path, manual_dir, clean):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    prepare.prepare_dataset(tmp_path / "nowhere", tmp_path / "out", CONFIG)
  (tmp_path / "empty").mkdir()
  (tmp_path / "empty" / "readme.txt").write_text("no videos here")
  with pytest.raises(ValueError, match="no video file"):
    prepare.prepare_dataset(tmp_path / "empty", tmp_path / "out", CONFIG)
  (tmp_path / "bad").mkdir()
  fx.write_garbage(tmp_path / "bad" / "x.mp4")
  with pytest.raises(ValueError, match="no clip could be cut.*unreadable 1"):
    prepare.prepare_dataset(tmp_path / "bad", tmp_path / "out", CONFIG)
  with pytest.raises(ValueError, match="--data_dir"):
    prepare.prepare_dataset(manual_dir, None, CONFIG)
  # The same name prepared with other settings is not silently reused.
  other = av_folder.AvFolderConfig.from_geometry(GEOMETRY, split_rule="ratio")
  with pytest.raises(ValueError, match="already holds"):
    prepare.prepare_dataset(manual_dir, clean[0], other)


def test_resolving_presets_flags_and_configs():
  from configs import avdit_aist, avdit_landscape
  assert prepare.resolve_config("aist") is av_folder.PRESETS["aist"]
  preset = av_folder.PRESETS["landscape"]
  assert (preset.num_frames, preset.fps, preset.height, preset.sample_rate,
          preset.split_rule) == (17, 10.0, 64, 16000, "folders")
  assert prepare.resolve_config(None, config=avdit_landscape.get_config("tiny")) is preset
  config = avdit_aist.get_config()
  config.clip.num_frames = 21
  with pytest.raises(ValueError, match="not the aist preset"):
    prepare.resolve_config(None, config=config)
  config.data.tfds_name = "av_folder/aist21"
  custom = prepare.resolve_config(None, config=config)
  assert custom.name == "aist21" and custom.num_frames == custom.stride_frames == 21
  with pytest.raises(ValueError, match="preset fixes"):
    prepare.resolve_config("aist", fps=25.0)
  with pytest.raises(ValueError, match="missing --height, --width"):
    prepare.resolve_config("av_folder", fps=10.0, num_frames=9, sample_rate=SR)
  with pytest.raises(ValueError, match="unknown --dataset"):
    prepare.resolve_config("kinetics")
  flagged = prepare.resolve_config("av_folder", fps=FPS, height=SIZE, width=SIZE,
                                   num_frames=FRAMES, sample_rate=SR)
  assert flagged.name == CONFIG.name == "32x32_10fps_9f_16000hz_s9"
  assert flagged.geometry == GEOMETRY and flagged.split_settings == CONFIG.split_settings


def test_command_line_flags_with_a_config_file(manual_dir, tmp_path):
  argv = ["prepare", f"--config={ROOT}/configs/avdit_aist.py:tiny", f"--manual_dir={manual_dir}",
          f"--data_dir={tmp_path}", "--config.data.tfds_name=av_folder/mini",
          "--config.clip.height=32", "--config.clip.width=32", "--config.clip.num_frames=9",
          "--config.data.stride_frames=9", "--config.data.split_rule=ratio",
          "--config.data.test_fraction=0.0"]
  fv = flags.FlagValues()
  prepare.define_flags(fv, argv)
  fv(argv)
  report = prepare.run_from_flags(fv)
  assert report["dataset"] == "av_folder/mini"
  assert report["geometry"]["num_frames"] == 9 and report["geometry"]["height"] == 32
  assert report["split_rule"]["applied"] == "ratio"
  assert report["splits"]["train"]["files"] == report["files_seen"] == 9  # x.mp4 included


def test_command_line_errors_are_clear():
  result = subprocess.run(
      [sys.executable, "-m", "avdit.data.prepare", "--manual_dir=/nonexistent",
       "--data_dir=/tmp/unused", "--fps=10", "--height=32", "--width=32", "--num_frames=8",
       "--sample_rate=16000"], cwd=ROOT, env=command_env(), capture_output=True, text=True,
      timeout=120)
  assert result.returncode != 0
  assert "avdit.data.prepare: error: num_frames=8 is not 1 + 4k" in result.stderr
  assert "Traceback" not in result.stderr


# --------------------------------------------------------------------------------------------
# A folder too small for a file-level split: clip-level fallback
# --------------------------------------------------------------------------------------------
SMALL = {"a.mp4": 4.0, "b.mp4": 3.0}  # seconds: 40 and 30 frames at FPS


@pytest.fixture(scope="module")
def small_folder(tmp_path_factory):
  root = tmp_path_factory.mktemp("small")
  for name, seconds in SMALL.items():
    write_good(root / name, seconds=seconds)
  return root


def small_config(name, test_fraction, stride=STRIDE, **kwargs):
  """A ratio split whose seed puts both files of SMALL in train."""
  seed = next(s for s in range(100)
              if all(av_folder.ratio_split(n, test_fraction, s) == "train" for n in SMALL))
  geometry = av_folder.ClipGeometry(fps=FPS, height=SIZE, width=SIZE, num_frames=FRAMES,
                                    sample_rate=SR, stride_frames=stride)
  return av_folder.AvFolderConfig.from_geometry(geometry, name=name,
                                                split_rule="ratio", test_fraction=test_fraction,
                                                split_seed=seed, **kwargs)


def frame_indices(records) -> set[tuple[str, int]]:
  """(source, source frame index) of every frame of the records (av_fixtures' bit pattern)."""
  return {(r["source"].decode(), fx.read_frame_index(frame))
          for r in records for frame in r["video"]}


def test_small_ratio_folder_holds_out_clips_when_no_file_lands_in_test(small_folder, tmp_path):
  config = small_config("small", 0.1)
  report = prepare.prepare_dataset(small_folder, tmp_path, config)
  records = read_all(tmp_path, f"av_folder/{config.name}")
  # 4 + 3 clips; round(0.1 x clips) is 0 for both files, so the longer file gives its last.
  assert [(sources([r])[0], int(r["clip_index"])) for r in records["test"]] == [("a.mp4", 3)]
  assert sorted((sources([r])[0], int(r["clip_index"])) for r in records["train"]) == [
      ("a.mp4", 0), ("a.mp4", 1), ("a.mp4", 2), ("b.mp4", 0), ("b.mp4", 1), ("b.mp4", 2)]
  clip_level = report["split_rule"]["clip_level"]
  assert (clip_level["train_clips"], clip_level["test_clips"],
          clip_level["dropped_overlapping_clips"]) == (6, 1, 0)
  assert "clip_fallback=False" in clip_level["why"]
  assert report["files_seen"] == report["files_used"] == 2 and report["clips"] == 7
  assert report["splits"]["test"]["files"] == 1 and report["splits"]["train"]["files"] == 2
  assert not frame_indices(records["train"]) & frame_indices(records["test"])


def test_overlapping_clips_at_the_split_boundary_are_dropped(small_folder, tmp_path):
  # Stride 4 < 9 frames: b.mp4's 30 frames give clips starting at 0, 4, ..., 20 (6 clips),
  # a.mp4's 40 frames 8 clips; 0.34 holds out round(2.04) = 2 and round(2.72) = 3 of them.
  config = small_config("small_overlap", 0.34, stride=4)
  report = prepare.prepare_dataset(small_folder, tmp_path, config)
  records = read_all(tmp_path, f"av_folder/{config.name}")
  by_split = {split: sorted((sources([r])[0], int(r["clip_index"])) for r in records[split])
              for split in records}
  # b: held out 4, 5 (frames 16..28); train keeps clips ending by frame 16: 0 (0..8), 1 (4..12).
  # a: held out 5, 6, 7 (frames 20..36); train keeps 0, 1, 2 (8..16); 3 (12..20) would overlap.
  assert by_split["test"] == [("a.mp4", 5), ("a.mp4", 6), ("a.mp4", 7), ("b.mp4", 4),
                              ("b.mp4", 5)]
  assert by_split["train"] == [("a.mp4", 0), ("a.mp4", 1), ("a.mp4", 2), ("b.mp4", 0),
                               ("b.mp4", 1)]
  assert report["split_rule"]["clip_level"]["dropped_overlapping_clips"] == 4  # a 3, 4; b 2, 3
  assert not frame_indices(records["train"]) & frame_indices(records["test"])


def test_the_file_level_split_can_be_forced(small_folder, tmp_path):
  config = small_config("small_by_file", 0.1, clip_fallback=False)
  report = prepare.prepare_dataset(small_folder, tmp_path, config)
  assert report["split_rule"]["clip_level"] is None
  assert report["splits"]["test"]["clips"] == 0 and report["splits"]["train"]["clips"] == 7
  assert list(read_all(tmp_path, f"av_folder/{config.name}")) == ["train"]
