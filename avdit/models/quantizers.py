"""The autoencoders' quantizers: lookup-free quantization (MAGVIT-v2) and the residual vector
quantizer with EMA codebooks and k-means init (SoundStream).

Lookup-free quantization (`LookupFreeQuantizer`): q = sign(z) in {-1, +1}^d (0 -> +1) with a
straight-through estimator; commitment loss mean_tokens ||z - sg(q)||²; entropy loss
E_z[H(p(c|z))] - H(E_z[p(c|z)]) with p(c|z) = softmax_c(-||z - c||²/τ) over the 2^d codes.
"exact" mode evaluates it over all 2^d codes (memory tokens·2^d, so d <= 16 is enforced);
"factorized" mode (for large d, in the spirit of MAGVIT-v2's factorized entropy) uses that
p(c|z) is a product over dimensions (-||z - c||² = 2 z·c + const), so the per-token entropy is
exact (a sum of binary entropies), while the batch term is replaced by the sum of per-dimension
binary entropies of the mean probabilities, an upper bound of H(E[p]). `bypass=True` returns z
unchanged (the continuous latents for diffusion) with zero losses.

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

The RVQ state carries the logical axis names of `CODEBOOK_AXES`: codebook / embed_sum
("codebook_stage", "codes", "code_dim"), cluster_size ("codebook_stage", "codes").
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from avdit.models import layers
from avdit.models.layers import Axes


@dataclasses.dataclass(frozen=True)
class CodebookAxes:
  """Logical axis names of the RVQ state."""

  codebook: Axes = ("codebook_stage", "codes", "code_dim")
  cluster_size: Axes = ("codebook_stage", "codes")


CODEBOOK_AXES = CodebookAxes()


# --- lookup-free quantization --------------------------------------------------------------------
def _binary_entropy_from_logits(a: jax.Array) -> jax.Array:
  """Entropy (nats) of Bernoulli(sigmoid(a)), stable for large |a|."""
  p = jax.nn.sigmoid(a)
  return -(p * jax.nn.log_sigmoid(a) + (1 - p) * jax.nn.log_sigmoid(-a))


def _entropy(p: jax.Array, axis: int = -1) -> jax.Array:
  # p log p with log clamped: the same value (0 at p = 0), but a finite gradient where a code's
  # mean probability underflows to 0 (xlogy's is -inf there and turns the step into NaN).
  return -jnp.sum(p * jnp.log(jnp.maximum(p, 1e-30)), axis=axis)


def all_codes(dim: int) -> np.ndarray:
  """The 2^dim codes in {-1, +1}^dim, float32 [2^dim, dim]; row k has bit i of k (MSB first)
  as its dimension i (+1 for a 1 bit), matching `code_indices`."""
  bits = (np.arange(2**dim)[:, None] >> np.arange(dim - 1, -1, -1)) & 1
  return (2.0 * bits - 1.0).astype(np.float32)


def code_indices(q_td: jax.Array) -> jax.Array:
  """Integer code of each ±1 row: sum_i [q_i > 0]·2^(d-1-i), int32 [T]."""
  d = q_td.shape[-1]
  weights = jnp.asarray(2 ** np.arange(d - 1, -1, -1), jnp.int32)
  return jnp.sum((q_td > 0).astype(jnp.int32) * weights, axis=-1)


class LookupFreeQuantizer(nnx.Module):
  """LFQ: sign quantization to {-1, +1}^d with commitment and entropy losses (no parameters).

  entropy_mode "exact": E[H(p(c|z))] - H(E[p(c|z)]) over all 2^d codes, logits
  2·z·c/τ (= -||z - c||²/τ + const); memory tokens·2^d floats, so latent_dim <= 16.
  entropy_mode "factorized": p(c|z) = prod_i Bernoulli(sigmoid(4 z_i/τ)); the per-token entropy
  is the same (exact) sum of binary entropies; the batch entropy is sum_i H_b(E[p_i]), an upper
  bound of H(E[p]); any latent_dim <= 31. Metrics need code indices in int32: latent_dim <= 31.
  """

  MAX_EXACT_DIM = 16
  MAX_DIM = 31

  def __init__(self, latent_dim: int, *, entropy_temperature: float = 0.01,
               entropy_mode: str = "exact"):
    if entropy_mode not in ("exact", "factorized"):
      raise ValueError(f"entropy_mode must be 'exact' or 'factorized', got {entropy_mode!r}")
    if entropy_mode == "exact" and latent_dim > self.MAX_EXACT_DIM:
      raise ValueError(
          f"exact LFQ entropy enumerates 2^{latent_dim} codes per token; latent_dim must be <= "
          f"{self.MAX_EXACT_DIM} (use entropy_mode='factorized' for larger codebooks)")
    if not 1 <= latent_dim <= self.MAX_DIM:
      raise ValueError(f"latent_dim must be in [1, {self.MAX_DIM}], got {latent_dim}")
    if entropy_temperature <= 0:
      raise ValueError(f"entropy_temperature must be positive, got {entropy_temperature}")
    self.latent_dim = latent_dim
    self.entropy_temperature = float(entropy_temperature)
    self.entropy_mode = entropy_mode

  def entropy_terms(self, z_td: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(E_z[H(p(c|z))], H(E_z[p(c|z)])) in nats for float32 latents [T, d]."""
    tau = self.entropy_temperature
    if self.entropy_mode == "exact":
      codes_kd = jnp.asarray(all_codes(self.latent_dim))
      logp_tk = jax.nn.log_softmax((2.0 / tau) * z_td @ codes_kd.T, axis=-1)
      p_tk = jnp.exp(logp_tk)
      sample_entropy = jnp.mean(-jnp.sum(p_tk * logp_tk, axis=-1))
      return sample_entropy, _entropy(jnp.mean(p_tk, axis=0))
    logits_td = (4.0 / tau) * z_td  # log p(+1)/p(-1) = (||z+1||² - ||z-1||²)/τ per dimension.
    sample_entropy = jnp.mean(jnp.sum(_binary_entropy_from_logits(logits_td), axis=-1))
    mean_p_d = jnp.mean(jax.nn.sigmoid(logits_td), axis=0)
    batch_entropy = jnp.sum(_entropy(jnp.stack([mean_p_d, 1 - mean_p_d], axis=-1)))
    return sample_entropy, batch_entropy

  def metrics(self, q_td: jax.Array) -> dict[str, jax.Array]:
    """Fraction of the 2^d codes used by the hard codes, and their perplexity exp(H)."""
    num_tokens = q_td.shape[0]
    sorted_codes = jnp.sort(code_indices(q_td))
    is_new = jnp.concatenate([jnp.ones((1,), bool), sorted_codes[1:] != sorted_codes[:-1]])
    # Histogram via runs of the sorted codes: memory O(tokens), not O(2^d).
    run_id = jnp.cumsum(is_new) - 1
    counts = jax.ops.segment_sum(jnp.ones((num_tokens,), jnp.float32), run_id,
                                 num_segments=num_tokens)
    usage = jnp.sum(is_new).astype(jnp.float32) / float(2**self.latent_dim)
    return {"codebook_usage": usage,
            "perplexity": jnp.exp(_entropy(counts / num_tokens))}

  def __call__(self, z: jax.Array, *, bypass: bool = False) -> tuple[jax.Array, dict]:
    """z [..., d] -> (z_q [..., d], {"losses": {commitment, entropy}, "metrics": {...}}).

    z_q = z + sg(sign(z) - z) (forward: the codes, backward: identity). With `bypass`, z is
    returned unchanged and the losses are zero.
    """
    if z.shape[-1] != self.latent_dim:
      raise ValueError(f"expected latents [..., {self.latent_dim}], got {z.shape}")
    z32 = z.astype(jnp.float32)
    q = jnp.where(z32 >= 0, 1.0, -1.0)
    z_td = z32.reshape(-1, self.latent_dim)
    q_td = q.reshape(-1, self.latent_dim)
    metrics = self.metrics(jax.lax.stop_gradient(q_td))
    if bypass:
      zero = jnp.zeros((), jnp.float32)
      return z, {"losses": {"commitment": zero, "entropy": zero}, "metrics": metrics}
    commitment = jnp.mean(jnp.sum(jnp.square(z_td - q_td), axis=-1))  # q carries no gradient.
    sample_entropy, batch_entropy = self.entropy_terms(z_td)
    metrics.update(sample_entropy=jax.lax.stop_gradient(sample_entropy),
                   batch_entropy=jax.lax.stop_gradient(batch_entropy))
    z_q = z32 + jax.lax.stop_gradient(q - z32)
    return z_q, {"losses": {"commitment": commitment, "entropy": sample_entropy - batch_entropy},
                 "metrics": metrics}


# --- residual vector quantizer --------------------------------------------------------------------
class CodebookState(nnx.Variable):
  """RVQ codebooks and their EMA statistics: updated in place by the training forward pass, never
  by the optimizer (keep out of `nnx.Optimizer(..., wrt=nnx.Param)`; carry with the model)."""


def _state(value: jax.Array, axes: Axes | None) -> CodebookState:
  if not axes:
    return CodebookState(value)
  with layers.annotate_without_mesh():
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
    self.codebook = _state(codebook, CODEBOOK_AXES.codebook)
    self.cluster_size = _state(jnp.ones(shape[:2], jnp.float32), CODEBOOK_AXES.cluster_size)
    self.embed_sum = _state(codebook, CODEBOOK_AXES.codebook)
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
