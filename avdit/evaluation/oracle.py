"""Oracle metrics of generated clips in the synthetic bouncing-disc world (SPEC §10).

A generated clip has no ground-truth parameters, so everything is estimated from pixels and
waveform only, with estimators that recover the world's ground truth from real clips (tests check
them against `avdit.data.synthetic`):

* `estimate_disc`: per frame, the background colour (median of the border pixels), the disc
  colour (median of the largest blob of pixels far from the background) and the disc centre
  (centroid weighted by each pixel's estimated disc coverage, i.e. sub-pixel accurate). The blob
  counts as the disc only if it looks like the world's disc: enough contrast, about the world
  disc's area, round (second moments), shaped like an anti-aliased disc (coverage fit), of one
  colour, and alone on a background otherwise free of far pixels (`DISC_*` thresholds). Frames
  of colour patches or smooth noise, what an untrained model makes, are therefore not counted.
* `estimate_pitch`: the tone frequency around given times (peak of a Hann-windowed, zero-padded
  FFT in the world's pitch band, refined by parabolic interpolation of the log magnitude). The
  click bursts are broadband and ~40 dB below the tonal peak, so they cannot move the argmax.
* `detect_clicks`: transients (peaks of the short-time energy of the audio high-passed above the
  pitch band, far above its median level).
* `detect_bounces`: wall bounces of an estimated trajectory (per-axis velocity reversals, timed to
  a fraction of a frame by intersecting the straight motions on both sides).

The metrics compare a generated clip with its conditioning clip for a task `condition_mask`
(bool [2, N], row 0 video, row 1 audio, True = given). Conditioning elements are never scored:
the clip that is measured is the *composite* of the two, taking each (modality, time-segment)
element from the conditioning clip where it was given and from the generated clip where it was
generated (what the generated clip holds in given elements is ignored), and a quantity is scored
only where at least one element it depends on was generated:

==============================  =========  =======  ===============================================
metric                          better     perfect  what / where
==============================  =========  =======  ===============================================
subject_disc_color_error        lower      0        mean |RGB| error (0..255) of the disc colour of
                                                    generated video frames vs the condition's given
                                                    video; NaN where no video is given (joint, a2v:
                                                    the colours are unknowable there)
subject_background_color_error  lower      0        same for the background colour
subject_disc_color_drift        lower      0        mean |RGB| distance (0..255) of the disc colour
                                                    of each generated frame from the median over the
                                                    generated frames: the clip keeps one look,
                                                    knowable in every task with generated video
subject_background_color_drift  lower      0        same for the background colour
subject_disc_found_fraction     higher     1        fraction of generated video frames with a disc
av_height_error_px              lower      0        |disc height from the video - height of the
                                                    pitch| (pixels, via `height_of_pitch`) on frames
                                                    whose video or audio segment is generated
av_height_error_fraction        lower      0        the same divided by the frame height H
sync_f1                         higher     1        F1 of audio clicks vs video bounces (one-to-one,
                                                    within one frame) among events in time-segments
                                                    with a generated element (and in the span the
                                                    frames show, `SYNC_EDGE_FRAMES`)
sync_clicks_matched             higher     1        fraction of those clicks matched to a bounce
                                                    (low: clicks where nothing bounces)
sync_bounces_matched            higher     1        fraction of those bounces matched to a click
                                                    (low: bounces without a click)
continuity_jump_px              lower      0        disc position error at segment borders with
                                                    generated video on a side, against a
                                                    constant-velocity, wall-reflecting prediction
==============================  =========  =======  ===============================================

A metric with nothing to score (e.g. subject consistency in v2a, where no video is generated, or
sync_f1 when the scored span holds neither clicks nor bounces) is NaN, and the count fields
(`*_num_*`) say how many elements each value rests on. `evaluate_clips` tabulates a batch per
clip; `evaluate_batch` averages the defined values over clips (and says over how many).

Audio needs a sample rate of at least ~7.8 kHz (clicks are found above the pitch band).
The continuity prediction and the disc-size prior use the world's geometry (`RADIUS_FRACTION`,
the walls it implies), which is the same for every clip; no per-clip ground truth is read.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import ndimage, signal

from avdit import layout as layout_lib
from avdit.data import synthetic


@dataclasses.dataclass(frozen=True)
class MetricInfo:
  """How to read one oracle metric."""

  higher_is_better: bool
  perfect: float
  description: str
  # False for a part of another metric (shown to say why it is low): not ranked again beside it.
  ranked: bool = True


METRICS = {
    "subject_disc_color_error": MetricInfo(
        False, 0.0, "mean |RGB| error (0..255) of the disc colour in generated frames"),
    "subject_background_color_error": MetricInfo(
        False, 0.0, "mean |RGB| error (0..255) of the background colour in generated frames"),
    "subject_disc_color_drift": MetricInfo(
        False, 0.0, "mean |RGB| distance of the generated frames' disc colour from their median"),
    "subject_background_color_drift": MetricInfo(
        False, 0.0, "mean |RGB| distance of the generated frames' background from their median"),
    "subject_disc_found_fraction": MetricInfo(
        True, 1.0, "fraction of generated frames in which a disc is found"),
    "av_height_error_px": MetricInfo(
        False, 0.0, "mean |video disc height - height of the audio pitch| in pixels"),
    "av_height_error_fraction": MetricInfo(
        False, 0.0, "av_height_error_px divided by the frame height"),
    "sync_f1": MetricInfo(
        True, 1.0, "F1 of audio clicks vs video bounces within one frame"),
    # Which side sync_f1 loses on: a generator that adds clicks (or bounces) scores low on one,
    # one that misses them on the other.
    "sync_clicks_matched": MetricInfo(
        True, 1.0, "fraction of the audio clicks within one frame of a video bounce", ranked=False),
    "sync_bounces_matched": MetricInfo(
        True, 1.0, "fraction of the video bounces within one frame of an audio click",
        ranked=False),
    "continuity_jump_px": MetricInfo(
        False, 0.0, "mean disc position error at segment borders vs constant-velocity motion"),
}
HIGHER_IS_BETTER = {name: info.higher_is_better for name, info in METRICS.items()}
UNRANKED = tuple(name for name, info in METRICS.items() if not info.ranked)
# How many elements each metric rests on (frames, events, borders), reported beside them.
COUNTS = ("subject_num_frames", "av_num_frames", "sync_num_clicks", "sync_num_bounces",
          "continuity_num_borders")

# --- estimator settings -------------------------------------------------------------------------
# A pixel belongs to the disc when its channel-summed |RGB - background| exceeds half of the
# world's minimum disc/background distance (so anti-aliased edge pixels count from ~50% coverage).
# The disc colour must differ from the background by as much (real frames >= 226 even with
# N(0, 12) pixel noise; uniform noise frames <= 82).
DISC_MIN_DISTANCE = synthetic.MIN_COLOR_DISTANCE / 2
# Disc acceptance. Statistics are in units of the world's disc (radius r = `_world_radius`, area
# pi r^2). The values quoted were measured over 200 real clips (3400 frames) at each of 32x32 and
# 64x64 ("real": clean and with N(0, 12) pixel noise) against 200 frames each of colour patches,
# uniform noise, smooth noise (decoded noise latents) and wrong shapes, made as in
# tests/test_oracle_metrics.py.
# Size: coverage-weighted area / pi r^2, i.e. a radius within -23%..+22% of the world's (real
# 0.97-1.04, 1.18 blurred by a 1 px Gaussian; uniform noise >= 6.7).
DISC_AREA_RANGE = (0.6, 1.5)
# Roundness: ratio of the principal variances of the coverage (1 for a disc, 4 for a 2:1 ellipse;
# real <= 1.1, 1.17 with N(0, 20) noise; the MAGVIT-v2 round trip, whose discs smear a little
# along their motion, <= 1.74; 2:1 ellipses >= 3.8).
DISC_MAX_ELONGATION = 2.0
# Shape: |coverage - that of an anti-aliased disc of the same area and centre| beyond
# DISC_FIT_SLACK per pixel (what pixel noise, sub-pixel edge error or a slight blur cause),
# summed over the frame / pi r^2 (real <= 0.0012, 0.0063 with N(0, 20) noise, 0.011 blurred by a
# 1 px Gaussian; a square of the disc's area >= 0.044, a 2:1 ellipse >= 0.24, decoded noise
# >= 0.17).
DISC_FIT_SLACK = 0.25
DISC_MAX_MISFIT = 0.025
# Edge ramps the shape is fitted with: the world renders 1 px; a decoder blurs it. The MAGVIT-v2
# round trip of the main job (2500 steps) scores up to 0.068 with the 1 px ramp, up to 0.0092 with
# the best of these; squares of the disc's area still score >= 0.037.
DISC_EDGE_WIDTHS_PX = (1.0, 2.0, 3.0)
# The rest of the frame is background: pixels far from it (as above) outside the blob grown by
# 2 px, / pi r^2 (real 0, <= 0.1 with N(0, 20) noise; a second disc >= 0.95).
DISC_MAX_STRAY_AREA = 0.25
# One disc colour: the fraction of the pixels 1.5 px or more inside the fitted disc's edge that
# are far (as above) from their median colour (real 0, <= 0.03 with N(0, 20) noise; discs of two
# halves in colours > 300 apart that pass the other checks >= 0.31).
DISC_INNER_MARGIN_PX = 1.5
DISC_MAX_OFF_COLOUR = 0.1
# Pitch: 64 ms windows (1024 samples at 16 kHz: 15.6 Hz bins, ~18 bins above the lowest tone),
# short enough that the pitch glide inside a window is a few %; never shorter than 32 ms at
# the clip edges, where the window cannot be centred on the time.
PITCH_WINDOW_S = 0.064
PITCH_MIN_WINDOW_S = 0.032
PITCH_SEARCH_HZ = (0.75 * synthetic.PITCH_BOTTOM_HZ, 1.25 * synthetic.PITCH_TOP_HZ)
SILENCE_RMS = 1e-4  # windows quieter than this have no pitch (NaN)
# Clicks: high-pass well above the pitch band, 2 ms energy envelope, peaks at least 10x its median
# (the tonal leakage / noise floor) and above an absolute floor, at least 8 ms apart (a click
# lasts 5 ms; x and y bounces can be close).
CLICK_HIGHPASS_HZ = 1.75 * synthetic.PITCH_TOP_HZ
CLICK_ENVELOPE_S = 0.002
CLICK_MIN_RATIO = 10.0
CLICK_MIN_ENERGY = 1e-4  # mean square of the high-passed signal (RMS 0.01)
CLICK_MIN_GAP_S = 0.008
# Bounces: an axis slower than this (pixels per frame) is treated as still; an interval whose
# displacement is below this fraction of the axis's typical speed holds a bounce (or noise).
BOUNCE_MIN_SPEED = 0.1
BOUNCE_CLEAN_FRACTION = 0.75
# Synchrony only judges events the video can show: within [0, (F - 1) / fps] (the audio runs one
# frame longer) less this many frames at each end, where a bounce bends the first or last step
# too little to be seen.
SYNC_EDGE_FRAMES = 0.25


# --- input checks -------------------------------------------------------------------------------
def _check_video(video_fhwc, name: str = "video") -> np.ndarray:
  video = np.asarray(video_fhwc)
  if video.ndim != 4 or video.shape[-1] != 3 or min(video.shape) < 1:
    raise ValueError(f"{name} must be RGB frames [F, H, W, 3], got shape {video.shape}")
  if not (np.issubdtype(video.dtype, np.integer) or np.issubdtype(video.dtype, np.floating)):
    raise ValueError(f"{name} must be uint8 (or float on the 0..255 scale), got {video.dtype}")
  return video.astype(np.float64)


def _check_audio(audio_l, name: str = "audio") -> np.ndarray:
  audio = np.asarray(audio_l)
  if audio.ndim != 1 or audio.shape[0] < 1:
    raise ValueError(f"{name} must be a mono waveform [L], got shape {audio.shape}")
  audio = audio.astype(np.float64)
  if not np.isfinite(audio).all():
    raise ValueError(f"{name} has non-finite samples")
  return audio


def _check_rate(sample_rate) -> int:
  if sample_rate <= 0 or int(sample_rate) != sample_rate:
    raise ValueError(f"sample_rate must be a positive integer, got {sample_rate}")
  return int(sample_rate)


# --- estimators ---------------------------------------------------------------------------------
def _world_radius(height: int, width: int) -> float:
  return synthetic.RADIUS_FRACTION * min(height, width)


def _disc_candidate(frame_hw3: np.ndarray, background: np.ndarray, radius: float):
  """The largest blob of pixels far from `background`, measured as a candidate disc.

  Returns None if there is no such blob, else (centre (x, y), disc colour, statistics), the
  statistics being those the `DISC_*` thresholds judge (see `_is_disc`).
  """
  height, width, _ = frame_hw3.shape
  rows, cols = np.indices((height, width), dtype=np.float64)
  world_area = np.pi * radius**2
  offset_hw3 = frame_hw3 - background
  far_hw = np.abs(offset_hw3).sum(-1) > DISC_MIN_DISTANCE
  labels_hw, num_blobs = ndimage.label(far_hw)
  if num_blobs == 0:
    return None
  blob_hw = labels_hw == int(np.argmax(np.bincount(labels_hw.ravel())[1:])) + 1
  # The median keeps the anti-aliased edge (a minority of the blob) out of the disc colour.
  disc = np.median(frame_hw3[blob_hw], axis=0)
  direction = disc - background
  if not direction.any():
    return None
  # Coverage of each pixel: its offset projected on the disc - background direction (exact for
  # a rendered blend, up to uint8 rounding). Weighting the centroid by coverage, over the blob
  # grown by 2 px to include the faint edge, gives a sub-pixel centre.
  grown_hw = ndimage.binary_dilation(blob_hw, iterations=2)
  coverage_hw = np.clip(offset_hw3 @ direction / (direction @ direction), 0.0, 1.0) * grown_hw
  area = coverage_hw.sum()
  if area == 0:
    return None
  centre = np.array([(coverage_hw * cols).sum(), (coverage_hw * rows).sum()]) / area
  variances = np.linalg.eigvalsh(np.cov(np.stack([cols.ravel(), rows.ravel()]),
                                        aweights=coverage_hw.ravel(), bias=True))
  # A disc of the blob's own area at its centre, with the world's 1 px edge ramp or a softer one
  # (a decoder's blur), whichever fits best.
  distance_hw = np.hypot(cols - centre[0], rows - centre[1])
  fitted_radius = np.sqrt(area / np.pi)
  misfit = min(
      np.maximum(np.abs(coverage_hw - np.clip((fitted_radius - distance_hw) / edge + 0.5, 0.0, 1.0))
                 - DISC_FIT_SLACK, 0.0).sum()
      for edge in DISC_EDGE_WIDTHS_PX)
  # The fraction of the inside far from its median colour (which, unlike the blob's, a blurred
  # edge does not pull); a blob without an inside counts as all off-colour.
  inner_n3 = frame_hw3[distance_hw <= fitted_radius - DISC_INNER_MARGIN_PX]
  off_colour = 1.0
  if inner_n3.shape[0]:
    off_colour_n = np.abs(inner_n3 - np.median(inner_n3, axis=0)).sum(-1) > DISC_MIN_DISTANCE
    off_colour = off_colour_n.mean()
  statistics = {
      "contrast": np.abs(direction).sum(),
      "area": area / world_area,
      "elongation": variances[1] / variances[0] if variances[0] > 0 else np.inf,
      "misfit": misfit / world_area,
      "stray_area": (far_hw & ~grown_hw).sum() / world_area,
      "off_colour": off_colour,
  }
  return centre, disc, statistics


def _is_disc(statistics: Mapping[str, float]) -> bool:
  """Whether a candidate's statistics (`_disc_candidate`) are those of the world's disc."""
  return bool(statistics["contrast"] >= DISC_MIN_DISTANCE
              and DISC_AREA_RANGE[0] <= statistics["area"] <= DISC_AREA_RANGE[1]
              and statistics["elongation"] <= DISC_MAX_ELONGATION
              and statistics["misfit"] <= DISC_MAX_MISFIT
              and statistics["stray_area"] <= DISC_MAX_STRAY_AREA
              and statistics["off_colour"] <= DISC_MAX_OFF_COLOUR)


def estimate_disc(video_fhwc_u8) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """Disc centre, disc colour and background colour of every frame, from pixels only.

  A frame has a disc only where its largest blob far from the background passes the `DISC_*`
  checks (see the module docstring); frames of colour patches or noise have none.

  Args:
    video_fhwc_u8: uint8 [F, H, W, 3] (or float on the 0..255 scale).

  Returns:
    centre_f2: float64 [F, 2], disc centre (x, y) in pixels (pixel (i, j) is at (j, i)); NaN
      where no disc is found.
    disc_colour_f3: float64 [F, 3], RGB of the disc; NaN where no disc is found.
    background_colour_f3: float64 [F, 3], RGB of the background (median of the border pixels).
    found_f: bool [F], whether a disc was found.
  """
  video = _check_video(video_fhwc_u8, "video_fhwc_u8")
  num_frames, height, width, _ = video.shape
  radius = _world_radius(height, width)
  centre_f2 = np.full((num_frames, 2), np.nan)
  disc_f3 = np.full((num_frames, 3), np.nan)
  background_f3 = np.empty((num_frames, 3))
  found_f = np.zeros((num_frames,), bool)
  border_hw = np.ones((height, width), bool)
  border_hw[1:-1, 1:-1] = False
  for f in range(num_frames):
    # The disc covers a small part of the border at most (it never leaves the frame), so the
    # border's median is the background.
    background_f3[f] = np.median(video[f][border_hw], axis=0)
    candidate = _disc_candidate(video[f], background_f3[f], radius)
    if candidate is not None and _is_disc(candidate[2]):
      centre_f2[f], disc_f3[f], _ = candidate
      found_f[f] = True
  return centre_f2, disc_f3, background_f3, found_f


def estimate_pitch(audio_l, sample_rate: int, times_s, window_s: float = PITCH_WINDOW_S,
                   min_window_s: float = PITCH_MIN_WINDOW_S) -> np.ndarray:
  """Tone frequency (Hz) of `audio_l` around each time in `times_s` [T]: float64 [T].

  The window (`window_s`, Hann) is centred on the time, shrunk symmetrically near the clip edges
  down to `min_window_s` and shifted inside the clip below that. NaN for silent windows.
  """
  audio = _check_audio(audio_l, "audio_l")
  sample_rate = _check_rate(sample_rate)
  times = np.asarray(times_s, np.float64)
  if times.ndim != 1:
    raise ValueError(f"times_s must be 1-D [T], got shape {times.shape}")
  if not 0 < min_window_s <= window_s:
    raise ValueError(f"need 0 < min_window_s <= window_s, got {min_window_s}, {window_s}")
  num_samples = audio.shape[0]
  half = 0.5 * window_s * sample_rate
  min_len = min(num_samples, max(8, int(round(min_window_s * sample_rate))))
  n_fft = 1 << int(np.ceil(np.log2(4 * max(min_len, 2 * half))))
  bin_hz = sample_rate / n_fft
  lo_bin = max(1, int(np.ceil(PITCH_SEARCH_HZ[0] / bin_hz)))
  hi_bin = min(n_fft // 2 - 1, int(np.floor(PITCH_SEARCH_HZ[1] / bin_hz)))
  if hi_bin <= lo_bin:
    raise ValueError(f"sample_rate={sample_rate} cannot hold the pitch band {PITCH_SEARCH_HZ}")
  hz = np.full(times.shape, np.nan)
  for i, t in enumerate(times):
    centre = t * sample_rate
    reach = min(half, centre, num_samples - centre)
    if 2 * reach >= min_len:
      start, stop = int(round(centre - reach)), int(round(centre + reach))
    else:
      start = int(np.clip(round(centre - min_len / 2), 0, num_samples - min_len))
      stop = start + min_len
    chunk = audio[start:stop] - audio[start:stop].mean()
    if np.sqrt(np.mean(chunk**2)) < SILENCE_RMS:
      continue
    magnitude = np.abs(np.fft.rfft(chunk * signal.get_window("hann", chunk.shape[0]), n_fft))
    k = lo_bin + int(np.argmax(magnitude[lo_bin:hi_bin + 1]))
    # Parabola through the log magnitudes of the peak bin and its neighbours.
    a, b, c = np.log(magnitude[k - 1:k + 2] + 1e-30)
    denominator = a - 2 * b + c
    shift = 0.5 * (a - c) / denominator if denominator < 0 else 0.0
    hz[i] = (k + np.clip(shift, -0.5, 0.5)) * bin_hz
  return hz


def detect_clicks(audio_l, sample_rate: int) -> np.ndarray:
  """Times (seconds, float64 [num_clicks], sorted) of the transients (clicks) in `audio_l`."""
  audio = _check_audio(audio_l, "audio_l")
  sample_rate = _check_rate(sample_rate)
  if CLICK_HIGHPASS_HZ >= 0.45 * sample_rate:
    raise ValueError(f"sample_rate={sample_rate} leaves no band above the tones for clicks "
                     f"(high-pass at {CLICK_HIGHPASS_HZ} Hz); use at least "
                     f"{int(np.ceil(CLICK_HIGHPASS_HZ / 0.45))} Hz")
  sos = signal.butter(4, CLICK_HIGHPASS_HZ, "highpass", fs=sample_rate, output="sos")
  # Zero-phase, so the energy peak is not delayed; too short a clip for the padding is skipped.
  padlen = min(audio.shape[0] - 1, 3 * (2 * sos.shape[0] + 1))
  high = signal.sosfiltfilt(sos, audio, padlen=padlen)
  size = max(1, int(round(CLICK_ENVELOPE_S * sample_rate)))
  envelope = ndimage.uniform_filter1d(high**2, size=size, mode="constant")
  threshold = max(CLICK_MIN_RATIO * float(np.median(envelope)), CLICK_MIN_ENERGY)
  peaks, _ = signal.find_peaks(envelope, height=threshold,
                               distance=max(1, int(round(CLICK_MIN_GAP_S * sample_rate))))
  return peaks.astype(np.float64) / sample_rate


def _axis_bounces(x_f: np.ndarray) -> list[float]:
  """Bounce times in frames (fractional) of one coordinate's trajectory."""
  num_frames = x_f.shape[0]
  v = np.diff(x_f)  # interval k: frames k -> k + 1
  if v.shape[0] < 2:
    return []
  speed = float(np.median(np.abs(v)))
  if speed < BOUNCE_MIN_SPEED:
    return []
  # A bounce inside an interval shortens its displacement; intervals at nearly full speed move in
  # a straight line. The world bounces at most once per ~8 frames per axis (SPEED_RANGE), so the
  # straight intervals around a bounce give the lines whose crossing times it.
  clean = np.flatnonzero(np.abs(v) >= BOUNCE_CLEAN_FRACTION * speed)
  times = []
  first = clean[0]
  if first > 0:  # shortened leading intervals: reflect the first straight line through frame 0
    t = (x_f[0] - x_f[first] + v[first] * first) / (2 * v[first])
    if 0.05 < t < first + 1:
      times.append(t)
  is_clean = np.zeros(v.shape, bool)
  is_clean[clean] = True
  for i, j in zip(clean[:-1], clean[1:]):
    if np.sign(v[i]) == np.sign(v[j]):
      continue
    # A bounce in the last (first) eighth of interval i (j) leaves it clean-looking but bent, so
    # the lines come from the intervals one step further out when those continue the motion.
    if i >= 1 and is_clean[i - 1] and np.sign(v[i - 1]) == np.sign(v[i]):
      i -= 1
    if j + 1 < v.shape[0] and is_clean[j + 1] and np.sign(v[j + 1]) == np.sign(v[j]):
      j += 1
    t = (x_f[j] - x_f[i] + v[i] * i - v[j] * j) / (v[i] - v[j])
    times.append(float(np.clip(t, i, j + 1)))
  last = clean[-1]
  if last < num_frames - 2:  # shortened trailing intervals: reflect through the last frame
    t = (x_f[-1] - x_f[last] + v[last] * (last + num_frames - 1)) / (2 * v[last])
    if last < t < num_frames - 1.05:
      times.append(t)
  return times


