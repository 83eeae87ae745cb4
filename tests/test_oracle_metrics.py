"""Oracle metrics of the synthetic world: estimators vs its ground truth, metrics vs known damage.

Estimators are checked against the world's analytic ground truth (`disc_xy`, colours,
`pitch_hz`, bounce times), and the disc finder against frames without the world's disc
(colour patches, noise, smooth noise as decoded from noise latents, wrong shapes); metrics against
ground-truth clips (near-perfect), deliberately damaged clips with a known size of damage
(closed-form expected values), and the rule that conditioning elements are never scored.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import ndimage

from avdit import layout as layout_lib
from avdit import tasks as tasks_lib
from avdit.data import synthetic
from avdit.evaluation import oracle

# The `default` config's clip timing (17 frames at 8 fps, 16 kHz), at 64x64 and 32x32.
LAYOUT = layout_lib.ClipLayout(num_frames=17, fps=8.0, height=64, width=64, sample_rate=16000,
                               video_channels=4, audio_channels=8)
WORLD = synthetic.SyntheticWorld.from_layout(LAYOUT, num_clips=40, seed=0)
SMALL_WORLD = synthetic.SyntheticWorld(num_frames=17, fps=8.0, height=32, width=32,
                                       sample_rate=16000, num_clips=40, seed=0)
NUM_CLIPS = 6
TASKS = ("joint", "a2v", "v2a", "av_continue", "av_continue_2s", "av_inpaint")


@pytest.fixture(scope="module")
def clips():
  return [WORLD[i] for i in range(NUM_CLIPS)]


def _mask(name: str) -> np.ndarray:
  return tasks_lib.parse_task(name, LAYOUT).condition_mask


def _observable_bounces(world, index: int) -> np.ndarray:
  """Ground-truth bounce times the frames can show (see `oracle.SYNC_EDGE_FRAMES`)."""
  times = world.bounces(world.clip_params(index))
  edge = oracle.SYNC_EDGE_FRAMES / world.fps
  return times[(times > edge) & (times < (world.num_frames - 1) / world.fps - edge)]


# --- estimators vs ground truth -----------------------------------------------------------------
@pytest.mark.parametrize("world", [WORLD, SMALL_WORLD], ids=["64px", "32px"])
def test_estimate_disc_matches_ground_truth(world):
  for index in range(NUM_CLIPS):
    clip = world[index]
    centre_f2, disc_f3, background_f3, found_f = oracle.estimate_disc(clip["video"])
    assert found_f.all()
    np.testing.assert_allclose(centre_f2, clip["disc_xy"], atol=0.1)
    np.testing.assert_allclose(disc_f3, np.broadcast_to(clip["disc_color"], disc_f3.shape),
                               atol=2)
    np.testing.assert_allclose(background_f3,
                               np.broadcast_to(clip["background_color"], (17, 3)), atol=2)


def test_estimate_disc_is_robust_to_pixel_noise_and_reports_missing_discs(clips):
  rng = np.random.default_rng(0)
  clip = clips[1]
  noisy = np.clip(clip["video"] + rng.normal(0, 12, clip["video"].shape), 0, 255)
  centre_f2, disc_f3, background_f3, found_f = oracle.estimate_disc(noisy.astype(np.uint8))
  assert found_f.all()
  np.testing.assert_allclose(centre_f2, clip["disc_xy"], atol=0.6)
  assert np.abs(disc_f3 - clip["disc_color"]).max() < 10
  assert np.abs(background_f3 - clip["background_color"]).max() < 5
  # A frame of plain background (plus noise) has no disc.
  empty = np.broadcast_to(clip["background_color"], (2, 64, 64, 3)).astype(np.float64)
  empty = empty + rng.normal(0, 12, empty.shape)
  centre_f2, disc_f3, _, found_f = oracle.estimate_disc(np.clip(empty, 0, 255))
  assert not found_f.any() and np.isnan(centre_f2).all() and np.isnan(disc_f3).all()


# --- disc acceptance: real frames pass, frames without the world's disc do not ------------------
# What a bad (e.g. untrained) model makes has no disc, so `subject_disc_found_fraction` must stay
# near 0 on it. 200 frames per kind, fixed seeds; "found in at most 5%".
MAX_FOUND_IN_GARBAGE = 0.05


def _world_colours(rng) -> tuple[np.ndarray, np.ndarray]:
  """Disc and background colours drawn by the world's rule (channel-summed distance >= 240)."""
  while True:
    disc, background = rng.integers(0, 256, (2, 3)).astype(np.float64)
    if np.abs(disc - background).sum() >= synthetic.MIN_COLOR_DISTANCE:
      return disc, background


