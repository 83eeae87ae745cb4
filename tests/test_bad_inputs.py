"""Unusual and broken input files in dataset preparation (avdit/data/prepare.py, av_folder).

Every file is either used, with the clips its length implies at the dataset's geometry, or skipped
and counted in the report under its reason; none stops the run. One manual_dir (under a folder
name with a space and non-ASCII letters, with train/ and test/ sub-folders) of small fixture files
(tests/av_fixtures.py) is written and prepared once at 16x16, 10 fps, 9-frame clips, 16 kHz.

Covered here: a variable frame rate, portrait and landscape frames, 5.1 audio at 44.1 kHz, 8-bit
(u8) stereo audio, 48 kHz audio, damage in the middle of a file (in all streams, and in the video
stream only), a zero-byte .mp4, a text file named .mp4, a path with spaces and non-ASCII letters.
Covered elsewhere (tests/test_prepare.py, tests/test_av_decode.py): odd frame sizes (70x50),
stereo 44.1 kHz audio, a file shorter than one clip, random bytes, truncated files, files with no
audio or no video stream.
"""
import json
import os

import av
import numpy as np
import pytest
import tensorflow_datasets as tfds

import av_fixtures as fx
from avdit.data import av_decode
from avdit.data import av_folder
from avdit.data import prepare

FPS, SIZE, FRAMES, SR = 10.0, 16, 9, 16000
GEOMETRY = av_folder.ClipGeometry(fps=FPS, height=SIZE, width=SIZE, num_frames=FRAMES,
                                  sample_rate=SR, stride_frames=FRAMES)
CONFIG = av_folder.AvFolderConfig.from_geometry(GEOMETRY)
NAME = f"av_folder/{CONFIG.name}"
SRC = dict(fps=25, width=48, height=32)  # small sources: fast to write and to decode

# Variable frame rate: intervals of 20 ms to 320 ms; 0.7 and 0.9 s fall on the 10 fps output grid.
VFR_SECONDS = (0.0, 0.03, 0.05, 0.13, 0.29, 0.33, 0.41, 0.62, 0.66, 0.7, 0.74, 0.9, 1.17, 1.21,
               1.52, 1.54, 1.56, 1.58, 1.61, 1.93, 1.96)
NON_ASCII = "train/my vidéos/clip ünï.mp4"
# Good files: name -> write_av arguments (seconds: the video's duration, audio to its end).
GOOD = {
    "train/vfr.mp4": dict(seconds=2.0, frame_seconds=VFR_SECONDS),
    "train/portrait.mp4": dict(width=48, height=80, seconds=2.0),
    "test/landscape.mp4": dict(width=80, height=48, seconds=3.0),
    "train/surround.mp4": dict(channels=6, sample_rate=44100, seconds=2.0),  # AAC 5.1
    "train/u8.mkv": dict(audio_codec="pcm_u8", channels=2, seconds=1.0),  # 8-bit unsigned PCM
    "train/48k.mp4": dict(sample_rate=48000, seconds=2.0),
    NON_ASCII: dict(seconds=1.0),
}
# Expected mono mix of each good file: (1 kHz amplitude, 440 Hz amplitude). Mono files carry both
# tones; stereo carries 440 Hz in opposite phase (it cancels in the channel average); 5.1 carries
# only the 1 kHz tone, in all six channels.
TONES = {name: (fx.TONE_AMPLITUDE, fx.TONE_AMPLITUDE) for name in GOOD}
TONES["train/u8.mkv"] = (fx.TONE_AMPLITUDE, 0.0)
TONES["train/surround.mp4"] = (fx.TONE_AMPLITUDE, 0.0)
SKIPPED = {
    "train/empty.mp4": "unreadable",
    "test/notes.mp4": "unreadable",
}


# Damaged in the middle (all streams; the video stream only): used, with the clips before it.
DAMAGED = ("train/corrupt_middle.mp4", "train/corrupt_video.mp4")


def implied_clips(seconds: float) -> int:
  """Back-to-back clips of FRAMES frames in `seconds` of video resampled to FPS."""
  frames = int(round(seconds * FPS))
  return 0 if frames < FRAMES else (frames - FRAMES) // FRAMES + 1


