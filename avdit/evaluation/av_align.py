"""AV-Align: audio-video synchrony from coinciding audio onsets and motion peaks.

The AV-Align score of Yariv et al. 2024 ("Diverse and Aligned Audio-to-Video Generation via
Text-to-Video Model Adaptation", AAAI; [31] in the AVDiT paper, which reports it on Landscape):
  * audio peaks A: onset times of the audio (peaks of an onset-strength envelope);
  * video peaks V: times of local maxima of the mean optical-flow magnitude over frames;
  * a peak is aligned if a peak of the other modality lies within ±1 video frame of it;
  * AV-Align = (#aligned audio peaks + #aligned video peaks) / (|A| + |V|), in [0, 1].

This module RE-IMPLEMENTS the method in numpy/scipy; it is comparable in spirit with the reference
code (TempoTokens `av_align.py`, which uses librosa onset detection and OpenCV Farneback optical
flow) but not numerically identical to it. Differences:
  * Onsets: spectral flux of a log-mel spectrogram (like librosa's `onset_strength`) with
    librosa-like peak picking, but with our own window/hop (32 ms / 10 ms rather than librosa's
    93 ms / 23 ms at 22.05 kHz) and an absolute strength floor so a stationary tone has no onsets.
  * Optical flow: dense pyramidal iterative Lucas–Kanade (see `optical_flow`) instead of
    Farneback's polynomial expansion. Both are local, window-based, coarse-to-fine estimators
    that give ~0 flow in textureless regions; Horn–Schunck was not chosen because its global
    smoothness term spreads an object's motion over the static background, which inflates the
    mean magnitude in a way Farneback does not.
  * Video peaks must stand out of the flow curve by a small prominence (`relative_prominence` of
    its maximum), where the reference counts every strict local maximum, so sub-pixel jitter of
    a steadily moving object does not create peaks. Set it to 0 to count every local maximum.
  * The score is the formula of the paper (above). The reference script instead computes an
    "IoU", #aligned audio peaks / (|A| + |V| − #aligned audio peaks); `peak_iou` gives that.

Timing conventions (as the reference): frame k is at t = k / fps; the flow from frame k − 1 to
frame k is attributed to frame k, and frame 0 repeats frame 1's value (so neither the first nor the
last frame can be a peak). Two peaks are within the tolerance if |t_audio − t_video| < 1 / fps.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import scipy.ndimage
import scipy.signal

from avdit.models import audio_losses

# --- audio onsets -------------------------------------------------------------------------------
ONSET_WINDOW_SECONDS = 0.032
ONSET_HOP_SECONDS = 0.010
ONSET_N_MELS = 40
# Log-power floor below the loudest bin (librosa's power_to_db top_db), so silence and faint
# leakage do not produce huge log differences.
ONSET_TOP_DB = 80.0
# librosa.onset.onset_detect's peak picking, in seconds and in units of the normalized envelope:
# a peak must be the maximum within ±30 ms, exceed the mean over ±100 ms by 0.07 and come at least
# 30 ms after the previous one.
ONSET_MAX_SECONDS = 0.03
ONSET_AVERAGE_SECONDS = 0.10
ONSET_DELTA = 0.07
ONSET_WAIT_SECONDS = 0.03
# Absolute floor on an onset's strength: mean rise over the mel bands in dB. A stationary signal's
# envelope is round-off-level ripple, which the normalization above would blow up to 1.
ONSET_MIN_STRENGTH_DB = 0.5

# --- optical flow and video peaks ---------------------------------------------------------------
# RGB -> luma weights (ITU-R BT.601, as OpenCV's BGR2GRAY applies to its BGR order).
_LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114])
FLOW_NUM_LEVELS = 3
FLOW_WINDOW_SIGMA = 2.0  # Gaussian integration window of the structure tensor, pixels
FLOW_NUM_ITERATIONS = 5  # warping iterations per pyramid level
# Tikhonov weight on the flow update, in (grey levels / pixel)² on the 0..255 scale: gradients
# much weaker than ~1 grey level per pixel are treated as no information (flow -> 0 there).
FLOW_REGULARIZATION = 1.0
FLOW_MIN_LEVEL_SIZE = 8  # pixels: the coarsest pyramid level is at least this large
VIDEO_RELATIVE_PROMINENCE = 0.1
VIDEO_MIN_PROMINENCE = 1e-3  # pixels of mean flow: below this a bump is numerical noise


def onset_strength(audio_l, sample_rate: int, *, window_seconds: float = ONSET_WINDOW_SECONDS,
                   hop_seconds: float = ONSET_HOP_SECONDS, n_mels: int = ONSET_N_MELS,
                   top_db: float = ONSET_TOP_DB) -> tuple[np.ndarray, np.ndarray]:
  """Onset-strength envelope: half-wave rectified spectral flux of a log-mel spectrogram.

  Frame t (Hann window) covers samples [t·hop, t·hop + n) with n = window_seconds · sample_rate.
  envelope[t] = mean over mel bands of max(0, dB[t] − dB[t − 1]), for t ≥ 1. A rise is caused by
  sound entering the window at its leading edge (librosa shifts its centred frames by half a
  window for this reason), but the Hann window's edge has little weight, so the flux of a sharp
  onset peaks when it is about one hop inside. envelope[t] is therefore stamped one hop before
  its frame's leading edge, (t·hop + n − hop) / sample_rate; for clicks on a tone the detected
  time is then 7.5 ms early to 2.5 ms late at the default 10 ms hop (measured), well inside
  AV-Align's ±1 video frame.

  Args:
    audio_l: float waveform [L].
    sample_rate: Hz.

  Returns:
    (envelope_t in dB, times_t in seconds), float64 [T − 1] each.
  """
  audio = np.asarray(audio_l, np.float64)
  if audio.ndim != 1:
    raise ValueError(f"audio must be a 1-D waveform [L], got shape {audio.shape}")
  if sample_rate <= 0:
    raise ValueError(f"sample_rate must be positive, got {sample_rate}")
  n_fft = int(round(window_seconds * sample_rate))
  hop = int(round(hop_seconds * sample_rate))
  if n_fft < 16 or hop < 1:
    raise ValueError(f"window {window_seconds} s / hop {hop_seconds} s are too short at "
                     f"{sample_rate} Hz")
  if audio.shape[0] < n_fft + hop:
    raise ValueError(f"audio of {audio.shape[0]} samples is shorter than two analysis frames "
                     f"({n_fft + hop} samples)")
  frames_tn = np.lib.stride_tricks.sliding_window_view(audio, n_fft)[::hop]
  window = audio_losses.get_window("hann", n_fft).astype(np.float64)
  power_tk = np.square(np.abs(np.fft.rfft(frames_tn * window, axis=-1)))
  mel_power_tm = power_tk @ audio_losses.mel_filterbank(sample_rate, n_fft, n_mels).astype(
      np.float64)
  db_tm = 10.0 * np.log10(np.maximum(mel_power_tm, 1e-10))
  db_tm = np.maximum(db_tm, db_tm.max() - top_db)
  envelope_t = np.mean(np.maximum(0.0, np.diff(db_tm, axis=0)), axis=1)
  times_t = (np.arange(1, frames_tn.shape[0]) * hop + n_fft - hop) / sample_rate
  return envelope_t, times_t


def audio_onset_times(audio_l, sample_rate: int, *,
                      min_strength_db: float = ONSET_MIN_STRENGTH_DB) -> np.ndarray:
  """Onset times in seconds, float64 [num_onsets], sorted: the audio peaks of AV-Align.

  Peaks of `onset_strength` picked as librosa's `onset_detect` does (see the ONSET_* constants):
  on the envelope normalized to max 1, a peak is a local maximum (`scipy.signal.find_peaks`)
  at least ONSET_DELTA above the mean over ±ONSET_AVERAGE_SECONDS, the largest within
  ±ONSET_MAX_SECONDS and at least ONSET_WAIT_SECONDS from a stronger one; in addition it must be
  at least `min_strength_db` strong in absolute terms.
  """
  envelope_t, times_t = onset_strength(audio_l, sample_rate)
  peak_strength = float(envelope_t.max()) if envelope_t.size else 0.0
  if peak_strength < min_strength_db:
    return np.zeros((0,), np.float64)
  normalized = envelope_t / peak_strength
  frames_per_second = 1.0 / ONSET_HOP_SECONDS
  average_size = 2 * int(round(ONSET_AVERAGE_SECONDS * frames_per_second)) + 1
  local_mean = scipy.ndimage.uniform_filter1d(normalized, average_size, mode="nearest")
  spacing = max(1, int(round(max(ONSET_MAX_SECONDS, ONSET_WAIT_SECONDS) * frames_per_second)))
  peaks, _ = scipy.signal.find_peaks(normalized, height=local_mean + ONSET_DELTA,
                                     distance=spacing)
  peaks = peaks[envelope_t[peaks] >= min_strength_db]
  return times_t[peaks]


def to_gray(frames_hwc) -> np.ndarray:
  """uint8/float frames [..., H, W, C] (C = 1 or 3, RGB, 0..255) -> float64 luma [..., H, W]."""
  frames = np.asarray(frames_hwc, np.float64)
  if frames.ndim < 3 or frames.shape[-1] not in (1, 3):
    raise ValueError(f"frames must be [..., H, W, C] with C in (1, 3), got shape {frames.shape}")
  return frames[..., 0] if frames.shape[-1] == 1 else frames @ _LUMA_WEIGHTS


def _downsample(image_hw: np.ndarray) -> np.ndarray:
  """Blur then keep every second pixel: coarse pixel (i, j) is fine pixel (2i, 2j)."""
  return scipy.ndimage.gaussian_filter(image_hw, 1.0, mode="nearest")[::2, ::2]


def _window_mean(values_hw: np.ndarray, sigma: float) -> np.ndarray:
  """Gaussian-weighted local mean: the Lucas–Kanade integration window."""
  return scipy.ndimage.gaussian_filter(values_hw, sigma, mode="nearest")


def optical_flow(frame_a_hw, frame_b_hw, *, num_levels: int = FLOW_NUM_LEVELS,
                 window_sigma: float = FLOW_WINDOW_SIGMA,
                 num_iterations: int = FLOW_NUM_ITERATIONS,
                 regularization: float = FLOW_REGULARIZATION) -> np.ndarray:
  """Dense optical flow [H, W, 2] (dx, dy in pixels) from grey frame a to grey frame b.

  Convention (OpenCV's): frame_b(y + flow[..., 1], x + flow[..., 0]) ≈ frame_a(y, x), x being
  the column and y the row.

  Method: dense pyramidal iterative Lucas–Kanade. Coarse to fine over a Gaussian pyramid, and at
  each level `num_iterations` times: warp b by the current flow (cubic interpolation), linearize
  brightness constancy around it, and solve at every pixel the 2 x 2 least-squares system of
  Lucas–Kanade over a Gaussian window (the structure tensor of the mean gradient of a and the
  warped b, plus `regularization` · I so textureless pixels get a ~0 update instead of a
  singular solve). The pyramid handles motions of a few pixels per level (up to ~2^levels px);
  the iterations give sub-pixel accuracy on smooth, textured content.

  Args:
    frame_a_hw, frame_b_hw: float or uint8 [H, W], grey levels on the 0..255 scale (the
      regularization is in those units).
  """
  image_a = np.asarray(frame_a_hw, np.float64)
  image_b = np.asarray(frame_b_hw, np.float64)
  if image_a.ndim != 2 or image_a.shape != image_b.shape:
    raise ValueError(f"need two grey frames [H, W] of one shape, got {image_a.shape} and "
                     f"{image_b.shape}")
  if min(image_a.shape) < 2:
    raise ValueError(f"frames of shape {image_a.shape} are too small for optical flow")
  pyramid = [(image_a, image_b)]
  while (len(pyramid) < num_levels
         and min(pyramid[-1][0].shape) >= 2 * FLOW_MIN_LEVEL_SIZE):
    pyramid.append(tuple(_downsample(image) for image in pyramid[-1]))
  flow_2hw = np.zeros((2,) + pyramid[-1][0].shape)
  for level in reversed(range(len(pyramid))):
    level_a, level_b = pyramid[level]
    rows, cols = np.meshgrid(np.arange(level_a.shape[0], dtype=np.float64),
                             np.arange(level_a.shape[1], dtype=np.float64), indexing="ij")
    if flow_2hw.shape[1:] != level_a.shape:
      # Fine pixel (i, j) sits at coarse coordinate (i / 2, j / 2); displacements double.
      flow_2hw = 2.0 * np.stack([
          scipy.ndimage.map_coordinates(component, [rows / 2.0, cols / 2.0], order=1,
                                        mode="nearest") for component in flow_2hw])
    grad_a_y, grad_a_x = np.gradient(level_a)
    spline_b = scipy.ndimage.spline_filter(level_b, order=3, mode="nearest")
    for _ in range(num_iterations):
      coordinates = [rows + flow_2hw[1], cols + flow_2hw[0]]
      warped_b = scipy.ndimage.map_coordinates(spline_b, coordinates, order=3, mode="nearest",
                                               prefilter=False)
      grad_b_y, grad_b_x = np.gradient(warped_b)
      grad_x = 0.5 * (grad_a_x + grad_b_x)
      grad_y = 0.5 * (grad_a_y + grad_b_y)
      # Linearized a(x) = b(x + u + du) ≈ b_warped(x) + ∇·du  =>  ∇·du = a − b_warped.
      residual = level_a - warped_b
      s_xx = _window_mean(grad_x * grad_x, window_sigma) + regularization
      s_yy = _window_mean(grad_y * grad_y, window_sigma) + regularization
      s_xy = _window_mean(grad_x * grad_y, window_sigma)
      r_x = _window_mean(grad_x * residual, window_sigma)
      r_y = _window_mean(grad_y * residual, window_sigma)
      determinant = s_xx * s_yy - s_xy * s_xy
      flow_2hw = flow_2hw + np.stack([(s_yy * r_x - s_xy * r_y) / determinant,
                                      (s_xx * r_y - s_xy * r_x) / determinant])
  return np.moveaxis(flow_2hw, 0, -1)


def flow_magnitude_curve(video_fhwc) -> np.ndarray:
  """Mean optical-flow magnitude (pixels) per frame, float64 [F] (F ≥ 2).

  Entry k ≥ 1 is the flow from frame k − 1 to frame k; entry 0 repeats entry 1 (as the
  reference code does, so the curve has one value per frame).
  """
  gray_fhw = to_gray(video_fhwc)
  if gray_fhw.ndim != 3 or gray_fhw.shape[0] < 2:
    raise ValueError(f"video must be [F, H, W, C] with F >= 2, got shape "
                     f"{np.shape(video_fhwc)}")
  magnitudes = [float(np.mean(np.linalg.norm(optical_flow(gray_fhw[k - 1], gray_fhw[k]),
                                             axis=-1)))
                for k in range(1, gray_fhw.shape[0])]
  return np.asarray(magnitudes[:1] + magnitudes, np.float64)


def video_peak_indices(flow_curve_f, *, relative_prominence: float = VIDEO_RELATIVE_PROMINENCE
                       ) -> np.ndarray:
  """Frame indices of the local maxima of a flow-magnitude curve [F] (int64, sorted).

  Maxima (plateaus count once, at their middle; the end points never) whose prominence is at
  least `relative_prominence` · max(curve) and VIDEO_MIN_PROMINENCE pixels.
  """
  curve = np.asarray(flow_curve_f, np.float64)
  if curve.ndim != 1:
    raise ValueError(f"flow curve must be 1-D [F], got shape {curve.shape}")
  if curve.size < 3:
    return np.zeros((0,), np.int64)
  min_prominence = max(relative_prominence * float(curve.max()), VIDEO_MIN_PROMINENCE)
  peaks, _ = scipy.signal.find_peaks(curve, prominence=min_prominence)
  return peaks.astype(np.int64)


def video_peak_times(video_fhwc_u8, fps: float, *,
                     relative_prominence: float = VIDEO_RELATIVE_PROMINENCE) -> np.ndarray:
  """Times (s) of motion peaks of a video [F, H, W, C] (RGB 0..255): the video peaks of AV-Align."""
  if fps <= 0:
    raise ValueError(f"fps must be positive, got {fps}")
  curve = flow_magnitude_curve(video_fhwc_u8)
  return video_peak_indices(curve, relative_prominence=relative_prominence) / float(fps)


def _aligned(times, other_times, tolerance: float) -> np.ndarray:
  """bool [len(times)]: whether some entry of `other_times` is strictly within `tolerance`."""
  times = np.asarray(times, np.float64).reshape(-1)
  other_times = np.asarray(other_times, np.float64).reshape(-1)
  if other_times.size == 0:
    return np.zeros(times.shape, bool)
  return np.any(np.abs(times[:, None] - other_times[None, :]) < tolerance, axis=1)


def peak_alignment_score(audio_times, video_times, tolerance: float) -> float:
  """(#aligned audio peaks + #aligned video peaks) / (|A| + |V|); 0 when there are no peaks."""
  num_peaks = np.size(audio_times) + np.size(video_times)
  if num_peaks == 0:
    return 0.0
  aligned = (np.sum(_aligned(audio_times, video_times, tolerance))
             + np.sum(_aligned(video_times, audio_times, tolerance)))
  return float(aligned / num_peaks)


def peak_iou(audio_times, video_times, tolerance: float) -> float:
  """The reference script's variant: I / (|A| + |V| − I), I = #aligned audio peaks; 0 if empty."""
  intersection = int(np.sum(_aligned(audio_times, video_times, tolerance)))
  union = np.size(audio_times) + np.size(video_times) - intersection
  return 0.0 if union == 0 else intersection / union


@dataclasses.dataclass(frozen=True)
class AVAlignResult:
  """AV-Align of one clip with what it was computed from (for plots and debugging)."""

  score: float  # the paper's AV-Align in [0, 1]
  iou: float  # the reference script's IoU variant (`peak_iou`)
  audio_peak_times: np.ndarray  # float64 [num_audio_peaks], seconds
  video_peak_times: np.ndarray  # float64 [num_video_peaks], seconds
  flow_magnitude: np.ndarray  # float64 [F], mean flow per frame (`flow_magnitude_curve`)


def av_align_details(video_fhwc_u8, audio_l, fps: float, sample_rate: int, *,
                     relative_prominence: float = VIDEO_RELATIVE_PROMINENCE) -> AVAlignResult:
  """AV-Align of one clip (video [F, H, W, C] RGB 0..255, audio [L]) with its peaks."""
  if fps <= 0:
    raise ValueError(f"fps must be positive, got {fps}")
  audio_times = audio_onset_times(audio_l, sample_rate)
  curve = flow_magnitude_curve(video_fhwc_u8)
  video_times = video_peak_indices(curve, relative_prominence=relative_prominence) / float(fps)
  tolerance = 1.0 / float(fps)
  return AVAlignResult(score=peak_alignment_score(audio_times, video_times, tolerance),
                       iou=peak_iou(audio_times, video_times, tolerance),
                       audio_peak_times=audio_times, video_peak_times=video_times,
                       flow_magnitude=curve)


def av_align(video_fhwc_u8, audio_l, fps: float, sample_rate: int, *,
             relative_prominence: float = VIDEO_RELATIVE_PROMINENCE) -> float:
  """AV-Align score in [0, 1] of one clip (see the module docstring)."""
  return av_align_details(video_fhwc_u8, audio_l, fps, sample_rate,
                          relative_prominence=relative_prominence).score


def mean_av_align(videos_bfhwc_u8, audio_bl, fps: float, sample_rate: int, **kwargs) -> float:
  """Mean AV-Align over a batch of clips [B, F, H, W, C] and [B, L]."""
  if len(videos_bfhwc_u8) != len(audio_bl) or len(audio_bl) == 0:
    raise ValueError(f"need equally many (>= 1) videos and audio clips, got "
                     f"{len(videos_bfhwc_u8)} and {len(audio_bl)}")
  return float(np.mean([av_align(video, audio, fps, sample_rate, **kwargs)
                        for video, audio in zip(videos_bfhwc_u8, audio_bl)]))