def _colour_patch_frames(rng, size: int) -> np.ndarray:
  """Colour patches: 4x4 grids of random colours (half of the grids in pure colours, channels 0
  or 255) upsampled and blurred a little, and three random rectangles on a random background."""
  frames = []
  for i in range(200):
    if i % 2 == 0:
      colours = (rng.integers(0, 256, (4, 4, 3)) if i % 4 == 0
                 else 255 * rng.integers(0, 2, (4, 4, 3)))
      frame = np.kron(colours, np.ones((size // 4, size // 4, 1))).astype(np.float64)
      frames.append(ndimage.gaussian_filter(frame, (1.0, 1.0, 0.0)))
    else:
      frame = np.broadcast_to(rng.integers(0, 256, 3), (size, size, 3)).astype(np.float64)
      for _ in range(3):
        (top, bottom), (left, right) = np.sort(rng.integers(0, size + 1, (2, 2)), axis=1)
        frame[top:bottom, left:right] = rng.integers(0, 256, 3)
      frames.append(frame)
  return np.round(np.stack(frames)).astype(np.uint8)


def _decoded_noise_frames(rng, size: int) -> np.ndarray:
  """Stand-in for decoding noise latents with an untrained decoder: Gaussian noise at 4x4x3 or
  8x8x3, upsampled (nearest or bilinear) to the frame and mapped to 0..255 with saturation."""
  frames = []
  for i in range(200):
    latent = 4 if i % 2 == 0 else 8
    noise = rng.normal(size=(latent, latent, 3))
    smooth = ndimage.zoom(noise, (size / latent, size / latent, 1), order=(i // 2) % 2)
    frames.append(np.clip(127.5 + rng.uniform(64, 256) * smooth, 0, 255))
  return np.round(np.stack(frames)).astype(np.uint8)


def _shape_frames(rng, size: int, shape: str) -> np.ndarray:
  """200 frames of one anti-aliased shape of the world's disc area (or two discs), at random
  places, in colours drawn by the world's rule."""
  radius = synthetic.RADIUS_FRACTION * size
  ys, xs = np.indices((size, size), dtype=np.float64)

  def disc(cx, cy):
    return np.clip(radius + 0.5 - np.hypot(xs - cx, ys - cy), 0, 1)

  frames = []
  for _ in range(200):
    disc_colour, background = _world_colours(rng)
    cx, cy = rng.uniform(1.5 * radius, size - 1 - 1.5 * radius, 2)
    if shape == "disc":  # the control: the world's disc, drawn the same way
      coverage = disc(cx, cy)
    elif shape == "two_discs":  # one in the left half, one in the right half
      other_y = rng.uniform(radius, size - 1 - radius)
      coverage = np.maximum(disc(size / 4 + rng.uniform(-1, 1), cy),
                            disc(3 * size / 4 + rng.uniform(-1, 1), other_y))
    elif shape == "ellipse_2to1":  # axes sqrt(2) r and r / sqrt(2), any orientation
      angle = rng.uniform(0, np.pi)
      u = (xs - cx) * np.cos(angle) + (ys - cy) * np.sin(angle)
      v = (ys - cy) * np.cos(angle) - (xs - cx) * np.sin(angle)
      coverage = np.clip(radius + 0.5 - np.hypot(u / np.sqrt(2), v * np.sqrt(2)), 0, 1)
    elif shape == "square":  # side sqrt(pi) r
      half = 0.5 * np.sqrt(np.pi) * radius
      coverage = (np.clip(half + 0.5 - np.abs(xs - cx), 0, 1)
                  * np.clip(half + 0.5 - np.abs(ys - cy), 0, 1))
    elif shape == "two_tone_disc":  # halves > 2.5 x DISC_MIN_DISTANCE apart: one is off-colour
      coverage = disc(cx, cy)
      while True:
        other = rng.integers(0, 256, 3).astype(np.float64)
        if (np.abs(other - disc_colour).sum() > 2.5 * oracle.DISC_MIN_DISTANCE
            and np.abs(other - background).sum() >= synthetic.MIN_COLOR_DISTANCE):
          break
      disc_colour = np.where((xs < cx)[..., None], disc_colour, other)
    frames.append(background + coverage[..., None] * (disc_colour - background))
  return np.round(np.stack(frames)).astype(np.uint8)


@pytest.mark.parametrize("size", [32, 64])
def test_estimate_disc_finds_the_disc_in_every_real_frame(size):
  world = synthetic.SyntheticWorld(num_frames=17, fps=8.0, height=size, width=size,
                                   sample_rate=16000, num_clips=50, seed=1)
  video = np.concatenate([world.render_video(world.clip_params(i)) for i in range(50)])
  assert oracle.estimate_disc(video)[3].all()
  # Also slightly blurred (as a decoder's smoothing might).
  blurred = ndimage.gaussian_filter(video[::5].astype(np.float64), (0, 0.7, 0.7, 0))
  assert oracle.estimate_disc(blurred)[3].all()
  # A decoder's output: the disc smeared along its motion over a latent's 4 frames (here 1.5 px
  # per frame, the world's fastest) and blurred by ~1.2 px: still a disc, and where it is.
  ys, xs = np.indices((size, size), dtype=np.float64)
  radius = synthetic.RADIUS_FRACTION * size
  smeared = np.mean([np.clip(radius + 0.5 - np.hypot(xs - size / 2 - 1.5 * k, ys - size / 2),
                             0, 1) for k in range(4)], axis=0)
  smeared = ndimage.gaussian_filter(smeared, 1.2)
  frame = 30.0 + smeared[..., None] * np.array([190.0, 160.0, 200.0])
  centre, _, _, found = oracle.estimate_disc(np.round(frame)[None].astype(np.uint8))
  assert found.all()
  np.testing.assert_allclose(centre[0], [size / 2 + 2.25, size / 2], atol=0.1)
  # The control for the shape tests below: their renderer's discs are found.
  assert oracle.estimate_disc(_shape_frames(np.random.default_rng(0), size, "disc"))[3].all()


@pytest.mark.parametrize("size", [32, 64])
def test_estimate_disc_rejects_colour_patches_noise_and_flat_frames(size):
  rng = np.random.default_rng(0)
  kinds = {
      "colour patches": _colour_patch_frames(rng, size),
      "uniform noise": rng.integers(0, 256, (200, size, size, 3)).astype(np.uint8),
      "flat colour": np.broadcast_to(rng.integers(0, 256, (200, 1, 1, 3)),
                                     (200, size, size, 3)).astype(np.uint8),
  }
  for kind, video in kinds.items():
    assert oracle.estimate_disc(video)[3].mean() <= MAX_FOUND_IN_GARBAGE, kind


@pytest.mark.parametrize("size", [32, 64])
def test_estimate_disc_rejects_decoded_noise_latents(size):
  video = _decoded_noise_frames(np.random.default_rng(0), size)
  assert oracle.estimate_disc(video)[3].mean() <= MAX_FOUND_IN_GARBAGE


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("shape", ["two_discs", "ellipse_2to1", "square", "two_tone_disc"])
def test_estimate_disc_rejects_wrong_shapes_of_the_disc_area(size, shape):
  # Two discs: the second is stray far pixels; the 2:1 ellipse: elongation (4) and misfit; the
  # square: misfit (its corners); the two-tone disc: off-colour inner pixels.
  video = _shape_frames(np.random.default_rng(0), size, shape)
  assert not oracle.estimate_disc(video)[3].any()


@pytest.mark.parametrize("world", [WORLD, SMALL_WORLD], ids=["64px", "32px"])
def test_estimate_pitch_matches_ground_truth(world):
  frame_times = np.arange(world.num_frames) / world.fps
  for index in range(NUM_CLIPS):
    clip = world[index]
    hz = oracle.estimate_pitch(clip["audio"], world.sample_rate, frame_times)
    relative_error = np.abs(hz / clip["pitch_hz"] - 1.0)
    # Frame 0 (t = 0) cannot be centred in its window: 32 ms after it, the pitch glides <= 3%.
    assert relative_error[0] < 0.03
    assert relative_error[1:].max() < 0.012
  # Silence has no pitch.
  assert np.isnan(oracle.estimate_pitch(np.zeros(4000), 16000, [0.1])).all()


def test_estimate_pitch_of_pure_tones_across_the_band():
  sample_rate = 16000
  t = np.arange(8000) / sample_rate
  for hz in (230.0, 517.3, 1234.5, 1900.0):
    tone = 0.3 * np.sin(2 * np.pi * hz * t + 0.7)
    estimate = oracle.estimate_pitch(tone, sample_rate, [0.0, 0.25, 0.5 - 1e-4])
    np.testing.assert_allclose(estimate, hz, rtol=2e-3)


@pytest.mark.parametrize("world", [WORLD, SMALL_WORLD], ids=["64px", "32px"])
def test_clicks_and_bounces_match_ground_truth_bounce_times(world):
  checked = 0
  for index in range(12):
    clip = world[index]
    truth = world.bounces(world.clip_params(index))
    clicks = oracle.detect_clicks(clip["audio"], world.sample_rate)
    # Every bounce inside the audio has its click, a few ms late (energy peak of the burst).
    assert clicks.shape == truth.shape
    assert (np.abs(clicks - truth) < 0.003).all()
    centre_f2 = oracle.estimate_disc(clip["video"])[0]
    bounces = oracle.detect_bounces(centre_f2, world.fps)
    edge = oracle.SYNC_EDGE_FRAMES / world.fps  # (some bounces beyond the edges are found too)
    bounces = bounces[(bounces > edge) & (bounces < (world.num_frames - 1) / world.fps - edge)]
    visible = _observable_bounces(world, index)
    assert bounces.shape == visible.shape
    np.testing.assert_allclose(bounces, visible, atol=0.02)  # < 1/6 frame
    # In the world's frame-index convention (`bounce_frames`: a bounce in [k, k + 1) / fps).
    np.testing.assert_array_equal(np.unique(np.floor(clicks * world.fps)),
                                  np.flatnonzero(clip["bounce_frames"]))
    checked += visible.shape[0]
  assert checked >= 8


def test_detect_bounces_of_a_hand_made_trajectory():
  # x: right at 2 px/frame, reflects off a wall at x = 10 at frame 3.5; y: still.
  frames = np.arange(10, dtype=np.float64)
  x = 10.0 - 2.0 * np.abs(frames - 3.5)
  centre_f2 = np.stack([x, np.full(10, 7.0)], axis=-1)
  np.testing.assert_allclose(oracle.detect_bounces(centre_f2, fps=4.0), [3.5 / 4.0])
  # A missing frame is interpolated over.
  centre_f2[6] = np.nan
  np.testing.assert_allclose(oracle.detect_bounces(centre_f2, fps=4.0), [3.5 / 4.0])
  assert oracle.detect_bounces(np.full((10, 2), 5.0), fps=4.0).shape == (0,)
  # Reflection within the first and the last step: the shortened step times it.
  x = np.where(frames < 8.5, 3.0 * np.abs(frames - 0.25), 3.0 * 8.25 - 3.0 * (frames - 8.5))
  centre_f2 = np.stack([x, np.full(10, 7.0)], axis=-1)
  np.testing.assert_allclose(oracle.detect_bounces(centre_f2, fps=1.0), [0.25, 8.5])


def test_match_events_one_to_one_closest_first():
  matched_a, matched_b = oracle.match_events([0.0, 1.0, 1.13, 3.0], [1.1, 0.08, 5.0], 0.2)
  # 1.0 and 1.13 both lie within 0.2 of 1.1; the closer 1.13 takes it (left-to-right greedy
  # matching would give it to 1.0), and 3.0 / 5.0 have no partner.
  np.testing.assert_array_equal(matched_a, [True, False, True, False])
  np.testing.assert_array_equal(matched_b, [True, True, False])
  assert [m.shape for m in oracle.match_events([], [1.0], 0.1)] == [(0,), (1,)]


# --- metrics on ground truth and on damaged clips -----------------------------------------------
@pytest.mark.parametrize("task", TASKS)
def test_ground_truth_clips_score_near_perfect(clips, task):
  report = oracle.evaluate_batch(clips, clips, _mask(task), LAYOUT)
  video_generated = task != "v2a"
  for name in ("subject_disc_found_fraction", "continuity_jump_px"):
    assert report[f"{name}_num_clips"] == (NUM_CLIPS if video_generated else 0), name
  video_given = _mask(task)[0].any()
  for name in ("subject_disc_color_drift", "subject_background_color_drift"):
    assert report[f"{name}_num_clips"] == (NUM_CLIPS if video_generated else 0), name
  if video_generated:
    if video_given:  # agreement with the given video's colours
      assert report["subject_disc_color_error"] <= 1.0
      assert report["subject_background_color_error"] <= 1.0
    else:  # no colour is given: agreement cannot be scored, only the clip's own stability
      assert report["subject_disc_color_error_num_clips"] == 0
      assert report["subject_background_color_error_num_clips"] == 0
    assert report["subject_disc_color_drift"] <= 1.0
    assert report["subject_background_color_drift"] <= 1.0
    assert report["subject_disc_found_fraction"] == 1.0
    assert report["continuity_jump_px"] < 0.1
    assert report["continuity_num_borders"] > 0
  else:
    assert np.isnan(report["subject_disc_color_error"])
    assert np.isnan(report["continuity_jump_px"])
  assert report["av_height_error_px"] < 0.1
  assert report["av_height_error_fraction"] == pytest.approx(report["av_height_error_px"] / 64)
  assert report["sync_f1"] == 1.0
  assert report["sync_num_clicks"] == report["sync_num_bounces"] > 0
  # Exactly the frames of segments with a generated element are scored.
  mask = _mask(task)
  generated_f = ~mask[0, LAYOUT.segment_of_frame] | ~mask[1, LAYOUT.segment_of_frame]
  assert report["av_num_frames"] == NUM_CLIPS * generated_f.sum()
  assert report["subject_num_frames"] == NUM_CLIPS * (~mask[0, LAYOUT.segment_of_frame]).sum()


def test_shuffled_audio_breaks_correspondence_and_synchrony(clips):
  shuffled = [dict(clip, audio=clips[(i + 1) % NUM_CLIPS]["audio"])
              for i, clip in enumerate(clips)]
  for task in ("joint", "v2a", "av_continue", "av_inpaint"):
    truth = oracle.evaluate_batch(clips, clips, _mask(task), LAYOUT)
    damaged = oracle.evaluate_batch(clips, shuffled, _mask(task), LAYOUT)
    assert damaged["av_height_error_px"] > 5.0 > 50 * truth["av_height_error_px"], task
    assert damaged["sync_f1"] < 0.5, task
  # In a2v the audio is the condition: the generated clip's audio is never read.
  a2v_truth = oracle.evaluate_batch(clips, clips, _mask("a2v"), LAYOUT)
  a2v_shuffled = oracle.evaluate_batch(clips, shuffled, _mask("a2v"), LAYOUT)
  np.testing.assert_equal(a2v_shuffled, a2v_truth)


def test_subject_colour_errors_are_the_colour_changes(clips):
  """Re-rendering the disc (background) in another colour costs exactly the mean |RGB| change."""
  index = 2
  params = WORLD.clip_params(index)
  new_disc = (255 - params.disc_color.astype(int)).astype(np.uint8)
  new_background = np.clip(params.background_color.astype(int) + [9, -6, 3], 0, 255)
  changed = dataclasses.replace(params, disc_color=new_disc,
                                background_color=new_background.astype(np.uint8))
  generated = dict(clips[index], video=WORLD.render_video(changed))
  for task in ("joint", "a2v"):  # no video given: other colours are as right as the real ones
    report = oracle.evaluate_clip(clips[index], generated, _mask(task), LAYOUT)
    assert np.isnan(report["subject_disc_color_error"]), task
    assert np.isnan(report["subject_background_color_error"]), task
    assert report["subject_disc_color_drift"] <= 1.0
    assert report["subject_background_color_drift"] <= 1.0
  for task in ("av_continue", "av_inpaint"):
    report = oracle.evaluate_clip(clips[index], generated, _mask(task), LAYOUT)
    np.testing.assert_allclose(
        report["subject_disc_color_error"],
        np.abs(new_disc.astype(int) - params.disc_color.astype(int)).mean(), atol=0.5)
    np.testing.assert_allclose(
        report["subject_background_color_error"],
        np.abs(new_background - params.background_color.astype(int)).mean(), atol=0.5)
    assert report["subject_disc_found_fraction"] == 1.0


def test_colour_drift_is_the_mean_distance_from_the_generated_frames_median(clips):
  """Frames 0..5 of a joint sample in one background, the rest in another: with 17 frames the
  median is the second colour, so the drift is 6/17 of the colours' mean |RGB| distance."""
  index = 1
  params = WORLD.clip_params(index)
  shifted = np.clip(params.background_color.astype(int) + [30, -24, 12], 0, 255).astype(np.uint8)
  video = WORLD.render_video(dataclasses.replace(params, background_color=shifted))
  video[:6] = clips[index]["video"][:6]
  report = oracle.evaluate_clip(clips[index], dict(clips[index], video=video), _mask("joint"),
                                LAYOUT)
  distance = np.abs(shifted.astype(int) - params.background_color.astype(int)).mean()
  np.testing.assert_allclose(report["subject_background_color_drift"], 6 / 17 * distance,
                             atol=0.5)
  assert report["subject_disc_color_drift"] <= 1.0  # the disc kept its colour


def test_reversed_generated_video_breaks_continuity(clips):
  for task in ("av_continue", "av_inpaint"):
    generated_f = ~_mask(task)[0, LAYOUT.segment_of_frame]
    frames = np.flatnonzero(generated_f)
    reversed_clips = []
    for clip in clips:
      video = clip["video"].copy()
      video[frames] = clip["video"][frames[::-1]]
      reversed_clips.append(dict(clip, video=video))
    truth = oracle.evaluate_batch(clips, clips, _mask(task), LAYOUT)
    damaged = oracle.evaluate_batch(clips, reversed_clips, _mask(task), LAYOUT)
    assert damaged["continuity_jump_px"] > 2.0 > 20 * truth["continuity_jump_px"], task
    assert damaged["av_height_error_px"] > 5.0, task
    assert damaged["sync_f1"] < 0.5, task


def _still_disc_frames(params, centres_f2) -> np.ndarray:
  """Frames of the world's renderer with the disc of `params` at given centres."""
  return np.stack([
      WORLD.render_video(dataclasses.replace(params, start_xy=np.asarray(c, np.float64),
                                             velocity_xy=np.zeros(2)))[0]
      for c in centres_f2])


def test_continuity_jump_is_the_displacement_at_the_border():
  """av_continue with the generated frames displaced by (3, 4) px: a 5 px jump at border 4|5."""
  offset = np.array([3.0, 4.0])
  mask = _mask("av_continue")  # segments 0-1 (frames 0-4) given, frames 5-16 generated
  for index in range(WORLD.num_clips):
    params = WORLD.clip_params(index)
    truth = WORLD[index]
    bounce_frames = np.floor(WORLD.bounces(params) * WORLD.fps)
    shifted = truth["disc_xy"][4:].astype(np.float64) + offset  # frame 4 too: see below
    inside = ((shifted >= params.low_xy) & (shifted <= params.high_xy)).all()
    # A bounce inside a scored border's step (4-5, 8-9, 12-13) would happen at the unshifted
    # wall, which the wall-reflecting prediction of the shifted side cannot know.
    if inside and not np.isin(bounce_frames, [4, 8, 12]).any():
      break
  else:
    pytest.fail("no clip with a bounce-free border and room for the offset")
  video = truth["video"].copy()
  # The right side predicts frame 4 at its true place + offset, which must lie inside the walls.
  video[5:] = _still_disc_frames(params, shifted[1:])
  report = oracle.evaluate_clip(truth, dict(truth, video=video), mask, LAYOUT)
  # Borders 4|5, 8|9, 12|13 are scored; only the first one jumps (by |offset| = 5 px).
  assert report["continuity_num_borders"] == 3
  np.testing.assert_allclose(report["continuity_jump_px"], 5.0 / 3.0, atol=0.05)
  # The disc is 4 px lower than its pitch says on the 12 generated frames.
  np.testing.assert_allclose(report["av_height_error_px"], 4.0, atol=0.1)


def test_correspondence_error_is_the_height_offset_of_the_pitch(clips):
  """Audio whose pitch tracks the disc height + 4 px: a 4 px correspondence error."""
  index, offset = 3, 4.0
  params = WORLD.clip_params(index)
  t_l = np.arange(WORLD.audio_samples) / WORLD.sample_rate
  hz_l = synthetic.pitch_of_height(WORLD.position(params, t_l)[:, 1] + offset, WORLD.height)
  tone = 0.3 * np.sin(2 * np.pi * np.cumsum(hz_l) / WORLD.sample_rate)
  generated = dict(clips[index], audio=tone.astype(np.float32))
  # (Tasks with all audio generated: a pitch window that straddles given and generated audio
  # would hold two tones.)
  for task in ("joint", "v2a"):
    report = oracle.evaluate_clip(clips[index], generated, _mask(task), LAYOUT)
    np.testing.assert_allclose(report["av_height_error_px"], offset, atol=0.15)
    np.testing.assert_allclose(report["av_height_error_fraction"], offset / 64, atol=0.003)


def test_synchrony_f1_closed_forms(clips):
  mask = _mask("v2a")  # the video (and its bounces) given, the audio generated
  for index in range(WORLD.num_clips):
    params = WORLD.clip_params(index)
    truth = _observable_bounces(WORLD, index)
    # Two visible bounces, well apart and away from the ends, so shifted clicks stay visible.
    if (truth.shape[0] == 2 and np.diff(truth)[0] > 0.5 and truth[0] > 0.3
        and truth[1] < 1.5):
      break
  else:
    pytest.fail("no clip with two well separated bounces")
  condition = WORLD[index]

  def sync(click_seconds):
    audio = WORLD.render_audio(params, np.asarray(click_seconds))
    report = oracle.evaluate_clip(condition, dict(condition, audio=audio), mask, LAYOUT)
    return report["sync_f1"], report["sync_clicks_matched"], report["sync_bounces_matched"]

  assert sync(truth) == (1.0, 1.0, 1.0)
  assert sync(truth + 0.6 / WORLD.fps) == (1.0, 1.0, 1.0)  # within the one-frame tolerance
  assert sync(truth + 2.0 / WORLD.fps) == (0.0, 0.0, 0.0)  # two frames late: no click matches
  # One of two clicks missing: TP 1, FN 1 -> F1 = 2 / 3; the click is on a bounce, half the
  # bounces have a click.
  np.testing.assert_allclose(sync(truth[:1]), (2.0 / 3.0, 1.0, 0.5))
  # An extra click far from any bounce: TP 2, FP 1 -> F1 = 4 / 5; two of three clicks on a bounce.
  np.testing.assert_allclose(sync(np.sort([*truth, truth[0] + 0.3])), (4.0 / 5.0, 2.0 / 3.0, 1.0))
  # No clicks at all: nothing to match on the click side (NaN), no bounce has a click.
  f1, clicks_matched, bounces_matched = sync([])
  assert f1 == 0.0 and np.isnan(clicks_matched) and bounces_matched == 0.0


# --- conditioning elements are never scored ------------------------------------------------------
def test_conditioning_elements_of_the_generated_clip_are_ignored(clips):
  rng = np.random.default_rng(1)
  audio_segment_l = LAYOUT.segment_of_audio[np.arange(LAYOUT.audio_samples) // LAYOUT.audio_hop]
  for task in ("av_inpaint", "av_continue", "a2v", "v2a"):
    mask = _mask(task)
    video_given_f = mask[0, LAYOUT.segment_of_frame]
    audio_given_l = mask[1, audio_segment_l]
    for index in (0, 4):
      clip = clips[index]
      scrambled_video = clip["video"].copy()
      scrambled_video[video_given_f] = rng.integers(0, 256, scrambled_video[video_given_f].shape)
      scrambled_audio = clip["audio"].copy()
      scrambled_audio[audio_given_l] = rng.uniform(-1, 1, audio_given_l.sum())
      scrambled = dict(clip, video=scrambled_video, audio=scrambled_audio)
      np.testing.assert_equal(oracle.evaluate_clip(clip, scrambled, mask, LAYOUT),
                              oracle.evaluate_clip(clip, clip, mask, LAYOUT))
  # Scrambling the generated elements instead does change the scores.
  mask = _mask("av_inpaint")
  video = clips[0]["video"].copy()
  video[~mask[0, LAYOUT.segment_of_frame]] = clips[1]["video"][~mask[0, LAYOUT.segment_of_frame]]
  damaged = oracle.evaluate_clip(clips[0], dict(clips[0], video=video), mask, LAYOUT)
  assert damaged["subject_disc_color_error"] > 10 and damaged["continuity_jump_px"] > 1


def test_composite_takes_each_element_from_its_source(clips):
  mask = _mask("av_continue")
  composite = oracle.composite_clip(clips[0], clips[1], mask, LAYOUT)
  np.testing.assert_array_equal(composite["video"][:5], clips[0]["video"][:5])
  np.testing.assert_array_equal(composite["video"][5:], clips[1]["video"][5:])
  # Audio latent j (320 samples) belongs to the segment holding its centre: latents 0-30
  # (centres up to 0.61 s < 0.625 s, the start of segment 2) are given.
  np.testing.assert_array_equal(composite["audio"][:31 * 320], clips[0]["audio"][:31 * 320])
  np.testing.assert_array_equal(composite["audio"][31 * 320:], clips[1]["audio"][31 * 320:])


# --- batches, missing discs, bad input -----------------------------------------------------------
def test_batch_forms_and_per_clip_masks(clips):
  joint, v2a = _mask("joint"), _mask("v2a")
  per_clip = [oracle.evaluate_clip(c, c, m, LAYOUT) for c, m in zip(clips[:2], (joint, v2a))]
  stacked = {"video": np.stack([c["video"] for c in clips[:2]]),
             "audio": np.stack([c["audio"] for c in clips[:2]])}
  report = oracle.evaluate_batch(stacked, stacked, np.stack([joint, v2a]), LAYOUT)
  assert report["num_clips"] == 2
  # Subject metrics exist for the joint clip only; the others average both clips.
  assert report["subject_disc_color_drift_num_clips"] == 1
  assert report["subject_disc_color_drift"] == per_clip[0]["subject_disc_color_drift"]
  np.testing.assert_allclose(report["av_height_error_px"],
                             (per_clip[0]["av_height_error_px"]
                              + per_clip[1]["av_height_error_px"]) / 2)
  assert report["av_num_frames"] == 34
  higher = ("subject_disc_found_fraction", "sync_f1", "sync_clicks_matched",
            "sync_bounces_matched")
  assert oracle.HIGHER_IS_BETTER == {name: name in higher for name in oracle.METRICS}


def test_generated_video_without_a_disc(clips):
  clip = clips[0]
  blank = np.broadcast_to(clip["background_color"], clip["video"].shape).copy()
  report = oracle.evaluate_clip(clip, dict(clip, video=blank), _mask("a2v"), LAYOUT)
  assert report["subject_disc_found_fraction"] == 0.0
  assert report["subject_background_color_drift"] == 0.0
  for name in ("subject_disc_color_error", "subject_background_color_error",
               "subject_disc_color_drift", "av_height_error_px", "continuity_jump_px"):
    assert np.isnan(report[name]), name
  assert report["av_num_frames"] == 0 and report["continuity_num_borders"] == 0


def test_bad_input_raises(clips):
  clip, mask = clips[0], _mask("joint")
  bad_cases = [
      (clip, dict(clip, video=clip["video"][:16]), mask),  # frame count
      (clip, dict(clip, video=clip["video"][..., :2]), mask),  # not RGB
      (clip, dict(clip, audio=clip["audio"][:-1]), mask),  # audio length
      (clip, dict(clip, audio=clip["audio"][None]), mask),  # audio rank
      (clip, {"video": clip["video"]}, mask),  # no audio
      (clip, clip, mask[:, :-1]),  # mask shape
      (clip, clip, _mask("av_inpaint").astype(int) * 2),  # not boolean
  ]
  for condition, generated, condition_mask in bad_cases:
    with pytest.raises(ValueError):
      oracle.evaluate_clip(condition, generated, condition_mask, LAYOUT)
  with pytest.raises(ValueError):
    oracle.evaluate_batch([clip], [clip, clip], mask, LAYOUT)
  with pytest.raises(ValueError):
    oracle.evaluate_batch([clip, clip], [clip, clip], np.stack([mask] * 3), LAYOUT)
  with pytest.raises(ValueError):
    oracle.estimate_disc(clip["video"][0])
  with pytest.raises(ValueError):
    oracle.estimate_pitch(clip["audio"][None], 16000, [0.0])
  with pytest.raises(ValueError):
    oracle.detect_clicks(clip["audio"], 4000)  # no band above the tones
  with pytest.raises(ValueError):
    oracle.detect_bounces(np.zeros((17, 3)), 8.0)
