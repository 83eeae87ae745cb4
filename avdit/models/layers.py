"""Building blocks of the AVDiT (SPEC §5): projections, norms, attention, AdaLN blocks.

Every parameter is created through `make_param`, which wraps its initializer in
`nnx.with_partitioning` with the logical axis names of `AXES` (one entry per parameter role), so
a later step can map names to mesh axes with rules. Parameters are float32; each layer computes in
its `dtype` (float32 or bfloat16) and keeps norms and softmax in float32.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

Axes = tuple[str, ...]
Initializer = Callable[..., jax.Array]

xavier_uniform = nnx.initializers.xavier_uniform()
zeros = nnx.initializers.zeros_init()
ones = nnx.initializers.ones_init()
embedding_normal = nnx.initializers.normal(stddev=0.02)


@dataclasses.dataclass(frozen=True)
class LogicalAxes:
  """Logical axis names of each parameter role; a tuple's length is the parameter's rank."""

  # Token projections in and out.
  video_in_kernel: Axes = ("video_in", "embed")
  audio_in_kernel: Axes = ("audio_in", "embed")
  video_out_kernel: Axes = ("embed", "video_out")
  video_out_bias: Axes = ("video_out",)
  audio_out_kernel: Axes = ("embed", "audio_out")
  audio_out_bias: Axes = ("audio_out",)
  embed_bias: Axes = ("embed",)
  # Learned embeddings (positions, modality, conditioning rows).
  video_spatial_pos: Axes = ("tokens_video", "embed")
  video_temporal_pos: Axes = ("segments", "embed")
  audio_temporal_pos: Axes = ("tokens_audio", "embed")
  modality_embed: Axes = ("modality", "embed")
  row_embed: Axes = ("rows", "embed")
  # Timestep MLP: sinusoid -> hidden (width d, named "mlp" so its two kernels never put "embed"
  # on both axes) -> d.
  timestep_in_kernel: Axes = ("timestep_freq", "mlp")
  timestep_out_kernel: Axes = ("mlp", "embed")
  mlp_bias: Axes = ("mlp",)
  # Attention.
  qkv_kernel: Axes = ("embed", "heads", "head_dim")
  qkv_bias: Axes = ("heads", "head_dim")
  attn_out_kernel: Axes = ("heads", "head_dim", "embed")
  qk_norm_scale: Axes = ("norm",)
  # Token MLP.
  mlp_in_kernel: Axes = ("embed", "mlp")
  mlp_out_kernel: Axes = ("mlp", "embed")
  # AdaLN (6d per block, 2d for the final layer).
  modulation_kernel: Axes = ("embed", "modulation")
  modulation_bias: Axes = ("modulation",)
  lora_down_kernel: Axes = ("embed", "lora_rank")
  lora_up_kernel: Axes = ("lora_rank", "modulation")


AXES = LogicalAxes()


def make_param(rngs: nnx.Rngs, initializer: Initializer, shape: tuple[int, ...],
               axes: Axes) -> nnx.Param:
  """A float32 `nnx.Param` of `shape`, annotated with logical `axes` (one name per dimension)."""
  if len(axes) != len(shape):
    raise ValueError(f"logical axes {axes} do not match parameter shape {shape}")
  annotated = nnx.with_partitioning(initializer, axes)
  return nnx.Param(annotated(rngs.params(), shape, jnp.float32))


class Dense(nnx.Module):
  """y = x @ kernel + bias over the last axis, computed in `dtype`."""

  def __init__(self, in_features: int, out_features: int, *, kernel_axes: Axes,
               bias_axes: Axes | None, dtype: jnp.dtype, rngs: nnx.Rngs,
               kernel_init: Initializer = xavier_uniform, bias_init: Initializer = zeros):
    self.kernel = make_param(rngs, kernel_init, (in_features, out_features), kernel_axes)
    self.bias = (make_param(rngs, bias_init, (out_features,), bias_axes)
                 if bias_axes is not None else nnx.data(None))
    self.dtype = dtype

  def __call__(self, x_bk: jax.Array) -> jax.Array:
    """[..., in] -> [..., out] in `dtype`."""
    y = jnp.dot(x_bk.astype(self.dtype), self.kernel[...].astype(self.dtype))
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    return y


def layer_norm(x: jax.Array, eps: float = 1e-6) -> jax.Array:
  """LayerNorm without affine parameters (AdaLN supplies shift/scale); statistics in float32."""
  x32 = x.astype(jnp.float32)
  mean = jnp.mean(x32, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
  return ((x32 - mean) * jax.lax.rsqrt(var + eps)).astype(x.dtype)


def modulate(x_bld: jax.Array, shift_bld: jax.Array, scale_bld: jax.Array) -> jax.Array:
  """DiT modulation x * (1 + scale) + shift; zero shift/scale is the identity."""
  return x_bld * (1 + scale_bld) + shift_bld


class RMSNorm(nnx.Module):
  """RMSNorm over the last axis with a learned scale (used on q and k per head)."""

  def __init__(self, dim: int, *, rngs: nnx.Rngs, eps: float = 1e-6):
    self.scale = make_param(rngs, ones, (dim,), AXES.qk_norm_scale)
    self.eps = eps

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
    return (normed * self.scale[...]).astype(x.dtype)


def timestep_embedding(timesteps: jax.Array, dim: int, max_period: float = 10_000.0) -> jax.Array:
  """Sinusoidal embedding of (float or int) timesteps: [...] -> float32 [..., dim]."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = jnp.asarray(timesteps, jnp.float32)[..., None] * freqs
  embedding = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
  if dim % 2:
    embedding = jnp.pad(embedding, [(0, 0)] * (embedding.ndim - 1) + [(0, 1)])
  return embedding