def detect_bounces(centre_f2, fps: float) -> np.ndarray:
  """Wall-bounce times (seconds, float64 [num_bounces], sorted) of a disc trajectory.

  Args:
    centre_f2: float [F, 2], disc centre (x, y) per frame (frame k at t = k / fps); NaN rows
      (disc not found) are filled by linear interpolation in time.
    fps: frame rate.

  A bounce is a reversal of the x or y velocity; `floor(time * fps)` is the frame index in the
  convention of the world's `bounce_frames`.
  """
  centre = np.asarray(centre_f2, np.float64)
  if centre.ndim != 2 or centre.shape[1] != 2:
    raise ValueError(f"centre_f2 must be [F, 2], got shape {centre.shape}")
  if fps <= 0:
    raise ValueError(f"fps must be positive, got {fps}")
  known = np.isfinite(centre).all(axis=1)
  if known.sum() < 2:
    return np.zeros((0,), np.float64)
  frames = np.arange(centre.shape[0], dtype=np.float64)
  times = []
  for axis in range(2):
    x_f = np.interp(frames, frames[known], centre[known, axis])
    times.extend(_axis_bounces(x_f))
  return np.sort(np.asarray(times, np.float64)) / fps


def match_events(times_a, times_b, tolerance: float) -> tuple[np.ndarray, np.ndarray]:
  """One-to-one matching of two event lists within `tolerance`, closest pairs first.

  Returns bool [len(a)], bool [len(b)]: which events found a partner.
  """
  a, b = np.asarray(times_a, np.float64), np.asarray(times_b, np.float64)
  matched_a, matched_b = np.zeros(a.shape, bool), np.zeros(b.shape, bool)
  distance_ab = np.abs(a[:, None] - b[None, :])
  for flat in np.argsort(distance_ab, axis=None, kind="stable"):
    i, j = np.unravel_index(flat, distance_ab.shape)
    if distance_ab[i, j] > tolerance:
      break
    if not (matched_a[i] or matched_b[j]):
      matched_a[i] = matched_b[j] = True
  return matched_a, matched_b


