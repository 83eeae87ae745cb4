"""The autoencoders' GAN discriminators; their losses are in `avdit.models.gan_losses`.

Video: `Magvit2Discriminator`, a StyleGAN-like 3D residual discriminator (MAGVIT-v2's
`CausalConv3d` without causal padding) giving one float32 logit per clip [B]. Its parameters
carry `magvit2.MAGVIT_AXES` names (conv kernels and biases; head ("dense_in", "dense_out") and
("dense_out",)).

Audio (SoundStream), each returning a list over discriminators of `(logits, [feature maps])`:
  * `StftDiscriminator`: complex STFT (window 1024, hop 256; the Nyquist bin dropped so the
    frequency axis is W/2) as 2 channels [B, T, F, 2] -> 7×7 conv -> blocks of (x + lrelu(3×3
    conv)) then a (s_t+2)×(s_f+2) conv with stride (s_t, s_f) alternating (1, 2)/(2, 2) ->
    a 1×F' conv over the remaining frequency bins -> logits [B, T'].
  * `WaveDiscriminator` (MelGAN): conv 15 -> grouped strided convs (kernel 41, stride 4, groups
    C_in/4) -> conv 5 -> conv 3 to logits [B, T']; `MultiScaleWaveDiscriminator` applies one at
    scales 1, 2, 4 (average-pooled input, kernel 4 stride 2).
  Leaky ReLU (0.2) everywhere; zero "SAME" padding (not causal; they only judge).
Their parameters carry `soundstream.AUDIO_AXES` names (conv1d_kernel, conv2d_kernel, conv_bias).
Sizes: `soundstream.{PAPER,TINY}_{STFT,WAVE}_DISCRIMINATOR`.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from avdit.models import audio_losses
from avdit.models import layers
from avdit.models.layers import make_param
from avdit.models.magvit2 import MAGVIT_AXES, CausalConv3d, resolve_dtype
from avdit.models.soundstream import AUDIO_AXES, check_waveform, conv_init, conv_nd

_LEAKY_SLOPE = 0.2


# --- video ---------------------------------------------------------------------------------------
class DiscriminatorBlock(nnx.Module):
  """StyleGAN-style residual down-sampling block: (conv, lrelu, strided conv, lrelu) + skip."""

  def __init__(self, in_channels: int, out_channels: int, *, kernel_size: int, slope: float,
               dtype: jnp.dtype, rngs: nnx.Rngs):
    k3 = (kernel_size,) * 3
    conv = dict(causal=False, dtype=dtype, rngs=rngs)
    self.conv1 = CausalConv3d(in_channels, in_channels, k3, **conv)
    self.conv2 = CausalConv3d(in_channels, out_channels, k3, strides=(2, 2, 2), **conv)
    self.skip = CausalConv3d(in_channels, out_channels, (1, 1, 1), strides=(2, 2, 2),
                             use_bias=False, **conv)
    self.slope = slope

  def __call__(self, x_bthwc: jax.Array) -> jax.Array:
    h = jax.nn.leaky_relu(self.conv1(x_bthwc), self.slope)
    h = jax.nn.leaky_relu(self.conv2(h), self.slope)
    # 1/sqrt(2) keeps the residual sum at unit variance (StyleGAN2).
    return (h + self.skip(x_bthwc)) * (1 / math.sqrt(2))


class Magvit2Discriminator(nnx.Module):
  """3D residual discriminator: video [B, F, H, W, C] -> one float32 logit per clip [B].

  conv_in, then one ×2 (time, height, width) down-sampling residual block per multiplier, a
  final conv, a mean over the remaining (T, H, W) (any input size works), dense, dense -> 1.
  Convs look both ways in time (not causal): the discriminator judges whole clips. The default
  widths (64, multipliers (2, 4, 4, 4, 4)) are this module's choice, not a published setting.
  """

  def __init__(self, *, base_channels: int = 64,
               channel_multipliers: Sequence[int] = (2, 4, 4, 4, 4), kernel_size: int = 3,
               in_channels: int = 3, leaky_relu_slope: float = 0.2, dtype: Any = jnp.float32,
               rngs: nnx.Rngs):
    self.dtype = dtype = resolve_dtype(dtype)
    self.in_channels = in_channels
    self.slope = leaky_relu_slope
    k3 = (kernel_size,) * 3
    with layers.annotate_without_mesh():
      self.conv_in = CausalConv3d(in_channels, base_channels, k3, causal=False, dtype=dtype,
                                  rngs=rngs)
      blocks, channels = [], base_channels
      for mult in channel_multipliers:
        blocks.append(DiscriminatorBlock(channels, base_channels * mult, kernel_size=kernel_size,
                                         slope=leaky_relu_slope, dtype=dtype, rngs=rngs))
        channels = base_channels * mult
      self.blocks = nnx.List(blocks)
      self.conv_out = CausalConv3d(channels, channels, k3, causal=False, dtype=dtype, rngs=rngs)
      dense = dict(kernel_axes=MAGVIT_AXES.dense_kernel, bias_axes=MAGVIT_AXES.dense_bias,
                   dtype=dtype, rngs=rngs)
      self.dense = layers.Dense(channels, channels, **dense)
      self.logit = layers.Dense(channels, 1, **dense)

  def __call__(self, video_bfhwc: jax.Array) -> jax.Array:
    if video_bfhwc.ndim != 5 or video_bfhwc.shape[-1] != self.in_channels:
      raise ValueError(f"video must be [B, F, H, W, {self.in_channels}], got "
                       f"{video_bfhwc.shape}")
    x = jax.nn.leaky_relu(self.conv_in(video_bfhwc), self.slope)
    for block in self.blocks:
      x = block(x)
    x = jax.nn.leaky_relu(self.conv_out(x), self.slope)
    pooled_bc = jnp.mean(x.astype(jnp.float32), axis=(1, 2, 3))
    h = jax.nn.leaky_relu(self.dense(pooled_bc), self.slope)
    return self.logit(h)[:, 0].astype(jnp.float32)


# --- audio ---------------------------------------------------------------------------------------
class Conv1d(nnx.Module):
  """Non-causal 1D conv with zero "SAME" padding ([B, T, C] -> [B, ceil(T/stride), C_out])."""

  def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, stride: int = 1,
               groups: int = 1, dtype: jnp.dtype, rngs: nnx.Rngs):
    if in_channels % groups or out_channels % groups:
      raise ValueError(f"groups={groups} must divide {in_channels} and {out_channels}")
    self.kernel = make_param(rngs, conv_init, (kernel_size, in_channels // groups, out_channels),
                             AUDIO_AXES.conv1d_kernel)
    self.bias = make_param(rngs, layers.zeros, (out_channels,), AUDIO_AXES.conv_bias)
    self.stride, self.groups, self.dtype = stride, groups, dtype

  def __call__(self, x_btc: jax.Array) -> jax.Array:
    y = conv_nd(x_btc, self.kernel[...], strides=(self.stride,), padding="SAME",
                groups=self.groups, dtype=self.dtype)
    return y + self.bias[...].astype(self.dtype)


class Conv2d(nnx.Module):
  """2D conv over [B, T, F, C] with zero "SAME" padding, or "VALID"."""

  def __init__(self, in_channels: int, out_channels: int, kernel_size: tuple[int, int], *,
               strides: tuple[int, int] = (1, 1), padding: str = "SAME", dtype: jnp.dtype,
               rngs: nnx.Rngs):
    self.kernel = make_param(rngs, conv_init, (*kernel_size, in_channels, out_channels),
                             AUDIO_AXES.conv2d_kernel)
    self.bias = make_param(rngs, layers.zeros, (out_channels,), AUDIO_AXES.conv_bias)
    self.strides, self.padding, self.dtype = tuple(strides), padding, dtype

  def __call__(self, x_btfc: jax.Array) -> jax.Array:
    y = conv_nd(x_btfc, self.kernel[...], strides=self.strides, padding=self.padding,
                dtype=self.dtype)
    return y + self.bias[...].astype(self.dtype)


def _leaky(x: jax.Array) -> jax.Array:
  return jax.nn.leaky_relu(x, _LEAKY_SLOPE)


DiscriminatorOutput = list[tuple[jax.Array, list[jax.Array]]]


class StftDiscriminator(nnx.Module):
  """SoundStream's STFT discriminator: [B, L] -> [(logits [B, T'], [feature maps])].

  Features are the activations after the first conv and after each block, [B, T_i, F_i, C_i].
  """

  def __init__(self, *, channels: int = 32,
               channel_multipliers: Sequence[int] = (1, 2, 4, 4, 8, 8),
               strides: Sequence[tuple[int, int]] = ((1, 2), (2, 2), (1, 2), (2, 2), (1, 2),
                                                     (2, 2)),
               n_fft: int = 1024, hop: int = 256, dtype: Any = jnp.float32, rngs: nnx.Rngs):
    if len(channel_multipliers) != len(strides):
      raise ValueError(f"one multiplier per stride: {channel_multipliers} vs {strides}")
    dtype = jnp.dtype(dtype)
    self.n_fft, self.hop, self.dtype = n_fft, hop, dtype
    widths = [channels] + [channels * m for m in channel_multipliers]
    with layers.annotate_without_mesh():
      self.conv_in = Conv2d(2, channels, (7, 7), dtype=dtype, rngs=rngs)
      self.mix = nnx.List([Conv2d(widths[i], widths[i], (3, 3), dtype=dtype, rngs=rngs)
                           for i in range(len(strides))])
      self.down = nnx.List([
          Conv2d(widths[i], widths[i + 1], (st + 2, sf + 2), strides=(st, sf), dtype=dtype,
                 rngs=rngs) for i, (st, sf) in enumerate(strides)])
      freq_bins = n_fft // 2  # Nyquist bin dropped
      for _, sf in strides:
        freq_bins = -(-freq_bins // sf)
      self.conv_out = Conv2d(widths[-1], 1, (1, freq_bins), padding="VALID", dtype=dtype,
                             rngs=rngs)

  def __call__(self, audio_bl: jax.Array) -> DiscriminatorOutput:
    check_waveform(audio_bl)
    spec_btk = audio_losses.stft(audio_bl, self.n_fft, self.hop, center=False)
    spec_btk = spec_btk[..., :self.n_fft // 2]
    x = jnp.stack([spec_btk.real, spec_btk.imag], axis=-1).astype(self.dtype)  # [B, T, F, 2]
    x = _leaky(self.conv_in(x))
    features = [x]
    for mix, down in zip(self.mix, self.down):
      x = x + _leaky(mix(x))
      x = _leaky(down(x))
      features.append(x)
    logits = self.conv_out(x)[:, :, 0, 0].astype(jnp.float32)
    return [(logits, features)]


class WaveDiscriminator(nnx.Module):
  """MelGAN waveform discriminator on [B, L]: -> (logits [B, T'], [feature maps [B, T_i, C_i]]).

  conv (first_kernel) to channels[0]; for each later width a grouped strided conv (down_kernel,
  stride, groups = C_in / group_size); conv (last_kernel) at the last width; conv 3 to 1 logit.
  """

  def __init__(self, *, channels: Sequence[int] = (16, 64, 256, 1024, 1024),
               first_kernel: int = 15, down_kernel: int = 41, stride: int = 4,
               group_size: int = 4, last_kernel: int = 5, dtype: Any = jnp.float32,
               rngs: nnx.Rngs):
    dtype = jnp.dtype(dtype)
    with layers.annotate_without_mesh():
      self.conv_in = Conv1d(1, channels[0], first_kernel, dtype=dtype, rngs=rngs)
      self.down = nnx.List([
          Conv1d(c_in, c_out, down_kernel, stride=stride, groups=max(1, c_in // group_size),
                 dtype=dtype, rngs=rngs) for c_in, c_out in zip(channels[:-1], channels[1:])])
      self.conv_last = Conv1d(channels[-1], channels[-1], last_kernel, dtype=dtype, rngs=rngs)
      self.conv_out = Conv1d(channels[-1], 1, 3, dtype=dtype, rngs=rngs)
    self.dtype = dtype

  def __call__(self, audio_bl: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
    x = _leaky(self.conv_in(audio_bl[..., None]))
    features = [x]
    for conv in self.down:
      x = _leaky(conv(x))
      features.append(x)
    x = _leaky(self.conv_last(x))
    features.append(x)
    return self.conv_out(x)[..., 0].astype(jnp.float32), features


def avg_pool_1d(audio_bl: jax.Array, window: int = 4, stride: int = 2, pad: int = 1) -> jax.Array:
  """Average pooling over time with zero padding excluded from the counts: [B, L] -> [B, L']."""
  dims, strides, padding = (1, window), (1, stride), ((0, 0), (pad, pad))
  sums = jax.lax.reduce_window(audio_bl, 0.0, jax.lax.add, dims, strides, padding)
  counts = jax.lax.reduce_window(jnp.ones_like(audio_bl), 0.0, jax.lax.add, dims, strides, padding)
  return sums / counts


class MultiScaleWaveDiscriminator(nnx.Module):
  """`num_scales` WaveDiscriminators on the waveform average-pooled ×1, ×2, ×4, ..."""

  def __init__(self, *, num_scales: int = 3, dtype: Any = jnp.float32, rngs: nnx.Rngs,
               **wave_kwargs):
    self.discriminators = nnx.List([WaveDiscriminator(dtype=dtype, rngs=rngs, **wave_kwargs)
                                    for _ in range(num_scales)])

  def __call__(self, audio_bl: jax.Array) -> DiscriminatorOutput:
    check_waveform(audio_bl)
    x = audio_bl.astype(jnp.float32)
    outputs = []
    for i, disc in enumerate(self.discriminators):
      if i:
        x = avg_pool_1d(x)
      outputs.append(disc(x))
    return outputs


class SoundStreamDiscriminator(nnx.Module):
  """The paper's ensemble: STFT discriminator + 3-scale waveform discriminators (4 outputs)."""

  def __init__(self, *, stft_kwargs: dict | None = None, wave_kwargs: dict | None = None,
               dtype: Any = jnp.float32, rngs: nnx.Rngs):
    self.stft = StftDiscriminator(**(stft_kwargs or {}), dtype=dtype, rngs=rngs)
    self.wave = MultiScaleWaveDiscriminator(**(wave_kwargs or {}), dtype=dtype, rngs=rngs)

  def __call__(self, audio_bl: jax.Array) -> DiscriminatorOutput:
    return self.stft(audio_bl) + self.wave(audio_bl)
