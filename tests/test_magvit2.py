"""MAGVIT-v2 autoencoder (SPEC §8): geometry, causality, numpy references, losses, training.

Tiny model: base 16, multipliers (1, 2, 2, 2), 1 block per stage: 9×32×32 clips -> 3×4×4×8
latents. Numpy references are written from the definitions (explicit loops / einsum), not from
the module's code paths.
"""
from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.flatten_util import ravel_pytree

from avdit.models import magvit2
from avdit.models.discriminators import Magvit2Discriminator
from avdit.models.layers import count_params
from avdit.models.magvit2 import AdaptiveGroupNorm, CausalConv3d, Magvit2
from avdit.models.perceptual import PerceptualLoss
from avdit.models.quantizers import LookupFreeQuantizer

AXIS_VOCABULARY = {"conv_t", "conv_h", "conv_w", "conv_in", "conv_out", "norm", "dense_in",
                   "dense_out"}


# Two stages (×2 space, ×2 time): for tests of wiring, where compile time is the cost.
MICRO_KWARGS = dict(base_channels=4, channel_multipliers=(1, 2), num_res_blocks=1,
                    num_mid_res_blocks=1, temporal_downsample=(True,), latent_dim=4, num_groups=2)


def _rngs(seed: int) -> nnx.Rngs:
  """rbg keys: the default threefry RNG costs ~1 s of XLA compile per parameter shape here."""
  return nnx.Rngs(jax.random.key(seed, impl="rbg"))


@pytest.fixture(scope="module")
def tiny_model():
  return Magvit2(**magvit2.TINY_KWARGS, rngs=_rngs(0))


@pytest.fixture(scope="module")
def encode_fn():
  return nnx.jit(lambda model, video: model.encode(video))


def _video(batch=1, frames=9, size=32, seed=0):
  return np.random.default_rng(seed).uniform(-1, 1, (batch, frames, size, size, 3)).astype(
      np.float32)


def _segment(frame: int) -> int:
  return 0 if frame == 0 else (frame - 1) // 4 + 1


# --- parameter count, independently -------------------------------------------------------------
def _expected_params(base_channels, channel_multipliers, num_res_blocks, num_mid_res_blocks,
                     latent_dim, temporal_downsample, k=3, rgb=3, **_):
  conv = lambda cin, cout, taps=k**3: taps * cin * cout + cout
  widths = [base_channels * m for m in channel_multipliers]

  def res(cin, cout, norm):
    return (norm(cin) + conv(cin, cout) + norm(cout) + conv(cout, cout)
            + (conv(cin, cout, 1) if cin != cout else 0))

  gn = lambda c: 2 * c
  agn = lambda c: 2 * conv(latent_dim, c, 1)
  enc, c = conv(rgb, widths[0]), widths[0]
  for i, width in enumerate(widths):
    for _ in range(num_res_blocks):
      enc, c = enc + res(c, width, gn), width
    if i < len(widths) - 1:
      enc += conv(c, c)
  enc += num_mid_res_blocks * res(c, c, gn) + gn(c) + conv(c, latent_dim, 1)
  dec = conv(latent_dim, c) + num_mid_res_blocks * res(c, c, agn)
  for i in reversed(range(len(widths))):
    for _ in range(num_res_blocks):
      dec, c = dec + res(c, widths[i], agn), widths[i]
    if i > 0:
      dec += conv(c, c * 4 * (2 if temporal_downsample[i - 1] else 1))
  dec += agn(c) + conv(c, rgb)
  return enc + dec


def test_paper_config_shapes_abstractly():
  abstract = nnx.eval_shape(lambda: Magvit2(**magvit2.PAPER_KWARGS, rngs=_rngs(0)))
  graphdef, state = nnx.split(abstract)
  video = jax.ShapeDtypeStruct((2, 17, 128, 128, 3), jnp.float32)
  z = jax.eval_shape(lambda s, v: nnx.merge(graphdef, s).encode(v), state, video)
  assert z.shape == (2, 5, 16, 16, 8) and z.dtype == jnp.float32
  recon, aux = jax.eval_shape(lambda s, v: nnx.merge(graphdef, s)(v), state, video)
  assert recon.shape == (2, 17, 128, 128, 3) and recon.dtype == jnp.float32
  assert set(aux["losses"]) == {"commitment", "entropy"}
  # Paper setting: 370,594,699 parameters (144.9M encoder, 225.7M decoder).
  num_params = count_params(abstract)
  print(f"MAGVIT-v2 paper-size parameters: {num_params:,}")
  assert num_params == _expected_params(**magvit2.PAPER_KWARGS) == 370_594_699


