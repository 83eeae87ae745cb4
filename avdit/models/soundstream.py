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

Residual vector quantizer (`ResidualVectorQuantizer`): `num_quantizers` stages of
`codebook_size` codes of dimension d, quantizing the residual of the previous stages, in float32
with squared Euclidean distances. Training-time machinery, all jit-compatible:
  * EMA codebooks: per stage, EMA (decay `ema_decay`) of the code counts ("cluster sizes") and of
    the sums of the vectors assigned to each code; codebook = sums / Laplace-smoothed counts,
    (n_k + ε) / (Σn + K·ε) · Σn. No gradient reaches the codebooks.
  * k-means init: on the first training batch (flag `initialized`), each stage's codebook is
    set by `kmeans_iters` Lloyd iterations over that stage's residual vectors of the batch
    (stages in order, each on the residual left by the already-initialized ones); the cluster
    sizes start at the k-means cluster counts and the sums at centroid·count.
  * dead-code replacement: after the EMA step, codes whose EMA cluster size is below
    `dead_code_threshold` are replaced by random residual vectors of the current batch (their
    sums are reset to vector·smoothed count so the stored statistics stay consistent). The
    cluster size counts assigned vectors per batch, so keep the threshold well below the uniform
    rate B·l_a / K (paper size: a batch of 16 clips gives 16·107 / 1024 ≈ 1.7; EnCodec's 2 would
    then recycle most codes every step; the default here is 1/4 of that rate at batch 16).
  * quantizer dropout: in training, example b uses the first n_b ~ Uniform{1..num_quantizers}
    stages (drawn per example from `rng`); only the vectors of examples that use a stage
    update that stage's statistics.
  * straight-through estimator: z_q = z + sg(ẑ − z); commitment loss mean ‖z − sg(ẑ)‖² (mean
    over all elements).
  All of this state lives in `CodebookState` variables (a `nnx.Variable` subclass, not
  `nnx.Param`): a trainer must keep it out of the optimizer (`nnx.Optimizer(model, tx,
  wrt=nnx.Param)`), and carry it as mutable model state that the forward pass with `train=True`
  updates in place (nnx.jit / nnx.value_and_grad propagate the updates).

Discriminators (for the GAN losses in `avdit.models.gan_losses`; each returns a list over
discriminators of `(logits, [feature maps])`):
  * `StftDiscriminator`: complex STFT (window 1024, hop 256; the Nyquist bin dropped so the
    frequency axis is W/2) as 2 channels [B, T, F, 2] -> 7×7 conv -> blocks of (x + lrelu(3×3
    conv)) then a (s_t+2)×(s_f+2) conv with stride (s_t, s_f) alternating (1, 2)/(2, 2) ->
    a 1×F' conv over the remaining frequency bins -> logits [B, T'].
  * `WaveDiscriminator` (MelGAN): conv 15 -> grouped strided convs (kernel 41, stride 4, groups
    C_in/4) -> conv 5 -> conv 3 to logits [B, T']; `MultiScaleWaveDiscriminator` applies one at
    scales 1, 2, 4 (average-pooled input, kernel 4 stride 2).
  Leaky ReLU (0.2) everywhere; zero "SAME" padding (not causal; they only judge).

Sizes (`PAPER_CONFIG`, `TINY_CONFIG`): the paper's SEANet has C = 32 channels doubling per block to
512 (channel_multipliers 2, 4, 8, 16); d = 1024 as the AVDiT paper's audio latents (SoundStream's
codec used d = 128); 8 quantizers × 1024 codes (10 bits × 8 × 50 Hz = 4 kbps). The tiny setting
(C = 4, d = 16, 2 × 16 codes) keeps the hop of 320 and runs in seconds on a CPU.

