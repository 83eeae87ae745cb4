"""Audio features and losses against scipy / independent numpy computations."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.signal

from avdit.models import audio_losses

SR = 16_000


def _signal(batch=2, length=1000, seed=0):
  return np.random.default_rng(seed).uniform(-1, 1, (batch, length)).astype(np.float32)


# --- STFT -----------------------------------------------------------------------------------------
def _scipy_stft_magnitude(x_l, n_fft, hop, boundary):
  """scipy's STFT rescaled to the unnormalized transform, as [T, K]."""
  window = scipy.signal.get_window("hann", n_fft)
  _, _, spec = scipy.signal.stft(x_l, nperseg=n_fft, noverlap=n_fft - hop, window=window,
                                 boundary=boundary, padded=False, detrend=False)
  return np.abs(spec * window.sum()).T  # scipy scales by 1/sum(window)


@pytest.mark.parametrize("n_fft,hop", [(64, 16), (256, 64), (100, 30)])
def test_stft_magnitude_matches_scipy_without_centering(n_fft, hop):
  x = _signal()
  ours = np.asarray(audio_losses.stft_magnitude(jnp.asarray(x), n_fft, hop, center=False))
  for b in range(2):
    ref = _scipy_stft_magnitude(x[b].astype(np.float64), n_fft, hop, None)
    assert ours[b].shape == ref.shape == (1 + (1000 - n_fft) // hop, n_fft // 2 + 1)
    np.testing.assert_allclose(ours[b], ref, rtol=1e-4, atol=1e-4)


def test_stft_centred_zero_padding_matches_scipy_zeros_boundary():
  x = _signal()
  n_fft, hop = 128, 32
  ours = np.asarray(audio_losses.stft_magnitude(jnp.asarray(x), n_fft, hop, center=True,
                                                pad_mode="constant"))
  assert ours.shape[1] == 1 + 1000 // hop
  ref = _scipy_stft_magnitude(x[0].astype(np.float64), n_fft, hop, "zeros")
  np.testing.assert_allclose(ours[0], ref[:ours.shape[1]], rtol=1e-4, atol=1e-4)


def test_stft_centred_reflect_padding_matches_numpy_framing():
  x = _signal(1, 500)
  n_fft, hop = 64, 16
  padded = np.pad(x[0].astype(np.float64), n_fft // 2, mode="reflect")
  window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)  # periodic Hann
  frames = [padded[t:t + n_fft] * window for t in range(0, len(padded) - n_fft + 1, hop)]
  ref = np.abs(np.fft.rfft(np.stack(frames), axis=-1))
  ours = np.asarray(audio_losses.stft_magnitude(jnp.asarray(x), n_fft, hop))[0]
  np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4)


def test_stft_rejects_bad_input():
  with pytest.raises(ValueError, match="batch axis"):
    audio_losses.stft(jnp.zeros(100), 64, 16)
  with pytest.raises(ValueError, match="shorter than n_fft"):
    audio_losses.stft(jnp.zeros((1, 50)), 64, 16, center=False)


# --- mel filterbank -------------------------------------------------------------------------------
def _mel(f):
  return 2595.0 * math.log10(1.0 + f / 700.0)


def _hz(m):
  return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