def test_tiny_param_count_axes_and_dtype(tiny_model):
  assert count_params(tiny_model) == _expected_params(**magvit2.TINY_KWARGS)
  flat = nnx.to_flat_state(nnx.state(tiny_model, nnx.Param))
  assert len(flat) > 0
  for path, variable in flat:
    names = variable.get_metadata().get("out_sharding")
    assert names is not None and len(names) == variable.ndim, (path, names)
    assert set(names) <= AXIS_VOCABULARY, (path, names)
    assert variable.dtype == jnp.float32, path


# --- causality -----------------------------------------------------------------------------------
def test_encoder_is_causal(tiny_model, encode_fn):
  base = _video(seed=1)[0]
  frames = [0, 1, 4, 5, 8]
  variants = [base]
  for k, frame in enumerate(frames):
    changed = base.copy()
    changed[frame] = _video(seed=10 + k)[0, 0]
    variants.append(changed)
  z = np.asarray(encode_fn(tiny_model, jnp.asarray(np.stack(variants))))
  assert z.shape == (6, 3, 4, 4, 8)
  for i, frame in enumerate(frames, start=1):
    seg = _segment(frame)
    np.testing.assert_allclose(z[i, :seg], z[0, :seg], rtol=0, atol=1e-5, err_msg=f"frame {frame}")
    assert np.abs(z[i, seg] - z[0, seg]).max() > 1e-3, f"frame {frame} did not reach its segment"


def _randomize_adaptive_norms(model, seed=0):
  """AGN kernels start at zero; give them random values so the latent path is exercised."""
  rng = np.random.default_rng(seed)
  for _, node in nnx.iter_graph(model):
    if isinstance(node, AdaptiveGroupNorm):
      for conv in (node.to_scale, node.to_shift):
        conv.kernel.value = jnp.asarray(rng.normal(0, 0.3, conv.kernel.shape), jnp.float32)


def test_decoder_is_causal():
  model = Magvit2(**magvit2.TINY_KWARGS, rngs=_rngs(1))
  _randomize_adaptive_norms(model)
  rng = np.random.default_rng(2)
  base = rng.normal(size=(3, 4, 4, 8)).astype(np.float32)
  variants = [base]
  for seg in range(3):
    changed = base.copy()
    changed[seg] = rng.normal(size=(4, 4, 8))
    variants.append(changed)
  video = np.asarray(nnx.jit(lambda m, z: m.decode(z))(model, jnp.asarray(np.stack(variants))))
  assert video.shape == (4, 9, 32, 32, 3)
  for seg in range(3):
    first_frame = 0 if seg == 0 else 4 * seg - 3
    np.testing.assert_allclose(video[seg + 1, :first_frame], video[0, :first_frame], rtol=0,
                               atol=1e-5, err_msg=f"segment {seg}")
    last_frame = 4 * seg
    assert np.abs(video[seg + 1, first_frame:last_frame + 1]
                  - video[0, first_frame:last_frame + 1]).max() > 1e-3


# --- numpy references of the building blocks ----------------------------------------------------
def _conv3d_reference(x, kernel, bias, strides, pads):
  """Zero-pad by `pads` ((lo, hi) per T, H, W), then explicit loops over output positions."""
  xp = np.pad(x, [(0, 0), *pads, (0, 0)])
  kt, kh, kw = kernel.shape[:3]
  st, sh, sw = strides
  out_t = (xp.shape[1] - kt) // st + 1
  out_h = (xp.shape[2] - kh) // sh + 1
  out_w = (xp.shape[3] - kw) // sw + 1
  y = np.zeros((x.shape[0], out_t, out_h, out_w, kernel.shape[-1]))
  for t, i, j in itertools.product(range(out_t), range(out_h), range(out_w)):
    window = xp[:, t * st:t * st + kt, i * sh:i * sh + kh, j * sw:j * sw + kw]
    y[:, t, i, j] = np.einsum("bthwi,thwio->bo", window, kernel) + bias
  return y


