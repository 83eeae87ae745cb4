"""Tests of the real-video decoding layer (avdit/data/av_decode.py).

Fixture files (tests/av_fixtures.py) carry the source frame index in every frame and a click at a
known frame's time, so frame-rate conversion, cropping and A/V alignment are checked against what
was written, not against the decoder's own bookkeeping. All files are written once per module.
"""
import math
import os

import av
import numpy as np
import pytest

import av_fixtures as fx
from avdit import layout as layout_lib
from avdit.data import av_decode

SHARED_SAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                             "..", "shared", "data", "aist_dance_sample.mp4")
HOP = 320  # one audio latent: the A/V alignment tolerance
# The click is a 1 ms pulse; AAC/Opus keep its peak within ~1 ms, so where t0 and the audio start
# differ by a few hundred samples the alignment is also checked to this much tighter bound.
CLICK_TOLERANCE = 48
SR = 16000


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  """Every fixture file, written once: name -> av_fixtures.Fixture (or a path)."""
  root = tmp_path_factory.mktemp("av")
  out = {
      "25fps": fx.write_av(root / "25fps.mp4", fps=25, seconds=2.0),
      "30fps_odd_stereo": fx.write_av(root / "30fps.mp4", fps=30, width=70, height=50,
                                      sample_rate=44100, channels=2, seconds=2.0),
      # 0.33 s is between two 25 fps frames, so t0 (the next frame) differs from the audio start.
      "late_audio": fx.write_av(root / "late.mp4", fps=25, audio_start_seconds=0.33),
      "late_audio_mkv": fx.write_av(root / "late.mkv", fps=25, audio_start_seconds=0.33),
      "early_audio_end": fx.write_av(root / "early_end.mp4", fps=25, seconds=3.0,
                                     audio_seconds=1.0),
      "no_audio": fx.write_av(root / "no_audio.mp4", with_audio=False),
      "short": fx.write_av(root / "short.mp4", seconds=0.5),
      "garbage": fx.write_garbage(root / "garbage.mp4"),
  }
  long_fast = fx.write_av(root / "long_fast.mp4", seconds=4.0, faststart=True)
  long_slow = fx.write_av(root / "long_slow.mp4", seconds=4.0, faststart=False)
  # Index (moov) in front: the header promises 4 s, the data stops at about 2 s.
  out["truncated_faststart"] = fx.write_truncated(long_fast.path, root / "cut_fast.mp4")
  # Index at the end: it is cut away, the container cannot be parsed.
  out["truncated_moov"] = fx.write_truncated(long_slow.path, root / "cut_slow.mp4")
  return out


def decode(fixture, fps=10.0, size=(32, 32), sample_rate=SR):
  path = fixture.path if isinstance(fixture, fx.Fixture) else fixture
  return av_decode.decode_file(path, fps=fps, height=size[0], width=size[1],
                               sample_rate=sample_rate)


def expected_source_frames(t0, num_frames, fps, source_fps):
  """Output frame k shows the latest source frame i with i / source_fps <= t0 + k / fps."""
  t_k = t0 + np.arange(num_frames) / fps
  return np.floor(t_k * source_fps + 1e-6).astype(int)


def click_sample(audio_l):
  return int(np.argmax(np.abs(audio_l)))


# --------------------------------------------------------------------------------------------
# Video: frame count, frame-rate conversion, geometry
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, fps", [("25fps", 10.0), ("25fps", 8.0), ("25fps", 30.0),
                                       ("30fps_odd_stereo", 10.0)])