@pytest.fixture(scope="module", autouse=True)
def quiet_tfds():
  tfds.disable_progress_bar()


@pytest.fixture(scope="module")
def manual_dir(tmp_path_factory):
  """(manual_dir, relative path -> av_fixtures.Fixture of each good file, damaged file ->
  the source times its damage may be reported at), written once."""
  root = tmp_path_factory.mktemp("bad_inputs") / "vidéos à préparer"
  fixtures = {}
  for name, kwargs in GOOD.items():
    os.makedirs(os.path.dirname(root / name), exist_ok=True)
    fixtures[name] = fx.write_av(root / name, **{**SRC, **kwargs})
  long = fx.write_av(tmp_path_factory.mktemp("src") / "long.mp4", **SRC, seconds=4.0)
  fx.write_corrupt(long.path, root / "train" / "corrupt_middle.mp4", fraction=0.5,
                   num_bytes=2000)
  # One H.264 packet whose damage the decoder conceals (patches over) instead of failing on.
  damaged = fx.write_corrupt_packets(long.path, root / "train" / "corrupt_video.mp4",
                                     stream="video", fraction=0.5, num_packets=1, seed=0)
  (root / "train" / "empty.mp4").write_bytes(b"")
  (root / "test" / "notes.mp4").write_text("Not a video: notes about the recordings.\n" * 20)
  # Where each damaged file may report its damage: the pts of the packets whose bytes the
  # random block overwrote, or the one damaged video packet.
  damage_seconds = {"train/corrupt_middle.mp4": overwritten_packet_seconds(long.path, 0.5, 2000),
                    "train/corrupt_video.mp4": set(damaged)}
  return str(root), fixtures, damage_seconds


def overwritten_packet_seconds(path, fraction: float, num_bytes: int) -> set[float]:
  """pts (seconds) of the packets of `path` whose bytes overlap the block that
  av_fixtures.write_corrupt overwrites from `fraction` of the file on."""
  start = int(os.path.getsize(path) * fraction)
  found = set()
  with av.open(str(path)) as container:
    for packet in container.demux():
      if packet.pos is not None and packet.pts is not None and packet.size and (
          packet.pos < start + num_bytes and packet.pos + packet.size > start):
        found.add(round(float(packet.pts * packet.time_base), 6))
  return found


@pytest.fixture(scope="module")
def prepared(manual_dir, tmp_path_factory):
  """(data_dir, report, records: split -> [record]) of one preparation of manual_dir."""
  data_dir = str(tmp_path_factory.mktemp("out"))
  report = prepare.prepare_dataset(manual_dir[0], data_dir, CONFIG)
  builder = tfds.builder(NAME, data_dir=data_dir)
  records = {}
  for split in builder.info.splits:
    source = tfds.data_source(NAME, split=split, data_dir=data_dir, download=False)
    records[split] = [source[i] for i in range(len(source))]
  return data_dir, report, records


def by_source(records) -> dict[str, list[dict]]:
  """relative path -> its records, sorted by clip index (all splits together)."""
  out = {}
  for split_records in records.values():
    for record in split_records:
      out.setdefault(record["source"].decode("utf-8"), []).append(record)
  return {name: sorted(rs, key=lambda r: int(r["clip_index"])) for name, rs in out.items()}


def shown_index(fixture: fx.Fixture, seconds: float) -> int:
  """The source frame on screen at `seconds`: the latest whose time is <= it."""
  if fixture.frame_seconds is not None:
    return int(np.searchsorted(fixture.frame_seconds, seconds + 1e-6, side="right")) - 1
  return int(np.floor(seconds * fixture.fps + 1e-6))


def tone_amplitude(audio_l: np.ndarray, hz: float) -> float:
  """Amplitude of the `hz` sinusoid in audio_l (exact for a whole number of periods)."""
  t_l = np.arange(audio_l.size) / SR
  return float(2 * np.abs(np.sum(audio_l * np.exp(-2j * np.pi * hz * t_l))) / audio_l.size)