Parameters are float32 `nnx.Param`s made with `avdit.models.layers.make_param` (through this
module's `make_param`, which also works without a mesh in scope), annotated with the logical axis
names in `AUDIO_AXES`:
  conv1d_kernel ("conv_width", "conv_in", "conv_out"), conv_bias ("conv_out",),
  conv2d_kernel ("conv_time", "conv_freq", "conv_in", "conv_out"),
  and the RVQ state (`CodebookState`): codebook / embed_sum ("codebook_stage", "codes",
  "code_dim"), cluster_size ("codebook_stage", "codes").
Convolutions compute in `dtype` (float32 or bfloat16, accumulating in float32); the encoder's
output latents, the quantizer and the decoder's output waveform are float32.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from avdit.models import audio_losses
from avdit.models import layers

Axes = tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class AudioAxes:
  """Logical axis names of the audio autoencoder's parameters and quantizer state."""

  conv1d_kernel: Axes = ("conv_width", "conv_in", "conv_out")
  conv2d_kernel: Axes = ("conv_time", "conv_freq", "conv_in", "conv_out")
  conv_bias: Axes = ("conv_out",)
  codebook: Axes = ("codebook_stage", "codes", "code_dim")
  cluster_size: Axes = ("codebook_stage", "codes")


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


_conv_init = _jitted(nnx.initializers.lecun_normal())
_LEAKY_SLOPE = 0.2


def _annotate_without_mesh():
  """Flax 0.12 shards annotated Variables at creation ("eager sharding") and raises without a
  mesh in scope; without one, keep the logical names as metadata only (as avdit.py does)."""
  if jax.sharding.get_abstract_mesh().empty:
    return nnx.use_eager_sharding(False)
  return contextlib.nullcontext()


def make_param(rngs: nnx.Rngs, initializer, shape: tuple[int, ...], axes: Axes) -> nnx.Param:
  """`layers.make_param` (float32, logical `axes`), usable with or without a mesh in scope."""
  with _annotate_without_mesh():
    return layers.make_param(rngs, initializer, shape, axes)


def count_params(module: nnx.Module, variable_type: type = nnx.Param) -> int:
  """Number of scalars in the module's `variable_type` variables (works on abstract modules)."""
  state = nnx.state(module, variable_type)
  return int(sum(math.prod(x.shape) for x in jax.tree.leaves(state)))


# --- convolutions ---------------------------------------------------------------------------------
def _conv(x: jax.Array, kernel: jax.Array, *, strides: Sequence[int], padding, dilation=None,
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
               dilation: int = 1, dtype: jnp.dtype, rngs: nnx.Rngs, kernel_init=_conv_init):
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
    y = _conv(x_btc, self.kernel[...], strides=(self.stride,), padding=[(self.left_pad, 0)],
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
    y = _conv(x_bnc, poly, strides=(1,), padding=[(r - 1, 0)], dtype=self.dtype)
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


# --- residual vector quantizer --------------------------------------------------------------------
class CodebookState(nnx.Variable):
  """RVQ codebooks and their EMA statistics: updated in place by the training forward pass, never
  by the optimizer (keep out of `nnx.Optimizer(..., wrt=nnx.Param)`; carry with the model)."""


def _state(value: jax.Array, axes: Axes | None) -> CodebookState:
  if not axes:
    return CodebookState(value)
  with _annotate_without_mesh():
    return CodebookState(value, out_sharding=axes)


def nearest_code(x_nd: jax.Array, codebook_kd: jax.Array) -> jax.Array:
  """int32 [N]: index of the nearest code (squared Euclidean; ‖x‖² omitted, it does not vary)."""
  # HIGHEST: a bfloat16-pass matmul (TPU default for float32) would misrank close codes.
  dots = jnp.dot(x_nd, codebook_kd.T, precision=jax.lax.Precision.HIGHEST)
  return jnp.argmin(jnp.sum(jnp.square(codebook_kd), axis=-1) - 2.0 * dots, axis=-1)


@functools.partial(jax.jit, static_argnums=(1, 2))
def kmeans(x_nd: jax.Array, num_clusters: int, iters: int,
           rng: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Lloyd's k-means in jax: (centroids [K, d], counts [K] of the final nearest assignment).

  Starts from K random rows of x (with replacement only when N < K); each iteration moves every
  centroid to the mean of its members, keeping empty clusters where they are. iters = 0 gives the
  random rows.
  """
  x_nd = x_nd.astype(jnp.float32)
  n = x_nd.shape[0]
  start = jax.random.choice(rng, n, (num_clusters,), replace=n < num_clusters)

  def lloyd_step(_, centroids_kd):
    onehot_nk = jax.nn.one_hot(nearest_code(x_nd, centroids_kd), num_clusters, dtype=jnp.float32)
    counts_k = onehot_nk.sum(0)
    sums_kd = jnp.dot(onehot_nk.T, x_nd, precision=jax.lax.Precision.HIGHEST)
    return jnp.where(counts_k[:, None] > 0, sums_kd / jnp.maximum(counts_k, 1.0)[:, None],
                     centroids_kd)

  centroids = jax.lax.fori_loop(0, iters, lloyd_step, x_nd[start])
  counts = jax.nn.one_hot(nearest_code(x_nd, centroids), num_clusters, dtype=jnp.float32).sum(0)
  return centroids, counts


def sample_num_quantizers(rng: jax.Array, batch: int, max_quantizers: int) -> jax.Array:
  """Quantizer dropout: int32 [B], each Uniform{1, ..., max_quantizers}."""
  return jax.random.randint(rng, (batch,), 1, max_quantizers + 1, dtype=jnp.int32)


class ResidualVectorQuantizer(nnx.Module):
  """RVQ with EMA codebooks, k-means init, dead-code replacement and quantizer dropout.

  State (all `CodebookState`, float32 unless noted): codebook [S, K, d], cluster_size [S, K],
  embed_sum [S, K, d] and initialized (bool scalar).
  """

  def __init__(self, *, num_quantizers: int, codebook_size: int, dim: int, ema_decay: float,
               dead_code_threshold: float, kmeans_iters: int, quantizer_dropout: bool = True,
               laplace_eps: float = 1e-5, rngs: nnx.Rngs):
    if num_quantizers < 1 or codebook_size < 1 or dim < 1:
      raise ValueError(f"need num_quantizers, codebook_size, dim >= 1, got {num_quantizers}, "
                       f"{codebook_size}, {dim}")
    if not 0.0 <= ema_decay < 1.0:
      raise ValueError(f"ema_decay must lie in [0, 1), got {ema_decay}")
    self.num_quantizers, self.codebook_size, self.dim = num_quantizers, codebook_size, dim
    self.ema_decay, self.dead_code_threshold = float(ema_decay), float(dead_code_threshold)
    self.kmeans_iters, self.quantizer_dropout = int(kmeans_iters), bool(quantizer_dropout)
    self.laplace_eps = float(laplace_eps)
    shape = (num_quantizers, codebook_size, dim)
    # Unit-normal codes until k-means replaces them on the first training batch; statistics
    # consistent with them (count 1, sum = code).
    codebook = jax.random.normal(rngs.params(), shape, jnp.float32)
    self.codebook = _state(codebook, AUDIO_AXES.codebook)
    self.cluster_size = _state(jnp.ones(shape[:2], jnp.float32), AUDIO_AXES.cluster_size)
    self.embed_sum = _state(codebook, AUDIO_AXES.codebook)
    self.initialized = _state(jnp.zeros((), jnp.bool_), None)

  # --- state initialization -----------------------------------------------------------------------
  def _kmeans_codebooks(self, x_nd: jax.Array, rng: jax.Array):
    """Stage-by-stage k-means on the residual chain: (codebook, cluster_size, embed_sum)."""
    codebooks, counts = [], []
    residual = x_nd
    for key in jax.random.split(rng, self.num_quantizers):
      centroids, count = kmeans(residual, self.codebook_size, self.kmeans_iters, key)
      residual = residual - centroids[nearest_code(residual, centroids)]
      codebooks.append(centroids)
      counts.append(count)
    codebook, cluster_size = jnp.stack(codebooks), jnp.stack(counts)
    return codebook, cluster_size, codebook * cluster_size[..., None]

  def kmeans_init(self, z_bld: jax.Array, rng: jax.Array) -> None:
    """Sets every stage's codebook by k-means on z's residual chain and marks them initialized."""
    x_nd = jax.lax.stop_gradient(self._flatten(z_bld))
    codebook, cluster_size, embed_sum = self._kmeans_codebooks(x_nd, rng)
    self.codebook.set_value(codebook)
    self.cluster_size.set_value(cluster_size)
    self.embed_sum.set_value(embed_sum)
    self.initialized.set_value(jnp.ones((), jnp.bool_))

  def _flatten(self, z_bld: jax.Array) -> jax.Array:
    if z_bld.ndim != 3 or z_bld.shape[-1] != self.dim:
      raise ValueError(f"quantizer input must be [B, T, {self.dim}], got {tuple(z_bld.shape)}")
    return z_bld.astype(jnp.float32).reshape(-1, self.dim)

  # --- forward ------------------------------------------------------------------------------------
  def __call__(self, z_bld: jax.Array, *, train: bool, rng: jax.Array | None = None,
               num_quantizers: int | None = None) -> tuple[jax.Array, dict[str, Any]]:
    """Quantizes z [B, T, d] -> (straight-through z_q [B, T, d] float32, aux).

    train=True (needs `rng`) runs k-means init on the first call, quantizer dropout (unless
    `num_quantizers` fixes the count or the module was built without dropout), then updates the
    EMA statistics and replaces dead codes in place. train=False uses the first `num_quantizers`
    stages (default all) and changes no state.
    aux = {"losses": {"commitment"}, "metrics": {"quantization_error", "num_quantizers",
    "perplexity_{s}", "codebook_usage_{s}"[, "dead_codes_{s}"]}, "codes": int32 [B, T, S_used]
    (stages an example skipped hold codes it did not use), "num_quantizers": int32 [B]}.
    Metrics are scalars; perplexity exp(H) and usage (fraction of codes hit) count only the
    vectors of examples that used the stage, in this batch.
    """
    s_total, k = self.num_quantizers, self.codebook_size
    if num_quantizers is not None and not 1 <= num_quantizers <= s_total:
      raise ValueError(f"num_quantizers must lie in [1, {s_total}], got {num_quantizers}")
    if train and rng is None:
      raise ValueError("training the quantizer needs an rng (k-means init, dropout, dead codes)")
    b, t, _ = z_bld.shape
    z_nd = self._flatten(z_bld)
    x_nd = jax.lax.stop_gradient(z_nd)
    codebook = self.codebook[...]
    if train:
      key_init, key_drop, key_dead = jax.random.split(rng, 3)
      state = (codebook, self.cluster_size[...], self.embed_sum[...])
      initialized = self.initialized[...]
      if isinstance(initialized, jax.core.Tracer):  # under jit: decided at run time
        codebook, cluster_size, embed_sum = jax.lax.cond(
            initialized, lambda: state, lambda: self._kmeans_codebooks(x_nd, key_init))
      elif not initialized:  # eager: only run k-means when needed
        codebook, cluster_size, embed_sum = self._kmeans_codebooks(x_nd, key_init)
      else:
        codebook, cluster_size, embed_sum = state
    stages = num_quantizers or s_total
    if train and self.quantizer_dropout and num_quantizers is None:
      n_b = sample_num_quantizers(key_drop, b, s_total)
    else:
      n_b = jnp.full((b,), stages, jnp.int32)
    n_n = jnp.repeat(n_b, t)  # stages used by each vector

    residual = x_nd
    quantized = jnp.zeros_like(x_nd)
    codes, stage_inputs, masks, metrics = [], [], [], {}
    for s in range(stages):
      idx = nearest_code(residual, codebook[s])
      active = (s < n_n)[:, None]
      q = jnp.where(active, codebook[s][idx], 0.0)
      codes.append(idx)
      stage_inputs.append(residual)
      masks.append(active[:, 0].astype(jnp.float32))
      quantized = quantized + q
      residual = residual - q
      counts = jnp.zeros((k,), jnp.float32).at[idx].add(masks[-1])
      probs = counts / jnp.maximum(counts.sum(), 1.0)
      entropy = -jnp.sum(jnp.where(probs > 0, probs * jnp.log(jnp.where(probs > 0, probs, 1.0)),
                                   0.0))
      metrics[f"perplexity_{s}"] = jnp.where(counts.sum() > 0, jnp.exp(entropy), 0.0)
      metrics[f"codebook_usage_{s}"] = jnp.mean((counts > 0).astype(jnp.float32))

    if train:
      self._ema_update(codebook, cluster_size, embed_sum, stage_inputs, codes, masks, key_dead,
                       metrics)

    z_q_nd = z_nd + jax.lax.stop_gradient(quantized - z_nd)  # straight-through
    commitment = jnp.mean(jnp.square(z_nd - jax.lax.stop_gradient(quantized)))
    metrics["quantization_error"] = jax.lax.stop_gradient(commitment)
    metrics["num_quantizers"] = jnp.mean(n_b.astype(jnp.float32))
    aux = {"losses": {"commitment": commitment}, "metrics": metrics,
           "codes": jnp.stack(codes, axis=-1).reshape(b, t, stages).astype(jnp.int32),
           "num_quantizers": n_b}
    return z_q_nd.reshape(z_bld.shape), aux

  def _ema_update(self, codebook, cluster_size, embed_sum, stage_inputs, codes, masks, rng,
                  metrics) -> None:
    """One EMA step per used stage, Laplace smoothing, then dead-code replacement; in place."""
    k, decay, eps = self.codebook_size, self.ema_decay, self.laplace_eps
    new_codebook, new_size, new_sum = [], [], []
    for s in range(self.num_quantizers):
      if s >= len(codes):  # stage not run (fixed num_quantizers): leave it as it is
        new_codebook.append(codebook[s])
        new_size.append(cluster_size[s])
        new_sum.append(embed_sum[s])
        continue
      x_nd, mask_n = stage_inputs[s], masks[s]
      onehot_nk = jax.nn.one_hot(codes[s], k, dtype=jnp.float32) * mask_n[:, None]
      size_k = decay * cluster_size[s] + (1.0 - decay) * onehot_nk.sum(0)
      sum_kd = decay * embed_sum[s] + (1.0 - decay) * jnp.dot(
          onehot_nk.T, x_nd, precision=jax.lax.Precision.HIGHEST)
      total = size_k.sum()
      smoothed_k = (size_k + eps) / (total + k * eps) * total
      book_kd = sum_kd / smoothed_k[:, None]
      # Dead codes -> random residual vectors of the examples that used this stage.
      any_active = mask_n.sum() > 0
      probs_n = jnp.where(any_active, mask_n, 1.0)
      pick = jax.random.choice(jax.random.fold_in(rng, s), x_nd.shape[0], (k,),
                               p=probs_n / probs_n.sum())
      dead_k = (size_k < self.dead_code_threshold) & any_active
      book_kd = jnp.where(dead_k[:, None], x_nd[pick], book_kd)
      sum_kd = jnp.where(dead_k[:, None], x_nd[pick] * smoothed_k[:, None], sum_kd)
      metrics[f"dead_codes_{s}"] = dead_k.sum().astype(jnp.float32)
      # A stage no example used this batch keeps its state (no decay toward empty counts).
      new_codebook.append(jnp.where(any_active, book_kd, codebook[s]))
      new_size.append(jnp.where(any_active, size_k, cluster_size[s]))
      new_sum.append(jnp.where(any_active, sum_kd, embed_sum[s]))
    self.codebook.set_value(jax.lax.stop_gradient(jnp.stack(new_codebook)))
    self.cluster_size.set_value(jax.lax.stop_gradient(jnp.stack(new_size)))
    self.embed_sum.set_value(jax.lax.stop_gradient(jnp.stack(new_sum)))
    self.initialized.set_value(jnp.ones((), jnp.bool_))


# --- the autoencoder ------------------------------------------------------------------------------
def _check_waveform(audio_bl: jax.Array) -> None:
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
    with _annotate_without_mesh():
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
    _check_waveform(audio_bl)
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


# --- discriminators -------------------------------------------------------------------------------
class Conv1d(nnx.Module):
  """Non-causal 1D conv with zero "SAME" padding ([B, T, C] -> [B, ceil(T/stride), C_out])."""

  def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, stride: int = 1,
               groups: int = 1, dtype: jnp.dtype, rngs: nnx.Rngs):
    if in_channels % groups or out_channels % groups:
      raise ValueError(f"groups={groups} must divide {in_channels} and {out_channels}")
    self.kernel = make_param(rngs, _conv_init, (kernel_size, in_channels // groups, out_channels),
                             AUDIO_AXES.conv1d_kernel)
    self.bias = make_param(rngs, layers.zeros, (out_channels,), AUDIO_AXES.conv_bias)
    self.stride, self.groups, self.dtype = stride, groups, dtype

  def __call__(self, x_btc: jax.Array) -> jax.Array:
    y = _conv(x_btc, self.kernel[...], strides=(self.stride,), padding="SAME",
              groups=self.groups, dtype=self.dtype)
    return y + self.bias[...].astype(self.dtype)


class Conv2d(nnx.Module):
  """2D conv over [B, T, F, C] with zero "SAME" padding, or "VALID"."""

  def __init__(self, in_channels: int, out_channels: int, kernel_size: tuple[int, int], *,
               strides: tuple[int, int] = (1, 1), padding: str = "SAME", dtype: jnp.dtype,
               rngs: nnx.Rngs):
    self.kernel = make_param(rngs, _conv_init, (*kernel_size, in_channels, out_channels),
                             AUDIO_AXES.conv2d_kernel)
    self.bias = make_param(rngs, layers.zeros, (out_channels,), AUDIO_AXES.conv_bias)
    self.strides, self.padding, self.dtype = tuple(strides), padding, dtype

  def __call__(self, x_btfc: jax.Array) -> jax.Array:
    y = _conv(x_btfc, self.kernel[...], strides=self.strides, padding=self.padding,
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
    with _annotate_without_mesh():
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
    _check_waveform(audio_bl)
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
    with _annotate_without_mesh():
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
    _check_waveform(audio_bl)
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
