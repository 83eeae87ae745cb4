"""Reconstruction metrics of the autoencoders, each with the trivial baseline it must beat.

Video: PSNR over pixels in [0, 255] (uint8 frames), against predicting each clip's mean frame.
Audio: log-mel distance (mean |log mel(x) - log mel(y)| over bins and frames, `LOG_MEL` settings),
against predicting each clip's mean log-mel spectrum (the time average of its own log-mel frames).
The baselines use the clip itself, so they are the best a model that ignores time could do.
They sit beside the autoencoders (models/), below both the autoencoder trainer, which reports
them after training, and the evaluation.
"""
from __future__ import annotations

import numpy as np

from avdit.models import audio_losses

# One set of mel settings for every audio number avdit reports (16 kHz: 64 ms windows, 16 ms hop).
LOG_MEL = dict(n_fft=1024, hop=256, n_mels=80)
# Floor of the log: ~80 dB below the mel peak of a 0.5-amplitude tone (~128 at n_fft 1024), so
# bins with no audible energy (whose tiny leakage varies wildly in log) do not dominate the mean.
LOG_EPS = 1e-2


def psnr(reference_u8: np.ndarray, estimate: np.ndarray) -> np.ndarray:
  """Per clip PSNR in dB of `estimate` (float or uint8, 0..255 scale) against uint8 frames
  [B, F, H, W, C]; MSE over all of a clip's pixels."""
  ref = np.asarray(reference_u8, np.float64)
  est = np.clip(np.asarray(estimate, np.float64), 0.0, 255.0)
  mse = np.mean(np.square(ref - est).reshape(ref.shape[0], -1), axis=1)
  return 10.0 * np.log10(255.0**2 / np.maximum(mse, 1e-10))


def mean_frame_baseline(video_u8: np.ndarray) -> np.ndarray:
  """Each clip's mean frame, repeated over its frames."""
  video = np.asarray(video_u8, np.float64)
  return np.broadcast_to(video.mean(axis=1, keepdims=True), video.shape)


def log_mel(audio_bl, sample_rate: int) -> np.ndarray:
  """log(mel magnitude + eps) [B, T, M] with the `LOG_MEL` settings."""
  mel = audio_losses.mel_spectrogram(np.asarray(audio_bl, np.float32), sample_rate=sample_rate,
                                     **LOG_MEL)
  return np.log(np.asarray(mel, np.float64) + LOG_EPS)


def log_mel_distance(reference_bl, estimate_bl, sample_rate: int) -> np.ndarray:
  """Per clip mean |log mel(reference) - log mel(estimate)|."""
  a, b = log_mel(reference_bl, sample_rate), log_mel(estimate_bl, sample_rate)
  return np.mean(np.abs(a - b).reshape(a.shape[0], -1), axis=1)


def mean_spectrum_baseline_distance(reference_bl, sample_rate: int) -> np.ndarray:
  """Per clip log-mel distance of the clip's own mean log-mel spectrum to its frames.

  The mean is taken in the log-mel domain the distance is measured in (a geometric mean of
  magnitudes): an arithmetic mean of magnitudes is dominated by loud transients (and the padded
  edge frames), which would make even a stationary tone far from its own "mean spectrum".
  """
  frames = log_mel(reference_bl, sample_rate)
  diff = np.abs(frames - frames.mean(axis=1, keepdims=True))
  return np.mean(diff.reshape(diff.shape[0], -1), axis=1)


def video_report(reference_u8, reconstruction_u8) -> dict[str, float]:
  got = psnr(reference_u8, reconstruction_u8)
  base = psnr(reference_u8, mean_frame_baseline(reference_u8))
  return {"psnr_db": float(got.mean()), "baseline_mean_frame_psnr_db": float(base.mean()),
          "psnr_gain_db": float(got.mean() - base.mean())}


def audio_report(reference_bl, reconstruction_bl, sample_rate: int) -> dict[str, float]:
  got = log_mel_distance(reference_bl, reconstruction_bl, sample_rate)
  base = mean_spectrum_baseline_distance(reference_bl, sample_rate)
  return {"log_mel_distance": float(got.mean()),
          "baseline_mean_spectrum_log_mel_distance": float(base.mean()),
          "log_mel_ratio_to_baseline": float(got.mean() / max(base.mean(), 1e-12))}