def test_frame_rate_conversion_follows_timestamps(files, name, fps):
  fixture = files[name]
  decoded = decode(fixture, fps=fps)
  assert decoded.t0_seconds == pytest.approx(0.0)
  # Frames on the grid t0 + k / fps while the last source frame is on screen (until 2.0 s).
  assert decoded.num_frames == math.ceil(fixture.video_seconds * fps - 1e-6)
  shown = np.array([fx.read_frame_index(frame) for frame in decoded.frames_thwc])
  expected = expected_source_frames(decoded.t0_seconds, decoded.num_frames, fps, fixture.fps)
  np.testing.assert_array_equal(shown, expected)
  np.testing.assert_allclose(decoded.source_frame_seconds, expected / fixture.fps, atol=1e-6)


def test_output_geometry_and_centre_crop(files):
  fixture = files["30fps_odd_stereo"]  # 70 x 50: wider than the square target
  decoded = decode(fixture, size=(32, 32))
  assert decoded.frames_thwc.shape == (20, 32, 32, 3)
  assert decoded.frames_thwc.dtype == np.uint8
  # Ramp band (rows 0..3 of 32): the output spans source columns 10..60 (the central 50 x 50).
  ramp_w = decoded.frames_thwc[0, 1:3, :, :].astype(np.float64).mean(axis=(0, 2))
  source_x = 10 + (np.arange(32) + 0.5) * 50 / 32 - 0.5
  expected_w = fx.ramp_value_at(source_x, fixture.width)
  np.testing.assert_allclose(ramp_w[1:-1], expected_w[1:-1], atol=8)
  # A squashed (uncropped) frame would reach ~0 and ~255 at its edges.
  assert 25 < ramp_w[0] < 50 and 205 < ramp_w[-1] < 230


def test_non_square_target_covers_then_crops(files):
  fixture = files["30fps_odd_stereo"]  # 70 x 50 -> 32 x 48 (H x W): width is the tight side
  decoded = decode(fixture, size=(32, 48))
  assert decoded.frames_thwc.shape[1:] == (32, 48, 3)
  ramp_w = decoded.frames_thwc[0, 1, :, :].astype(np.float64).mean(axis=-1)
  assert ramp_w[0] < 10 and ramp_w[-1] > 245  # the whole width is kept
  shown = [fx.read_frame_index(frame) for frame in decoded.frames_thwc]
  assert shown == list(expected_source_frames(0.0, 20, 10.0, 30))


# --------------------------------------------------------------------------------------------
# Audio: rate, mono, alignment
# --------------------------------------------------------------------------------------------
def test_audio_resampled_to_mono_average(files):
  fixture = files["30fps_odd_stereo"]  # 44.1 kHz stereo: +440 Hz left, -440 Hz right, 1 kHz both
  decoded = decode(fixture)
  assert decoded.audio_l.dtype == np.float32 and decoded.audio_l.ndim == 1
  assert decoded.sample_rate == SR
  assert np.abs(decoded.audio_l).max() <= 1.0
  # Duration is kept: about 2 s of audio (plus < one AAC frame of codec padding).
  assert 2.0 * SR <= decoded.num_samples <= 2.0 * SR + 2048 * SR // 44100 + 1
  window_l = decoded.audio_l[2000:2000 + 8000]  # 0.5 s away from the click (at 1 s)
  spectrum = np.abs(np.fft.rfft(window_l * np.hanning(window_l.size)))
  freqs = np.fft.rfftfreq(window_l.size, 1.0 / SR)
  assert freqs[np.argmax(spectrum)] == pytest.approx(fx.COMMON_TONE_HZ, abs=4)
  # The channel average cancels the opposite-phase 440 Hz tone; either channel alone keeps it.
  at_440 = spectrum[np.argmin(np.abs(freqs - fx.TONE_HZ))]
  assert at_440 < 0.05 * spectrum.max()
  # Averaging (not 0.707 * (L + R)): the 1 kHz tone keeps its amplitude 0.1.
  assert np.sqrt(2 * np.mean(window_l ** 2)) == pytest.approx(fx.TONE_AMPLITUDE, rel=0.1)