@pytest.mark.parametrize("kernel_size,strides,shape,causal,pads", [
    # Causal time: 2 past frames; 'SAME' space, stride 1: (1, 1).
    ((3, 3, 3), (1, 1, 1), (5, 4, 5), True, [(2, 0), (1, 1), (1, 1)]),
    # Stride 2: 5 -> 3 frames; even H=6 -> 3 with the extra pad after: (0, 1); odd W=5: (1, 1).
    ((3, 3, 3), (2, 2, 2), (5, 6, 5), True, [(2, 0), (0, 1), (1, 1)]),
    ((2, 3, 1), (1, 2, 1), (4, 5, 3), True, [(1, 0), (1, 1), (0, 0)]),
    # Non-causal (discriminator): time 'SAME' too.
    ((3, 3, 3), (2, 2, 2), (5, 4, 4), False, [(1, 1), (0, 1), (0, 1)]),
])
def test_causal_conv3d_matches_numpy(kernel_size, strides, shape, causal, pads):
  conv = CausalConv3d(3, 4, kernel_size, strides=strides, causal=causal, rngs=_rngs(0),
                      bias_init=nnx.initializers.normal(1.0))
  x = np.random.default_rng(0).normal(size=(2, *shape, 3)).astype(np.float32)
  expected = _conv3d_reference(x.astype(np.float64), np.asarray(conv.kernel.value, np.float64),
                               np.asarray(conv.bias.value, np.float64), strides, pads)
  np.testing.assert_allclose(np.asarray(conv(jnp.asarray(x))), expected, rtol=1e-4, atol=1e-4)


