"""Tests of the synthetic world: determinism, and ground truth vs independent measurements."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import signal

from avdit import layout as layout_lib
from avdit.data import synthetic

# The `default` config's clip: 17 frames at 8 fps, 64x64, 16 kHz.
WORLD = synthetic.SyntheticWorld(num_frames=17, fps=8.0, height=64, width=64, sample_rate=16000,
                                 num_clips=50, seed=0)
CLIP_INDICES = range(8)


@pytest.fixture(scope="module")
def clips():
  return [WORLD[i] for i in CLIP_INDICES]


def test_from_layout_matches_layout_geometry():
  layout = layout_lib.ClipLayout(num_frames=9, fps=8.0, height=32, width=48, sample_rate=16000,
                                 video_channels=4, audio_channels=320)
  world = synthetic.SyntheticWorld.from_layout(layout, num_clips=3, seed=5)
  assert (world.num_frames, world.height, world.width, world.seed) == (9, 32, 48, 5)
  assert world.audio_samples == layout.audio_samples == 18000
  assert len(world) == 3
  clip = world[2]
  assert clip["video"].shape == (9, 32, 48, 3)
  assert clip["audio"].shape == (layout.audio_samples,)
  for bad in (3, -1, 100):
    with pytest.raises(IndexError):
      world[bad]


def test_shapes_dtypes_and_ranges(clips):
  f, h, w, num_samples = WORLD.num_frames, WORLD.height, WORLD.width, WORLD.audio_samples
  expected = {"video": ((f, h, w, 3), np.uint8), "audio": ((num_samples,), np.float32),
              "disc_xy": ((f, 2), np.float32), "disc_color": ((3,), np.uint8),
              "background_color": ((3,), np.uint8), "pitch_hz": ((f,), np.float32),
              "bounce_frames": ((f,), np.bool_), "index": ((), np.int64)}
  radius = 0.15 * min(h, w)
  for i, clip in zip(CLIP_INDICES, clips):
    assert set(clip) == set(expected)
    for key, (shape, dtype) in expected.items():
      assert clip[key].shape == shape and clip[key].dtype == dtype, key
    assert clip["index"] == i
    assert np.abs(clip["audio"]).max() <= 1.0
    assert np.abs(clip["audio"]).max() >= 0.25  # the 0.3 tone is always there
    # The whole disc stays inside the frame.
    assert clip["disc_xy"].min() >= radius - 0.5 - 1e-4
    assert (clip["disc_xy"] <= np.array([w, h]) - 0.5 - radius + 1e-4).all()
    assert ((clip["pitch_hz"] >= 200) & (clip["pitch_hz"] <= 2000)).all()
    color_distance = np.abs(clip["disc_color"].astype(int) - clip["background_color"]).sum()
    assert color_distance >= synthetic.MIN_COLOR_DISTANCE


def test_deterministic_and_distinct():
  first, again = WORLD[3], synthetic.SyntheticWorld(**{**vars(WORLD)})[3]
  for key in first:
    assert first[key].tobytes() == again[key].tobytes(), key
  other_index = WORLD[4]
  other_seed = synthetic.SyntheticWorld(**{**vars(WORLD), "seed": 1})[3]
  for other in (other_index, other_seed):
    assert not np.array_equal(first["video"], other["video"])
    assert not np.array_equal(first["audio"], other["audio"])
    assert not np.array_equal(first["disc_xy"], other["disc_xy"])


def test_disc_colour_where_centre_says(clips):
  for clip in clips:
    video = clip["video"]
    for k, (x, y) in enumerate(clip["disc_xy"]):
      np.testing.assert_array_equal(video[k, int(round(y)), int(round(x))], clip["disc_color"])
    # Frame corners are always farther than radius * sqrt(2) > radius + 0.5 from the centre.
    for corner in (video[:, 0, 0], video[:, 0, -1], video[:, -1, 0], video[:, -1, -1]):
      np.testing.assert_array_equal(corner, np.broadcast_to(clip["background_color"], (17, 3)))


def test_subpixel_centroid_of_rendered_disc(clips):
  """The anti-aliased coverage recovered from pixels has its centroid at the disc centre."""
  ys, xs = np.mgrid[:WORLD.height, :WORLD.width]
  for clip in clips:
    diff = clip["disc_color"].astype(float) - clip["background_color"]
    channel = int(np.argmax(np.abs(diff)))
    coverage = ((clip["video"][..., channel] - float(clip["background_color"][channel]))
                / diff[channel])
    total = coverage.sum(axis=(1, 2))
    centroid = np.stack([(coverage * xs).sum(axis=(1, 2)) / total,
                         (coverage * ys).sum(axis=(1, 2)) / total], axis=-1)
    np.testing.assert_allclose(centroid, clip["disc_xy"], atol=0.1)


def test_motion_is_straight_between_bounces(clips):
  """Second differences of the centre vanish exactly where `bounce_frames` says none happen."""
  for clip in clips:
    xy, bounces = clip["disc_xy"].astype(np.float64), clip["bounce_frames"]
    second_diff = np.abs(xy[2:] - 2 * xy[1:-1] + xy[:-2]).max(axis=-1)  # frames 1..F-2
    no_bounce_around = ~bounces[:-2] & ~bounces[1:-1]  # none in [(k-1)/fps, (k+1)/fps)
    assert (second_diff[no_bounce_around] < 1e-3).all()
    assert (second_diff[~no_bounce_around] > 1e-3).all()


def _dominant_frequency(window_samples: np.ndarray, sample_rate: int) -> float:
  """Peak of a Hann-windowed, zero-padded magnitude spectrum (Hz)."""
  n_fft = 1 << 16
  spectrum = np.abs(np.fft.rfft(window_samples * np.hanning(len(window_samples)), n=n_fft))
  return float(np.argmax(spectrum)) * sample_rate / n_fft


def test_audio_pitch_matches_frame_pitch(clips):
  half = 512  # 64 ms window, centred on the frame time
  checked = 0
  for clip in clips:
    audio, bounces = clip["audio"].astype(np.float64), clip["bounce_frames"]
    for k in range(1, WORLD.num_frames):
      centre = int(round(k / WORLD.fps * WORLD.sample_rate))
      if bounces[k - 1] or bounces[k] or centre + half > len(audio):
        continue  # a click or a pitch kink within +-1 frame would blur the peak
      measured = _dominant_frequency(audio[centre - half:centre + half], WORLD.sample_rate)
      # The measured error is ~0.05%; 1% still catches any map or phase-integration slip.
      np.testing.assert_allclose(measured, clip["pitch_hz"][k], rtol=0.01)
      checked += 1
  assert checked >= 40


def _click_onsets(audio: np.ndarray, sample_rate: int) -> np.ndarray:
  """Onset times (s) of high-frequency energy bursts, found without the ground truth."""
  # The tone stays below ~1.5 kHz; the noise clicks are broadband.
  sos = signal.butter(8, 4000, btype="highpass", fs=sample_rate, output="sos")
  high = signal.sosfiltfilt(sos, audio.astype(np.float64))
  hop = sample_rate // 400  # 2.5 ms energy frames
  energy = (high[:len(high) // hop * hop].reshape(-1, hop) ** 2).mean(axis=1)
  active = energy > 1e-3  # a click's frames are > 1e-2; the filtered tone's ~1e-16
  onsets = np.flatnonzero(active & ~np.concatenate([[False], active[:-1]]))
  return onsets * hop / sample_rate


def test_clicks_at_bounce_frames(clips):
  total_bounces = 0
  for clip in clips:
    detected = np.floor(_click_onsets(clip["audio"], WORLD.sample_rate) * WORLD.fps).astype(int)
    truth = np.flatnonzero(clip["bounce_frames"])
    total_bounces += len(truth)
    for frame in detected:
      assert np.abs(truth - frame).min() <= 1, (detected, truth)
    for frame in truth:
      assert len(detected) and np.abs(detected - frame).min() <= 1, (detected, truth)
  assert total_bounces >= 5


def test_click_onsets_at_exact_bounce_times(clips):
  for i, clip in zip(CLIP_INDICES, clips):
    truth = WORLD.bounces(WORLD.clip_params(i))
    if np.any(np.diff(truth) < 0.01):
      continue  # two bounces within one click merge into one burst
    detected = _click_onsets(clip["audio"], WORLD.sample_rate)
    assert len(detected) == len(truth), (detected, truth)
    np.testing.assert_allclose(detected, truth, atol=0.005)


def test_bounce_counts_typical():
  world = synthetic.SyntheticWorld(**{**vars(WORLD), "num_clips": 300})
  counts = []
  for i in range(len(world)):
    params = world.clip_params(i)
    counts.append(len(synthetic.bounce_times(params.start_xy, params.velocity_xy, params.low_xy,
                                             params.high_xy, duration=2.0)))
  counts = np.array(counts)
  assert ((counts >= 1) & (counts <= 3)).mean() > 0.9


def test_disc_position_folds_and_bounce_times_touch_walls():
  start, velocity = np.array([10.0, 20.0]), np.array([37.0, -23.0])
  low, high = np.array([5.0, 5.0]), np.array([40.0, 30.0])
  times = synthetic.bounce_times(start, velocity, low, high, duration=5.0)
  assert len(times) > 4
  on_wall = synthetic.disc_position(times, start, velocity, low, high)
  touches = np.isclose(on_wall, low, atol=1e-9) | np.isclose(on_wall, high, atol=1e-9)
  assert touches.any(axis=-1).all()
  # Away from bounces the motion is the free motion, mirrored.
  t = np.linspace(0.0, 5.0, 1001)
  xy = synthetic.disc_position(t, start, velocity, low, high)
  assert (xy >= low - 1e-9).all() and (xy <= high + 1e-9).all()
  speed = np.abs(np.diff(xy, axis=0)) / np.diff(t)[:, None]
  assert np.isclose(speed, np.abs(velocity), rtol=1e-6).mean() > 0.95


def test_pitch_map_monotone_and_inverse_exact():
  height = 64
  y = np.linspace(0.0, height - 1, 257)
  hz = synthetic.pitch_of_height(y, height)
  assert np.all(np.diff(hz) < 0)  # higher on screen (smaller y) = higher pitch
  np.testing.assert_allclose(hz[[0, -1]], [2000.0, 200.0], rtol=1e-12)
  np.testing.assert_allclose(synthetic.height_of_pitch(hz, height), y, rtol=0, atol=1e-10)
  freqs = np.geomspace(200.0, 2000.0, 33)
  np.testing.assert_allclose(
      synthetic.pitch_of_height(synthetic.height_of_pitch(freqs, height), height), freqs,
      rtol=1e-12)
  # Log-linear: equal steps in height are equal pitch ratios.
  ratios = hz[1:] / hz[:-1]
  np.testing.assert_allclose(ratios, ratios[0], rtol=1e-10)


def test_disc_brighter_orders_the_colours_and_changes_nothing_else():
  plain = synthetic.SyntheticWorld(9, 8.0, 32, 32, 16000, 200, seed=3)
  ordered = dataclasses.replace(plain, disc_brighter=True)
  swapped = 0
  for i in range(200):
    a, b = plain.clip_params(i), ordered.clip_params(i)
    assert synthetic.luminance(b.disc_color) >= synthetic.luminance(b.background_color)
    assert ({tuple(a.disc_color), tuple(a.background_color)}
            == {tuple(b.disc_color), tuple(b.background_color)})
    np.testing.assert_array_equal(a.velocity_xy, b.velocity_xy)
    assert a.tone_phase == b.tone_phase
    swapped += not np.array_equal(a.disc_color, b.disc_color)
  assert 60 < swapped < 140  # about half of the uniform draws had the darker disc
  clip = ordered[7]
  np.testing.assert_array_equal(clip["audio"], plain[7]["audio"])
