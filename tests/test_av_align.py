"""AV-Align: optical flow, onsets, video peaks and the score on clips with known answers."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage

from avdit.data.synthetic import SyntheticWorld
from avdit.evaluation import av_align

SAMPLE_RATE = 16000
FPS = 12.0
NUM_FRAMES = 24
SIZE = 40
# Frames k at which the object jumps (it moves between frame k − 1 and k, and is still
# otherwise); irregular spacing, so shifting them by a few frames matches none of them.
BURST_FRAMES = (5, 11, 18)


def _smooth_texture(shift_xy, size=48, seed=0):
  """A smooth random field [size, size] on 0..255 whose content is moved by shift (dx, dy):
  the returned image b satisfies b(y + dy, x + dx) = a(y, x) for the unshifted a."""
  rng = np.random.default_rng(seed)
  pad = 16
  field = scipy.ndimage.gaussian_filter(rng.normal(size=(size + 2 * pad,) * 2), 3.0, mode="wrap")
  field = 255.0 * (field - field.min()) / (field.max() - field.min())
  rows, cols = np.meshgrid(np.arange(size) + float(pad), np.arange(size) + float(pad),
                           indexing="ij")
  return scipy.ndimage.map_coordinates(field, [rows - shift_xy[1], cols - shift_xy[0]], order=5,
                                       mode="wrap")


def _object_video(x_positions_f, y=SIZE / 2.0):
  """uint8 [F, SIZE, SIZE, 3]: a textured Gaussian blob with centre (x_f, y) on grey."""
  ys, xs = np.meshgrid(np.arange(SIZE, dtype=np.float64), np.arange(SIZE, dtype=np.float64),
                       indexing="ij")
  frames = []
  for x_centre in x_positions_f:
    dx, dy = xs - x_centre, ys - y
    envelope = np.exp(-(dx**2 + dy**2) / (2.0 * 5.0**2))
    texture = 1.0 + 0.5 * np.cos(0.9 * dx) * np.cos(0.7 * dy)
    grey = 60.0 + 120.0 * envelope * texture
    frames.append(np.stack([grey, 0.8 * grey, 0.5 * grey + 40.0], axis=-1))
  return np.round(np.clip(frames, 0, 255)).astype(np.uint8)


def _bursty_video(burst_frames=BURST_FRAMES, jump_px=4.0):
  """The blob jumps right by `jump_px` at each burst frame and is still otherwise."""
  steps = np.zeros(NUM_FRAMES)
  steps[list(burst_frames)] = jump_px
  return _object_video(8.0 + np.cumsum(steps))


def _tone_with_clicks(click_seconds, duration=NUM_FRAMES / FPS, seed=0):
  """float32 [L]: a 440 Hz tone plus a short decaying noise burst at each given time."""
  rng = np.random.default_rng(seed)
  t = np.arange(int(round(duration * SAMPLE_RATE))) / SAMPLE_RATE
  audio = 0.3 * np.sin(2.0 * np.pi * 440.0 * t)
  click_len = 80  # 5 ms
  click = rng.uniform(-1.0, 1.0, click_len) * np.exp(-np.arange(click_len) / 20.0)
  for seconds in click_seconds:
    start = int(round(seconds * SAMPLE_RATE))
    audio[start:start + click_len] += 0.5 * click[:len(audio) - start]
  return audio.astype(np.float32)


# --- optical flow -------------------------------------------------------------------------------
@pytest.mark.parametrize("shift_xy", [(1.0, -0.5), (0.3, 0.2), (-2.5, 1.5)])
def test_optical_flow_recovers_a_translation(shift_xy):
  frame_a = _smooth_texture((0.0, 0.0))
  frame_b = _smooth_texture(shift_xy)
  flow = av_align.optical_flow(frame_a, frame_b)
  assert flow.shape == frame_a.shape + (2,)
  interior = flow[8:-8, 8:-8]  # away from the borders, where content enters/leaves the frame
  np.testing.assert_allclose(interior.reshape(-1, 2).mean(axis=0), shift_xy, atol=0.03)
  assert np.median(np.linalg.norm(interior - np.asarray(shift_xy), axis=-1)) < 0.05
  # Identical frames: no motion (up to the round-off of spline interpolation at grid points).
  np.testing.assert_allclose(av_align.optical_flow(frame_a, frame_a), 0.0, atol=1e-10)


def test_optical_flow_rejects_mismatched_frames():
  with pytest.raises(ValueError, match="one shape"):
    av_align.optical_flow(np.zeros((8, 8)), np.zeros((8, 9)))


# --- audio onsets -------------------------------------------------------------------------------
def test_onsets_found_at_click_times_and_not_in_a_steady_tone():
  clicks = np.array([0.1234, 0.4, 0.7105, 0.9555, 1.3])
  onsets = av_align.audio_onset_times(_tone_with_clicks(clicks, duration=1.5), SAMPLE_RATE)
  assert onsets.shape == clicks.shape
  # Within one 10 ms hop of the true times.
  np.testing.assert_allclose(onsets, clicks, atol=0.010)
  assert av_align.audio_onset_times(_tone_with_clicks([], duration=1.5), SAMPLE_RATE).size == 0
  assert av_align.audio_onset_times(np.zeros(SAMPLE_RATE), SAMPLE_RATE).size == 0
  with pytest.raises(ValueError, match="1-D"):
    av_align.audio_onset_times(np.zeros((2, SAMPLE_RATE)), SAMPLE_RATE)


def test_onsets_match_synthetic_world_bounces():
  # The synthetic world's audio is a gliding tone with a click at every wall bounce (ground
  # truth). Bounces too close to the clip's ends or to each other to be resolved are excused.
  world = SyntheticWorld(num_frames=40, fps=10.0, height=32, width=32, sample_rate=SAMPLE_RATE,
                         num_clips=4, seed=0)
  num_checked = 0
  for index in range(len(world)):
    bounces = world.bounces(world.clip_params(index))
    onsets = av_align.audio_onset_times(world[index]["audio"], SAMPLE_RATE)
    # Every onset is a bounce...
    assert np.all(np.min(np.abs(onsets[:, None] - bounces[None, :]), axis=1) <= 0.010)
    # ...and every resolvable bounce is an onset.
    gaps = np.diff(np.concatenate([[-1.0], bounces, [world.duration + 1.0]]))
    resolvable = ((bounces > 0.05) & (bounces < world.duration - 0.05)
                  & (gaps[:-1] > 0.05) & (gaps[1:] > 0.05))
    for bounce in bounces[resolvable]:
      assert np.min(np.abs(onsets - bounce)) <= 0.010
      num_checked += 1
  assert num_checked >= 8


# --- video peaks --------------------------------------------------------------------------------
def test_video_peaks_at_motion_bursts():
  peaks = av_align.video_peak_times(_bursty_video(), FPS)
  np.testing.assert_allclose(peaks, np.array(BURST_FRAMES) / FPS, atol=1e-9)
  # A smooth burst spread over three transitions (1, 3, 1 px) peaks at its fastest frame, and a
  # steady drift (0.5 px every frame) adds no peaks of its own.
  steps = np.full(NUM_FRAMES, 0.5)
  steps[[13, 14, 15]] = (1.0, 3.0, 1.0)
  steps[0] = 0.0
  curve = av_align.flow_magnitude_curve(_object_video(8.0 + np.cumsum(steps)))
  assert curve.shape == (NUM_FRAMES,) and curve[0] == curve[1]
  np.testing.assert_array_equal(av_align.video_peak_indices(curve), [14])
  # A still video has no motion at all.
  assert av_align.video_peak_times(_object_video(np.full(6, 10.0)), FPS).size == 0


# --- the score ----------------------------------------------------------------------------------
def test_peak_alignment_formulas_on_hand_counted_examples():
  # Tolerance 0.1: audio 0.0 (video 0.05 aligned), 0.5 (nothing within 0.1), 0.58 (video 0.65);
  # video 0.05 and 0.65 aligned, 1.0 not. Paper: (2 + 2) / (3 + 3); reference IoU: 2 / (6 − 2).
  audio, video = [0.0, 0.5, 0.58], [0.05, 0.65, 1.0]
  assert av_align.peak_alignment_score(audio, video, 0.1) == pytest.approx(4 / 6)
  assert av_align.peak_iou(audio, video, 0.1) == pytest.approx(2 / 4)
  # One audio peak can align with two video peaks; both of those count as aligned.
  assert av_align.peak_alignment_score([0.5], [0.45, 0.55], 0.1) == pytest.approx(1.0)
  assert av_align.peak_alignment_score([], [0.3], 0.1) == 0.0
  assert av_align.peak_alignment_score([], [], 0.1) == 0.0


def test_av_align_high_when_clicks_coincide_with_motion_low_when_shifted():
  video = _bursty_video()
  burst_seconds = np.array(BURST_FRAMES) / FPS
  aligned = av_align.av_align_details(video, _tone_with_clicks(burst_seconds), FPS, SAMPLE_RATE)
  assert aligned.audio_peak_times.size == len(BURST_FRAMES)
  assert aligned.video_peak_times.size == len(BURST_FRAMES)
  assert aligned.score >= 0.8 and aligned.iou >= 0.5
  # Audio late by 3 frames: each click is >= 3 frames from every burst.
  shifted = av_align.av_align(video, _tone_with_clicks(burst_seconds + 3.0 / FPS), FPS,
                              SAMPLE_RATE)
  # Clicks at unrelated times (>= 2 frames from every burst).
  unrelated = av_align.av_align(video, _tone_with_clicks(np.array([2.5, 8.3, 14.6]) / FPS), FPS,
                                SAMPLE_RATE)
  assert shifted <= 0.2 and unrelated <= 0.2
  # Two of three clicks on bursts plus one 3 frames from any: (2 + 2) / (3 + 3), counted by hand.
  partial = av_align.av_align(video, _tone_with_clicks(np.array([5, 11, 15]) / FPS), FPS,
                              SAMPLE_RATE)
  assert partial == pytest.approx(4 / 6)
  # Batch mean of the clips above.
  batch_audio = np.stack([_tone_with_clicks(burst_seconds),
                          _tone_with_clicks(burst_seconds + 3.0 / FPS)])
  np.testing.assert_allclose(
      av_align.mean_av_align(np.stack([video, video]), batch_audio, FPS, SAMPLE_RATE),
      (aligned.score + shifted) / 2.0)