@pytest.mark.parametrize("name", ["25fps", "30fps_odd_stereo", "late_audio", "late_audio_mkv"])
def test_click_lands_at_its_frame_time(files, name):
  fixture = files[name]
  decoded = decode(fixture)
  expected = (fixture.click_seconds - decoded.t0_seconds) * SR
  assert abs(click_sample(decoded.audio_l) - expected) <= HOP
  # The click is on the output grid here or there; where it is, the frame shows the click frame.
  k = (fixture.click_seconds - decoded.t0_seconds) * decoded.fps
  if abs(k - round(k)) < 1e-6:
    assert fx.read_frame_index(decoded.frames_thwc[round(k)]) == fixture.click_frame


@pytest.mark.parametrize("name", ["late_audio", "late_audio_mkv"])
def test_late_audio_moves_t0_to_a_video_frame(files, name):
  fixture = files[name]
  audio_start = [s for s in av_decode.probe(fixture.path)["streams"]
                 if s["type"] == "audio"][0]["start_seconds"]
  # mp4 records the AAC priming before the 0.33 s offset: that stream starts at 0.266 s.
  assert 0.25 < audio_start <= 0.33 + 1e-6
  decoded = decode(fixture)
  # t0 is the first source frame at or after the audio start; earlier video is dropped.
  t0 = decoded.t0_seconds
  assert audio_start - av_decode.AUDIO_LEAD_TOLERANCE_SECONDS <= t0 < audio_start + 1 / fixture.fps
  assert t0 * fixture.fps == pytest.approx(round(t0 * fixture.fps), abs=1e-6)
  assert fx.read_frame_index(decoded.frames_thwc[0]) == round(t0 * fixture.fps)
  shown = [fx.read_frame_index(frame) for frame in decoded.frames_thwc]
  assert shown == list(expected_source_frames(t0, decoded.num_frames, 10.0, fixture.fps))
  assert decoded.num_frames == math.ceil((fixture.video_seconds - t0) * 10 - 1e-6)
  # audio_l[0] is the sample at t0, not the first decoded sample (t0 - start > CLICK_TOLERANCE).
  assert (t0 - audio_start) * SR > 2 * CLICK_TOLERANCE
  expected = (fixture.click_seconds - t0) * SR
  assert abs(click_sample(decoded.audio_l) - expected) <= CLICK_TOLERANCE


# --------------------------------------------------------------------------------------------
# Clips
# --------------------------------------------------------------------------------------------
def test_cut_clips_count_lengths_and_alignment(files):
  fixture = files["25fps"]
  decoded = decode(fixture)  # 20 frames at 10 fps, 2.048 s of audio
  clips = av_decode.cut_clips(decoded, num_frames=5, stride_frames=3)
  assert [c.first_frame for c in clips] == [0, 3, 6, 9, 12, 15]  # 15 + 5 = 20 frames
  for j, clip in enumerate(clips):
    assert clip.index == j and clip.source == fixture.path
    assert clip.video.shape == (5, 32, 32, 3) and clip.audio.shape == (8000,)
    assert clip.start_seconds == pytest.approx(decoded.t0_seconds + 3 * j / 10)
    np.testing.assert_array_equal(clip.audio,
                                  decoded.audio_l[4800 * j:4800 * j + 8000])
  # The clip holding the click (source frame 25 = 1.0 s) has it 0.1 s after its start.
  clip = clips[3]  # frames 9..13 = 0.9..1.4 s
  assert abs(click_sample(clip.audio) - 0.1 * SR) <= HOP
  assert fx.read_frame_index(clip.video[1]) == fixture.click_frame
  as_dict = av_decode.clip_dict(clip)
  assert as_dict["video"].dtype == np.uint8 and as_dict["audio"].dtype == np.float32
  assert as_dict["video"].shape == (5, 32, 32, 3) and int(as_dict["index"]) == 3