def test_mel_filterbank_triangles_peak_at_their_centres():
  n_fft, n_mels, fmin, fmax = 8192, 40, 50.0, 7000.0
  fb = audio_losses.mel_filterbank(SR, n_fft, n_mels, fmin, fmax)
  assert fb.shape == (n_fft // 2 + 1, n_mels) and fb.dtype == np.float32
  assert (fb >= 0).all()
  bin_hz = np.arange(n_fft // 2 + 1) * SR / n_fft
  step = (_mel(fmax) - _mel(fmin)) / (n_mels + 1)
  for i in range(n_mels):
    lower, centre, upper = (_hz(_mel(fmin) + (i + j) * step) for j in range(3))
    peak = int(np.argmax(fb[:, i]))
    assert abs(bin_hz[peak] - centre) <= SR / n_fft  # within one bin of the centre
    assert 0.9 < fb[peak, i] <= 1.0
    # Zero outside [lower, upper], positive inside (a 1e-3 Hz margin absorbs rounding of edges).
    assert (fb[(bin_hz < lower - 1e-3) | (bin_hz > upper + 1e-3), i] == 0).all()
    assert (fb[(bin_hz > lower + 1e-3) & (bin_hz < upper - 1e-3), i] > 0).all()
  # Slaney normalization: every triangle has unit area on the Hz axis.
  slaney = audio_losses.mel_filterbank(SR, n_fft, n_mels, fmin, fmax, norm="slaney")
  np.testing.assert_allclose(slaney.sum(0) * SR / n_fft, 1.0, rtol=0.02)


def test_pure_tone_peaks_in_its_mel_band():
  n_mels = 64
  step = _mel(SR / 2) / (n_mels + 1)
  centres = np.array([_hz((i + 1) * step) for i in range(n_mels)])
  for freq in (440.0, 1000.0, 3000.0):
    t = np.arange(8000) / SR
    tone = np.sin(2 * np.pi * freq * t)[None].astype(np.float32)
    mel = np.asarray(audio_losses.mel_spectrogram(jnp.asarray(tone), sample_rate=SR, n_fft=1024,
                                                  hop=256, n_mels=n_mels))
    assert mel.shape == (1, 1 + 8000 // 256, n_mels)
    band = int(np.argmax(mel[0, 5:-5].mean(0)))
    # The band whose centre is nearest the tone in mel (one band of slack for FFT leakage).
    nearest = int(np.argmin(np.abs(np.array([_mel(c) for c in centres]) - _mel(freq))))
    assert abs(band - nearest) <= 1, (freq, band, nearest)


# --- losses ---------------------------------------------------------------------------------------
def _numpy_mel(x_bl, n_fft, hop, n_mels):
  """Independent mel magnitude spectrogram: scipy STFT with reflect ('even') padding, and a
  triangle filterbank written from the HTK formula."""
  window = scipy.signal.get_window("hann", n_fft)
  _, _, spec = scipy.signal.stft(x_bl.astype(np.float64), nperseg=n_fft, noverlap=n_fft - hop,
                                 window=window, boundary="even", padded=False, detrend=False)
  mag = np.abs(spec * window.sum())  # [B, K, T]
  mag = np.maximum(mag, 1e-6)  # the module floors magnitudes at sqrt(1e-12)
  edges = [_hz(e) for e in np.linspace(0, _mel(SR / 2), n_mels + 2)]
  fb = np.zeros((n_fft // 2 + 1, n_mels))
  for k in range(n_fft // 2 + 1):
    f = k * SR / n_fft
    for m in range(n_mels):
      lo, c, hi = edges[m], edges[m + 1], edges[m + 2]
      if lo < f <= c:
        fb[k, m] = (f - lo) / (c - lo)
      elif c < f < hi:
        fb[k, m] = (hi - f) / (hi - c)
  return np.einsum("bkt,km->btm", mag, fb)


def test_multiscale_mel_loss_matches_numpy_formula():
  x, y = _signal(2, 1200, 0), _signal(2, 1200, 1) * 0.5
  scales, n_mels, eps = (64, 128, 256), 16, 1e-5
  expected = 0.0
  for s in scales:
    mx, my = _numpy_mel(x, s, s // 4, n_mels), _numpy_mel(y, s, s // 4, n_mels)
    l1 = np.abs(mx - my).sum(-1).mean()
    l2 = np.sqrt(((np.log(mx + eps) - np.log(my + eps)) ** 2).sum(-1)).mean()
    expected += l1 + math.sqrt(s / 2) * l2
  ours = audio_losses.multiscale_mel_loss(jnp.asarray(x), jnp.asarray(y), sample_rate=SR,
                                          window_lengths=scales, n_mels=n_mels)
  np.testing.assert_allclose(float(ours), expected, rtol=1e-4)
  swapped = audio_losses.multiscale_mel_loss(jnp.asarray(y), jnp.asarray(x), sample_rate=SR,
                                             window_lengths=scales, n_mels=n_mels)
  np.testing.assert_allclose(float(swapped), float(ours), rtol=1e-5)


def test_mel_loss_zero_for_identical_inputs_with_finite_gradients():
  x = jnp.asarray(_signal(1, 1200))
  silent = jnp.zeros((1, 1200))
  kwargs = dict(sample_rate=SR, window_lengths=(64, 256), n_mels=16)
  assert float(audio_losses.multiscale_mel_loss(x, x, **kwargs)) == 0.0
  grad = jax.grad(lambda y: audio_losses.multiscale_mel_loss(x, y, **kwargs))(x)
  assert np.isfinite(np.asarray(grad)).all()
  grad_silent = jax.grad(lambda y: audio_losses.multiscale_mel_loss(silent, y, **kwargs))(silent)
  assert np.isfinite(np.asarray(grad_silent)).all()
  assert float(audio_losses.multiscale_mel_loss(x, 0.5 * x, **kwargs)) > 0.0


def test_log_mel_distance():
  x, y = _signal(2, 1200, 0), _signal(2, 1200, 2)
  ours = audio_losses.log_mel_distance(jnp.asarray(x), jnp.asarray(y), sample_rate=SR, n_fft=256,
                                       hop=64, n_mels=20)
  mx, my = _numpy_mel(x, 256, 64, 20), _numpy_mel(y, 256, 64, 20)
  np.testing.assert_allclose(float(ours), np.abs(np.log(mx + 1e-5) - np.log(my + 1e-5)).mean(),
                             rtol=1e-4)
  assert float(audio_losses.log_mel_distance(jnp.asarray(x), jnp.asarray(x), sample_rate=SR,
                                             n_fft=256, hop=64, n_mels=20)) == 0.0
  with pytest.raises(ValueError, match="same shape"):
    audio_losses.log_mel_distance(jnp.asarray(x), jnp.asarray(y[:, :1000]), sample_rate=SR)