def test_pointwise_conv_matches_numpy():
  conv = CausalConv3d(5, 3, (1, 1, 1), rngs=_rngs(1), bias_init=nnx.initializers.normal(1.0))
  x = np.random.default_rng(1).normal(size=(1, 2, 3, 3, 5)).astype(np.float32)
  expected = _conv3d_reference(x, np.asarray(conv.kernel.value), np.asarray(conv.bias.value),
                               (1, 1, 1), [(0, 0)] * 3)
  np.testing.assert_allclose(np.asarray(conv(jnp.asarray(x))), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("time_factor", [1, 2])
def test_depth_to_space_matches_numpy(time_factor):
  sf, c = 2, 3
  x = np.random.default_rng(0).normal(size=(2, 3, 2, 4, time_factor * sf * sf * c))
  y = np.asarray(magvit2.depth_to_space(jnp.asarray(x), time_factor=time_factor, space_factor=sf))
  expected = np.zeros((2, 3 * time_factor - (time_factor - 1), 4, 8, c))
  for t, a, h, i, w, j in itertools.product(range(3), range(time_factor), range(2), range(sf),
                                            range(4), range(sf)):
    frame = t * time_factor + a - (time_factor - 1)  # the first time_factor-1 frames are dropped
    if frame >= 0:
      start = ((a * sf + i) * sf + j) * c
      expected[:, frame, h * sf + i, w * sf + j] = x[:, t, h, w, start:start + c]
  np.testing.assert_allclose(y, expected, rtol=0, atol=1e-6)


def test_adaptive_group_norm_matches_numpy():
  channels, groups, latent_dim, eps = 8, 2, 3, 1e-6
  norm = AdaptiveGroupNorm(channels, latent_dim, num_groups=groups, eps=eps, dtype=jnp.float32,
                           rngs=_rngs(0))
  rng = np.random.default_rng(0)
  for conv in (norm.to_scale, norm.to_shift):
    conv.kernel.value = jnp.asarray(rng.normal(size=conv.kernel.shape), jnp.float32)
    conv.bias.value = jnp.asarray(rng.normal(size=conv.bias.shape), jnp.float32)
  x = rng.normal(2.0, 3.0, size=(2, 5, 4, 4, channels))  # 5 frames, 4x4
  z = rng.normal(size=(2, 3, 2, 2, latent_dim))  # 3 segments, 2x2
  y = np.asarray(norm(jnp.asarray(x, jnp.float32), jnp.asarray(z, jnp.float32)))

  ks, bs = np.asarray(norm.to_scale.kernel.value)[0, 0, 0], np.asarray(norm.to_scale.bias.value)
  kb, bb = np.asarray(norm.to_shift.kernel.value)[0, 0, 0], np.asarray(norm.to_shift.bias.value)
  expected = np.zeros_like(x)
  size = channels // groups
  for b, t in itertools.product(range(2), range(5)):
    seg = 0 if t == 0 else (t - 1) // 2 + 1  # 5 frames from 3 segments: r = 2
    for g in range(groups):
      block = x[b, t, :, :, g * size:(g + 1) * size]
      expected[b, t, :, :, g * size:(g + 1) * size] = (
          (block - block.mean()) / np.sqrt(block.var() + eps))
    for i, j in itertools.product(range(4), range(4)):
      zz = z[b, seg, i // 2, j // 2]
      expected[b, t, i, j] = expected[b, t, i, j] * (zz @ ks + bs) + (zz @ kb + bb)
  np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)


# --- lookup-free quantization --------------------------------------------------------------------
def _entropy_reference(z_td, tau):
  """Exact: p(c|z) = softmax over all 2^d codes of -||z - c||²/τ (float64)."""
  d = z_td.shape[1]
  codes = np.array(list(itertools.product([-1.0, 1.0], repeat=d)))
  logits = -((z_td[:, None, :] - codes[None]) ** 2).sum(-1) / tau
  logits -= logits.max(1, keepdims=True)
  p = np.exp(logits)
  p /= p.sum(1, keepdims=True)
  ent = lambda q: -(q * np.log(np.where(q > 0, q, 1))).sum(-1)
  return ent(p).mean(), ent(p.mean(0))


def _factorized_reference(z_td, tau):
  """Per dimension: p(+1) ∝ exp(-(z-1)²/τ), p(-1) ∝ exp(-(z+1)²/τ)."""
  plus, minus = np.exp(-(z_td - 1) ** 2 / tau), np.exp(-(z_td + 1) ** 2 / tau)
  p = plus / (plus + minus)
  h = lambda q: -(q * np.log(q) + (1 - q) * np.log(1 - q))
  return h(p).sum(1).mean(), h(p.mean(0)).sum()


@pytest.mark.parametrize("mode", ["exact", "factorized"])
def test_lfq_losses_match_numpy(mode):
  d, tau = 4, 0.7
  quantizer = LookupFreeQuantizer(d, entropy_temperature=tau, entropy_mode=mode)
  z = np.random.default_rng(0).normal(0, 0.6, size=(2, 3, 2, 2, d))
  z[0, 0, 0, 0, 0] = 0.0  # exact zero maps to +1
  z_q, aux = jax.jit(quantizer)(jnp.asarray(z, jnp.float32))
  z_q = np.asarray(z_q)
  assert set(np.unique(z_q)) == {-1.0, 1.0}
  np.testing.assert_array_equal(z_q, np.where(z >= 0, 1.0, -1.0))
  z_td = z.reshape(-1, d)
  q_td = np.where(z_td >= 0, 1.0, -1.0)
  np.testing.assert_allclose(aux["losses"]["commitment"], ((z_td - q_td) ** 2).sum(1).mean(),
                             rtol=1e-5)
  reference = _entropy_reference if mode == "exact" else _factorized_reference
  sample_entropy, batch_entropy = reference(z_td, tau)
  np.testing.assert_allclose(aux["losses"]["entropy"], sample_entropy - batch_entropy,
                             rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(aux["metrics"]["sample_entropy"], sample_entropy, rtol=1e-4)
  np.testing.assert_allclose(aux["metrics"]["batch_entropy"], batch_entropy, rtol=1e-4)
  # Hard-code statistics.
  _, counts = np.unique(q_td, axis=0, return_counts=True)
  freq = counts / counts.sum()
  np.testing.assert_allclose(aux["metrics"]["codebook_usage"], len(counts) / 2**d, rtol=1e-6)
  np.testing.assert_allclose(aux["metrics"]["perplexity"], np.exp(-(freq * np.log(freq)).sum()),
                             rtol=1e-5)


def test_factorized_sample_entropy_equals_exact_and_batch_entropy_bounds_it():
  z = jnp.asarray(np.random.default_rng(3).normal(0, 0.5, size=(40, 5)), jnp.float32)
  exact = jax.jit(LookupFreeQuantizer(5, entropy_temperature=0.5).entropy_terms)(z)
  factorized = jax.jit(LookupFreeQuantizer(5, entropy_temperature=0.5,
                                           entropy_mode="factorized").entropy_terms)(z)
  np.testing.assert_allclose(factorized[0], exact[0], rtol=1e-5)
  assert float(factorized[1]) >= float(exact[1]) - 1e-5


def test_lfq_straight_through_gradient_and_bypass():
  quantizer = LookupFreeQuantizer(3)
  z = jnp.asarray(np.random.default_rng(0).normal(size=(2, 5, 3)), jnp.float32)
  grad = jax.jit(jax.grad(lambda z: jnp.sum(quantizer(z)[0])))(z)
  np.testing.assert_array_equal(np.asarray(grad), np.ones(z.shape))
  out, aux = jax.jit(lambda z: quantizer(z, bypass=True))(z)
  np.testing.assert_array_equal(np.asarray(out), np.asarray(z))
  assert float(aux["losses"]["commitment"]) == 0.0 and float(aux["losses"]["entropy"]) == 0.0


def test_lfq_rejects_too_large_exact_codebook():
  with pytest.raises(ValueError, match="factorized"):
    LookupFreeQuantizer(18)
  LookupFreeQuantizer(18, entropy_mode="factorized")  # fine


def test_model_quantize_flag():
  model = Magvit2(**MICRO_KWARGS, rngs=_rngs(0))
  video = jnp.asarray(_video(frames=5, size=8))

  @nnx.jit
  def run(model, video):
    recon_q, aux_q = model(video)
    recon_c, aux_c = model(video, quantize=False)
    z = model.encode(video)
    return recon_q, aux_q, recon_c, aux_c, model.decode(z), model.decode(jnp.where(z >= 0, 1., -1.))

  recon_q, aux_q, recon_c, aux_c, direct_c, direct_q = run(model, video)
  assert recon_q.shape == video.shape
  assert float(aux_q["losses"]["commitment"]) > 0
  assert float(aux_c["losses"]["commitment"]) == 0.0 == float(aux_c["losses"]["entropy"])
  # quantize=True decodes the ±1 codes, quantize=False the continuous latents.
  np.testing.assert_allclose(np.asarray(recon_q), np.asarray(direct_q), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(recon_c), np.asarray(direct_c), rtol=1e-5, atol=1e-5)
  assert np.abs(np.asarray(recon_q) - np.asarray(recon_c)).max() > 1e-4


# --- errors --------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape,match", [
    ((1, 8, 32, 32, 3), "1 \\+ 4k"),
    ((1, 9, 32, 32, 4), "channels"),
    ((1, 9, 36, 32, 3), "divisible by the spatial factor 8"),
    ((9, 32, 32, 3), "video must be"),
])
def test_bad_video_raises(tiny_model, shape, match):
  with pytest.raises(ValueError, match=match):
    tiny_model.encode(jnp.zeros(shape))


