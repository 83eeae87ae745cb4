"""The circular MDCT: an orthogonal, exactly invertible audio transform, one frame per audio latent.

Why: a tone's pitch in a raw waveform block depends on its phase (a linear probe from a block of
samples to pitch scores R² ≈ 0), while in an MDCT frame it is *where* the energy lies, whatever
the phase. Frame k has `hop` coefficients and covers samples [k hop - hop/2, k hop + 3 hop/2)
(sine window, 50% overlap), so it is centred on audio latent k's block of the clip layout.

The frames wrap around the padded waveform (circular), so `num_latents * hop` samples give
exactly `num_latents` frames, and the whole transform is one orthogonal matrix: Parseval holds
and the inverse (overlap-add of the windowed inverse frames, time-domain alias cancellation) is
its transpose.
"""
from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np


@functools.lru_cache(maxsize=8)
def mdct_basis(hop: int) -> np.ndarray:
  """float32 [2 hop, hop]: sqrt(2/hop) w[n] cos(π/hop (n + 1/2 + hop/2)(k + 1/2)), sine w."""
  if hop < 2 or hop % 2:
    raise ValueError(f"the MDCT needs an even hop of at least 2 samples, got {hop}")
  n = np.arange(2 * hop, dtype=np.float64)[:, None]
  k = np.arange(hop, dtype=np.float64)[None, :]
  window = np.sin(np.pi * (n + 0.5) / (2 * hop))
  basis = np.sqrt(2.0 / hop) * window * np.cos(np.pi / hop * (n + 0.5 + hop / 2) * (k + 0.5))
  return basis.astype(np.float32)


@functools.lru_cache(maxsize=8)
def frame_sample_indices(num_frames: int, hop: int) -> np.ndarray:
  """int32 [num_frames, 2 hop]: the (wrapped) waveform samples frame k reads."""
  starts = np.arange(num_frames)[:, None] * hop - hop // 2
  return ((starts + np.arange(2 * hop)[None, :]) % (num_frames * hop)).astype(np.int32)


def forward(waveform_bl: jnp.ndarray, hop: int) -> jnp.ndarray:
  """float32 [B, L / hop, hop] coefficients of waveforms [B, L] (L a multiple of hop)."""
  num_frames, remainder = divmod(waveform_bl.shape[-1], hop)
  if remainder:
    raise ValueError(f"MDCT input of {waveform_bl.shape[-1]} samples is not a multiple of the "
                     f"hop {hop}")
  frames_bf2h = waveform_bl[:, frame_sample_indices(num_frames, hop)]
  return jnp.einsum("bfn,nk->bfk", frames_bf2h, mdct_basis(hop))


def inverse(coefficients_bfh: jnp.ndarray) -> jnp.ndarray:
  """float32 [B, F hop] waveforms: the exact inverse of `forward` (its transpose)."""
  batch, num_frames, hop = coefficients_bfh.shape
  frames_bf2h = jnp.einsum("bfk,nk->bfn", coefficients_bfh, mdct_basis(hop))
  indices = frame_sample_indices(num_frames, hop).reshape(-1)
  waveform = jnp.zeros((batch, num_frames * hop), coefficients_bfh.dtype)
  return waveform.at[:, indices].add(frames_bf2h.reshape(batch, -1))
