"""Spectral features and reconstruction losses for the audio autoencoder (SPEC §8).

Everything here is plain jnp on waveforms [B, L] (float, nominally in [-1, 1]) so it runs inside
a jitted train step and is differentiable; only the mel filterbank is built in numpy (once per
configuration, at trace time) and enters the graph as a constant.

Conventions:
  * STFT frames: frame t covers samples [t·hop, t·hop + n_fft) of the (optionally padded) signal.
    With `center=True` the signal is first padded by n_fft // 2 on both sides (`pad_mode`
    "reflect", as librosa/torchaudio, or "constant" zeros), so frame t is centred on sample
    t·hop; there are 1 + L // hop frames. With `center=False` there is no padding and
    1 + (L - n_fft) // hop frames (the tail that does not fill a frame is dropped).
  * Windows are periodic ("DFT-even") Hann windows, as scipy.signal.get_window('hann'), torch and
    librosa use; the STFT is unnormalized (X[k] = Σ_n w[n] x[n] e^{-2πikn/N}).
  * Mel scale: HTK, m = 2595·log10(1 + f/700). Filter i is a triangle on the Hz axis that rises
    from f_i to 1 at its centre f_{i+1} and falls to 0 at f_{i+2}, where f_0..f_{n_mels+1} are
    equally spaced in mel between fmin and fmax. Triangles have unit peak (no area
    normalization) unless `norm="slaney"` (area 1 in Hz: scaled by 2 / (f_{i+2} - f_i)). When
    n_fft is small against n_mels (e.g. 64-sample windows and 64 mels at 16 kHz) the lowest
    triangles fall between FFT bins and are all zero; those mel bins then carry no signal and
    contribute exactly nothing to the losses (both sides equal log(eps)).
  * Mel spectrograms are of the magnitude (power=1, as SoundStream) unless `power` says otherwise.

Losses:
  * `multiscale_mel_loss`: SoundStream's reconstruction loss (Zeghidour et al. 2021, eq. for
    L_rec): for each window length s in 2^6..2^11, 64-bin mel spectrograms S_s with window s and
    hop s/4, Σ_s [ Σ_t ‖S_s,t(x) − S_s,t(y)‖₁ + α_s Σ_t ‖log S_s,t(x) − log S_s,t(y)‖₂ ] with
    α_s = sqrt(s/2). Normalization (a project choice, since the paper sums over frames): the
    per-frame norms are taken over mel bins exactly as written (L1 norm, and the true, not
    squared, L2 norm), then averaged over batch and frames, then summed over scales, so the value
    does not grow with clip length or batch size. log S is log(S + eps).
  * `log_mel_distance`: mean |log mel(x) − log mel(y)| over all elements, an evaluation metric.
"""
from __future__ import annotations

import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np


# --- mel scale and filterbank -------------------------------------------------------------------
def hz_to_mel(f_hz):
  """HTK mel scale: 2595·log10(1 + f/700)."""
  return 2595.0 * np.log10(1.0 + np.asarray(f_hz, np.float64) / 700.0)


def mel_to_hz(mel):
  """Inverse of `hz_to_mel`."""
  return 700.0 * (10.0 ** (np.asarray(mel, np.float64) / 2595.0) - 1.0)


@functools.lru_cache(maxsize=64)
def _mel_filterbank_cached(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float,
                           norm: str | None) -> np.ndarray:
  edges_hz = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))  # [M + 2]
  bin_hz = np.arange(n_fft // 2 + 1) * sample_rate / n_fft  # [K]
  lower, centre, upper = edges_hz[:-2], edges_hz[1:-1], edges_hz[2:]  # [M] each
  rising = (bin_hz[:, None] - lower) / (centre - lower)
  falling = (upper - bin_hz[:, None]) / (upper - centre)
  weights = np.maximum(0.0, np.minimum(rising, falling))  # [K, M]
  if norm == "slaney":
    weights = weights * (2.0 / (upper - lower))
  weights = weights.astype(np.float32)
  weights.setflags(write=False)  # cached and shared: never mutate
  return weights


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0,
                   fmax: float | None = None, norm: str | None = None) -> np.ndarray:
  """Triangular HTK-mel filterbank, float32 numpy [n_fft // 2 + 1, n_mels] (see module docstring).

  Multiply a magnitude/power spectrum [..., n_fft // 2 + 1] by it to get [..., n_mels].
  """
  fmax = sample_rate / 2.0 if fmax is None else float(fmax)
  if not 0.0 <= fmin < fmax <= sample_rate / 2.0:
    raise ValueError(f"need 0 <= fmin < fmax <= sample_rate/2, got fmin={fmin}, fmax={fmax}, "
                     f"sample_rate={sample_rate}")
  if n_mels < 1 or n_fft < 2:
    raise ValueError(f"need n_mels >= 1 and n_fft >= 2, got n_mels={n_mels}, n_fft={n_fft}")
  if norm not in (None, "slaney"):
    raise ValueError(f"norm must be None or 'slaney', got {norm!r}")
  return _mel_filterbank_cached(int(sample_rate), int(n_fft), int(n_mels), float(fmin), fmax,
                                norm)


