"""MAGVIT-v2 video autoencoder: causal 3D CNN, adaptive group norm, lookup-free quantization.

AVDiT diffuses the continuous (pre-quantization) latents of this autoencoder (SPEC §2, §8): a
video [B, F, H, W, 3] in [-1, 1] with F = 1 + t·k becomes latents [B, N, H/s, W/s, d] with
N = 1 + (F - 1)/t, where s = 2^(stages - 1) and t = 2^(number of temporal down-samplings). The
paper geometry is 17×128×128×3 -> 5×16×16×8 (s = 8, t = 4).

Causality. Every 3D convolution pads time on the PAST side only, with (kt - 1) ZERO frames
(`CausalConv3d`); the padded frames then only contribute the bias, so frame 0 is encoded from
itself alone. A stride-2 causal conv maps 1 + 2m frames to 1 + m and its output i sees inputs
<= 2i, so after two of them latent j sees frames <= 4j: its own segment (frames 4j-3..4j) and
earlier ones. Group norm takes its statistics per frame (over H, W and the group's channels),
never over time, which would leak the future into the past. The decoder mirrors this:
depth-to-space up-sampling turns frame n into frames (2n, 2n+1) and drops frame 0, so 1 + m
frames become 1 + 2m and output frame t comes from latent segment 0 if t == 0 else
(t - 1)//r + 1; adaptive group norm resizes the latents with that same map.

Encoder: conv_in -> per stage: `num_res_blocks` residual blocks (GroupNorm, swish, causal conv,
twice; 1×1×1 shortcut when channels change), then between stages a learned strided conv
(stride 2 in space, and in time where `temporal_downsample` says) -> `num_mid_res_blocks` blocks
-> GroupNorm, swish, 1×1×1 conv_out to `latent_dim`.
Decoder: conv_in from `latent_dim` -> mid blocks -> per stage (reversed): residual blocks whose
norms are adaptive group norms (scale and shift from the latents by 1×1×1 convs), then
depth-to-space up-sampling -> adaptive norm, swish, conv_out to `in_channels`.

Quantization: lookup-free (`avdit.models.quantizers.LookupFreeQuantizer`, the `quantizer`
attribute): q = sign(z) with commitment and entropy losses; `quantize=False` bypasses it (the
continuous latents for diffusion). The discriminator is `avdit.models.discriminators.
Magvit2Discriminator`, the optional perceptual loss `avdit.models.perceptual.PerceptualLoss`;
parameter counts: `avdit.models.layers.count_params`.

Parameters are float32 `nnx.Param`s made by `layers.make_param` with these logical axis names
(`MAGVIT_AXES`): conv kernels ("conv_t", "conv_h", "conv_w", "conv_in", "conv_out"), conv biases
("conv_out",), group-norm scale and bias ("norm",), dense kernels ("dense_in", "dense_out") and
biases ("dense_out",) (the discriminator's head). Convolutions compute in `dtype` (float32 or
bfloat16); norm statistics, losses and outputs are float32.

Settings (`PAPER_KWARGS`, `TINY_KWARGS`). Paper size, following the MAGVIT-v2 video tokenizer
(and the width/depth of its open image reproduction, Open-MAGVIT2: base 128, 4 residual blocks
per stage, as many mid blocks): base_channels 128, channel_multipliers (1, 2, 2, 4) (three
down-samplings -> ×8 in space), 4 residual blocks per stage and 4 mid blocks, temporal
down-sampling in the last two (×4 in time), 32 groups, latent_dim 8 (AVDiT's d_v): 370.6M
parameters (144.9M encoder, 225.7M decoder; the depth-to-space convs, 512 -> 4096 channels at
the lowest resolution, are most of the difference). The MAGVIT-v2 paper text is not in
../shared/papers: these widths are recalled from the published work, not checked against it.
Tiny: base 16, (1, 2, 2, 2), 1 block per stage, 1 mid block, 8 groups: 9×32×32 clips -> 3×4×4
latents; 1.1M parameters.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from avdit.models import layers
from avdit.models.layers import Axes, Initializer, make_param
from avdit.models.quantizers import LookupFreeQuantizer

lecun_normal = nnx.initializers.lecun_normal()

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

PAPER_KWARGS: dict[str, Any] = dict(
    base_channels=128, channel_multipliers=(1, 2, 2, 4), num_res_blocks=4, num_mid_res_blocks=4,
    temporal_downsample=(False, True, True), latent_dim=8, num_groups=32)
TINY_KWARGS: dict[str, Any] = dict(
    base_channels=16, channel_multipliers=(1, 2, 2, 2), num_res_blocks=1, num_mid_res_blocks=1,
    temporal_downsample=(False, True, True), latent_dim=8, num_groups=8)


@dataclasses.dataclass(frozen=True)
class Magvit2Axes:
  """Logical axis names of each parameter role; a tuple's length is the parameter's rank."""

  conv_kernel: Axes = ("conv_t", "conv_h", "conv_w", "conv_in", "conv_out")
  conv_bias: Axes = ("conv_out",)
  norm_scale: Axes = ("norm",)
  norm_bias: Axes = ("norm",)
  dense_kernel: Axes = ("dense_in", "dense_out")
  dense_bias: Axes = ("dense_out",)


MAGVIT_AXES = Magvit2Axes()



def resolve_dtype(dtype) -> jnp.dtype:
  resolved = jnp.dtype(_DTYPES.get(dtype, dtype) if isinstance(dtype, str) else dtype)
  if resolved not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16)):
    raise ValueError(f"dtype must be float32 or bfloat16, got {dtype!r}")
  return resolved



# --- convolution ---------------------------------------------------------------------------------
def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
  """TF 'SAME' padding (output ceil(size/stride)); the extra pad goes after, as in XLA."""
  out = -(-size // stride)
  total = max((out - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


class CausalConv3d(nnx.Module):
  """3D convolution over [B, T, H, W, C]; time padded with kt-1 zero frames on the past side.

  Output frame i sees input frames <= stride_t·i (causal); space is 'SAME'. With
  `causal=False` time is 'SAME' too (used by the discriminator, which may look ahead).
  """

  def __init__(self, in_channels: int, out_channels: int,
               kernel_size: Sequence[int] = (3, 3, 3), *, strides: Sequence[int] = (1, 1, 1),
               use_bias: bool = True, causal: bool = True, dtype: jnp.dtype = jnp.float32,
               rngs: nnx.Rngs, kernel_init: Initializer = lecun_normal,
               bias_init: Initializer = layers.zeros):
    self.kernel_size = tuple(int(k) for k in kernel_size)
    self.strides = tuple(int(s) for s in strides)
    if len(self.kernel_size) != 3 or len(self.strides) != 3:
      raise ValueError(f"kernel_size {kernel_size} and strides {strides} must have 3 entries")
    self.in_channels, self.out_channels = in_channels, out_channels
    self.kernel = make_param(rngs, kernel_init,
                                    (*self.kernel_size, in_channels, out_channels),
                                    MAGVIT_AXES.conv_kernel)
    self.bias = (make_param(rngs, bias_init, (out_channels,), MAGVIT_AXES.conv_bias)
                 if use_bias else nnx.data(None))
    self.causal = causal
    self.dtype = dtype

  def __call__(self, x_bthwc: jax.Array) -> jax.Array:
    """[B, T, H, W, C_in] -> [B, floor((T-1)/st)+1 (causal), ceil(H/sh), ceil(W/sw), C_out]."""
    if x_bthwc.shape[-1] != self.in_channels:
      raise ValueError(f"expected {self.in_channels} input channels, got {x_bthwc.shape}")
    kernel = self.kernel[...]
    if self.kernel_size == (1, 1, 1) and self.strides == (1, 1, 1):
      # A pointwise conv is a matmul; this path keeps bfloat16 fast on every backend.
      y = layers.matmul_in_dtype("bthwi,io->bthwo", x_bthwc, kernel[0, 0, 0], self.dtype)
    else:
      y = conv3d_as_2d(x_bthwc.astype(self.dtype), kernel.astype(self.dtype), self.strides,
                       causal=self.causal)
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    return y


def conv3d_as_2d(x_bthwc: jax.Array, kernel_thwio: jax.Array, strides: Sequence[int], *,
                 causal: bool) -> jax.Array:
  """3D convolution (time causal or 'SAME', space 'SAME') as one 2D convolution.

  The kt time taps are stacked on the channel axis ([B·T', H, W, kt·C]) and convolved with the
  kernel reshaped to [kh, kw, kt·C, O]: the same sums as `conv_general_dilated` in 3D, but
  XLA's CPU backend runs 2D convolutions (and their gradients) 2.5-6x faster than 3D ones at
  these widths (measured on 2 cores), and TPUs see a deeper contraction.
  """
  (kt, kh, kw, c, o), (st, sh, sw) = kernel_thwio.shape, strides
  b, t, h, w, _ = x_bthwc.shape
  pad_t = (kt - 1, 0) if causal else same_padding(t, kt, st)
  x = jnp.pad(x_bthwc, ((0, 0), pad_t, (0, 0), (0, 0), (0, 0)))
  t_out = (x.shape[1] - kt) // st + 1
  taps = [x[:, a:a + st * (t_out - 1) + 1:st] for a in range(kt)]
  stacked = taps[0] if kt == 1 else jnp.concatenate(taps, axis=-1)
  kernel_hwio = kernel_thwio.transpose(1, 2, 0, 3, 4).reshape(kh, kw, kt * c, o)
  y = jax.lax.conv_general_dilated(
      stacked.reshape(b * t_out, h, w, kt * c), kernel_hwio, (sh, sw),
      [same_padding(h, kh, sh), same_padding(w, kw, sw)],
      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return y.reshape(b, t_out, *y.shape[1:])


def depth_to_space(x_bthwc: jax.Array, *, time_factor: int, space_factor: int) -> jax.Array:
  """[B, T, H, W, (tf·sf·sf·C)] -> [B, T·tf - (tf - 1), H·sf, W·sf, C].

  Channels are read in (time, row, column, channel) order: channel ((a·sf + i)·sf + j)·C + c
  goes to frame T_idx·tf + a, row H_idx·sf + i, column W_idx·sf + j. With tf > 1 the first
  tf - 1 output frames are dropped, so 1 + m frames become 1 + tf·m and frame 0 stays alone.
  """
  b, t, h, w, channels = x_bthwc.shape
  factor = time_factor * space_factor * space_factor
  if channels % factor:
    raise ValueError(f"{channels} channels are not divisible by {time_factor}·{space_factor}²")
  c = channels // factor
  x = x_bthwc.reshape(b, t, h, w, time_factor, space_factor, space_factor, c)
  x = x.transpose(0, 1, 4, 2, 5, 3, 6, 7)  # [B, T, tf, H, sf, W, sf, C]
  x = x.reshape(b, t * time_factor, h * space_factor, w * space_factor, c)
  return x[:, time_factor - 1:]


def segment_index(num_frames: int, num_segments: int) -> np.ndarray:
  """For each of 1 + r(N-1) frames, its segment: 0 for frame 0, else (t - 1)//r + 1."""
  if num_segments == num_frames:
    return np.arange(num_frames)
  if num_segments < 2 or (num_frames - 1) % (num_segments - 1):
    raise ValueError(f"{num_frames} frames cannot be split into {num_segments} causal segments")
  ratio = (num_frames - 1) // (num_segments - 1)
  t = np.arange(num_frames)
  return np.where(t == 0, 0, (t - 1) // ratio + 1)


def resize_latent(y_bnhwc: jax.Array, size_thw: tuple[int, int, int]) -> jax.Array:
  """Nearest resize of latent-rate features to (T, H, W) with the causal segment map in time."""
  _, n, h, w, _ = y_bnhwc.shape
  t, hh, ww = size_thw
  if hh % h or ww % w:
    raise ValueError(f"cannot nearest-resize {(h, w)} to {(hh, ww)}")
  if t != n:
    y_bnhwc = y_bnhwc[:, segment_index(t, n)]
  return jnp.repeat(jnp.repeat(y_bnhwc, hh // h, axis=2), ww // w, axis=3)


# --- normalization -------------------------------------------------------------------------------
def group_norm(x_bthwc: jax.Array, num_groups: int, eps: float) -> jax.Array:
  """Group norm without affine, statistics per frame over (H, W, C/G), float32 result.

  Per-frame statistics keep the network causal (pooling over time would let later frames shift
  earlier ones).
  """
  b, t, h, w, c = x_bthwc.shape
  x = x_bthwc.astype(jnp.float32).reshape(b, t, h, w, num_groups, c // num_groups)
  mean = jnp.mean(x, axis=(2, 3, 5), keepdims=True)
  var = jnp.mean(jnp.square(x - mean), axis=(2, 3, 5), keepdims=True)
  return ((x - mean) * jax.lax.rsqrt(var + eps)).reshape(b, t, h, w, c)


def _check_groups(channels: int, num_groups: int) -> None:
  if channels % num_groups:
    raise ValueError(f"{channels} channels are not divisible by num_groups={num_groups}")


class GroupNorm(nnx.Module):
  """Per-frame group norm with a learned per-channel scale and bias."""

  def __init__(self, channels: int, *, num_groups: int, eps: float, dtype: jnp.dtype,
               rngs: nnx.Rngs):
    _check_groups(channels, num_groups)
    self.scale = make_param(rngs, layers.ones, (channels,), MAGVIT_AXES.norm_scale)
    self.bias = make_param(rngs, layers.zeros, (channels,), MAGVIT_AXES.norm_bias)
    self.num_groups, self.eps, self.dtype = num_groups, eps, dtype

  def __call__(self, x_bthwc: jax.Array, z_bnhwd: jax.Array | None = None) -> jax.Array:
    del z_bnhwd  # Same call signature as AdaptiveGroupNorm.
    y = group_norm(x_bthwc, self.num_groups, self.eps) * self.scale[...] + self.bias[...]
    return y.astype(self.dtype)


class AdaptiveGroupNorm(nnx.Module):
  """group_norm(x) · scale(z) + shift(z), scale/shift = 1×1×1 convs of the latents z.

  The convs run at the latent resolution and are then nearest-resized (a pointwise conv commutes
  with nearest resizing, and the latent grid is 8³-64× smaller). Kernels start at zero with
  scale bias 1, so at init this is a plain group norm; the kernels still get gradients.
  """

  def __init__(self, channels: int, latent_dim: int, *, num_groups: int, eps: float,
               dtype: jnp.dtype, rngs: nnx.Rngs):
    _check_groups(channels, num_groups)
    pointwise = dict(kernel_size=(1, 1, 1), kernel_init=layers.zeros, dtype=dtype, rngs=rngs)
    self.to_scale = CausalConv3d(latent_dim, channels, bias_init=layers.ones, **pointwise)
    self.to_shift = CausalConv3d(latent_dim, channels, bias_init=layers.zeros, **pointwise)
    self.num_groups, self.eps, self.dtype = num_groups, eps, dtype

  def __call__(self, x_bthwc: jax.Array, z_bnhwd: jax.Array) -> jax.Array:
    size = x_bthwc.shape[1:4]
    scale = resize_latent(self.to_scale(z_bnhwd), size).astype(jnp.float32)
    shift = resize_latent(self.to_shift(z_bnhwd), size).astype(jnp.float32)
    return (group_norm(x_bthwc, self.num_groups, self.eps) * scale + shift).astype(self.dtype)


# --- blocks --------------------------------------------------------------------------------------
class ResBlock(nnx.Module):
  """x + conv(swish(norm(conv(swish(norm(x)))))); 1×1×1 shortcut when channels change; the
  second conv starts at zero.

  With `latent_dim` set, both norms are adaptive group norms conditioned on the latents.
  """

  def __init__(self, in_channels: int, out_channels: int, *, num_groups: int, kernel_size: int,
               eps: float, dtype: jnp.dtype, rngs: nnx.Rngs, latent_dim: int | None = None):
    def norm(channels):
      if latent_dim is None:
        return GroupNorm(channels, num_groups=num_groups, eps=eps, dtype=dtype, rngs=rngs)
      return AdaptiveGroupNorm(channels, latent_dim, num_groups=num_groups, eps=eps, dtype=dtype,
                               rngs=rngs)

    k = (kernel_size,) * 3
    self.norm1 = norm(in_channels)
    self.conv1 = CausalConv3d(in_channels, out_channels, k, dtype=dtype, rngs=rngs)
    self.norm2 = norm(out_channels)
    # The residual branch starts at zero, so every block starts as the identity (or its 1x1
    # shortcut): the small default model then learns its first colours ~2x faster.
    self.conv2 = CausalConv3d(out_channels, out_channels, k, dtype=dtype, rngs=rngs,
                              kernel_init=layers.zeros)
    self.shortcut = (CausalConv3d(in_channels, out_channels, (1, 1, 1), dtype=dtype, rngs=rngs)
                     if in_channels != out_channels else nnx.data(None))

  def __call__(self, x_bthwc: jax.Array, z_bnhwd: jax.Array | None = None) -> jax.Array:
    h = self.conv1(jax.nn.swish(self.norm1(x_bthwc, z_bnhwd)))
    h = self.conv2(jax.nn.swish(self.norm2(h, z_bnhwd)))
    skip = x_bthwc if self.shortcut is None else self.shortcut(x_bthwc)
    return skip.astype(h.dtype) + h


class DepthToSpaceUpsample(nnx.Module):
  """Causal conv to C·tf·2·2 channels, then `depth_to_space` (×2 in space, ×tf in time)."""

  def __init__(self, channels: int, *, temporal: bool, kernel_size: int, dtype: jnp.dtype,
               rngs: nnx.Rngs):
    self.time_factor = 2 if temporal else 1
    self.conv = CausalConv3d(channels, channels * self.time_factor * 4, (kernel_size,) * 3,
                             dtype=dtype, rngs=rngs)

  def __call__(self, x_bthwc: jax.Array) -> jax.Array:
    return depth_to_space(self.conv(x_bthwc), time_factor=self.time_factor, space_factor=2)


# --- the autoencoder -----------------------------------------------------------------------------
class Magvit2(nnx.Module):
  """MAGVIT-v2 causal video autoencoder (see the module docstring)."""

  def __init__(self, *, base_channels: int = 128,
               channel_multipliers: Sequence[int] = (1, 2, 2, 4), num_res_blocks: int = 4,
               num_mid_res_blocks: int = 4,
               temporal_downsample: Sequence[bool] = (False, True, True), latent_dim: int = 8,
               num_groups: int = 32, kernel_size: int = 3, in_channels: int = 3,
               norm_eps: float = 1e-6, entropy_temperature: float = 0.01,
               entropy_mode: str = "exact", encoder_output_norm: bool = True,
               dtype: Any = jnp.float32, rngs: nnx.Rngs):
    """Builds encoder, quantizer and decoder.

    Args:
      base_channels: width of the first stage.
      channel_multipliers: width of stage i is base_channels·channel_multipliers[i]; there is a
        ×2 spatial down-sampling between consecutive stages (spatial factor 2^(stages-1)).
      num_res_blocks: residual blocks per stage (encoder and decoder).
      num_mid_res_blocks: residual blocks after the last encoder stage / first in the decoder.
      temporal_downsample: one flag per down-sampling (len(channel_multipliers) - 1): whether it
        also halves time (temporal factor 2^sum).
      latent_dim: latent channels d (LFQ codebook 2^d).
      num_groups: group-norm groups (divides every stage width).
      kernel_size: size of every non-pointwise conv kernel in all three dimensions.
      in_channels: video channels (3).
      norm_eps: group-norm epsilon.
      entropy_temperature: τ of the LFQ code distribution.
      entropy_mode: "exact" or "factorized" LFQ entropy (see `LookupFreeQuantizer`).
      encoder_output_norm: the group norm + swish before the encoder's last 1x1 conv (as
        MAGVIT-v2). Its per-frame statistics remove each group's mean; with few channels per
        group on a small latent grid that is most of a clip's colour, which the decoder cannot
        get back (the 32x32 default config turns it off: 14 -> 19 dB after 300 steps).
      dtype: compute dtype, float32 or bfloat16 (parameters are float32).
      rngs: parameter initialization.
    """
    mults = tuple(int(m) for m in channel_multipliers)
    temporal = tuple(bool(t) for t in temporal_downsample)
    if not mults or min(mults) < 1:
      raise ValueError(f"channel_multipliers must be non-empty positive ints, got {mults}")
    if len(temporal) != len(mults) - 1:
      raise ValueError(f"temporal_downsample needs one flag per down-sampling "
                       f"({len(mults) - 1} for {len(mults)} stages), got {temporal}")
    if kernel_size < 1 or num_res_blocks < 1 or num_mid_res_blocks < 0:
      raise ValueError("kernel_size and num_res_blocks must be >= 1, num_mid_res_blocks >= 0")
    self.dtype = dtype = resolve_dtype(dtype)
    self.channel_multipliers, self.temporal_downsample = mults, temporal
    self.latent_dim, self.in_channels = latent_dim, in_channels
    self.spatial_factor = 2 ** (len(mults) - 1)
    self.temporal_factor = 2 ** sum(temporal)
    widths = [base_channels * m for m in mults]
    k3 = (kernel_size,) * 3
    common = dict(num_groups=num_groups, kernel_size=kernel_size, eps=norm_eps, dtype=dtype,
                  rngs=rngs)

    # Encoder.
    self.enc_conv_in = CausalConv3d(in_channels, widths[0], k3, dtype=dtype, rngs=rngs)
    enc_blocks, enc_down = [], []
    channels = widths[0]
    for stage, width in enumerate(widths):
      for _ in range(num_res_blocks):
        enc_blocks.append(ResBlock(channels, width, **common))
        channels = width
      if stage < len(widths) - 1:
        strides = (2 if temporal[stage] else 1, 2, 2)
        enc_down.append(CausalConv3d(channels, channels, k3, strides=strides, dtype=dtype,
                                     rngs=rngs))
    self.enc_blocks = nnx.List(enc_blocks)
    self.enc_down = nnx.List(enc_down)
    self.enc_mid = nnx.List([ResBlock(channels, channels, **common)
                             for _ in range(num_mid_res_blocks)])
    self.enc_norm_out = (GroupNorm(channels, num_groups=num_groups, eps=norm_eps, dtype=dtype,
                                   rngs=rngs) if encoder_output_norm else nnx.data(None))
    self.enc_conv_out = CausalConv3d(channels, latent_dim, (1, 1, 1), dtype=dtype, rngs=rngs)

    self.quantizer = LookupFreeQuantizer(latent_dim, entropy_temperature=entropy_temperature,
                                         entropy_mode=entropy_mode)

    # Decoder (mirror image; norms conditioned on the latents).
    adaptive = dict(common, latent_dim=latent_dim)
    channels = widths[-1]
    self.dec_conv_in = CausalConv3d(latent_dim, channels, k3, dtype=dtype, rngs=rngs)
    self.dec_mid = nnx.List([ResBlock(channels, channels, **adaptive)
                             for _ in range(num_mid_res_blocks)])
    dec_blocks, dec_up = [], []
    for stage in reversed(range(len(widths))):
      for _ in range(num_res_blocks):
        dec_blocks.append(ResBlock(channels, widths[stage], **adaptive))
        channels = widths[stage]
      if stage > 0:
        dec_up.append(DepthToSpaceUpsample(channels, temporal=temporal[stage - 1],
                                           kernel_size=kernel_size, dtype=dtype, rngs=rngs))
    self.dec_blocks = nnx.List(dec_blocks)
    self.dec_up = nnx.List(dec_up)
    self.dec_norm_out = AdaptiveGroupNorm(channels, latent_dim, num_groups=num_groups,
                                          eps=norm_eps, dtype=dtype, rngs=rngs)
    self.dec_conv_out = CausalConv3d(channels, in_channels, k3, dtype=dtype, rngs=rngs)
    self.num_res_blocks = num_res_blocks

  # --- geometry ---------------------------------------------------------------------------------
  def latent_shape(self, video_shape: Sequence[int]) -> tuple[int, ...]:
    """[B, F, H, W, C] -> [B, N, H/s, W/s, d], validating the video geometry."""
    if len(video_shape) != 5:
      raise ValueError(f"video must be [B, F, H, W, {self.in_channels}], got {tuple(video_shape)}")
    b, f, h, w, c = video_shape
    tf, sf = self.temporal_factor, self.spatial_factor
    if c != self.in_channels:
      raise ValueError(f"video has {c} channels, expected {self.in_channels} "
                       f"(shape {tuple(video_shape)})")
    if f < 1 or (f - 1) % tf:
      raise ValueError(f"{f} frames is not 1 + {tf}k: the first frame is encoded alone and the "
                       f"rest in groups of {tf} (e.g. {1 + tf * max(1, (f - 1) // tf)} frames)")
    if h % sf or w % sf:
      raise ValueError(f"height and width ({h}, {w}) must be divisible by the spatial factor "
                       f"{sf}")
    return (b, 1 + (f - 1) // tf, h // sf, w // sf, self.latent_dim)

  def video_shape(self, latent_shape: Sequence[int]) -> tuple[int, ...]:
    """[B, N, h, w, d] -> [B, 1 + t(N-1), h·s, w·s, C], validating the latents."""
    if len(latent_shape) != 5 or latent_shape[-1] != self.latent_dim or latent_shape[1] < 1:
      raise ValueError(f"latents must be [B, N >= 1, h, w, {self.latent_dim}], got "
                       f"{tuple(latent_shape)}")
    b, n, h, w, _ = latent_shape
    sf = self.spatial_factor
    return (b, 1 + self.temporal_factor * (n - 1), h * sf, w * sf, self.in_channels)

  # --- encode / quantize / decode -----------------------------------------------------------------
  def encode(self, video_bfhwc: jax.Array) -> jax.Array:
    """Video [B, F, H, W, C] in [-1, 1] -> continuous latents float32 [B, N, H/s, W/s, d]."""
    expected = self.latent_shape(video_bfhwc.shape)
    x = self.enc_conv_in(video_bfhwc)
    blocks = iter(self.enc_blocks)
    for stage in range(len(self.channel_multipliers)):
      for _ in range(self.num_res_blocks):
        x = next(blocks)(x)
      if stage < len(self.enc_down):
        x = self.enc_down[stage](x)
    for block in self.enc_mid:
      x = block(x)
    if self.enc_norm_out is not None:
      x = jax.nn.swish(self.enc_norm_out(x))
    z = self.enc_conv_out(x).astype(jnp.float32)
    assert z.shape == expected, (z.shape, expected)
    return z

  def quantize(self, z_bnhwd: jax.Array, *, bypass: bool = False) -> tuple[jax.Array, dict]:
    """LFQ of the latents: (z_q, {"losses": {...}, "metrics": {...}})."""
    return self.quantizer(z_bnhwd, bypass=bypass)

  def decode(self, z_bnhwd: jax.Array) -> jax.Array:
    """Latents [B, N, h, w, d] -> video float32 [B, 1 + t(N-1), h·s, w·s, C] (not clipped)."""
    expected = self.video_shape(z_bnhwd.shape)
    z = z_bnhwd.astype(self.dtype)
    x = self.dec_conv_in(z)
    for block in self.dec_mid:
      x = block(x, z)
    blocks = iter(self.dec_blocks)
    for stage in range(len(self.channel_multipliers)):
      for _ in range(self.num_res_blocks):
        x = next(blocks)(x, z)
      if stage < len(self.dec_up):
        x = self.dec_up[stage](x)
    video = self.dec_conv_out(jax.nn.swish(self.dec_norm_out(x, z))).astype(jnp.float32)
    assert video.shape == expected, (video.shape, expected)
    return video

  def __call__(self, video_bfhwc: jax.Array, *,
               quantize: bool = True) -> tuple[jax.Array, dict]:
    """-> (reconstruction float32 [B, F, H, W, C], aux); `quantize=False` bypasses LFQ."""
    z_q, aux = self.quantize(self.encode(video_bfhwc), bypass=not quantize)
    return self.decode(z_q), aux