def test_bad_latents_and_config_raise(tiny_model):
  with pytest.raises(ValueError, match="latents must be"):
    tiny_model.decode(jnp.zeros((1, 3, 4, 4, 7)))
  with pytest.raises(ValueError, match="temporal_downsample"):
    Magvit2(**dict(magvit2.TINY_KWARGS, temporal_downsample=(True,)), rngs=_rngs(0))
  with pytest.raises(ValueError, match="num_groups"):
    Magvit2(**dict(magvit2.TINY_KWARGS, num_groups=5), rngs=_rngs(0))


def test_temporal_factor_follows_config():
  model = nnx.eval_shape(lambda: Magvit2(**dict(magvit2.TINY_KWARGS, temporal_downsample=(
      False, False, True)), rngs=_rngs(0)))
  assert model.temporal_factor == 2
  assert model.latent_shape((1, 7, 16, 16, 3)) == (1, 4, 2, 2, 8)
  with pytest.raises(ValueError, match="1 \\+ 2k"):
    model.latent_shape((1, 8, 16, 16, 3))


def test_bfloat16_compute_close_to_float32():
  video = jnp.asarray(_video(frames=5, size=8))
  encode = nnx.jit(lambda model, video: model.encode(video))
  z32 = np.asarray(encode(Magvit2(**MICRO_KWARGS, rngs=_rngs(0)), video))
  model_bf16 = Magvit2(**MICRO_KWARGS, dtype="bfloat16", rngs=_rngs(0))
  z16 = np.asarray(encode(model_bf16, video))
  assert z16.dtype == np.float32
  assert np.abs(z16 - z32).max() < 0.1 * np.abs(z32).max()
  for _, variable in nnx.to_flat_state(nnx.state(model_bf16, nnx.Param)):
    assert variable.dtype == jnp.float32