def test_cut_clips_stops_where_the_audio_stops(files):
  decoded = decode(files["early_audio_end"])  # 3 s of video, 1 s of audio
  assert decoded.num_frames == 30
  clips = av_decode.cut_clips(decoded, num_frames=5, stride_frames=5)
  assert [c.first_frame for c in clips] == [0, 5]  # 0.5-1.0 s is the last with real audio


def test_cut_clips_accepts_a_matching_layout_and_validates(files):
  decoded = decode(files["25fps"])
  layout = layout_lib.ClipLayout(num_frames=9, fps=10.0, height=32, width=32, sample_rate=SR,
                                 video_channels=8, audio_channels=8)
  clips = av_decode.cut_clips(decoded, num_frames=layout, stride_frames=9)
  assert len(clips) == 2 and clips[0].audio.shape == (layout.audio_samples,)
  with pytest.raises(ValueError, match="1 \\+ 4k"):
    av_decode.cut_clips(decoded, num_frames=8, stride_frames=8)
  with pytest.raises(ValueError, match="stride"):
    av_decode.cut_clips(decoded, num_frames=5, stride_frames=0)
  other = layout_lib.ClipLayout(num_frames=9, fps=8.0, height=32, width=32, sample_rate=SR,
                                video_channels=8, audio_channels=8)
  with pytest.raises(ValueError, match="fps"):
    av_decode.cut_clips(decoded, num_frames=other, stride_frames=9)


# --------------------------------------------------------------------------------------------
# Unusable files
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, reason", [
    ("no_audio", "no_audio_stream"),
    ("garbage", "unreadable"),
    ("truncated_faststart", "truncated"),
    ("truncated_moov", "unreadable"),
])
def test_unusable_files_raise_with_reason(files, name, reason):
  with pytest.raises(av_decode.UnusableFile) as info:
    decode(files[name])
  assert info.value.reason == reason
  assert info.value.reason in av_decode.REASONS


def test_missing_file_and_too_short(files, tmp_path):
  with pytest.raises(av_decode.UnusableFile) as info:
    decode(str(tmp_path / "missing.mp4"))
  assert info.value.reason == "unreadable"
  decoded = decode(files["short"])  # 0.5 s: 5 frames, fewer than one 9-frame clip
  assert decoded.num_frames == 5
  with pytest.raises(av_decode.UnusableFile) as info:
    av_decode.cut_clips(decoded, num_frames=9, stride_frames=9)
  assert info.value.reason == "too_short"


def test_no_video_stream(tmp_path):
  path = str(tmp_path / "audio_only.m4a")
  with av.open(path, mode="w", format="mp4") as container:
    stream = container.add_stream("aac", rate=SR)
    stream.codec_context.layout = "mono"
    frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp",
                                       layout="mono")
    frame.sample_rate, frame.pts = SR, 0
    for packet in stream.encode(frame) + stream.encode(None):
      container.mux(packet)
  with pytest.raises(av_decode.UnusableFile) as info:
    decode(path)
  assert info.value.reason == "no_video_stream"


def test_unknown_reason_is_rejected():
  with pytest.raises(ValueError):
    av_decode.UnusableFile("whatever", "detail")


# --------------------------------------------------------------------------------------------
# Other containers
# --------------------------------------------------------------------------------------------
def test_webm(tmp_path):
  missing = [n for n in ("libvpx", "libopus") if not fx.has_encoder(n)]
  if missing:
    pytest.skip(f"this FFmpeg build has no {', '.join(missing)} encoder to write a webm")
  fixture = fx.write_av(tmp_path / "clip.webm", fps=25, audio_start_seconds=0.3)  # Opus 48 kHz
  decoded = decode(fixture)
  assert decoded.frames_thwc.shape[1:] == (32, 32, 3) and decoded.sample_rate == SR
  shown = [fx.read_frame_index(frame) for frame in decoded.frames_thwc]
  assert shown == list(expected_source_frames(decoded.t0_seconds, decoded.num_frames, 10.0, 25))
  expected = (fixture.click_seconds - decoded.t0_seconds) * SR
  assert abs(click_sample(decoded.audio_l) - expected) <= HOP


