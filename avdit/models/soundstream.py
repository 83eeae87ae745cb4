"""SoundStream audio autoencoder in Flax NNX (SPEC §8; Zeghidour et al. 2021).

Waveforms [B, L] (16 kHz mono, float in [-1, 1]) become continuous latents [B, l_a, d] with a
hop of prod(strides) = 2·4·5·8 = 320 samples (50 latents/s): the audio is right-padded with
zeros to l_a·320 samples, l_a = ceil(L / 320) (34 000 samples -> 107 latents). The diffusion model
uses these pre-quantization latents (`encode`, or `__call__(..., quantize=False)`); the residual
vector quantizer (RVQ) exists to train the autoencoder as in the paper (its bottleneck shapes the
latent space) and for discrete codes.

Architecture (SEANet, all convolutions causal, ELU activations, no normalization layers):
  encoder: conv_in (kernel 7, C) -> for each stride S_i with channels C_i = C·m_i:
             3 residual units at the block's input width (ELU, conv kernel 7 with dilation
             1/3/9, ELU, 1×1 conv, plus skip) -> ELU -> strided conv (kernel 2·S_i, stride S_i)
             to C_i
           -> ELU -> conv (kernel 3) to d.
  decoder: conv_in (kernel 7, d -> C_last) -> for each stride S_i in reverse order: ELU ->
             causal transposed conv (kernel 2·S_i, stride S_i) halving the channels (C_i ->
             C_{i-1}, C_{-1} = C) -> 3 residual units -> ELU -> conv_out (kernel 7) to 1 channel.
             No output tanh (as EnCodec's SEANet; callers clip when they need [-1, 1]).

Causality, exactly: a causal conv with kernel k, dilation δ and stride S pads (k−1)·δ + 1 − S
zeros on the past side only, so its output j reads inputs up to j·S + S − 1 — the last input of
its own stride window — and nothing later. Composing the four strided stages (each output i
of stage n reads inputs <= S_n·(i+1) − 1 of stage n−1) and the stride-1 convolutions
(output j reads inputs <= j): latent j depends on waveform samples 0 .. 320·(j+1) − 1 only, i.e.
on nothing after the end of its own hop window, and (for generic weights) does depend on sample
320·(j+1) − 1. The decoder is causal in the same sense: output sample t depends on latents
0 .. floor(t / 320) only (a transposed conv with kernel 2S writes input j to outputs
j·S .. j·S + 2S − 1 and the last S outputs past the end are cropped). The transposed conv is
computed in polyphase form (a causal conv with kernel 2 over the low-rate input producing S·C_out
channels, then a reshape), which is exactly a transposed conv without multiplying zeros.

Quantization: the residual vector quantizer (`avdit.models.quantizers.ResidualVectorQuantizer`,
the `quantizer` attribute; EMA codebooks, k-means init, dead-code replacement, quantizer dropout)
keeps its codebooks and statistics in `CodebookState` variables, not `nnx.Param`: a trainer keeps
them out of the optimizer and carries them as mutable model state. The discriminators
(`StftDiscriminator`, `MultiScaleWaveDiscriminator`, `SoundStreamDiscriminator`) are in
`avdit.models.discriminators`; their sizes (`{PAPER,TINY}_{STFT,WAVE}_DISCRIMINATOR`) stay here,
beside the autoencoder's. Parameter counts: `avdit.models.layers.count_params`.

Sizes (`PAPER_CONFIG`, `TINY_CONFIG`): the paper's SEANet has C = 32 channels doubling per block to
512 (channel_multipliers 2, 4, 8, 16); d = 1024 as the AVDiT paper's audio latents (SoundStream's
codec used d = 128); 8 quantizers × 1024 codes (10 bits × 8 × 50 Hz = 4 kbps). The tiny setting
(C = 4, d = 16, 2 × 16 codes) keeps the hop of 320 and runs in seconds on a CPU.

Parameters are float32 `nnx.Param`s made with `avdit.models.layers.make_param` (with or without
a mesh in scope), annotated with the logical axis names in `AUDIO_AXES`:
  conv1d_kernel ("conv_width", "conv_in", "conv_out"), conv_bias ("conv_out",),
  conv2d_kernel ("conv_time", "conv_freq", "conv_in", "conv_out") (the STFT discriminator's);
the RVQ state has those of `avdit.models.quantizers.CODEBOOK_AXES`.
Convolutions compute in `dtype` (float32 or bfloat16, accumulating in float32); the encoder's
output latents, the quantizer and the decoder's output waveform are float32.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from avdit.models import layers
from avdit.models.layers import Axes, make_param
from avdit.models.quantizers import ResidualVectorQuantizer

@dataclasses.dataclass(frozen=True)
class AudioAxes:
  """Logical axis names of the audio autoencoder's (and its discriminators') parameters."""

  conv1d_kernel: Axes = ("conv_width", "conv_in", "conv_out")
  conv2d_kernel: Axes = ("conv_time", "conv_freq", "conv_in", "conv_out")
  conv_bias: Axes = ("conv_out",)


AUDIO_AXES = AudioAxes()

PAPER_CONFIG = dict(base_channels=32, channel_multipliers=(2, 4, 8, 16), strides=(2, 4, 5, 8),
                    dilations=(1, 3, 9), latent_dim=1024, num_quantizers=8, codebook_size=1024)
TINY_CONFIG = dict(base_channels=4, channel_multipliers=(2, 4, 8, 16), strides=(2, 4, 5, 8),
                   dilations=(1, 3, 9), latent_dim=16, num_quantizers=2, codebook_size=16)
PAPER_STFT_DISCRIMINATOR = dict(channels=32, channel_multipliers=(1, 2, 4, 4, 8, 8),
                                strides=((1, 2), (2, 2), (1, 2), (2, 2), (1, 2), (2, 2)),
                                n_fft=1024, hop=256)
TINY_STFT_DISCRIMINATOR = dict(channels=4, channel_multipliers=(1, 2),
                               strides=((1, 2), (2, 2)), n_fft=64, hop=16)
PAPER_WAVE_DISCRIMINATOR = dict(channels=(16, 64, 256, 1024, 1024), num_scales=3)
TINY_WAVE_DISCRIMINATOR = dict(channels=(4, 8, 16), num_scales=3, down_kernel=9)

def _jitted(initializer):
  """The initializer as one compiled program per shape: run eagerly, an initializer is a dozen
  primitives each compiled per shape, which dominates building a small model on a CPU."""
  return jax.jit(initializer, static_argnums=(1, 2))


conv_init = _jitted(nnx.initializers.lecun_normal())


# --- convolutions ---------------------------------------------------------------------------------
def conv_nd(x: jax.Array, kernel: jax.Array, *, strides: Sequence[int], padding, dilation=None,
            groups: int = 1, dtype: jnp.dtype) -> jax.Array:
  """N-d channels-last convolution (cross-correlation) in `dtype`, accumulated in float32."""
  spatial = "W" if kernel.ndim == 3 else "HW"
  numbers = (f"N{spatial}C", f"{spatial}IO", f"N{spatial}C")
  low_precision = jnp.dtype(dtype) != jnp.float32
  y = jax.lax.conv_general_dilated(
      x.astype(dtype), kernel.astype(dtype), window_strides=tuple(strides), padding=padding,
      rhs_dilation=dilation, dimension_numbers=numbers, feature_group_count=groups,
      preferred_element_type=jnp.float32 if low_precision else None)
  return y.astype(dtype)


class CausalConv1d(nnx.Module):
  """Causal 1D conv over [B, T, C_in] -> [B, T / stride, C_out] (T must divide by the stride).

  Pads (kernel−1)·dilation + 1 − stride zeros on the past side, so output j reads inputs up to
  j·stride + stride − 1 (the end of its stride window) and never later ones.
  """

  def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, stride: int = 1,
               dilation: int = 1, dtype: jnp.dtype, rngs: nnx.Rngs, kernel_init=conv_init):
    if kernel_size < 1 or stride < 1 or dilation < 1:
      raise ValueError(f"bad conv: kernel {kernel_size}, stride {stride}, dilation {dilation}")
    if (kernel_size - 1) * dilation + 1 < stride:
      raise ValueError(f"kernel span {(kernel_size - 1) * dilation + 1} < stride {stride} would "
                       "skip samples")
    self.kernel = make_param(rngs, kernel_init, (kernel_size, in_channels, out_channels),
                             AUDIO_AXES.conv1d_kernel)
    self.bias = make_param(rngs, layers.zeros, (out_channels,), AUDIO_AXES.conv_bias)
    self.stride, self.dilation, self.dtype = stride, dilation, dtype
    self.left_pad = (kernel_size - 1) * dilation + 1 - stride

  def __call__(self, x_btc: jax.Array) -> jax.Array:
    if x_btc.shape[1] % self.stride:
      raise ValueError(f"causal conv with stride {self.stride} needs a length divisible by it, "
                       f"got {x_btc.shape[1]}")
    y = conv_nd(x_btc, self.kernel[...], strides=(self.stride,), padding=[(self.left_pad, 0)],
                dilation=(self.dilation,), dtype=self.dtype)
    return y + self.bias[...].astype(self.dtype)


class CausalConvTranspose1d(nnx.Module):
  """Causal transposed conv [B, n, C_in] -> [B, n·stride, C_out].

  y[t] = Σ_j x[j] · kernel[t − j·stride] (0 <= t − j·stride < kernel_size), for t < n·stride: the
  full transposed conv with its last kernel_size − stride outputs cropped, so output t depends on
  inputs j <= t // stride only. Computed in polyphase form: the kernel [r·S, C_in, C_out] is
  regrouped into a causal conv with kernel r over the input producing S·C_out channels (phase s of
  block j = Σ_p x[j − p] · kernel[p·S + s]), then reshaped to the high rate.
  """

  def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, stride: int,
               dtype: jnp.dtype, rngs: nnx.Rngs):
    if kernel_size % stride:
      raise ValueError(f"kernel {kernel_size} must be a multiple of the stride {stride}")
    # Each output sums kernel_size/stride taps of C_in inputs: scale for that fan-in, not k·C_in.
    init = _jitted(nnx.initializers.variance_scaling(float(stride), "fan_in", "truncated_normal"))
    self.kernel = make_param(rngs, init, (kernel_size, in_channels, out_channels),
                             AUDIO_AXES.conv1d_kernel)
    self.bias = make_param(rngs, layers.zeros, (out_channels,), AUDIO_AXES.conv_bias)
    self.stride, self.dtype = stride, dtype

  def __call__(self, x_bnc: jax.Array) -> jax.Array:
    k, c_in, c_out = self.kernel.shape
    s, r = self.stride, k // self.stride
    kernel = self.kernel[...].reshape(r, s, c_in, c_out).transpose(0, 2, 1, 3)
    # Cross-correlation over a past-padded input reads x[j − (r−1) + q] with tap q: tap q holds
    # kernel group p = r − 1 − q.
    poly = kernel.reshape(r, c_in, s * c_out)[::-1]
    y = conv_nd(x_bnc, poly, strides=(1,), padding=[(r - 1, 0)], dtype=self.dtype)
    b, n = x_bnc.shape[:2]
    return y.reshape(b, n * s, c_out) + self.bias[...].astype(self.dtype)


class ResidualUnit(nnx.Module):
  """x + conv1×1(ELU(causal conv k, dilation δ (ELU(x)))), width preserved; the 1×1 conv starts
  at zero."""

  def __init__(self, channels: int, dilation: int, *, kernel_size: int, dtype: jnp.dtype,
               rngs: nnx.Rngs):
    self.conv = CausalConv1d(channels, channels, kernel_size, dilation=dilation, dtype=dtype,
                             rngs=rngs)
    # The residual branch starts at zero (each unit starts as the identity): the small default
    # model then leaves the near-silent output it first collapses to much sooner.
    self.pointwise = CausalConv1d(channels, channels, 1, dtype=dtype, rngs=rngs,
                                  kernel_init=layers.zeros)

  def __call__(self, x_btc: jax.Array) -> jax.Array:
    return x_btc + self.pointwise(jax.nn.elu(self.conv(jax.nn.elu(x_btc))))


class EncoderBlock(nnx.Module):
  """Residual units (dilations 1, 3, 9) at the input width, then a strided conv (kernel 2S)."""

  def __init__(self, in_channels: int, out_channels: int, stride: int, *,
               dilations: Sequence[int], kernel_size: int, dtype: jnp.dtype, rngs: nnx.Rngs):
    self.units = nnx.List([ResidualUnit(in_channels, d, kernel_size=kernel_size, dtype=dtype,
                                        rngs=rngs) for d in dilations])
    self.down = CausalConv1d(in_channels, out_channels, 2 * stride, stride=stride, dtype=dtype,
                             rngs=rngs)

  def __call__(self, x_btc: jax.Array) -> jax.Array:
    for unit in self.units:
      x_btc = unit(x_btc)
    return self.down(jax.nn.elu(x_btc))


class DecoderBlock(nnx.Module):
  """Causal transposed conv (kernel 2S, stride S) then residual units at the output width."""

  def __init__(self, in_channels: int, out_channels: int, stride: int, *,
               dilations: Sequence[int], kernel_size: int, dtype: jnp.dtype, rngs: nnx.Rngs):
    self.up = CausalConvTranspose1d(in_channels, out_channels, 2 * stride, stride=stride,
                                    dtype=dtype, rngs=rngs)
    self.units = nnx.List([ResidualUnit(out_channels, d, kernel_size=kernel_size, dtype=dtype,
                                        rngs=rngs) for d in dilations])

  def __call__(self, x_btc: jax.Array) -> jax.Array:
    x_btc = self.up(jax.nn.elu(x_btc))
    for unit in self.units:
      x_btc = unit(x_btc)
    return x_btc


# --- the autoencoder ------------------------------------------------------------------------------
def check_waveform(audio_bl: jax.Array) -> None:
  """Raises a readable error unless `audio_bl` is a float mono waveform batch [B, L]."""
  shape = tuple(audio_bl.shape)
  if audio_bl.ndim == 3 and 2 in (shape[1], shape[2]):
    raise ValueError(f"audio of shape {shape} looks stereo; SoundStream takes mono waveforms "
                     "[B, L] (average the channels first)")
  if audio_bl.ndim == 3 and shape[-1] == 1:
    raise ValueError(f"audio of shape {shape} has a channel axis; pass mono waveforms [B, L] "
                     "(squeeze the last axis)")
  if audio_bl.ndim != 2:
    hint = " (add a batch axis)" if audio_bl.ndim == 1 else ""
    raise ValueError(f"audio must be a waveform batch [B, L], got shape {shape}{hint}")
  if not jnp.issubdtype(audio_bl.dtype, jnp.floating):
    raise ValueError(f"audio must be float in [-1, 1], got dtype {audio_bl.dtype} (scale integer "
                     "PCM by 1/32768)")
  if shape[1] < 1:
    raise ValueError("audio has no samples")


class SoundStream(nnx.Module):
  """SEANet encoder/decoder with a residual vector quantizer (see the module docstring).

  Args (keyword-only): base_channels C; channel_multipliers m_i (block i outputs C·m_i channels);
  strides (hop = their product); dilations of the residual units; residual_kernel (7);
  latent_dim d; num_quantizers; codebook_size; ema_decay; dead_code_threshold (EMA cluster size
  below which a code is replaced); kmeans_iters; quantizer_dropout; laplace_eps; dtype of the
  convolutions ("float32"/"bfloat16" or a dtype); rngs.
  """

  def __init__(self, *, base_channels: int, channel_multipliers: Sequence[int] = (2, 4, 8, 16),
               strides: Sequence[int] = (2, 4, 5, 8), dilations: Sequence[int] = (1, 3, 9),
               residual_kernel: int = 7, latent_dim: int, num_quantizers: int,
               codebook_size: int, ema_decay: float = 0.99, dead_code_threshold: float = 0.4,
               kmeans_iters: int = 10, quantizer_dropout: bool = True,
               laplace_eps: float = 1e-5, dtype: Any = jnp.float32, rngs: nnx.Rngs):
    if len(channel_multipliers) != len(strides):
      raise ValueError(f"one channel multiplier per stride: {channel_multipliers} vs {strides}")
    if base_channels < 1 or latent_dim < 1 or min(strides) < 1:
      raise ValueError(f"bad sizes: base_channels={base_channels}, latent_dim={latent_dim}, "
                       f"strides={strides}")
    dtype = jnp.dtype(dtype)
    self.strides, self.hop, self.latent_dim = tuple(strides), math.prod(strides), latent_dim
    self.dtype = dtype
    widths = [base_channels] + [base_channels * m for m in channel_multipliers]  # C_{-1}, C_i
    common = dict(dilations=tuple(dilations), kernel_size=residual_kernel, dtype=dtype, rngs=rngs)
    with layers.annotate_without_mesh():
      self.enc_in = CausalConv1d(1, widths[0], 7, dtype=dtype, rngs=rngs)
      self.enc_blocks = nnx.List([EncoderBlock(widths[i], widths[i + 1], s, **common)
                                  for i, s in enumerate(strides)])
      self.enc_out = CausalConv1d(widths[-1], latent_dim, 3, dtype=dtype, rngs=rngs)
      self.quantizer = ResidualVectorQuantizer(
          num_quantizers=num_quantizers, codebook_size=codebook_size, dim=latent_dim,
          ema_decay=ema_decay, dead_code_threshold=dead_code_threshold,
          kmeans_iters=kmeans_iters, quantizer_dropout=quantizer_dropout,
          laplace_eps=laplace_eps, rngs=rngs)
      self.dec_in = CausalConv1d(latent_dim, widths[-1], 7, dtype=dtype, rngs=rngs)
      self.dec_blocks = nnx.List([
          DecoderBlock(widths[i + 1], widths[i], s, **common)
          for i, s in reversed(list(enumerate(strides)))])
      self.dec_out = CausalConv1d(widths[0], 1, 7, dtype=dtype, rngs=rngs)

  def num_latents(self, num_samples: int) -> int:
    """l_a = ceil(L / hop)."""
    return -(-num_samples // self.hop)

  def encode(self, audio_bl: jax.Array) -> jax.Array:
    """Waveform [B, L] -> continuous latents [B, ceil(L / hop), d] float32 (right zero-padding).

    Latent j depends on samples 0 .. hop·(j+1) − 1 only (module docstring).
    """
    check_waveform(audio_bl)
    length = audio_bl.shape[1]
    pad = self.num_latents(length) * self.hop - length
    x = jnp.pad(audio_bl.astype(jnp.float32), ((0, 0), (0, pad)))[..., None]
    x = self.enc_in(x)
    for block in self.enc_blocks:
      x = block(x)
    return self.enc_out(jax.nn.elu(x)).astype(jnp.float32)

  def quantize(self, z_bld: jax.Array, *, train: bool, rng: jax.Array | None = None,
               num_quantizers: int | None = None) -> tuple[jax.Array, dict[str, Any]]:
    """RVQ of latents [B, l_a, d] -> (z_q, aux); see `ResidualVectorQuantizer.__call__`."""
    return self.quantizer(z_bld, train=train, rng=rng, num_quantizers=num_quantizers)

  def decode(self, z_bld: jax.Array) -> jax.Array:
    """Latents [B, l_a, d] -> waveform [B, l_a·hop] float32 (crop to the clip length yourself)."""
    if z_bld.ndim != 3 or z_bld.shape[-1] != self.latent_dim:
      raise ValueError(f"latents must be [B, l_a, {self.latent_dim}], got {tuple(z_bld.shape)}")
    x = self.dec_in(z_bld)
    for block in self.dec_blocks:
      x = block(x)
    return self.dec_out(jax.nn.elu(x))[..., 0].astype(jnp.float32)

  def __call__(self, audio_bl: jax.Array, *, train: bool, rng: jax.Array | None = None,
               quantize: bool = True,
               num_quantizers: int | None = None) -> tuple[jax.Array, dict[str, Any]]:
    """Autoencodes [B, L] -> (reconstruction [B, L] float32, aux).

    quantize=False bypasses the RVQ (the continuous latents the diffusion model uses); aux then
    holds a zero commitment loss and no quantizer metrics. aux["latents"] is the pre-quantization
    z [B, l_a, d].
    """
    z_bld = self.encode(audio_bl)
    if quantize:
      z_q, aux = self.quantize(z_bld, train=train, rng=rng, num_quantizers=num_quantizers)
    else:
      z_q, aux = z_bld, {"losses": {"commitment": jnp.zeros((), jnp.float32)}, "metrics": {}}
    aux["latents"] = z_bld
    return self.decode(z_q)[:, :audio_bl.shape[1]], aux