# --- discriminator -------------------------------------------------------------------------------
def test_discriminator_logits_and_gradients():
  disc = Magvit2Discriminator(base_channels=8, channel_multipliers=(1, 2), rngs=_rngs(0))
  video = jnp.asarray(_video(batch=2, frames=9, size=16))
  logits = nnx.jit(lambda disc, video: disc(video))(disc, video)
  assert logits.shape == (2,) and logits.dtype == jnp.float32
  assert float(jnp.abs(logits[0] - logits[1])) > 0

  def loss(disc, video):
    return jnp.sum(jax.nn.softplus(-disc(video)))

  param_grads, video_grad = nnx.jit(nnx.grad(loss, argnums=(0, 1)))(disc, video)
  assert float(jnp.abs(video_grad).max()) > 0
  for path, g in nnx.to_flat_state(param_grads):
    assert float(jnp.abs(g.value).max()) > 0, path
  for _, variable in nnx.to_flat_state(nnx.state(disc, nnx.Param)):
    names = variable.get_metadata().get("out_sharding")
    assert len(names) == variable.ndim and set(names) <= AXIS_VOCABULARY


# --- perceptual loss -----------------------------------------------------------------------------
def test_perceptual_missing_file(tmp_path):
  path = str(tmp_path / "vgg16.npz")
  with pytest.raises(FileNotFoundError, match="optional") as info:
    PerceptualLoss.from_file(path)
  assert path in str(info.value)


def _random_weights(channels, seed=0):
  rng = np.random.default_rng(seed)
  weights, cin = {}, 3
  for i, cout in enumerate(channels):
    weights[f"conv{i}_kernel"] = rng.normal(0, 0.5, (3, 3, cin, cout)).astype(np.float32)
    weights[f"conv{i}_bias"] = rng.normal(0, 0.1, (cout,)).astype(np.float32)
    cin = cout
  return weights


def test_perceptual_loss_from_npz(tmp_path):
  path = tmp_path / "perceptual.npz"
  np.savez(path, **_random_weights((4, 4, 6)), pool_after=np.array([1]))
  loss = PerceptualLoss.from_file(str(path))
  assert loss.feature_layers == (1, 2)
  a = jnp.asarray(_video(batch=2, frames=2, size=8, seed=0))
  b = jnp.asarray(_video(batch=2, frames=2, size=8, seed=1))
  distance = nnx.jit(lambda loss, a, b: loss(a, b))
  assert abs(float(distance(loss, a, a))) < 1e-9
  assert float(distance(loss, a, b)) > 0.01
  assert count_params(loss) == 0  # frozen weights are not parameters


def test_perceptual_loss_one_layer_matches_numpy(tmp_path):
  weights = _random_weights((5,), seed=2)
  weights["lin0"] = np.random.default_rng(3).uniform(0, 1, (5,)).astype(np.float32)
  path = tmp_path / "one.npz"
  np.savez(path, **weights)
  loss = PerceptualLoss.from_file(str(path))
  a, b = _video(batch=1, frames=2, size=6, seed=4), _video(batch=1, frames=2, size=6, seed=5)

  def features(img_hwc):
    padded = np.pad(img_hwc.astype(np.float64), [(1, 1), (1, 1), (0, 0)])
    out = np.zeros((6, 6, 5))
    for i, j in itertools.product(range(6), range(6)):
      out[i, j] = np.einsum("hwi,hwio->o", padded[i:i + 3, j:j + 3], weights["conv0_kernel"])
    f = np.maximum(out + weights["conv0_bias"], 0)
    return f / (np.sqrt((f ** 2).sum(-1, keepdims=True)) + 1e-10)

  per_frame = [((features(a[0, t]) - features(b[0, t])) ** 2 * weights["lin0"]).sum(-1).mean()
               for t in range(2)]
  distance = nnx.jit(lambda loss, a, b: loss(a, b))(loss, jnp.asarray(a), jnp.asarray(b))
  np.testing.assert_allclose(float(distance), np.mean(per_frame),
                             rtol=1e-4)