# --- STFT ---------------------------------------------------------------------------------------
def get_window(window: str | np.ndarray, n_fft: int) -> np.ndarray:
  """Periodic window of length n_fft ('hann', 'hamming', 'boxcar') or a given array."""
  if not isinstance(window, str):
    window = np.asarray(window, np.float32)
    if window.shape != (n_fft,):
      raise ValueError(f"window of shape {window.shape} does not match n_fft={n_fft}")
    return window
  n = np.arange(n_fft)
  if window == "hann":
    return (0.5 - 0.5 * np.cos(2 * np.pi * n / n_fft)).astype(np.float32)
  if window == "hamming":
    return (0.54 - 0.46 * np.cos(2 * np.pi * n / n_fft)).astype(np.float32)
  if window in ("boxcar", "rect", "ones"):
    return np.ones(n_fft, np.float32)
  raise ValueError(f"unknown window {window!r}; available: hann, hamming, boxcar")


def _check_audio(audio_bl: jax.Array, name: str = "audio") -> None:
  if audio_bl.ndim != 2:
    hint = (" (add a batch axis)" if audio_bl.ndim == 1 else
            " (mono waveforms only; average or pick the channels first)" if audio_bl.ndim == 3
            else "")
    raise ValueError(f"{name} must be a waveform batch [B, L], got shape "
                     f"{tuple(audio_bl.shape)}{hint}")


def frame_signal(audio_bl: jax.Array, n_fft: int, hop: int, *, center: bool = True,
                 pad_mode: str = "reflect") -> jax.Array:
  """[B, L] -> frames [B, T, n_fft] (by a gather; see the module docstring for T and padding)."""
  _check_audio(audio_bl)
  if hop < 1 or n_fft < 1:
    raise ValueError(f"need n_fft >= 1 and hop >= 1, got n_fft={n_fft}, hop={hop}")
  if center:
    pad = n_fft // 2
    if pad_mode == "reflect" and audio_bl.shape[1] <= pad:
      raise ValueError(f"reflect padding needs more than n_fft//2={pad} samples, got "
                       f"{audio_bl.shape[1]}")
    audio_bl = jnp.pad(audio_bl, ((0, 0), (pad, pad)), mode=pad_mode)
  length = audio_bl.shape[1]
  if length < n_fft:
    raise ValueError(f"signal of {length} samples (after padding) is shorter than n_fft={n_fft}")
  num_frames = 1 + (length - n_fft) // hop
  index_tn = np.arange(num_frames)[:, None] * hop + np.arange(n_fft)[None, :]
  return audio_bl[:, index_tn]


def stft(audio_bl: jax.Array, n_fft: int, hop: int, window: str | np.ndarray = "hann", *,
         center: bool = True, pad_mode: str = "reflect") -> jax.Array:
  """Complex STFT [B, T, n_fft // 2 + 1] of a float waveform batch [B, L] (computed in float32)."""
  frames_btn = frame_signal(jnp.asarray(audio_bl, jnp.float32), n_fft, hop, center=center,
                            pad_mode=pad_mode)
  return jnp.fft.rfft(frames_btn * get_window(window, n_fft), axis=-1)


def stft_magnitude(audio_bl: jax.Array, n_fft: int, hop: int, window: str | np.ndarray = "hann",
                   *, center: bool = True, pad_mode: str = "reflect",
                   eps: float = 1e-12) -> jax.Array:
  """|STFT| [B, T, n_fft // 2 + 1], float32.

  Computed as sqrt(max(re² + im², eps)) rather than jnp.abs so the gradient stays finite on
  silent frames (|z| has an undefined gradient at 0); eps = 1e-12 floors magnitudes at 1e-6.
  """
  spec = stft(audio_bl, n_fft, hop, window, center=center, pad_mode=pad_mode)
  return jnp.sqrt(jnp.maximum(jnp.square(spec.real) + jnp.square(spec.imag), eps))


