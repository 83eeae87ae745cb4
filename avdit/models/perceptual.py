"""LPIPS-like perceptual loss for the video autoencoder (`PerceptualLoss`): distances between
normalized features of a VGG-style conv stack whose weights come from a user `.npz` (optional, off
by default; `loss.perceptual_weight` / `loss.perceptual_weights_file`). The weights are frozen
`PerceptualWeight` variables, never trained or counted as parameters.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


class PerceptualWeight(nnx.Variable):
  """Frozen perceptual-network weights: not an nnx.Param, so never trained or counted."""


VGG16_POOL_AFTER = (1, 3, 6, 9)  # conv indices followed by 2×2 max-pooling in VGG16.
_PERCEPTUAL_KEYS = (
    "conv{i}_kernel, conv{i}_bias, pool_after, feature_layers, lin{j}, input_shift, input_scale")


class PerceptualLoss(nnx.Module):
  """LPIPS-like distance from a VGG-style conv stack whose weights come from a `.npz` file.

  File format (float arrays; `i` = 0..L-1 consecutive, `j` over the feature layers):
    conv{i}_kernel [3, 3, in, out] (HWIO; conv0 has in = 3, conv{i} in = conv{i-1} out),
    conv{i}_bias [out];
    optional pool_after (int [P]): conv indices followed by ReLU-then-2×2 max pool; default
      the VGG16 layout (1, 3, 6, 9) restricted to indices < L - 1;
    optional feature_layers (int [J]): conv indices whose ReLU outputs are compared; default
      every conv before a pool plus the last one (VGG16: relu1_2, 2_2, 3_3, 4_3, 5_3, as LPIPS);
    optional lin{j} [C_j] non-negative channel weights (LPIPS "lin" layers); default ones;
    optional input_shift [3], input_scale [3]: the net sees (x - shift)/scale; default 0 and 1.
  Distance per image: sum_j mean_{h,w} sum_c lin_j[c]·(f̂_x - f̂_y)², f̂ = f/(||f||_c + eps).
  Videos are compared frame by frame (frames flattened into the batch); the loss is the mean.
  Convs are 'SAME' with stride 1. Computed in float32; the weights are `PerceptualWeight`s.
  """

  def __init__(self, weights: dict[str, np.ndarray], *, eps: float = 1e-10):
    weights = {k: np.asarray(v) for k, v in weights.items()}
    num_convs = 0
    while f"conv{num_convs}_kernel" in weights:
      num_convs += 1
    if num_convs == 0:
      raise ValueError(f"perceptual weights have no 'conv0_kernel'; expected keys "
                       f"{_PERCEPTUAL_KEYS}, got {sorted(weights)}")
    kernels, biases, in_channels = [], [], 3
    for i in range(num_convs):
      kernel = weights[f"conv{i}_kernel"]
      bias = weights.get(f"conv{i}_bias")
      if kernel.ndim != 4 or kernel.shape[:2] != (3, 3) or kernel.shape[2] != in_channels:
        raise ValueError(f"conv{i}_kernel has shape {kernel.shape}, expected [3, 3, "
                         f"{in_channels}, out]")
      if bias is None or bias.shape != (kernel.shape[3],):
        shape = None if bias is None else bias.shape
        raise ValueError(f"conv{i}_bias has shape {shape}, expected ({kernel.shape[3]},)")
      kernels.append(kernel)
      biases.append(bias)
      in_channels = kernel.shape[3]
    pool_after = tuple(int(i) for i in weights.get(
        "pool_after", [i for i in VGG16_POOL_AFTER if i < num_convs - 1]))
    default_features = sorted(set(pool_after) | {num_convs - 1})
    feature_layers = tuple(int(i) for i in weights.get("feature_layers", default_features))
    for name, indices in (("pool_after", pool_after), ("feature_layers", feature_layers)):
      if any(not 0 <= i < num_convs for i in indices) or len(set(indices)) != len(indices):
        raise ValueError(f"{name} {indices} must be distinct conv indices in [0, {num_convs})")
    lins = []
    for j, layer in enumerate(feature_layers):
      lin = weights.get(f"lin{j}", np.ones((kernels[layer].shape[3],), np.float32))
      if lin.shape != (kernels[layer].shape[3],):
        raise ValueError(f"lin{j} has shape {lin.shape}, expected ({kernels[layer].shape[3]},)")
      lins.append(lin)
    shift = weights.get("input_shift", np.zeros((3,), np.float32))
    scale = weights.get("input_scale", np.ones((3,), np.float32))
    if shift.shape != (3,) or scale.shape != (3,):
      raise ValueError(f"input_shift/input_scale must have shape (3,), got {shift.shape}, "
                       f"{scale.shape}")
    known = {f"conv{i}_{p}" for i in range(num_convs) for p in ("kernel", "bias")}
    known |= {f"lin{j}" for j in range(len(feature_layers))}
    known |= {"pool_after", "feature_layers", "input_shift", "input_scale"}
    if set(weights) - known:
      raise ValueError(f"unexpected perceptual weight keys {sorted(set(weights) - known)} "
                       f"(conv keys must be consecutive from conv0); expected {_PERCEPTUAL_KEYS}")
    as_weight = lambda a: PerceptualWeight(jnp.asarray(a, jnp.float32))
    self.kernels = nnx.List([as_weight(k) for k in kernels])
    self.biases = nnx.List([as_weight(b) for b in biases])
    self.lins = nnx.List([as_weight(l) for l in lins])
    self.input_shift, self.input_scale = as_weight(shift), as_weight(scale)
    self.pool_after, self.feature_layers = pool_after, feature_layers
    self.eps = eps

  @classmethod
  def from_file(cls, path: str, **kwargs) -> PerceptualLoss:
    if not os.path.exists(path):
      raise FileNotFoundError(
          f"perceptual loss weights not found at {path!r}. The perceptual loss is optional and "
          f"off by default; provide a VGG-style .npz (keys {_PERCEPTUAL_KEYS}) or disable it.")
    with np.load(path) as data:
      return cls({k: data[k] for k in data.files}, **kwargs)

  def features(self, images_nhwc: jax.Array) -> list[jax.Array]:
    """Float32 ReLU feature maps of `feature_layers` for images [N, H, W, 3] in [-1, 1]."""
    x = (images_nhwc.astype(jnp.float32) - self.input_shift[...]) / self.input_scale[...]
    by_layer = {}
    for i, (kernel, bias) in enumerate(zip(self.kernels, self.biases)):
      x = jax.lax.conv_general_dilated(x, kernel[...], (1, 1), "SAME",
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
      x = jax.nn.relu(x + bias[...])
      if i in self.feature_layers:
        by_layer[i] = x
      if i in self.pool_after:
        x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    return [by_layer[i] for i in self.feature_layers]

  def per_image(self, a_nhwc: jax.Array, b_nhwc: jax.Array) -> jax.Array:
    """Distance of each image pair, float32 [N]."""
    total = jnp.zeros((a_nhwc.shape[0],), jnp.float32)
    for fa, fb, lin in zip(self.features(a_nhwc), self.features(b_nhwc), self.lins):
      fa = fa / (jnp.sqrt(jnp.sum(jnp.square(fa), axis=-1, keepdims=True)) + self.eps)
      fb = fb / (jnp.sqrt(jnp.sum(jnp.square(fb), axis=-1, keepdims=True)) + self.eps)
      total = total + jnp.mean(jnp.sum(jnp.square(fa - fb) * lin[...], axis=-1), axis=(1, 2))
    return total

  def __call__(self, a: jax.Array, b: jax.Array) -> jax.Array:
    """Mean distance over frames of videos [B, F, H, W, 3] (or images [N, H, W, 3])."""
    if a.shape != b.shape or a.ndim not in (4, 5) or a.shape[-1] != 3:
      raise ValueError(f"perceptual loss needs two [B, F, H, W, 3] videos or [N, H, W, 3] "
                       f"images of the same shape, got {a.shape} and {b.shape}")
    if a.ndim == 5:
      a, b = a.reshape(-1, *a.shape[2:]), b.reshape(-1, *b.shape[2:])
    return jnp.mean(self.per_image(a, b))