# --- metrics ------------------------------------------------------------------------------------
def _check_mask(condition_mask, layout: layout_lib.ClipLayout) -> np.ndarray:
  mask = np.asarray(condition_mask)
  expected = (layout_lib.NUM_MODALITIES, layout.num_segments)
  if mask.shape != expected:
    raise ValueError(f"condition_mask must be bool {list(expected)} (video row, audio row), "
                     f"got shape {mask.shape}")
  if mask.dtype != bool and not np.isin(mask, (0, 1)).all():
    raise ValueError("condition_mask must be boolean (True = given as the condition)")
  return mask.astype(bool)


def _check_clip(clip, layout: layout_lib.ClipLayout, name: str) -> tuple[np.ndarray, np.ndarray]:
  if not isinstance(clip, Mapping) or "video" not in clip or "audio" not in clip:
    raise ValueError(f"{name} must be a mapping with 'video' [F, H, W, 3] and 'audio' [L]")
  video = _check_video(clip["video"], f"{name}['video']")
  expected = (layout.num_frames, layout.height, layout.width, 3)
  if video.shape != expected:
    raise ValueError(f"{name}['video'] has shape {video.shape}, the layout needs {expected}")
  audio = _check_audio(clip["audio"], f"{name}['audio']")
  if audio.shape != (layout.audio_samples,):
    raise ValueError(f"{name}['audio'] has shape {audio.shape}, the layout needs "
                     f"({layout.audio_samples},)")
  return video, audio