def test_perceptual_bad_weights(tmp_path):
  with pytest.raises(ValueError, match="conv0_kernel"):
    PerceptualLoss({"kernel": np.zeros((3, 3, 3, 4))})
  bad = _random_weights((4, 4))
  bad["conv1_kernel"] = np.zeros((3, 3, 5, 4), np.float32)  # in-channels do not chain
  with pytest.raises(ValueError, match="conv1_kernel"):
    PerceptualLoss(bad)
  extra = dict(_random_weights((4,)), conv2_kernel=np.zeros((3, 3, 4, 4)))  # gap at conv1
  with pytest.raises(ValueError, match="unexpected"):
    PerceptualLoss(extra)


# --- training ------------------------------------------------------------------------------------
# ~30 s of compiling. By default the tiny MAGVIT-v2 run (test_autoencoder_train.py) trains through
# the same model and loop with the GAN and quantizer on, and SoundStream's Adam test shows the
# shared loop reducing a reconstruction loss.
@pytest.mark.slow
def test_gradient_steps_reduce_reconstruction_error():
  # The tiny geometry at half width (compile time dominates here): 9×32×32 -> 3×4×4×8.
  model = Magvit2(**dict(magvit2.TINY_KWARGS, base_channels=8, num_groups=4,
                         num_mid_res_blocks=0), rngs=_rngs(3))
  # A smooth moving pattern plus a little noise.
  t, y, x = np.meshgrid(np.arange(9), np.arange(32), np.arange(32), indexing="ij")
  pattern = np.stack([np.sin(0.3 * x + 0.2 * t), np.cos(0.25 * y - 0.1 * t),
                      np.sin(0.2 * (x + y))], axis=-1)
  video = 0.8 * pattern + 0.05 * np.random.default_rng(0).normal(size=pattern.shape)
  video = jnp.asarray(video[None], jnp.float32)

  graphdef, params = nnx.split(model, nnx.Param)
  # One flat vector: Adam's update is then one fused op instead of one per parameter (compile).
  flat, unravel = ravel_pytree(params)
  tx = optax.adam(3e-3)
  opt_state = tx.init(flat)

  def loss_fn(flat):
    recon, aux = nnx.merge(graphdef, unravel(flat))(video)
    return jnp.mean(jnp.square(recon - video)) + 0.01 * aux["losses"]["commitment"]

  @jax.jit
  def step(flat, opt_state):
    loss, grads = jax.value_and_grad(loss_fn)(flat)
    updates, opt_state = tx.update(grads, opt_state, flat)
    return optax.apply_updates(flat, updates), opt_state, loss

  losses = []
  for _ in range(7):
    flat, opt_state, loss = step(flat, opt_state)
    losses.append(float(loss))
  assert all(math.isfinite(l) for l in losses)
  assert losses[-1] < 0.6 * losses[0], losses


def test_entropy_loss_gradient_is_finite_when_code_probabilities_underflow():
  """With τ = 0.01 and |z| ~ 1 most codes' batch probabilities are exactly 0 in float32; p log p
  must still give a finite gradient there (xlogy's is -inf, which turned training steps into NaN)."""
  quantizer = LookupFreeQuantizer(8, entropy_temperature=0.01)
  z = jnp.asarray(np.random.default_rng(0).standard_normal((64, 8)), jnp.float32)
  grad = jax.grad(lambda z: quantizer(z)[1]["losses"]["entropy"])(z)
  assert bool(jnp.all(jnp.isfinite(grad)))
  assert float(jnp.abs(grad).max()) > 0