def cover_crop_rows(src_width: int, src_height: int) -> list[tuple[float, float]]:
  """Source rows [top, bottom) behind each output row of a scale-to-cover + centre crop."""
  scale = max(SIZE / src_width, SIZE / src_height)
  scaled_h = max(SIZE, int(round(src_height * scale)))
  top = (scaled_h - SIZE) // 2
  step = src_height / scaled_h
  return [((r + top) * step, (r + top + 1) * step) for r in range(SIZE)]


# --------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------
def test_report_counts_every_file_used_or_skipped_with_its_reason(prepared):
  """Every file is counted: the good ones used, each bad one under its reason, none lost."""
  _, report, _ = prepared
  assert report["files_seen"] == len(GOOD) + len(SKIPPED) + len(DAMAGED)
  assert report["files_used"] == len(GOOD) + len(DAMAGED)
  assert report["files_skipped"] == len(SKIPPED)
  assert report["ignored"] == {"count": 0, "files": []}
  got = {reason: sorted(info["files"]) for reason, info in report["skipped"].items()}
  assert got == {reason: sorted(n for n, r in SKIPPED.items() if r == reason)
                 for reason in set(SKIPPED.values())}
  for reason, info in report["skipped"].items():
    assert info["count"] == len(info["files"])
    assert info["meaning"] == av_folder.SKIP_REASONS[reason]
  for split in ("train", "test"):
    names = [n for n in [*GOOD, *SKIPPED, *DAMAGED] if n.startswith(split + "/")]
    assert report["splits"][split]["files"] == len(names)
    assert report["splits"][split]["files_used"] == len([n for n in names if n not in SKIPPED])


def test_good_files_give_the_clips_their_length_implies(prepared):
  """Per file: as many clips as its duration holds, each exactly once; per split: the totals."""
  _, report, records = prepared
  files = by_source(records)
  assert sorted(files) == sorted([*GOOD, *DAMAGED])
  for name, kwargs in GOOD.items():
    assert [int(r["clip_index"]) for r in files[name]] == list(
        range(implied_clips(kwargs["seconds"]))), name
  damaged_clips = sum(len(files[name]) for name in DAMAGED)  # all in train/
  for split in ("train", "test"):
    expected = sum(implied_clips(kw["seconds"]) for n, kw in GOOD.items()
                   if n.startswith(split + "/")) + (damaged_clips if split == "train" else 0)
    assert report["splits"][split]["clips"] == len(records[split]) == expected, split
  assert report["splits"]["test"]["video_seconds"] == pytest.approx(
      sum(kw["seconds"] for n, kw in GOOD.items() if n.startswith("test/")))
  assert report["clips"] == sum(implied_clips(kw["seconds"]) for kw in GOOD.values()) + (
      damaged_clips) == 13 + damaged_clips


def test_clips_have_the_dataset_geometry(prepared):
  """Every clip, whatever its source's size, rate or audio layout: [9, 16, 16, 3] and [14400]."""
  data_dir, report, records = prepared
  builder = tfds.builder(NAME, data_dir=data_dir)
  assert av_folder.dataset_geometry(builder) == GEOMETRY
  assert report["geometry"]["audio_samples"] == 14400
  for name, file_records in by_source(records).items():
    for record in file_records:
      assert record["video"].shape == (FRAMES, SIZE, SIZE, 3) and record["video"].dtype == np.uint8
      assert record["audio"].shape == (14400,) and record["audio"].dtype == np.float32, name
      assert np.isfinite(record["audio"]).all() and np.abs(record["audio"]).max() <= 1.0


# --------------------------------------------------------------------------------------------
# Good but unusual files
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", [n for n in GOOD if n != "train/portrait.mp4"])
def test_frames_show_the_source_frame_on_screen_at_their_time(prepared, manual_dir, name):
  """Frame f of a clip shows the source frame on screen at start + f / 10 s (by timestamp).

  For the variable frame rate file that is the last frame at or before that time, not frame
  round(t x nominal rate); for the others the 25 fps frame floor(t x 25).
  """
  _, _, records = prepared
  fixture = manual_dir[1][name]
  for record in by_source(records)[name]:
    start = float(record["start_seconds"])
    assert start == pytest.approx(int(record["clip_index"]) * FRAMES / FPS)
    shown = [fx.read_frame_index(frame) for frame in record["video"]]
    assert shown == [shown_index(fixture, start + f / FPS) for f in range(FRAMES)], name


