"""Reconstruction metrics and their baselines, against closed forms."""
import numpy as np

from avdit.models import reconstruction


def test_psnr_closed_form_and_mean_frame_baseline():
  video = np.zeros((2, 3, 4, 4, 3), np.uint8)
  video[1, 1] = 30  # one frame of clip 1 differs
  estimate = video.astype(np.float64) + 5.0  # error 5 everywhere
  np.testing.assert_allclose(reconstruction.psnr(video, estimate),
                             10 * np.log10(255.0**2 / 25.0))
  baseline = reconstruction.mean_frame_baseline(video)
  np.testing.assert_allclose(baseline[1, 0], 10.0)  # mean of (0, 30, 0)
  # Clip 1's baseline MSE: frames 0 and 2 off by 10, frame 1 off by 20 -> (100+400+100)/3.
  np.testing.assert_allclose(reconstruction.psnr(video, baseline)[1],
                             10 * np.log10(255.0**2 / 200.0))
  report = reconstruction.video_report(video, video)
  assert report["psnr_db"] > report["baseline_mean_frame_psnr_db"]


def test_log_mel_distance_identity_stationarity_and_scaling():
  sr = 16000
  t = np.arange(sr) / sr
  tone = (0.5 * np.sin(2 * np.pi * 440 * t))[None].astype(np.float32)
  assert reconstruction.log_mel_distance(tone, tone, sr)[0] == 0.0
  # A stationary tone is near its mean spectrum (only the padded edge frames differ); a chirp,
  # whose spectrum moves, is not.
  chirp = (0.5 * np.sin(2 * np.pi * (200 + 1800 * t) * t))[None].astype(np.float32)
  assert (reconstruction.mean_spectrum_baseline_distance(tone, sr)[0]
          < 0.5 * reconstruction.mean_spectrum_baseline_distance(chirp, sr)[0])
  # Scaling a signal by 2 doubles its mel magnitudes: log-mel moves by log 2 wherever the
  # energy is far above the floor eps.
  loud = reconstruction.log_mel(tone, sr)
  shifted = reconstruction.log_mel(2 * tone, sr) - loud
  np.testing.assert_allclose(shifted[loud > np.log(10.0)], np.log(2.0), atol=1e-2)