def mel_spectrogram(audio_bl: jax.Array, *, sample_rate: int, n_fft: int, hop: int, n_mels: int,
                    fmin: float = 0.0, fmax: float | None = None,
                    window: str | np.ndarray = "hann", center: bool = True,
                    pad_mode: str = "reflect", power: float = 1.0,
                    norm: str | None = None) -> jax.Array:
  """Mel spectrogram [B, T, n_mels] of |STFT|**power (float32, linear amplitude, no log)."""
  magnitude_btk = stft_magnitude(audio_bl, n_fft, hop, window, center=center, pad_mode=pad_mode)
  if power != 1.0:
    magnitude_btk = magnitude_btk ** power
  filters_km = mel_filterbank(sample_rate, n_fft, n_mels, fmin, fmax, norm)
  # HIGHEST: TPUs would otherwise run this float32 matmul with bfloat16 passes.
  return jnp.einsum("btk,km->btm", magnitude_btk, filters_km,
                    precision=jax.lax.Precision.HIGHEST)


# --- losses -------------------------------------------------------------------------------------
def _frame_l2(diff_btm: jax.Array) -> jax.Array:
  """‖·‖₂ over the last axis with a zero (not NaN) gradient where the difference is exactly 0."""
  sq = jnp.sum(jnp.square(diff_btm), axis=-1)
  positive = sq > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def _check_pair(x_bl: jax.Array, y_bl: jax.Array) -> None:
  _check_audio(x_bl, "x")
  _check_audio(y_bl, "y")
  if x_bl.shape != y_bl.shape:
    raise ValueError(f"x and y must have the same shape, got {tuple(x_bl.shape)} and "
                     f"{tuple(y_bl.shape)}")


def multiscale_mel_loss(x_bl: jax.Array, y_bl: jax.Array, *, sample_rate: int,
                        window_lengths: Sequence[int] = (64, 128, 256, 512, 1024, 2048),
                        n_mels: int = 64, eps: float = 1e-5, center: bool = True,
                        pad_mode: str = "reflect", return_terms: bool = False):
  """SoundStream's multi-scale mel reconstruction loss (scalar float32; see module docstring).

  For each window length s: mean over (batch, frames) of ‖S(x) − S(y)‖₁ over mel bins, plus
  sqrt(s/2) times the mean over (batch, frames) of ‖log(S(x)+eps) − log(S(y)+eps)‖₂ over mel
  bins; summed over s. Symmetric in x and y; exactly 0 for identical inputs. With
  `return_terms=True` also returns {f"l1_{s}": ..., f"log_l2_{s}": ...} (unweighted terms).
  """
  _check_pair(x_bl, y_bl)
  total = jnp.zeros((), jnp.float32)
  terms = {}
  for s in window_lengths:
    if s % 4:
      raise ValueError(f"window length {s} is not divisible by 4 (hop = s/4)")
    kwargs = dict(sample_rate=sample_rate, n_fft=s, hop=s // 4, n_mels=n_mels, center=center,
                  pad_mode=pad_mode)
    mel_x = mel_spectrogram(x_bl, **kwargs)
    mel_y = mel_spectrogram(y_bl, **kwargs)
    l1 = jnp.mean(jnp.sum(jnp.abs(mel_x - mel_y), axis=-1))
    log_l2 = jnp.mean(_frame_l2(jnp.log(mel_x + eps) - jnp.log(mel_y + eps)))
    total = total + l1 + math.sqrt(s / 2) * log_l2
    terms[f"l1_{s}"], terms[f"log_l2_{s}"] = l1, log_l2
  return (total, terms) if return_terms else total


def log_mel_distance(x_bl: jax.Array, y_bl: jax.Array, *, sample_rate: int, n_fft: int = 1024,
                     hop: int = 256, n_mels: int = 80, eps: float = 1e-5,
                     center: bool = True) -> jax.Array:
  """Mean |log(mel(x)+eps) − log(mel(y)+eps)| over batch, frames and mel bins (evaluation)."""
  _check_pair(x_bl, y_bl)
  kwargs = dict(sample_rate=sample_rate, n_fft=n_fft, hop=hop, n_mels=n_mels, center=center)
  return jnp.mean(jnp.abs(jnp.log(mel_spectrogram(x_bl, **kwargs) + eps) -
                          jnp.log(mel_spectrogram(y_bl, **kwargs) + eps)))