def test_variable_frame_rate_holds_frames_for_their_own_duration(prepared, manual_dir):
  """Long and short source intervals give repeated and skipped frames, as their times say."""
  _, _, records = prepared
  fixture = manual_dir[1]["train/vfr.mp4"]
  shown = [fx.read_frame_index(frame) for record in by_source(records)["train/vfr.mp4"]
           for frame in record["video"]]
  # 0.41 s is on screen until 0.62 s: output frames 0.5 and 0.6 both show it ...
  assert shown[5] == shown[6] == fixture.frame_seconds.index(0.41)
  # ... the frames at 0.62 and 0.66 s fall between output times and are never shown, and the
  # frame at exactly 0.7 s is shown at 0.7 s.
  assert shown[7] == fixture.frame_seconds.index(0.7)
  assert not {fixture.frame_seconds.index(t) for t in (0.62, 0.66)} & set(shown)


def test_landscape_frames_are_scaled_to_cover_and_centre_cropped(prepared, manual_dir):
  """80x48 -> 27x16, the central 16 columns kept: the ramp spans source columns ~15..65."""
  _, _, records = prepared
  fixture = manual_dir[1]["test/landscape.mp4"]
  scaled_w = int(round(fixture.width * SIZE / fixture.height))  # 27
  left = (scaled_w - SIZE) // 2
  source_x = (np.arange(SIZE) + left + 0.5) * fixture.width / scaled_w - 0.5
  expected_w = fx.ramp_value_at(source_x, fixture.width)
  for record in by_source(records)["test/landscape.mp4"]:
    ramp_w = record["video"][:, :2].astype(np.float64).mean(axis=(0, 1, 3))  # band 0: rows 0, 1
    np.testing.assert_allclose(ramp_w[1:-1], expected_w[1:-1], atol=12)
    assert 30 < ramp_w[0] < 75 and 180 < ramp_w[-1] < 225  # squashed: ~0 and ~255


