"""Tests for avdit/media.py: mp4s read back with PyAV, the strip PNG, index.html."""
from __future__ import annotations

from fractions import Fraction

import av
import matplotlib.image as mpimg
import numpy as np
import pytest

from avdit import layout as layout_lib
from avdit import media
from avdit import tasks

NUM_FRAMES, HEIGHT, WIDTH, FPS, SAMPLE_RATE = 17, 64, 96, 8, 16_000
TONE_HZ = 1000.0
SQUARE = 16


def _moving_square_fhwc(num_frames: int = NUM_FRAMES, height: int = HEIGHT,
                        width: int = WIDTH) -> np.ndarray:
  """uint8 [F, H, W, 3]: a white square moving right over a dark background."""
  video_fhwc = np.full((num_frames, height, width, 3), 20, np.uint8)
  for f in range(num_frames):
    left = (4 * f) % (width - SQUARE)
    video_fhwc[f, 8:8 + SQUARE, left:left + SQUARE] = 255
  return video_fhwc


def _tone_l(num_samples: int, hz: float = TONE_HZ, amplitude: float = 0.5) -> np.ndarray:
  return (amplitude * np.sin(2 * np.pi * hz * np.arange(num_samples) / SAMPLE_RATE)).astype(
      np.float32)


@pytest.fixture(scope="module")
def clip_layout() -> layout_lib.ClipLayout:
  return layout_lib.ClipLayout(num_frames=NUM_FRAMES, fps=FPS, height=HEIGHT, width=WIDTH,
                               sample_rate=SAMPLE_RATE, video_channels=4, audio_channels=4)


def _read_mp4(path) -> dict:
  """Streams, decoded frames [F, H, W, 3] and decoded mono audio [L] of an mp4."""
  with av.open(str(path)) as container:
    video_stream, audio_stream = container.streams.video[0], container.streams.audio[0]
    info = {
        "num_video_streams": len(container.streams.video),
        "num_audio_streams": len(container.streams.audio),
        "video_codec": video_stream.codec_context.name,
        "audio_codec": audio_stream.codec_context.name,
        "fps": video_stream.average_rate,
        "sample_rate": audio_stream.sample_rate,
        "audio_seconds": float(audio_stream.duration * audio_stream.time_base),
        "video_seconds": float(video_stream.duration * video_stream.time_base),
    }
    info["frames_fhwc"] = np.stack(
        [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])
  with av.open(str(path)) as container:
    info["audio_l"] = np.concatenate(
        [frame.to_ndarray().reshape(-1) for frame in container.decode(audio=0)])
  return info


def _dominant_hz(audio_l: np.ndarray, sample_rate: int) -> float:
  spectrum = np.abs(np.fft.rfft(audio_l * np.hanning(audio_l.shape[0])))
  return float(np.fft.rfftfreq(audio_l.shape[0], 1.0 / sample_rate)[np.argmax(spectrum)])


def test_codec_choice_prefers_h264_and_aac():
  assert media.pick_video_codec() in media.VIDEO_CODECS
  assert media.pick_audio_codec() in media.AUDIO_CODECS
  if "libx264" in av.codecs_available:
    assert media.pick_video_codec() == "libx264"