# --- attention cores: q, k, v [B, L, H, Dh] -> [B, L, H, Dh] ------------------------------------
def xla_attention(q_blhd: jax.Array, k_blhd: jax.Array, v_blhd: jax.Array) -> jax.Array:
  """Full non-causal attention by `jax.nn.dot_product_attention` (the backend picks the kernel)."""
  return jax.nn.dot_product_attention(q_blhd, k_blhd, v_blhd, implementation=None)


def chunked_attention(q_blhd: jax.Array, k_blhd: jax.Array, v_blhd: jax.Array,
                      chunk: int) -> jax.Array:
  """Exact attention over query chunks of `chunk` rows, each under `jax.checkpoint`.

  Only one [B, H, chunk, L] score block is live at a time, and the backward pass recomputes the
  scores of each chunk instead of storing the whole [B, H, L, L] softmax. Queries are zero-padded
  to a multiple of the chunk and the padded rows dropped (keys are never padded, so no mask).
  """
  batch, length, heads, head_dim = q_blhd.shape
  chunk = min(chunk, length)
  num_chunks = -(-length // chunk)
  # Scaling q (L·Dh values) is cheaper than scaling the logits (H·L² values).
  q_blhd = q_blhd * jnp.asarray(1.0 / math.sqrt(head_dim), q_blhd.dtype)
  q_padded = jnp.pad(q_blhd, ((0, 0), (0, num_chunks * chunk - length), (0, 0), (0, 0)))
  q_cbqhd = q_padded.reshape(batch, num_chunks, chunk, heads, head_dim).swapaxes(0, 1)

  @jax.checkpoint
  def attend(q_bqhd, k, v):
    # Logits and softmax in float32 (as jax.nn.dot_product_attention does for bf16 inputs).
    logits_bhqk = jnp.einsum("bqhd,bkhd->bhqk", q_bqhd, k, preferred_element_type=jnp.float32)
    probs_bhqk = jax.nn.softmax(logits_bhqk, axis=-1).astype(v.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", probs_bhqk, v)

  out_cbqhd = jax.lax.map(lambda q_bqhd: attend(q_bqhd, k_blhd, v_blhd), q_cbqhd)
  out_blhd = out_cbqhd.swapaxes(0, 1).reshape(batch, num_chunks * chunk, heads, head_dim)
  return out_blhd[:, :length]


class SelfAttention(nnx.Module):
  """Multi-head self-attention over all tokens, optional RMSNorm on q and k per head."""

  def __init__(self, width: int, num_heads: int, *, qk_norm: bool, attention: str,
               attention_chunk: int, dtype: jnp.dtype, rngs: nnx.Rngs):
    if width % num_heads:
      raise ValueError(f"width {width} is not divisible by num_heads {num_heads}")
    if attention not in ("xla", "chunked"):
      raise ValueError(f"attention must be 'xla' or 'chunked', got {attention!r}")
    head_dim = width // num_heads
    qkv_shape = (width, num_heads, head_dim)
    self.query_kernel = make_param(rngs, xavier_uniform, qkv_shape, AXES.qkv_kernel)
    self.query_bias = make_param(rngs, zeros, qkv_shape[1:], AXES.qkv_bias)
    self.key_kernel = make_param(rngs, xavier_uniform, qkv_shape, AXES.qkv_kernel)
    self.key_bias = make_param(rngs, zeros, qkv_shape[1:], AXES.qkv_bias)
    self.value_kernel = make_param(rngs, xavier_uniform, qkv_shape, AXES.qkv_kernel)
    self.value_bias = make_param(rngs, zeros, qkv_shape[1:], AXES.qkv_bias)
    # xavier over the flattened (heads·head_dim, d) fan: in_axis (0, 1), out_axis 2.
    out_init = nnx.initializers.variance_scaling(1.0, "fan_avg", "uniform", in_axis=(0, 1),
                                                 out_axis=2)
    self.out_kernel = make_param(rngs, out_init, (num_heads, head_dim, width), AXES.attn_out_kernel)
    self.out_bias = make_param(rngs, zeros, (width,), AXES.embed_bias)
    self.query_norm = RMSNorm(head_dim, rngs=rngs) if qk_norm else nnx.data(None)
    self.key_norm = RMSNorm(head_dim, rngs=rngs) if qk_norm else nnx.data(None)
    self.attention = attention
    self.attention_chunk = attention_chunk
    self.dtype = dtype

  def _project(self, x_bld: jax.Array, kernel: nnx.Param, bias: nnx.Param) -> jax.Array:
    return (jnp.einsum("bld,dhk->blhk", x_bld, kernel[...].astype(self.dtype))
            + bias[...].astype(self.dtype))

  def __call__(self, x_bld: jax.Array) -> jax.Array:
    """[B, L, d] -> [B, L, d] in `dtype`."""
    x_bld = x_bld.astype(self.dtype)
    q_blhd = self._project(x_bld, self.query_kernel, self.query_bias)
    k_blhd = self._project(x_bld, self.key_kernel, self.key_bias)
    v_blhd = self._project(x_bld, self.value_kernel, self.value_bias)
    if self.query_norm is not None:
      q_blhd, k_blhd = self.query_norm(q_blhd), self.key_norm(k_blhd)
    if self.attention == "xla":
      out_blhd = xla_attention(q_blhd, k_blhd, v_blhd)
    else:
      out_blhd = chunked_attention(q_blhd, k_blhd, v_blhd, self.attention_chunk)
    return (jnp.einsum("blhk,hkd->bld", out_blhd, self.out_kernel[...].astype(self.dtype))
            + self.out_bias[...].astype(self.dtype))


class Mlp(nnx.Module):
  """d -> hidden -> d with tanh-approximated GELU."""

  def __init__(self, width: int, hidden: int, *, dtype: jnp.dtype, rngs: nnx.Rngs):
    self.fc_in = Dense(width, hidden, kernel_axes=AXES.mlp_in_kernel, bias_axes=AXES.mlp_bias,
                       dtype=dtype, rngs=rngs)
    self.fc_out = Dense(hidden, width, kernel_axes=AXES.mlp_out_kernel,
                        bias_axes=AXES.embed_bias, dtype=dtype, rngs=rngs)

  def __call__(self, x_bld: jax.Array) -> jax.Array:
    return self.fc_out(jax.nn.gelu(self.fc_in(x_bld), approximate=True))


def gather_rows(rows_brk: jax.Array, token_row_l: jax.Array) -> jax.Array:
  """Per-(modality, segment) row values [B, R, k] -> per-token values [B, L, k]."""
  return jnp.take(rows_brk, token_row_l, axis=1)


class AdaLNBlock(nnx.Module):
  """Pre-LN transformer block whose LayerNorms are modulated per conditioning row.

  adaln="full": its own zero-init Linear(d -> 6d) (adaLN-Zero, DiT).
  adaln="lora": a rank-r term up(down(c)) added to a shared base computed by the caller
  (AdaLN-LoRA, W.A.L.T); `up` is zero-init so the block is the identity at init either way.
  """

  def __init__(self, width: int, num_heads: int, mlp_ratio: float, *, adaln: str,
               adaln_lora_rank: int, qk_norm: bool, attention: str, attention_chunk: int,
               dtype: jnp.dtype, rngs: nnx.Rngs):
    self.attn = SelfAttention(width, num_heads, qk_norm=qk_norm, attention=attention,
                              attention_chunk=attention_chunk, dtype=dtype, rngs=rngs)
    self.mlp = Mlp(width, int(mlp_ratio * width), dtype=dtype, rngs=rngs)
    if adaln == "full":
      self.adaln = Dense(width, 6 * width, kernel_axes=AXES.modulation_kernel,
                         bias_axes=AXES.modulation_bias, kernel_init=zeros, dtype=dtype,
                         rngs=rngs)
    elif adaln == "lora":
      self.adaln_down = Dense(width, adaln_lora_rank, kernel_axes=AXES.lora_down_kernel,
                              bias_axes=None, dtype=dtype, rngs=rngs)
      self.adaln_up = Dense(adaln_lora_rank, 6 * width, kernel_axes=AXES.lora_up_kernel,
                            bias_axes=None, kernel_init=zeros, dtype=dtype, rngs=rngs)
    else:
      raise ValueError(f"adaln must be 'full' or 'lora', got {adaln!r}")
    self.adaln_kind = adaln

  def modulation_rows(self, silu_cond_brd: jax.Array,
                      shared_base_brk: jax.Array | None = None) -> jax.Array:
    """SiLU(cond rows) [B, R, d] -> the six modulation vectors of this block per row [B, R, 6d].

    Order along the last axis: shift, scale, gate of attention, then of the MLP.
    """
    if self.adaln_kind == "full":
      return self.adaln(silu_cond_brd)
    return shared_base_brk + self.adaln_up(self.adaln_down(silu_cond_brd))

  def __call__(self, x_bld: jax.Array, modulation_brk: jax.Array,
               token_row_l: jax.Array) -> jax.Array:
    """x [B, L, d], modulation rows [B, R, 6d], token_row int [L] -> x [B, L, d]."""
    # Split per row first and gather each vector where it is used: the per-token tensors are
    # cheap broadcasts of R rows that XLA fuses into the elementwise ops.
    shift_attn, scale_attn, gate_attn, shift_mlp, scale_mlp, gate_mlp = jnp.split(
        modulation_brk.astype(x_bld.dtype), 6, axis=-1)
    to_tokens = lambda rows_brd: gather_rows(rows_brd, token_row_l)
    h_bld = modulate(layer_norm(x_bld), to_tokens(shift_attn), to_tokens(scale_attn))
    x_bld = x_bld + to_tokens(gate_attn) * self.attn(h_bld)
    h_bld = modulate(layer_norm(x_bld), to_tokens(shift_mlp), to_tokens(scale_mlp))
    return x_bld + to_tokens(gate_mlp) * self.mlp(h_bld)