def test_portrait_frames_are_scaled_to_cover_and_centre_cropped(prepared, manual_dir):
  """48x80 -> 16x27, the central 16 rows kept: the top band (the horizontal grey ramp) and the
  bottom band are cut off, so every row is a uniform stripe, and the stripes still visible show
  the bits of the right source frame (a squashed frame would show the ramp in its top rows)."""
  _, _, records = prepared
  fixture = manual_dir[1]["train/portrait.mp4"]
  band_rows = {}  # band -> the output row nearest its centre among those wholly inside it
  for row, (top, bottom) in enumerate(cover_crop_rows(fixture.width, fixture.height)):
    band = int(top * fx.NUM_BANDS // fixture.height)
    if int(np.ceil(bottom * fx.NUM_BANDS / fixture.height)) - 1 == band:  # not straddling
      centre = (band + 0.5) * fixture.height / fx.NUM_BANDS
      if band not in band_rows or abs(row + 0.5 - centre) < abs(band_rows[band] + 0.5 - centre):
        band_rows[band] = row
  assert 0 not in band_rows and len(band_rows) >= 4  # the ramp is cut off; 4+ bits visible
  for record in by_source(records)["train/portrait.mp4"]:
    video = record["video"].astype(np.float64).mean(axis=-1)  # [F, H, W]
    assert (video.max(axis=2) - video.min(axis=2)).max() < 20  # uniform rows: no ramp
    start = float(record["start_seconds"])
    for f in range(FRAMES):
      index = shown_index(fixture, start + f / FPS)
      for band, row in band_rows.items():
        bit = (index >> (fx.NUM_BANDS - 1 - band)) & 1
        assert (video[f, row].mean() > 127.5) == bool(bit), (f, band)


@pytest.mark.parametrize("name", list(GOOD))
def test_audio_of_any_layout_format_and_rate_is_the_mono_mix_at_16k(prepared, name):
  """5.1, u8 stereo, 44.1 and 48 kHz all become the channel average at 16 kHz, at full level.

  A u8 decode read as signed would add a large offset, a dropped channel would keep the 440 Hz
  tone of the stereo file, a wrong rate would move the tones off 440 Hz and 1 kHz.
  """
  _, _, records = prepared
  common, tone = TONES[name]
  for record in by_source(records)[name]:
    audio_l = record["audio"]
    assert abs(float(audio_l.mean())) < 0.01  # no offset (u8 silence is 128)
    assert tone_amplitude(audio_l, fx.COMMON_TONE_HZ) == pytest.approx(common, rel=0.15)
    assert tone_amplitude(audio_l, fx.TONE_HZ) == pytest.approx(tone, abs=0.015)


# --------------------------------------------------------------------------------------------
# Bad files
# --------------------------------------------------------------------------------------------
def test_damage_in_the_middle_keeps_the_clips_before_it(prepared, manual_dir):
  """A file damaged in the middle is used up to the damage: the report names it with the damage's
  time, its clips all end DAMAGE_MARGIN_SECONDS before it, and they show the right frames.

  The damage: 2000 random bytes at half of a 4 s interleaved mp4 (the audio decoder fails on
  them), and one H.264 packet at ~2 s that the decoder conceals (the frame comes out patched,
  only flagged corrupt, and the frames predicted from it are wrong too): either ends both
  streams (av_decode.decode_file), as a failure on the very last packet (a cut-off download)
  always did.
  """
  _, report, records = prepared
  assert report["damaged"]["count"] == len(DAMAGED)
  files = by_source(records)
  clip_seconds = FRAMES / FPS
  for name in DAMAGED:
    info = report["damaged"]["files"][name]
    # The damage is reported at the time of a packet the damage hit (within a float's rounding).
    assert min(abs(info["damaged_at_seconds"] - t) for t in manual_dir[2][name]) < 1e-4, (
        name, info, manual_dir[2][name])
    clips = files[name]
    assert info["clips_kept_before"] == len(clips) >= 1
    keep_until = info["damaged_at_seconds"] - av_decode.DAMAGE_MARGIN_SECONDS
    assert len(clips) == int(keep_until // clip_seconds)  # every whole clip before it, no more
    for record in clips:
      shown = [fx.read_frame_index(frame) for frame in record["video"]]
      first = int(record["clip_index"]) * FRAMES
      # Source frames at 25 fps on the 10 fps grid: frame k shows source frame floor(2.5 k).
      assert shown == [int(2.5 * k + 1e-6) for k in range(first, first + FRAMES)], name


def test_empty_and_text_files_named_mp4_are_unreadable(prepared):
  """A zero-byte .mp4 and a text file renamed .mp4 are skipped as `unreadable`, with FFmpeg's
  reason, and give no clip."""
  _, report, records = prepared
  skipped = report["skipped"]["unreadable"]["files"]
  for name in ("train/empty.mp4", "test/notes.mp4"):
    assert "InvalidDataError" in skipped[name], skipped[name]
  assert not {"train/empty.mp4", "test/notes.mp4"} & set(by_source(records))


def test_spaces_and_non_ascii_letters_in_paths(prepared, manual_dir):
  """A manual_dir and a file whose paths hold spaces and non-ASCII letters: the file is used,
  its clips carry its relative path unchanged (UTF-8), and the report names the folder."""
  data_dir, report, records = prepared
  assert "à préparer" in report["manual_dir"]
  assert report["manual_dir"] == os.path.abspath(manual_dir[0])
  assert [int(r["clip_index"]) for r in by_source(records)[NON_ASCII]] == [0]
  with open(os.path.join(report["dataset_dir"], av_folder.REPORT_NAME), encoding="utf-8") as f:
    assert json.load(f) == report  # the report written next to the dataset reads back the same
  assert report["data_dir"] == os.path.abspath(data_dir)