@pytest.mark.parametrize("video_codec", [None, "mpeg4"])
def test_write_mp4_round_trip(tmp_path, video_codec):
  video_fhwc = _moving_square_fhwc()
  num_samples = NUM_FRAMES * SAMPLE_RATE // FPS
  path = tmp_path / "nested" / "clip.mp4"  # the parent is created
  media.write_mp4(path, video_fhwc, _tone_l(num_samples), FPS, SAMPLE_RATE,
                  video_codec=video_codec)
  info = _read_mp4(path)

  assert info["num_video_streams"] == 1 and info["num_audio_streams"] == 1
  assert info["audio_codec"] == "aac"
  if video_codec == "mpeg4":
    assert info["video_codec"] == "mpeg4"
  assert info["frames_fhwc"].shape == (NUM_FRAMES, HEIGHT, WIDTH, 3)
  assert info["fps"] == FPS
  assert info["sample_rate"] == SAMPLE_RATE
  video_seconds, one_frame = NUM_FRAMES / FPS, 1.0 / FPS
  assert abs(info["audio_seconds"] - video_seconds) < one_frame
  assert abs(info["video_seconds"] - video_seconds) < one_frame
  # The AAC decoder also returns the padding of the last 1024-sample frame: still < one frame.
  assert abs(info["audio_l"].shape[0] / SAMPLE_RATE - video_seconds) < one_frame
  assert abs(_dominant_hz(info["audio_l"], SAMPLE_RATE) - TONE_HZ) < 5.0
  assert 0.4 < np.abs(info["audio_l"][1000:-2000]).max() < 0.6

  # Lossy codecs: the square stays bright and the background dark, loosely.
  for f in (0, NUM_FRAMES // 2, NUM_FRAMES - 1):
    left = (4 * f) % (WIDTH - SQUARE)
    square = info["frames_fhwc"][f, 10:6 + SQUARE, left + 2:left + SQUARE - 2].astype(float)
    assert square.mean() > 220, f
    assert info["frames_fhwc"][f, 40:].astype(float).mean() < 40, f


def test_write_mp4_odd_size_is_padded(tmp_path):
  video_fhwc = _moving_square_fhwc(num_frames=5, height=33, width=47)
  media.write_mp4(tmp_path / "odd.mp4", video_fhwc, _tone_l(10_000), FPS, SAMPLE_RATE)
  info = _read_mp4(tmp_path / "odd.mp4")
  assert info["frames_fhwc"].shape == (5, 34, 48, 3)  # padded, nothing cropped
  assert info["frames_fhwc"][0, 10:6 + SQUARE, 2:SQUARE - 2].mean() > 220


def test_write_mp4_fractional_fps_and_audio_fit(tmp_path):
  fps = Fraction(30_000, 1001)
  num_frames = 9
  # Too long and too loud: trimmed to the video's duration and clipped to [-1, 1].
  media.write_mp4(tmp_path / "ntsc.mp4", _moving_square_fhwc(num_frames),
                  _tone_l(SAMPLE_RATE, amplitude=3.0), float(fps), SAMPLE_RATE)
  info = _read_mp4(tmp_path / "ntsc.mp4")
  assert info["fps"] == fps
  assert info["frames_fhwc"].shape[0] == num_frames
  assert abs(info["audio_seconds"] - num_frames / fps) < 1 / fps
  assert np.abs(info["audio_l"]).max() < 1.2  # clipped before encoding (AAC overshoots a bit)


def test_write_mp4_unsupported_sample_rate_is_resampled(tmp_path):
  media.write_mp4(tmp_path / "sr.mp4", _moving_square_fhwc(), _tone_l(30_000), FPS, 12_345)
  info = _read_mp4(tmp_path / "sr.mp4")
  assert info["sample_rate"] == 16_000  # nearest AAC rate above
  assert abs(info["audio_seconds"] - NUM_FRAMES / FPS) < 1 / FPS


def test_comparison_frames_panels_and_bars(clip_layout):
  condition_fhwc = _moving_square_fhwc()
  generated_fhwc = np.full_like(condition_fhwc, 200)
  task = tasks.parse_task("v:0..1;a:0", clip_layout)  # video frames 0..4, audio frame 0 given
  frames_fhwc = media.comparison_frames(condition_fhwc, generated_fhwc, task.condition_mask,
                                        clip_layout)
  assert frames_fhwc.shape[0] == NUM_FRAMES and frames_fhwc.shape[2] == 2 * WIDTH
  assert frames_fhwc.shape[1] > HEIGHT
  np.testing.assert_array_equal(frames_fhwc[0, :HEIGHT, :WIDTH], condition_fhwc[0])
  np.testing.assert_array_equal(frames_fhwc[9, :HEIGHT, WIDTH:], generated_fhwc[9])
  # Frame 9 (segment 3) was not given: the left panel is darkened and grey.
  left_9 = frames_fhwc[9, :HEIGHT, :WIDTH].astype(float)
  assert left_9.max() < condition_fhwc[9].max() * 0.7
  assert np.all(left_9[..., 0] == left_9[..., 1])
  bar_rows = frames_fhwc[:, HEIGHT:]
  video_bar_f = bar_rows[:, 3, WIDTH + 4]  # a pixel of the top (video) bar, right panel
  audio_bar_f = bar_rows[:, -2, WIDTH + 4]  # a pixel of the bottom (audio) bar
  np.testing.assert_array_equal(video_bar_f[0], media.GIVEN_RGB)
  np.testing.assert_array_equal(video_bar_f[4], media.GIVEN_RGB)
  np.testing.assert_array_equal(video_bar_f[5], media.GENERATED_RGB)
  np.testing.assert_array_equal(audio_bar_f[0], media.GIVEN_RGB)
  np.testing.assert_array_equal(audio_bar_f[1], media.GENERATED_RGB)


def test_write_comparison_mp4_decodes(tmp_path, clip_layout):
  task = tasks.parse_task("av_continue", clip_layout)
  path = tmp_path / "cmp.mp4"
  media.write_comparison_mp4(path, _moving_square_fhwc(), _moving_square_fhwc(),
                             _tone_l(clip_layout.audio_samples), task.condition_mask,
                             clip_layout)
  info = _read_mp4(path)
  frames_fhwc = info["frames_fhwc"]
  assert info["num_video_streams"] == 1 and info["num_audio_streams"] == 1
  assert frames_fhwc.shape[0] == NUM_FRAMES
  assert frames_fhwc.shape[2] == 2 * WIDTH
  assert HEIGHT < frames_fhwc.shape[1] <= HEIGHT + 32
  assert abs(_dominant_hz(info["audio_l"], SAMPLE_RATE) - TONE_HZ) < 5.0
  # Bars survive the codec: frame 0 given (grey), the last frame generated (green).
  top_bar = HEIGHT + 4
  grey = frames_fhwc[0, top_bar, WIDTH + 8:WIDTH + 40].astype(float).mean(axis=0)
  green = frames_fhwc[-1, top_bar, WIDTH + 8:WIDTH + 40].astype(float).mean(axis=0)
  np.testing.assert_allclose(grey, media.GIVEN_RGB, atol=30)
  np.testing.assert_allclose(green, media.GENERATED_RGB, atol=30)


def test_write_strip_png(tmp_path, clip_layout):
  task = tasks.parse_task("av_inpaint", clip_layout)
  generated_fhwc = _moving_square_fhwc()
  path = tmp_path / "png" / "strip.png"
  media.write_strip_png(path, _moving_square_fhwc(), generated_fhwc,
                        _tone_l(clip_layout.audio_samples, 440.0),
                        _tone_l(clip_layout.audio_samples), task.condition_mask, clip_layout,
                        title="av_inpaint <v:0,-1;a:0,-1>")
  image_hwc = mpimg.imread(path)
  assert image_hwc.ndim == 3 and image_hwc.shape[-1] in (3, 4)
  assert 800 <= image_hwc.shape[1] <= 2000 and 400 <= image_hwc.shape[0] <= 2000
  assert image_hwc[..., :3].std() > 0.05  # something is drawn


def test_strip_subsamples_long_clips():
  assert list(media._strip_frame_indices(5)) == [0, 1, 2, 3, 4]
  shown = media._strip_frame_indices(33)
  assert len(shown) <= 9 and shown[0] == 0 and shown[-1] == 32


def test_write_index_html(tmp_path):
  samples_dir = tmp_path / "samples"
  entries = [
      {"title": "joint <script>alert(1)</script>", "task": "joint", "spec": "",
       "sampler": {"steps": 50, "guidance": 2.0}, "videos": [samples_dir / "joint_0.mp4",
                                                             "joint_0_cmp.mp4"],
       "png": samples_dir / "joint_0.png", "seed": 0},
      {"task": "av_continue", "spec": "v:0..1;a:0..1", "sampler": "ddim eta=0",
       "videos": "continue 1.mp4", "png": "continue_1.png"},
  ]
  index_path = media.write_index_html(samples_dir, entries)
  assert index_path == samples_dir / "index.html"
  page = index_path.read_text()
  for name in ("joint_0.mp4", "joint_0_cmp.mp4", "joint_0.png", "continue%201.mp4",
               "continue_1.png"):
    assert name in page
  assert str(tmp_path) not in page  # absolute paths become relative to the page
  assert "<script>" not in page and "&lt;script&gt;" in page
  assert page.count("<video controls") == 3
  assert "v:0..1;a:0..1" in page and "steps=50" in page and "ddim eta=0" in page