def composite_clip(condition_clip, generated_clip, condition_mask,
                   layout: layout_lib.ClipLayout) -> dict[str, np.ndarray]:
  """The clip a task yields: given elements from the condition, the rest from the generation.

  Returns {"video": float64 [F, H, W, 3], "audio": float64 [L]}. Video frames follow
  `layout.segment_of_frame`, audio samples the audio latent that holds them (`segment_of_audio`).
  """
  mask = _check_mask(condition_mask, layout)
  cond_video, cond_audio = _check_clip(condition_clip, layout, "condition_clip")
  gen_video, gen_audio = _check_clip(generated_clip, layout, "generated_clip")
  return _composite(cond_video, cond_audio, gen_video, gen_audio, mask, layout)


def _composite(cond_video, cond_audio, gen_video, gen_audio, mask,
               layout: layout_lib.ClipLayout) -> dict[str, np.ndarray]:
  video_given_f = mask[layout_lib.VIDEO, layout.segment_of_frame]
  audio_given_l = mask[layout_lib.AUDIO, layout.segment_of_sample]
  return {"video": np.where(video_given_f[:, None, None, None], cond_video, gen_video),
          "audio": np.where(audio_given_l, cond_audio, gen_audio)}


def _border_error(x_f: np.ndarray, a: int, low: float, high: float) -> float:
  """Per-axis disc position error at the border between frames a and a + 1 (continuity)."""
  b = a + 1
  errors = []
  # Each side predicts the frame across the border from its own last step, folded at the walls
  # (a bounce across the border is allowed). A bounce can spoil the step of one side only, so
  # the better side is kept.
  if a >= 1:
    predicted = synthetic.disc_position(1.0, x_f[a], x_f[a] - x_f[a - 1], low, high)
    errors.append(abs(float(predicted[0]) - x_f[b]))
  if b + 1 < x_f.shape[0]:
    predicted = synthetic.disc_position(1.0, x_f[b], x_f[b] - x_f[b + 1], low, high)
    errors.append(abs(float(predicted[0]) - x_f[a]))
  return min(errors) if errors else np.nan


