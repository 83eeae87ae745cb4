"""Building blocks of the AVDiT (SPEC §5): projections, norms, attention, AdaLN blocks.

Every parameter is created through `make_param`, which wraps its initializer in
`nnx.with_partitioning` with the logical axis names of `AXES` (one entry per parameter role), so
a later step can map names to mesh axes with rules. Parameters are float32; each layer computes in
its `dtype` (float32 or bfloat16) and keeps norms and softmax in float32.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax.core import spmd as flax_spmd

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
  # Cross-modal pooling (model.cross_modal_pool): the other modality's segment mean -> d.
  cross_modal_kernel: Axes = ("mlp", "embed")
  # Noise-aware key bias (model.noise_key_bias): a conditioning row -> one logit bias per head.
  key_bias_kernel: Axes = ("embed", "heads")
  key_bias_bias: Axes = ("heads",)
  # Split attention's cross-modal gate (model.split_attention): two conditioning rows (each
  # embed-wide) -> heads. Not "modulation": it maps to the same mesh axis as "heads".
  cross_gate_kernel: Axes = ("embed", "heads")


AXES = LogicalAxes()


@dataclasses.dataclass(frozen=True)
class ActivationAxes:
  """Logical names of activations, constrained inside the model when a mesh and rules are set.

  Distinct from the parameter names (as in MaxText): under FSDP the batch of activations and the
  `embed` axis of parameters both use the `fsdp` mesh axis, which one array cannot do twice.
  """

  tokens: Axes = ("activation_batch", "activation_length", "activation_embed")
  heads: Axes = ("activation_batch", "activation_heads", "activation_length", "activation_kv")
  mlp: Axes = ("activation_batch", "activation_length", "activation_mlp")


ACTIVATIONS = ActivationAxes()


def mesh_axes_of(names: Axes) -> jax.sharding.PartitionSpec | None:
  """The PartitionSpec of logical `names` under the current rules (`nnx.logical_axis_rules`) and
  mesh (`jax.set_mesh`); None when either is missing (single device, tests, sampling on CPU)."""
  rules = flax_spmd.get_logical_axis_rules()
  if jax.sharding.get_abstract_mesh().empty or not rules:
    return None
  mapping = dict(rules)
  return jax.sharding.PartitionSpec(*(mapping.get(name) for name in names))


def constrain(x: jax.Array, names: Axes) -> jax.Array:
  """Pins the sharding of activation `x` by logical names; a no-op without mesh and rules.

  XLA's propagation would usually find the same layout; pinning it at block boundaries keeps a
  tensor-parallel or FSDP step from resharding activations where propagation guesses wrong.
  """
  spec = mesh_axes_of(names)
  return x if spec is None else jax.lax.with_sharding_constraint(x, spec)


def annotate_without_mesh():
  """Flax 0.12 shards every annotated Variable at creation ("eager sharding", on by default) and
  raises when no mesh is in scope; without a mesh, keep the logical names as metadata only (the
  context to build any model or standalone layer in, with or without a mesh)."""
  if jax.sharding.get_abstract_mesh().empty:
    return nnx.use_eager_sharding(False)
  return contextlib.nullcontext()


def make_param(rngs: nnx.Rngs, initializer: Initializer, shape: tuple[int, ...],
               axes: Axes) -> nnx.Param:
  """A float32 `nnx.Param` of `shape`, annotated with logical `axes` (one name per dimension);
  works with or without a mesh in scope (`annotate_without_mesh`)."""
  if len(axes) != len(shape):
    raise ValueError(f"logical axes {axes} do not match parameter shape {shape}")
  annotated = nnx.with_partitioning(initializer, axes)
  with annotate_without_mesh():
    return nnx.Param(annotated(rngs.params(), shape, jnp.float32))


def count_params(module_or_tree, variable_type: type = nnx.Param) -> int:
  """Number of scalars in a module's `variable_type` variables (default its parameters), or in
  every leaf of a pytree (e.g. a train state's params); works on abstract (eval_shape) values."""
  tree = (nnx.state(module_or_tree, variable_type) if isinstance(module_or_tree, nnx.Module)
          else module_or_tree)
  return int(sum(math.prod(x.shape) for x in jax.tree.leaves(tree)))


def matmul_in_dtype(equation: str, x: jax.Array, kernel: jax.Array, dtype: jnp.dtype) -> jax.Array:
  """einsum of x and kernel, both cast to `dtype`, accumulated in float32, result in `dtype`.

  Float32: a plain einsum. Lower precision: XLA:CPU computes a bfloat16 dot by converting both
  operands to float32, unless the dot itself asks for a float32 result, which its matmul library
  then runs on bfloat16 inputs (AMX on this machine, several times the float32 rate). The
  gradients' dots get the same form from `_low_precision_matmul`'s custom backward pass. The
  values are those of the float32-accumulated dot rounded to `dtype`, as before.
  """
  if jnp.dtype(dtype) == jnp.float32:
    return jnp.einsum(equation, x.astype(dtype), kernel.astype(dtype))
  return _low_precision_matmul(equation, jnp.dtype(dtype), x, kernel)


def round_to(x: jax.Array, dtype: jnp.dtype) -> jax.Array:
  """x rounded to `dtype`, kept rounded for the dot that consumes it.

  XLA may drop a float32 -> bfloat16 rounding in front of a dot that accumulates in float32
  ("excess precision"), which turns the dot back into a float32 one; the barrier keeps it.
  """
  if x.dtype == jnp.dtype(dtype):
    return x
  return jax.lax.optimization_barrier(x.astype(dtype))


def _einsum_f32(equation: str, a: jax.Array, b: jax.Array) -> jax.Array:
  return jnp.einsum(equation, a, b, preferred_element_type=jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _low_precision_matmul(equation, dtype, x, kernel):
  return _einsum_f32(equation, x.astype(dtype), kernel.astype(dtype)).astype(dtype)


def _low_precision_matmul_fwd(equation, dtype, x, kernel):
  x_c, kernel_c = x.astype(dtype), kernel.astype(dtype)
  y = _einsum_f32(equation, x_c, kernel_c).astype(dtype)
  # Zero-size markers carry the input dtypes to the backward pass (residuals must be arrays).
  return y, (x_c, kernel_c, jnp.zeros((0,), x.dtype), jnp.zeros((0,), kernel.dtype))


def _low_precision_matmul_bwd(equation, dtype, residuals, dy):
  x_c, kernel_c, x_marker, kernel_marker = residuals
  inputs, out = equation.split("->")
  x_axes, kernel_axes = inputs.split(",")
  dy = dy.astype(dtype)
  # Every index appears in exactly two of (x, kernel, y), so each gradient is the einsum of the
  # other two operands ("..." dims missing from the output are summed).
  dx = _einsum_f32(f"{out},{kernel_axes}->{x_axes}", dy, kernel_c).astype(x_marker.dtype)
  dkernel = _einsum_f32(f"{x_axes},{out}->{kernel_axes}", x_c, dy).astype(kernel_marker.dtype)
  return dx, dkernel


_low_precision_matmul.defvjp(_low_precision_matmul_fwd, _low_precision_matmul_bwd)


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
    y = matmul_in_dtype("...i,io->...o", x_bk, self.kernel[...], self.dtype)
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


# --- rotary positions over time in seconds ------------------------------------------------------
def time_rotary_tables(token_seconds_l: np.ndarray, head_dim: int, fraction: float,
                       wavelengths_s: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
  """(cos, sin) float32 [L, P] of RoPE over each token's time, P = fraction·head_dim / 2 pairs.

  Wavelengths are geometric between `wavelengths_s` (shortest, longest): a query then scores
  keys by their time difference alone, so an audio latent and the video segment it plays
  under align from the first step, whichever modality each is.
  """
  num_pairs = int(fraction * head_dim) // 2
  if num_pairs < 1 or 2 * num_pairs > head_dim:
    raise ValueError(f"time RoPE fraction {fraction} of head_dim {head_dim} gives "
                     f"{num_pairs} pairs; need 1..{head_dim // 2}")
  shortest, longest = wavelengths_s
  wavelengths_p = shortest * (longest / shortest) ** (np.arange(num_pairs) / max(num_pairs - 1, 1))
  angles_lp = 2 * np.pi * np.asarray(token_seconds_l, np.float64)[:, None] / wavelengths_p
  return np.cos(angles_lp).astype(np.float32), np.sin(angles_lp).astype(np.float32)


def apply_rotary(x: jax.Array, cos_lp: np.ndarray, sin_lp: np.ndarray, length_axis: int
                 ) -> jax.Array:
  """Rotates the first 2P channels of x [..., L, ..., Dh] by the tables (pairs (i, i + P))."""
  num_pairs = cos_lp.shape[-1]
  extra = x.ndim - 1 - length_axis % x.ndim  # axes between L and the channels
  cos = jnp.asarray(cos_lp.reshape(cos_lp.shape[0], *([1] * (extra - 1)), num_pairs), x.dtype)
  sin = jnp.asarray(sin_lp.reshape(sin_lp.shape[0], *([1] * (extra - 1)), num_pairs), x.dtype)
  first, second, rest = (x[..., :num_pairs], x[..., num_pairs:2 * num_pairs],
                         x[..., 2 * num_pairs:])
  return jnp.concatenate([first * cos - second * sin, first * sin + second * cos, rest], -1)


# --- attention cores: q, k, v [B, L, H, Dh] -> [B, L, H, Dh] ------------------------------------
def xla_attention(q_blhd: jax.Array, k_blhd: jax.Array, v_blhd: jax.Array,
                  key_bias_bhl: jax.Array | None = None) -> jax.Array:
  """Full non-causal attention by `jax.nn.dot_product_attention` (the backend picks the kernel).

  `key_bias_bhl`: added to every query's logit for key l (float32 [B, H, L]), or None.
  """
  bias = None if key_bias_bhl is None else key_bias_bhl[:, :, None, :].astype(q_blhd.dtype)
  return jax.nn.dot_product_attention(q_blhd, k_blhd, v_blhd, bias=bias, implementation=None)


def chunked_attention(q_blhd: jax.Array, k_blhd: jax.Array, v_blhd: jax.Array,
                      chunk: int, key_bias_bhl: jax.Array | None = None) -> jax.Array:
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
    if key_bias_bhl is not None:
      logits_bhqk = logits_bhqk + key_bias_bhl[:, :, None, :].astype(jnp.float32)
    probs_bhqk = jax.nn.softmax(logits_bhqk, axis=-1).astype(v.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", probs_bhqk, v)

  out_cbqhd = jax.lax.map(lambda q_bqhd: attend(q_bqhd, k_blhd, v_blhd), q_cbqhd)
  out_blhd = out_cbqhd.swapaxes(0, 1).reshape(batch, num_chunks * chunk, heads, head_dim)
  return out_blhd[:, :length]


# Working-set budget of one step of `flash_attention`: the [G, L, L] score block of G (batch,
# head) pairs. ~16 MiB keeps the blocks of a step near the cores' caches (2 MiB of L2 each on
# the reference machine) while giving each matmul enough rows to split across the threads.
_FLASH_BLOCK_BYTES = 16 << 20


def _flash_heads_per_step(num_pairs: int, length: int) -> int:
  """Largest divisor G of num_pairs with G·L² float32 scores within `_FLASH_BLOCK_BYTES` (>= 1)."""
  limit = max(1, _FLASH_BLOCK_BYTES // (4 * length * length))
  return max(g for g in range(1, min(limit, num_pairs) + 1) if num_pairs % g == 0)


def _flash_logits(q_gqd: jax.Array, k_gkd: jax.Array, key_bias_gk: jax.Array | None) -> jax.Array:
  logits_gqk = jnp.einsum("gqd,gkd->gqk", q_gqd, k_gkd, preferred_element_type=jnp.float32)
  if key_bias_gk is not None:
    logits_gqk = logits_gqk + key_bias_gk[:, None, :].astype(jnp.float32)
  return logits_gqk


def _flash_forward_step(q_gqd: jax.Array, k_gkd: jax.Array, v_gkd: jax.Array,
                        key_bias_gk: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Attention of G (batch, head) pairs with pre-scaled q: -> (out [G, L, Dh], lse f32 [G, L])."""
  logits_gqk = _flash_logits(q_gqd, k_gkd, key_bias_gk)
  max_gq1 = jnp.max(logits_gqk, axis=-1, keepdims=True)
  unnormalized_gqk = jnp.exp(logits_gqk - max_gq1)
  sum_gq1 = jnp.sum(unnormalized_gqk, axis=-1, keepdims=True)
  # Normalize the [L, Dh] output instead of the [L, L] probabilities.
  out_gqd = jnp.einsum("gqk,gkd->gqd", round_to(unnormalized_gqk, v_gkd.dtype), v_gkd,
                       preferred_element_type=jnp.float32) / sum_gq1
  return out_gqd.astype(v_gkd.dtype), (max_gq1 + jnp.log(sum_gq1))[..., 0]


def _flash_backward_step(q_gqd, k_gkd, v_gkd, lse_gq, dout_gqd, delta_gq, q_gdq, dout_gdq,
                         key_bias_gk=None):
  """Gradients (dq of the pre-scaled q, dkᵀ, dvᵀ[, d key bias]) of one step, recomputing its
  probabilities.

  FlashAttention-2's backward: p = exp(q kᵀ - lse), dv = pᵀ dout, dp = dout vᵀ,
  ds = p (dp - delta) with delta = rowsum(dout * out), dq = ds k, dk = dsᵀ q.
  dv and dk contract over the query axis, the major axis of p and ds. XLA:CPU's matmul library
  (YNNPACK) takes a dot only when its left operand contracts over its minor axis, so they are
  computed transposed, dvᵀ = doutᵀ p and dkᵀ = qᵀ ds, from the [Dh, L] copies q_gdq and dout_gdq
  that the caller transposes once for all steps. A key bias's gradient is ds summed over queries.
  """
  dtype = q_gqd.dtype
  logits_gqk = _flash_logits(q_gqd, k_gkd, key_bias_gk)
  probs_gqk = jnp.exp(logits_gqk - lse_gq[..., None])
  dv_gdk = jnp.einsum("gdq,gqk->gdk", dout_gdq, round_to(probs_gqk, dtype),
                      preferred_element_type=jnp.float32)
  dprobs_gqk = jnp.einsum("gqd,gkd->gqk", dout_gqd, v_gkd, preferred_element_type=jnp.float32)
  dlogits_f32_gqk = probs_gqk * (dprobs_gqk - delta_gq[..., None])
  dlogits_gqk = round_to(dlogits_f32_gqk, dtype)
  dq_gqd = jnp.einsum("gqk,gkd->gqd", dlogits_gqk, k_gkd, preferred_element_type=jnp.float32)
  dk_gdk = jnp.einsum("gdq,gqk->gdk", q_gdq, dlogits_gqk, preferred_element_type=jnp.float32)
  grads = (dq_gqd.astype(dtype), dk_gdk.astype(dtype), dv_gdk.astype(dtype))
  if key_bias_gk is None:
    return grads
  return grads + (jnp.sum(dlogits_f32_gqk, axis=1).astype(key_bias_gk.dtype),)


def _over_head_groups(step_fn: Callable, heads_per_step: int, *arrays_bh: jax.Array):
  """Runs step_fn on groups of `heads_per_step` (batch, head) pairs in a loop.

  Each array is [B, H, ...]; step_fn maps [G, ...] arrays to a tuple of [G, ...] arrays; the
  results come back as [B, H, ...]. A loop (not one batched op) keeps each step's [G, L, L]
  scores in cache and bounds the temporary memory, which XLA:CPU maps fresh on every run.
  """
  batch, heads = arrays_bh[0].shape[:2]
  groups = batch * heads // heads_per_step
  grouped = [x.reshape((groups, heads_per_step) + x.shape[2:]) for x in arrays_bh]
  if groups == 1:
    outs = step_fn(*[x[0] for x in grouped])
    outs = [y[None] for y in outs]
  else:
    outs = jax.lax.map(lambda xs: step_fn(*xs), grouped)
  return tuple(y.reshape((batch, heads) + y.shape[2:]) for y in outs)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _flash_attention_bhld(q_bhld, k_bhld, v_bhld, key_bias_bhl, heads_per_step):
  return _flash_attention_fwd(q_bhld, k_bhld, v_bhld, key_bias_bhl, heads_per_step)[0]


def _flash_attention_fwd(q_bhld, k_bhld, v_bhld, key_bias_bhl, heads_per_step):
  # Scaling q (L·Dh values) is cheaper than scaling the logits (L² values).
  q_bhld = q_bhld * jnp.asarray(1.0 / math.sqrt(q_bhld.shape[-1]), q_bhld.dtype)
  biased = () if key_bias_bhl is None else (key_bias_bhl,)
  out_bhld, lse_bhl = _over_head_groups(_flash_forward_step, heads_per_step, q_bhld, k_bhld,
                                        v_bhld, *biased)
  return out_bhld, (q_bhld, k_bhld, v_bhld, key_bias_bhl, out_bhld, lse_bhl)


def _flash_attention_bwd(heads_per_step, residuals, dout_bhld):
  q_bhld, k_bhld, v_bhld, key_bias_bhl, out_bhld, lse_bhl = residuals
  delta_bhl = jnp.sum(dout_bhld.astype(jnp.float32) * out_bhld.astype(jnp.float32), axis=-1)
  dout_bhld = dout_bhld.astype(q_bhld.dtype)
  biased = () if key_bias_bhl is None else (key_bias_bhl,)
  grads = _over_head_groups(
      _flash_backward_step, heads_per_step, q_bhld, k_bhld, v_bhld, lse_bhl, dout_bhld,
      delta_bhl, jnp.swapaxes(q_bhld, 2, 3), jnp.swapaxes(dout_bhld, 2, 3), *biased)
  dq_bhld, dk_bhdl, dv_bhdl = grads[:3]
  # q was scaled inside: chain rule through q * 1/sqrt(Dh).
  return (dq_bhld * jnp.asarray(1.0 / math.sqrt(q_bhld.shape[-1]), dq_bhld.dtype),
          jnp.swapaxes(dk_bhdl, 2, 3), jnp.swapaxes(dv_bhdl, 2, 3),
          None if key_bias_bhl is None else grads[3])


_flash_attention_bhld.defvjp(_flash_attention_fwd, _flash_attention_bwd)


def flash_attention_bhld(q_bhld: jax.Array, k_bhld: jax.Array, v_bhld: jax.Array,
                         heads_per_step: int | None = None,
                         key_bias_bhl: jax.Array | None = None) -> jax.Array:
  """`flash_attention` on head-major q, k, v [B, H, L, Dh] -> [B, H, L, Dh]; `key_bias_bhl`
  (float32 [B, H, L]) is added to every query's logit for key l."""
  batch, heads, length, _ = q_bhld.shape
  if heads_per_step is None:
    heads_per_step = _flash_heads_per_step(batch * heads, length)
  if (batch * heads) % heads_per_step:
    raise ValueError(f"heads_per_step={heads_per_step} does not divide B·H={batch * heads}")
  return _flash_attention_bhld(q_bhld, k_bhld, v_bhld, key_bias_bhl, heads_per_step)


def flash_attention(q_blhd: jax.Array, k_blhd: jax.Array, v_blhd: jax.Array,
                    heads_per_step: int | None = None) -> jax.Array:
  """Exact attention for CPU: a loop over groups of (batch, head) pairs, custom backward.

  Per step, G pairs' full [G, L, L] scores (logits and softmax in float32, probabilities
  unnormalized: the row sums divide the [L, Dh] output). The backward pass recomputes each
  step's probabilities from the saved log-sum-exp (FlashAttention-2), so nothing of size L² is
  stored between passes. Every matmul has its contraction on an operand's minor axis, the form
  XLA:CPU hands to its fast matmul library. `heads_per_step` (a divisor of B·H) defaults to the
  largest whose score block fits a 16 MiB budget. Inputs are transposed to head-major once.
  """
  to_heads = lambda x: jnp.swapaxes(x, 1, 2)
  return to_heads(flash_attention_bhld(to_heads(q_blhd), to_heads(k_blhd), to_heads(v_blhd),
                                       heads_per_step))


SPLASH_BLOCK = 128  # splash attention's tile along queries and keys (its default block sizes)


def splash_attention_bhld(q_bhld: jax.Array, k_bhld: jax.Array, v_bhld: jax.Array, *,
                          interpret: bool = False) -> jax.Array:
  """softmax(q kᵀ / sqrt(Dh)) v with the Pallas TPU splash-attention kernel.

  The kernel takes sequence lengths in multiples of its tiles, so L is padded to a multiple of
  `SPLASH_BLOCK` and the padded keys are masked out (1387 tokens -> 1408, 1.5% more work).
  Pallas kernels are opaque to XLA's partitioner: under a mesh the kernel runs per shard in a
  `shard_map` (batch over the activation batch axes, heads over the tensor axis). `interpret=True`
  runs the same kernel in the Pallas interpreter (any backend; how the CPU tests check it).
  """
  from jax.experimental.pallas.ops.tpu.splash_attention import (  # pylint: disable=g-import-not-at-top
      splash_attention_kernel as splash, splash_attention_mask as splash_mask)
  b, h, length, dh = q_bhld.shape
  padded = -(-length // SPLASH_BLOCK) * SPLASH_BLOCK
  spec = mesh_axes_of(ACTIVATIONS.heads)
  local_heads = h
  if spec is not None and spec[1] is not None:
    mesh = jax.sharding.get_abstract_mesh()
    for axis in (spec[1] if isinstance(spec[1], tuple) else (spec[1],)):
      local_heads //= mesh.shape[axis]
  visible_kv = np.zeros((padded, padded), bool)
  visible_kv[:, :length] = True  # padded query rows see the real keys too: no empty softmax
  kernel = splash.make_splash_mha(
      splash_mask.MultiHeadMask([splash_mask.NumpyMask(visible_kv)] * local_heads),
      head_shards=1, q_seq_shards=1, block_sizes=splash.BlockSizes.get_default(),
      interpret=interpret)

  def attend(q, k, v):
    pad = lambda x: jnp.pad(x, ((0, 0), (0, 0), (0, padded - length), (0, 0)))
    out = jax.vmap(kernel)(pad(q * jnp.asarray(1.0 / math.sqrt(dh), q.dtype)), pad(k), pad(v))
    return out[:, :, :length].astype(q.dtype)

  if spec is None:
    return attend(q_bhld, k_bhld, v_bhld)
  spec = jax.sharding.PartitionSpec(spec[0], spec[1], None, None)
  return jax.shard_map(attend, in_specs=(spec, spec, spec), out_specs=spec,
                       check_vma=False)(q_bhld, k_bhld, v_bhld)


def _compiling_for_tpu() -> bool:
  """True when the step is traced for TPUs: the mesh's devices (also in an AOT compile from a CPU
  host, whose mesh is made of the target topology's devices) or else the default backend."""
  mesh = jax.sharding.get_abstract_mesh()
  if not mesh.empty and mesh.abstract_device is not None:
    return mesh.abstract_device.platform == "tpu"
  return jax.default_backend() == "tpu"


ATTENTION_KINDS = ("xla", "chunked", "flash", "splash")


class SelfAttention(nnx.Module):
  """Multi-head self-attention over all tokens, optional RMSNorm on q and k per head."""

  def __init__(self, width: int, num_heads: int, *, qk_norm: bool, attention: str,
               attention_chunk: int, dtype: jnp.dtype, rngs: nnx.Rngs):
    if width % num_heads:
      raise ValueError(f"width {width} is not divisible by num_heads {num_heads}")
    if attention not in ATTENTION_KINDS:
      raise ValueError(f"attention must be one of {ATTENTION_KINDS}, got {attention!r}")
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
    return (matmul_in_dtype("bld,dhk->blhk", x_bld, kernel[...], self.dtype)
            + bias[...].astype(self.dtype))

  def _attend(self, q_blhd, k_blhd, v_blhd, key_bias_bhl):
    """One attention core on normed, rotated q, k, v [B, L(q or k), H, Dh] (not splash)."""
    if self.attention == "xla":
      return xla_attention(q_blhd, k_blhd, v_blhd, key_bias_bhl)
    if self.attention == "chunked":
      return chunked_attention(q_blhd, k_blhd, v_blhd, self.attention_chunk, key_bias_bhl)
    to_heads = lambda x: jnp.swapaxes(x, 1, 2)
    return to_heads(flash_attention_bhld(to_heads(q_blhd), to_heads(k_blhd), to_heads(v_blhd),
                                         key_bias_bhl=key_bias_bhl))

  def _split_attention(self, q_blhd, k_blhd, v_blhd, key_bias_bhl, split: int,
                       cross_gate_blh: jax.Array) -> jax.Array:
    """Each query's own modality and the other one as two softmaxes: own + gate · other.

    Tokens [:split] are one modality (video), [split:] the other. In one joint softmax the keys
    of a query's own modality, which answer most of MoNL's denoising, can take all of the
    attention and starve the other modality's keys of gradient; here the other modality always
    gets a whole softmax of its own, weighed in by `cross_gate_blh` (per query and head).
    """
    def over_keys(start, stop):
      bias = None if key_bias_bhl is None else key_bias_bhl[:, :, start:stop]
      return self._attend(q_blhd, k_blhd[:, start:stop], v_blhd[:, start:stop], bias)

    from_first_blhd, from_second_blhd = over_keys(0, split), over_keys(split, None)
    gate_blh1 = cross_gate_blh[..., None].astype(from_first_blhd.dtype)
    return jnp.concatenate([
        from_first_blhd[:, :split] + gate_blh1[:, :split] * from_second_blhd[:, :split],
        from_second_blhd[:, split:] + gate_blh1[:, split:] * from_first_blhd[:, split:]], axis=1)

  def __call__(self, x_bld: jax.Array, rotary: tuple[np.ndarray, np.ndarray] | None = None,
               key_bias_bhl: jax.Array | None = None, split: int | None = None,
               cross_gate_blh: jax.Array | None = None) -> jax.Array:
    """[B, L, d] -> [B, L, d] in `dtype`; `rotary`: (cos, sin) [L, P] applied to q and k;
    `key_bias_bhl`: float32 [B, H, L] added to every query's logit for key l; `split` (with
    `cross_gate_blh` [B, L, H]): tokens [:split] and [split:] attend within and across the two
    modalities in separate softmaxes (_split_attention)."""
    x_bld = x_bld.astype(self.dtype)
    q_blhd = self._project(x_bld, self.query_kernel, self.query_bias)
    k_blhd = self._project(x_bld, self.key_kernel, self.key_bias)
    v_blhd = self._project(x_bld, self.value_kernel, self.value_bias)
    if split is not None:
      if self.attention == "splash":
        raise ValueError("split attention (model.split_attention) needs attention flash, xla "
                         "or chunked, not splash")
      if self.query_norm is not None:
        q_blhd, k_blhd = self.query_norm(q_blhd), self.key_norm(k_blhd)
      if rotary is not None:
        q_blhd, k_blhd = (apply_rotary(x, *rotary, length_axis=1) for x in (q_blhd, k_blhd))
      out_blhd = self._split_attention(q_blhd, k_blhd, v_blhd, key_bias_bhl, split,
                                       cross_gate_blh)
    elif self.attention in ("flash", "splash"):
      # Head-major first, then the q/k norms (per head over Dh, so the same values): XLA fuses a
      # norm into the transposing copy, where after the projection it lands in the matmul
      # library's fusion with its scale and reductions materialized (~5% of the bench step).
      to_heads = lambda x: jnp.swapaxes(x, 1, 2)
      q_bhld, k_bhld, v_bhld = to_heads(q_blhd), to_heads(k_blhd), to_heads(v_blhd)
      if self.query_norm is not None:
        q_bhld, k_bhld = self.query_norm(q_bhld), self.key_norm(k_bhld)
      if rotary is not None:
        q_bhld, k_bhld = (apply_rotary(x, *rotary, length_axis=2) for x in (q_bhld, k_bhld))
      q_bhld, k_bhld, v_bhld = (constrain(x, ACTIVATIONS.heads) for x in (q_bhld, k_bhld, v_bhld))
      if self.attention == "splash":
        if key_bias_bhl is not None:
          raise ValueError("attention='splash' takes no key bias (model.noise_key_bias); use "
                           "flash, xla or chunked")
        # Pallas TPU kernel; elsewhere only through the interpreter (tests).
        out_bhld = splash_attention_bhld(q_bhld, k_bhld, v_bhld,
                                         interpret=not _compiling_for_tpu())
      else:
        out_bhld = flash_attention_bhld(q_bhld, k_bhld, v_bhld, key_bias_bhl=key_bias_bhl)
      out_blhd = to_heads(out_bhld)
    else:
      if self.query_norm is not None:
        q_blhd, k_blhd = self.query_norm(q_blhd), self.key_norm(k_blhd)
      if rotary is not None:
        q_blhd, k_blhd = (apply_rotary(x, *rotary, length_axis=1) for x in (q_blhd, k_blhd))
      if self.attention == "xla":
        out_blhd = xla_attention(q_blhd, k_blhd, v_blhd, key_bias_bhl)
      else:
        out_blhd = chunked_attention(q_blhd, k_blhd, v_blhd, self.attention_chunk, key_bias_bhl)
    return (matmul_in_dtype("blhk,hkd->bld", out_blhd, self.out_kernel[...], self.dtype)
            + self.out_bias[...].astype(self.dtype))


class Mlp(nnx.Module):
  """d -> hidden -> d with tanh-approximated GELU."""

  def __init__(self, width: int, hidden: int, *, dtype: jnp.dtype, rngs: nnx.Rngs):
    self.fc_in = Dense(width, hidden, kernel_axes=AXES.mlp_in_kernel, bias_axes=AXES.mlp_bias,
                       dtype=dtype, rngs=rngs)
    self.fc_out = Dense(hidden, width, kernel_axes=AXES.mlp_out_kernel,
                        bias_axes=AXES.embed_bias, dtype=dtype, rngs=rngs)

  def __call__(self, x_bld: jax.Array) -> jax.Array:
    hidden_bln = constrain(self.fc_in(x_bld), ACTIVATIONS.mlp)
    return self.fc_out(jax.nn.gelu(hidden_bln, approximate=True))


def _row_runs(token_row_l: np.ndarray) -> list[tuple[int, int, int]]:
  """Runs of token rows as (first row, number of rows, tokens per row).

  Consecutive tokens of one row form a run; consecutive runs of equal length over consecutive
  rows merge (the N video segments of h·w tokens each are one entry).
  """
  starts = np.flatnonzero(np.diff(token_row_l, prepend=-1))
  lengths = np.diff(np.append(starts, len(token_row_l)))
  merged = []
  for row, length in zip(token_row_l[starts].tolist(), lengths.tolist()):
    if merged and merged[-1][2] == length and merged[-1][0] + merged[-1][1] == row:
      merged[-1] = (merged[-1][0], merged[-1][1] + 1, length)
    else:
      merged.append((row, 1, length))
  return merged


def gather_rows(rows_brk: jax.Array, token_row_l: jax.Array | np.ndarray) -> jax.Array:
  """Per-(modality, segment) row values [B, R, k] -> per-token values [B, L, k].

  With a concrete `token_row_l` (a numpy array or a concrete jax array: the layout's rows) this is
  a concatenation of broadcasts of runs of equal rows (contiguous in the layout), whose backward
  pass is a sum per run. A gather (`jnp.take`) gives the same values, but its backward pass is a
  scatter-add, which XLA:CPU runs only after transposing the [B, L, k] cotangent. A traced index
  array (e.g. a jnp array created inside jit) falls back to `jnp.take`.
  """
  if isinstance(token_row_l, jax.core.Tracer):
    return jnp.take(rows_brk, token_row_l, axis=1)
  batch, _, width = rows_brk.shape
  pieces = []
  for row, num_rows, length in _row_runs(np.asarray(token_row_l)):
    rows_bmk = rows_brk[:, row:row + num_rows]
    pieces.append(jnp.broadcast_to(rows_bmk[:, :, None, :], (batch, num_rows, length, width))
                  .reshape(batch, num_rows * length, width))
  return pieces[0] if len(pieces) == 1 else jnp.concatenate(pieces, axis=1)


class AdaLNBlock(nnx.Module):
  """Pre-LN transformer block whose LayerNorms are modulated per conditioning row.

  adaln="full": its own zero-init Linear(d -> 6d) (adaLN-Zero, DiT).
  adaln="lora": a rank-r term up(down(c)) added to a shared base computed by the caller
  (AdaLN-LoRA, W.A.L.T); `up` is zero-init so the block is the identity at init either way.
  noise_key_bias: a zero-init Linear(d -> heads) of the same conditioning rows gives each key
  a logit bias per head from its own (modality, segment)'s noise level, so attention can weigh
  a clean key above a noisy one directly.
  split_attention: attention within a token's modality and across to the other one are two
  softmaxes (SelfAttention._split_attention); the cross part enters through a zero-init gate per
  head from the token's own conditioning row and the co-timed row of the other modality.
  """

  def __init__(self, width: int, num_heads: int, mlp_ratio: float, *, adaln: str,
               adaln_lora_rank: int, qk_norm: bool, attention: str, attention_chunk: int,
               dtype: jnp.dtype, rngs: nnx.Rngs, noise_key_bias: bool = False,
               split_attention: bool = False):
    if (noise_key_bias or split_attention) and attention == "splash":
      raise ValueError("model.noise_key_bias and model.split_attention need attention flash, "
                       "xla or chunked, not splash")
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
    # float32: a bias on float32 logits (all attention kernels take their logits in float32).
    self.key_bias = (Dense(width, num_heads, kernel_axes=AXES.key_bias_kernel,
                           bias_axes=AXES.key_bias_bias, kernel_init=zeros, dtype=jnp.float32,
                           rngs=rngs)
                     if noise_key_bias else nnx.data(None))
    self.cross_gate = (Dense(2 * width, num_heads, kernel_axes=AXES.cross_gate_kernel,
                             bias_axes=AXES.key_bias_bias, kernel_init=zeros, dtype=jnp.float32,
                             rngs=rngs)
                       if split_attention else nnx.data(None))

  def modulation_rows(self, silu_cond_brd: jax.Array,
                      shared_base_brk: jax.Array | None = None) -> jax.Array:
    """SiLU(cond rows) [B, R, d] -> the six modulation vectors of this block per row [B, R, 6d].

    Order along the last axis: shift, scale, gate of attention, then of the MLP.
    """
    if self.adaln_kind == "full":
      return self.adaln(silu_cond_brd)
    return shared_base_brk + self.adaln_up(self.adaln_down(silu_cond_brd))

  def key_bias_rows(self, silu_cond_brd: jax.Array) -> jax.Array | None:
    """SiLU(cond rows) [B, R, d] -> float32 key logit bias per row and head [B, R, H] | None."""
    return None if self.key_bias is None else self.key_bias(silu_cond_brd.astype(jnp.float32))

  def cross_gate_rows(self, silu_cond_brd: jax.Array) -> jax.Array | None:
    """SiLU(cond rows) [B, R, d] (rows m·N + n) -> float32 cross-modal gate per row and head
    [B, R, H] from the row's own conditioning and the other modality's row of its segment."""
    if self.cross_gate is None:
      return None
    batch, rows, width = silu_cond_brd.shape
    by_modality_bmnd = silu_cond_brd.astype(jnp.float32).reshape(batch, 2, rows // 2, width)
    other_brd = by_modality_bmnd[:, ::-1].reshape(batch, rows, width)
    return self.cross_gate(jnp.concatenate([silu_cond_brd.astype(jnp.float32), other_brd], -1))

  def __call__(self, x_bld: jax.Array, modulation_brk: jax.Array, token_row_l: jax.Array,
               rotary: tuple[np.ndarray, np.ndarray] | None = None,
               key_bias_brh: jax.Array | None = None, split: int | None = None,
               cross_gate_brh: jax.Array | None = None) -> jax.Array:
    """x [B, L, d], modulation rows [B, R, 6d], token_row int [L] -> x [B, L, d].

    `rotary`: the (cos, sin) [L, P] tables of time RoPE, or None; `key_bias_brh`: the key
    logit bias per conditioning row (key_bias_rows), or None; `split`, `cross_gate_brh`: the
    first modality's token count and the gate rows of split attention (cross_gate_rows).
    """
    # Split per row first and gather each vector where it is used: the per-token tensors are
    # cheap broadcasts of R rows that XLA fuses into the elementwise ops.
    shift_attn, scale_attn, gate_attn, shift_mlp, scale_mlp, gate_mlp = jnp.split(
        modulation_brk.astype(x_bld.dtype), 6, axis=-1)
    to_tokens = lambda rows_brd: gather_rows(rows_brd, token_row_l)
    h_bld = modulate(layer_norm(x_bld), to_tokens(shift_attn), to_tokens(scale_attn))
    key_bias_bhl = (None if key_bias_brh is None
                    else jnp.swapaxes(gather_rows(key_bias_brh, token_row_l), 1, 2))
    cross_gate_blh = None if cross_gate_brh is None else to_tokens(cross_gate_brh)
    x_bld = x_bld + to_tokens(gate_attn) * self.attn(
        h_bld, rotary, key_bias_bhl, split if cross_gate_brh is not None else None,
        cross_gate_blh)
    h_bld = modulate(layer_norm(x_bld), to_tokens(shift_mlp), to_tokens(scale_mlp))
    return x_bld + to_tokens(gate_mlp) * self.mlp(h_bld)