# --------------------------------------------------------------------------------------------
# The shared real sample (AIST++ dance, 256x256, 10 fps, 16 kHz stereo mp3, ~51 s)
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sample():
  if not os.path.exists(SHARED_SAMPLE):
    pytest.skip(f"shared sample not found at {SHARED_SAMPLE}")
  return av_decode.probe(SHARED_SAMPLE), decode(SHARED_SAMPLE, fps=10.0, size=(64, 64))


def test_probe_reports_streams(sample):
  info, _ = sample
  kinds = {s["type"]: s for s in info["streams"]}
  assert kinds["video"]["width"] == 256 and kinds["video"]["height"] == 256
  assert kinds["video"]["fps"] == pytest.approx(10.0)
  assert kinds["audio"]["sample_rate"] == 16000 and kinds["audio"]["channels"] == 2
  assert 50 < info["duration_seconds"] < 52


@pytest.mark.parametrize("stride", [17, 5])
def test_sample_clip_count_matches_its_length(sample, stride):
  info, decoded = sample
  kinds = {s["type"]: s for s in info["streams"]}
  video, audio = kinds["video"], kinds["audio"]
  assert decoded.frames_thwc.shape[1:] == (64, 64, 3) and decoded.sample_rate == 16000
  # The audio starts first, so t0 is the first video frame; the span ends with the first end.
  assert decoded.t0_seconds == pytest.approx(video["start_seconds"], abs=1e-3)
  span = min(video["end_seconds"], audio["end_seconds"]) - video["start_seconds"]
  expected = math.floor((span * 10 - 17) / stride) + 1
  clips = av_decode.cut_clips(decoded, num_frames=17, stride_frames=stride)
  assert len(clips) == expected
  for clip in clips:
    assert clip.video.shape == (17, 64, 64, 3) and clip.audio.shape == (27200,)
    # Where the clip's audio sits in the decoded waveform, on the source clock.
    first_sample = round(clip.first_frame / 10 * 16000)
    np.testing.assert_array_equal(clip.audio, decoded.audio_l[first_sample:first_sample + 27200])
    audio_start = decoded.t0_seconds + first_sample / 16000
    video_start = decoded.t0_seconds + clip.first_frame / 10
    assert abs(audio_start - video_start) < 0.1 and clip.start_seconds == pytest.approx(video_start)
    assert abs(clip.audio.size / 16000 - clip.video.shape[0] / 10) < 0.1
    assert video_start + 1.7 <= video["end_seconds"] and audio_start + 1.7 <= audio["end_seconds"]


def test_sample_audio_follows_its_timestamps(sample):
  """Late in the file the waveform sits where its pts put it, not where the sample count does.

  The sample's mp3 frames have 29 pts gaps of 128 samples: concatenating decoded frames would
  put 45 s of audio ~0.2 s early. The reference here places every decoded frame at its pts.
  """
  _, decoded = sample
  placed_l = np.zeros(int(52 * 16000), np.float32)
  with av.open(SHARED_SAMPLE) as container:
    for frame in container.decode(audio=0):
      start = int(frame.pts)  # time base 1/16000, the output rate
      samples_l = frame.to_ndarray().mean(axis=0)
      placed_l[start:start + samples_l.size] = samples_l
  t_start = 45.0
  ours_l = decoded.audio_l[int((t_start - decoded.t0_seconds) * 16000):][:32000]
  max_lag = 5000
  reference_l = placed_l[int(t_start * 16000) - max_lag:int(t_start * 16000) + 32000 + max_lag]
  correlation = np.correlate(reference_l, ours_l, mode="valid")  # lag -max_lag..max_lag
  lag = int(np.argmax(correlation)) - max_lag
  assert abs(lag) <= HOP