def _color_distance(colors_f3: np.ndarray, reference_3: np.ndarray) -> float:
  """Mean |RGB| distance (0..255) of frame colours from a reference; NaN if either is missing."""
  if not colors_f3.shape[0] or not np.isfinite(reference_3).all():
    return np.nan
  return float(np.abs(colors_f3 - reference_3).mean())


def _color_drift(colors_f3: np.ndarray) -> float:
  """Mean |RGB| distance of frame colours from their own median; NaN without frames."""
  if not colors_f3.shape[0]:
    return np.nan
  return _color_distance(colors_f3, np.median(colors_f3, axis=0))


def _matched_share(matched: np.ndarray) -> float:
  """The fraction of events that found a partner (NaN for no events)."""
  return float(matched.mean()) if matched.size else np.nan


def evaluate_clip(condition_clip, generated_clip, condition_mask,
                  layout: layout_lib.ClipLayout) -> dict[str, float]:
  """All oracle metrics (see the module docstring and `METRICS`) of one generated clip.

  Args:
    condition_clip: mapping with "video" uint8 [F, H, W, 3] and "audio" float [L]: the clip the
      given elements were taken from (e.g. a `SyntheticWorld` item).
    generated_clip: the same for the model's output (its given elements are ignored).
    condition_mask: bool [2, N]; True = (modality, segment) given as the condition.
    layout: the clip geometry (`ClipLayout`); shapes must match it.

  Returns:
    {metric: float} for every name in `METRICS` (NaN where nothing was scored) and every name
    in `COUNTS`.
  """
  mask = _check_mask(condition_mask, layout)
  cond_video, cond_audio = _check_clip(condition_clip, layout, "condition_clip")
  gen_video, gen_audio = _check_clip(generated_clip, layout, "generated_clip")
  clip = _composite(cond_video, cond_audio, gen_video, gen_audio, mask, layout)
  height, width, fps = layout.height, layout.width, float(layout.fps)
  video_gen_n = ~mask[layout_lib.VIDEO]
  any_gen_n = video_gen_n | ~mask[layout_lib.AUDIO]
  segment_f = layout.segment_of_frame
  result: dict[str, float] = {}

  centre_f2, disc_f3, background_f3, found_f = estimate_disc(clip["video"])

  # Subject consistency: generated frames vs the look of the given video (only where some is
  # given: otherwise the colours are unknowable), and the generated frames' own stability.
  video_gen_f = video_gen_n[segment_f]
  scored = video_gen_f
  scored_found = scored & found_f
  result["subject_num_frames"] = float(scored.sum())
  result["subject_disc_found_fraction"] = (float(scored_found.sum() / scored.sum())
                                           if scored.any() else np.nan)
  ref_disc = ref_background = np.full(3, np.nan)
  if (~video_gen_f).any():
    _, ref_disc_f3, ref_background_f3, ref_found_f = estimate_disc(cond_video[~video_gen_f])
    ref_background = np.median(ref_background_f3, axis=0)
    if ref_found_f.any():
      ref_disc = np.median(ref_disc_f3[ref_found_f], axis=0)
  result["subject_disc_color_error"] = _color_distance(disc_f3[scored_found], ref_disc)
  result["subject_background_color_error"] = _color_distance(background_f3[scored],
                                                             ref_background)
  result["subject_disc_color_drift"] = _color_drift(disc_f3[scored_found])
  result["subject_background_color_drift"] = _color_drift(background_f3[scored])

  # Audio-video correspondence: the height the pitch says vs the height the frame shows.
  frame_times = np.arange(layout.num_frames) / fps
  pitch_f = estimate_pitch(clip["audio"], layout.sample_rate, frame_times)
  audio_height_f = synthetic.height_of_pitch(pitch_f, height)  # NaN where silent
  error_f = np.abs(audio_height_f - centre_f2[:, 1])
  scored = any_gen_n[segment_f] & np.isfinite(error_f)
  result["av_num_frames"] = float(scored.sum())
  result["av_height_error_px"] = float(error_f[scored].mean()) if scored.any() else np.nan
  result["av_height_error_fraction"] = result["av_height_error_px"] / height

  # Synchrony: clicks vs bounces, counting events in segments with a generated element.
  clicks = detect_clicks(clip["audio"], layout.sample_rate)
  bounces = detect_bounces(centre_f2, fps)
  matched_clicks, matched_bounces = match_events(clicks, bounces, tolerance=1.0 / fps)
  observable = (SYNC_EDGE_FRAMES / fps, (layout.num_frames - 1 - SYNC_EDGE_FRAMES) / fps)

  def judged(times):
    return (any_gen_n[layout.segment_of_time(times)] & (times >= observable[0])
            & (times <= observable[1]))

  click_scored, bounce_scored = judged(clicks), judged(bounces)
  num_events = int(click_scored.sum() + bounce_scored.sum())
  result["sync_num_clicks"] = float(click_scored.sum())
  result["sync_num_bounces"] = float(bounce_scored.sum())
  # F1 = 2 TP / (2 TP + FP + FN) = matched events / all events (counting both lists).
  clicks_hit, bounces_hit = matched_clicks[click_scored], matched_bounces[bounce_scored]
  result["sync_f1"] = (float((clicks_hit.sum() + bounces_hit.sum()) / num_events)
                       if num_events else np.nan)
  result["sync_clicks_matched"] = _matched_share(clicks_hit)
  result["sync_bounces_matched"] = _matched_share(bounces_hit)

  # Motion continuity at segment borders with generated video on either side.
  radius = _world_radius(height, width)
  walls = ((radius - 0.5, width - 0.5 - radius), (radius - 0.5, height - 0.5 - radius))
  jumps = []
  for n in range(layout.num_segments - 1):
    if not (video_gen_n[n] or video_gen_n[n + 1]):
      continue
    a = int(np.flatnonzero(segment_f == n)[-1])
    if not found_f[max(a - 1, 0):a + 3].all():
      continue
    per_axis = [_border_error(centre_f2[:, axis], a, *walls[axis]) for axis in range(2)]
    if np.isfinite(per_axis).all():
      jumps.append(float(np.hypot(*per_axis)))
  result["continuity_num_borders"] = float(len(jumps))
  result["continuity_jump_px"] = float(np.mean(jumps)) if jumps else np.nan
  return result


