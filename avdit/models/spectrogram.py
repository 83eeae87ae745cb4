"""Log-magnitude STFT audio latents, decoded by fast Griffin-Lim: pitch without phase.

Why: a diffusion model trained with a mean-squared error learns the posterior *mean* of each
latent. A tone's waveform (or MDCT, or a learned encoder's latent of it) changes sign with the
tone's random phase, so given the video, the mean of the audio latents stays ~0 and the loss
barely rewards putting the tone at the right pitch. In a log-magnitude spectrogram the pitch is
where the energy lies, phase-free: the mean itself carries it (the usual choice of audio latent
diffusion models, decoded by a vocoder; here by Griffin-Lim, which needs no weights).

Frame k is the sine-windowed 2·hop samples centred on audio latent k's block of the clip layout,
wrapping around the padded waveform (the frames of avdit/models/mdct.py), so `num_latents * hop`
samples give exactly `num_latents` frames. A latent frame holds the bins 0 .. hop - 1 (the
Nyquist bin is dropped: the clips carry nothing at 8 kHz) as log(|X| + MAGNITUDE_FLOOR).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from avdit.models import mdct

# Below ~-75 dB of a full-scale tone's peak: what lies under it is not worth the loss's attention.
MAGNITUDE_FLOOR = 1e-2
GRIFFIN_LIM_ITERATIONS = 64
GRIFFIN_LIM_MOMENTUM = 0.99  # fast Griffin-Lim (Perraudin et al. 2013)


@functools.lru_cache(maxsize=8)
def sine_window(hop: int) -> np.ndarray:
  """float32 [2 hop]: w² + (w shifted by hop)² = 1, so analysis and synthesis with w sum to 1."""
  return np.sin(np.pi * (np.arange(2 * hop) + 0.5) / (2 * hop)).astype(np.float32)


def stft(waveform_bl: jnp.ndarray, hop: int) -> jnp.ndarray:
  """complex64 [B, L / hop, hop + 1]: the circular sine-windowed STFT of waveforms [B, L]."""
  num_frames = waveform_bl.shape[-1] // hop
  if num_frames * hop != waveform_bl.shape[-1]:
    raise ValueError(f"STFT input of {waveform_bl.shape[-1]} samples is not a multiple of the "
                     f"hop {hop}")
  frames = waveform_bl[:, mdct.frame_sample_indices(num_frames, hop)] * sine_window(hop)
  return jnp.fft.rfft(frames, axis=-1)


def istft(spectrum_bfk: jnp.ndarray, hop: int) -> jnp.ndarray:
  """float32 [B, F hop]: overlap-add of the windowed inverse frames (exact inverse of `stft`)."""
  batch, num_frames, _ = spectrum_bfk.shape
  frames = jnp.fft.irfft(spectrum_bfk, n=2 * hop, axis=-1) * sine_window(hop)
  indices = mdct.frame_sample_indices(num_frames, hop).reshape(-1)
  waveform = jnp.zeros((batch, num_frames * hop), frames.dtype)
  return waveform.at[:, indices].add(frames.reshape(batch, -1))


def forward(waveform_bl: jnp.ndarray, hop: int) -> jnp.ndarray:
  """float32 [B, L / hop, hop]: log(|STFT| + floor) of bins 0 .. hop - 1."""
  magnitude = jnp.abs(stft(waveform_bl, hop))[..., :hop]
  return jnp.log(magnitude + MAGNITUDE_FLOOR)


def magnitude_of(latents_bfk: jnp.ndarray) -> jnp.ndarray:
  """float32 [B, F, hop + 1]: the magnitudes a latent asks for (Nyquist bin 0)."""
  magnitude = jnp.maximum(jnp.exp(latents_bfk) - MAGNITUDE_FLOOR, 0.0)
  return jnp.pad(magnitude, ((0, 0), (0, 0), (0, 1)))


def inverse(latents_bfk: jnp.ndarray, iterations: int = GRIFFIN_LIM_ITERATIONS,
            momentum: float = GRIFFIN_LIM_MOMENTUM, rng=None) -> jnp.ndarray:
  """float32 [B, F hop]: a waveform whose STFT magnitude matches the latents (fast Griffin-Lim).

  Starts from random phases (`rng`, default key 0: decoding is deterministic).
  """
  hop = latents_bfk.shape[-1]
  magnitude = magnitude_of(latents_bfk.astype(jnp.float32))
  rng = jax.random.key(0) if rng is None else rng
  phase = jnp.exp(2j * jnp.pi * jax.random.uniform(rng, magnitude.shape))
  spectrum = magnitude * phase

  def step(carry, _):
    spectrum, previous = carry
    projected = stft(istft(spectrum, hop), hop)  # nearest consistent spectrogram
    accelerated = projected + momentum * (projected - previous)
    spectrum = magnitude * jnp.exp(1j * jnp.angle(accelerated))
    return (spectrum, projected), None

  (spectrum, _), _ = jax.lax.scan(step, (spectrum, spectrum), None, length=iterations)
  return istft(spectrum, hop)


def spectral_convergence(waveform_bl: jnp.ndarray, latents_bfk: jnp.ndarray) -> jnp.ndarray:
  """float32 [B]: ‖|STFT(x)| - target‖ / ‖target‖, how well a waveform meets the magnitudes."""
  hop = latents_bfk.shape[-1]
  target = magnitude_of(latents_bfk)
  got = jnp.abs(stft(waveform_bl, hop))
  return (jnp.linalg.norm((got - target).reshape(got.shape[0], -1), axis=-1)
          / jnp.linalg.norm(target.reshape(got.shape[0], -1), axis=-1))