def _unbatch(clips, name: str) -> list:
  if isinstance(clips, Mapping):
    if "video" not in clips or "audio" not in clips:
      raise ValueError(f"{name} must hold 'video' [B, F, H, W, 3] and 'audio' [B, L]")
    video, audio = np.asarray(clips["video"]), np.asarray(clips["audio"])
    if video.ndim != 5 or audio.ndim != 2 or video.shape[0] != audio.shape[0]:
      raise ValueError(f"{name}: batched video must be [B, F, H, W, 3] and audio [B, L] with the "
                       f"same B, got {video.shape} and {audio.shape}")
    return [{"video": v, "audio": a} for v, a in zip(video, audio)]
  if isinstance(clips, Sequence):
    return list(clips)
  raise ValueError(f"{name} must be a mapping of batched arrays or a sequence of clips")


def evaluate_clips(condition_clips, generated_clips, condition_mask,
                   layout: layout_lib.ClipLayout) -> dict[str, np.ndarray]:
  """`evaluate_clip` of every clip of a batch, as a per-clip table.

  Args:
    condition_clips, generated_clips: sequences of clip mappings, or mappings of batched arrays
      ("video" [B, F, H, W, 3], "audio" [B, L]).
    condition_mask: bool [2, N] for every clip, or [B, 2, N].
    layout: the clip geometry.

  Returns:
    {name: float64 [B]} for every name in `METRICS` (NaN where a clip has nothing to score) and
    in `COUNTS`, clip i in row i. `evaluate_batch` is its average (`average_clips`); the task
    suite also stores the table, for intervals over clips (avdit.evaluation.report).
  """
  conditions = _unbatch(condition_clips, "condition_clips")
  generations = _unbatch(generated_clips, "generated_clips")
  if len(conditions) != len(generations) or not conditions:
    raise ValueError(f"need equally many (>= 1) condition and generated clips, got "
                     f"{len(conditions)} and {len(generations)}")
  masks = np.asarray(condition_mask)
  if masks.ndim == 2:
    masks = np.broadcast_to(masks, (len(conditions), *masks.shape))
  if masks.ndim != 3 or masks.shape[0] != len(conditions):
    raise ValueError(f"condition_mask must be [2, N] or [B, 2, N] with B = {len(conditions)}, "
                     f"got shape {np.shape(condition_mask)}")
  per_clip = [evaluate_clip(c, g, m, layout) for c, g, m in zip(conditions, generations, masks)]
  return {name: np.array([r[name] for r in per_clip], np.float64)
          for name in (*METRICS, *COUNTS)}


def average_clips(per_clip: Mapping[str, np.ndarray]) -> dict[str, float]:
  """The batch summary of a per-clip table (`evaluate_clips`).

  Returns:
    Every metric of `METRICS` averaged over the clips where it is defined (NaN if none), with
    "<metric>_num_clips" saying over how many; every count of `COUNTS` summed; "num_clips".
  """
  result = {"num_clips": float(len(per_clip[next(iter(METRICS))]))}
  for name in METRICS:
    values = np.asarray(per_clip[name], np.float64)
    defined = np.isfinite(values)
    result[name] = float(values[defined].mean()) if defined.any() else np.nan
    result[f"{name}_num_clips"] = float(defined.sum())
  for name in COUNTS:
    result[name] = float(np.sum(per_clip[name]))
  return result


def evaluate_batch(condition_clips, generated_clips, condition_mask,
                   layout: layout_lib.ClipLayout) -> dict[str, float]:
  """`evaluate_clip` over a batch, averaged: `average_clips(evaluate_clips(...))` (arguments
  as `evaluate_clips`, the result as `average_clips`)."""
  return average_clips(evaluate_clips(condition_clips, generated_clips, condition_mask, layout))
