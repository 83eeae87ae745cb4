"""SoundStream: shapes at paper size (abstractly), exact causality, convs vs numpy loops, the RVQ's
EMA / k-means / dead-code / dropout machinery, discriminators, and a few training steps."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from avdit.models import audio_losses
from avdit.models import discriminators
from avdit.models import quantizers
from avdit.models import soundstream as ss
from avdit.models.layers import count_params

HOP = 320


def _rngs(seed):
  # RBG keys: threefry's per-shape initializer programs take most of a tiny model's build time.
  return nnx.Rngs(params=jax.random.key(seed, impl="rbg"))


@nnx.jit
def _encode(model, audio):
  return model.encode(audio)


@nnx.jit
def _decode(model, z):
  return model.decode(z)


@pytest.fixture(scope="module")
def tiny_model():
  return ss.SoundStream(**ss.TINY_CONFIG, rngs=_rngs(0))


def _conv_params(k, c_in, c_out):
  return k * c_in * c_out + c_out


def _expected_param_count(c, mults, dilations, d, kernel=7):
  """SEANet parameter count from the architecture description, layer by layer."""
  widths = [c] + [c * m for m in mults]
  unit = lambda w: _conv_params(kernel, w, w) + _conv_params(1, w, w)
  strides = (2, 4, 5, 8)
  enc = _conv_params(7, 1, c) + _conv_params(3, widths[-1], d)
  dec = _conv_params(7, d, widths[-1]) + _conv_params(7, c, 1)
  for i, s in enumerate(strides):
    enc += len(dilations) * unit(widths[i]) + _conv_params(2 * s, widths[i], widths[i + 1])
    dec += _conv_params(2 * s, widths[i + 1], widths[i]) + len(dilations) * unit(widths[i])
  return enc + dec


def test_paper_config_shapes_abstract():
  model = nnx.eval_shape(lambda: ss.SoundStream(**ss.PAPER_CONFIG, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(model)
  audio = jax.ShapeDtypeStruct((2, 34_000), jnp.float32)
  z = jax.eval_shape(lambda st, x: nnx.merge(graphdef, st).encode(x), state, audio)
  assert z.shape == (2, 107, 1024) and z.dtype == jnp.float32
  wave = jax.eval_shape(lambda st, x: nnx.merge(graphdef, st).decode(x), state, z)
  assert wave.shape == (2, 34_240)
  recon, _ = jax.eval_shape(lambda st, x: nnx.merge(graphdef, st)(x, train=False), state, audio)
  assert recon.shape == (2, 34_000)
  params = count_params(model)
  assert params == _expected_param_count(32, (2, 4, 8, 16), (1, 3, 9), 1024)
  assert params == 14_427_137  # reported in the module's docs/report
  assert count_params(model, quantizers.CodebookState) == 2 * 8 * 1024 * 1024 + 8 * 1024 + 1
  # Parameters carry their logical axis names; the codebook state is not a Param.
  kernel = model.enc_blocks[0].down.kernel
  assert kernel.get_metadata()["out_sharding"] == ("conv_width", "conv_in", "conv_out")
  assert model.quantizer.codebook.get_metadata()["out_sharding"] == (
      "codebook_stage", "codes", "code_dim")
  assert not jax.tree.leaves(nnx.state(model.quantizer, nnx.Param))


def test_tiny_param_count(tiny_model):
  assert count_params(tiny_model) == _expected_param_count(4, (2, 4, 8, 16), (1, 3, 9), 16)


def test_bad_inputs(tiny_model):
  with pytest.raises(ValueError, match="stereo"):
    tiny_model.encode(jnp.zeros((1, 640, 2)))
  with pytest.raises(ValueError, match="batch axis"):
    tiny_model.encode(jnp.zeros((640,)))
  with pytest.raises(ValueError, match="float"):
    tiny_model.encode(jnp.zeros((1, 640), jnp.int16))
  with pytest.raises(ValueError, match="latents must be"):
    tiny_model.decode(jnp.zeros((1, 2, 7)))
  with pytest.raises(ValueError, match="rng"):
    tiny_model.quantize(jnp.zeros((1, 2, 16)), train=True)
  with pytest.raises(ValueError, match="num_quantizers"):
    tiny_model.quantize(jnp.zeros((1, 2, 16)), train=False, num_quantizers=3)


# --- convolutions vs numpy loops ------------------------------------------------------------------
def _numpy_causal_conv(x_tc, w_kio, b_o, stride, dilation):
  """y[j] = Σ_m x[j·S + S − 1 − (k−1)·δ + m·δ] w[m] + b, with x = 0 before time 0."""
  k = w_kio.shape[0]
  n = x_tc.shape[0] // stride
  y = np.zeros((n, w_kio.shape[2]))
  for j in range(n):
    y[j] = b_o
    last = j * stride + stride - 1
    for m in range(k):
      t = last - (k - 1 - m) * dilation
      if t >= 0:
        y[j] += x_tc[t] @ w_kio[m]
  return y


@pytest.mark.parametrize("kernel,stride,dilation", [(7, 1, 1), (3, 1, 9), (4, 2, 1), (10, 5, 1),
                                                    (3, 2, 2)])
def test_causal_conv_matches_numpy_loop(kernel, stride, dilation):
  conv = ss.CausalConv1d(3, 2, kernel, stride=stride, dilation=dilation, dtype=jnp.float32,
                         rngs=nnx.Rngs(1))
  conv.bias.set_value(jnp.array([0.1, -0.2]))
  x = np.random.default_rng(0).normal(size=(2, 20, 3)).astype(np.float32)
  y = np.asarray(conv(jnp.asarray(x)))
  w, b = np.asarray(conv.kernel[...]), np.asarray(conv.bias[...])
  for i in range(2):
    np.testing.assert_allclose(y[i], _numpy_causal_conv(x[i], w, b, stride, dilation),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("stride", [2, 5])
def test_causal_transposed_conv_matches_numpy_loop(stride):
  conv = ss.CausalConvTranspose1d(3, 2, 2 * stride, stride=stride, dtype=jnp.float32,
                                  rngs=nnx.Rngs(2))
  conv.bias.set_value(jnp.array([0.3, 0.0]))
  x = np.random.default_rng(1).normal(size=(1, 6, 3)).astype(np.float32)
  y = np.asarray(conv(jnp.asarray(x)))[0]
  w, b = np.asarray(conv.kernel[...]), np.asarray(conv.bias[...])
  n, k = x.shape[1], w.shape[0]
  full = np.zeros(((n - 1) * stride + k, 2))
  for j in range(n):  # scatter form of the transposed conv
    for m in range(k):
      full[j * stride + m] += x[0, j] @ w[m]
  np.testing.assert_allclose(y, full[:n * stride] + b, rtol=1e-5, atol=1e-5)


# --- causality of the whole encoder / decoder -----------------------------------------------------
def test_encoder_latent_j_depends_exactly_on_samples_before_its_window_end(tiny_model):
  """Documented: latent j depends on samples 0 .. 320·(j+1) − 1 and no later one."""
  encode = _encode
  rng = np.random.default_rng(0)
  x = rng.uniform(-1, 1, (1, 6 * HOP)).astype(np.float32)
  z = np.asarray(encode(tiny_model, x))
  for j in (0, 2, 4):
    last = HOP * (j + 1) - 1  # the last sample latent j may read
    changed = x.copy()
    changed[:, last:] = rng.uniform(-1, 1, changed[:, last:].shape)
    z2 = np.asarray(encode(tiny_model, changed))
    np.testing.assert_array_equal(z2[:, :j], z[:, :j])  # windows that end before `last`
    assert np.abs(z2[:, j] - z[:, j]).max() > 1e-6  # latent j reads sample `last`
    only_after = x.copy()
    only_after[:, last + 1:] += 0.5
    z3 = np.asarray(encode(tiny_model, only_after))
    np.testing.assert_array_equal(z3[:, :j + 1], z[:, :j + 1])
    assert np.abs(z3[:, j + 1] - z[:, j + 1]).max() > 1e-6


def test_decoder_is_causal(tiny_model):
  decode = _decode
  rng = np.random.default_rng(1)
  z = rng.normal(size=(1, 5, 16)).astype(np.float32)
  y = np.asarray(decode(tiny_model, z))
  assert y.shape == (1, 5 * HOP)
  changed = z.copy()
  changed[:, 3:] += 1.0
  y2 = np.asarray(decode(tiny_model, changed))
  np.testing.assert_array_equal(y2[:, :3 * HOP], y[:, :3 * HOP])
  assert np.abs(y2[:, 3 * HOP:4 * HOP] - y[:, 3 * HOP:4 * HOP]).max() > 1e-6


def test_call_crops_and_pads(tiny_model):
  x = jnp.asarray(np.random.default_rng(2).uniform(-1, 1, (2, 1000)), jnp.float32)
  recon, aux = tiny_model(x, train=False, quantize=False)
  assert recon.shape == (2, 1000) and aux["latents"].shape == (2, 4, 16)
  assert float(aux["losses"]["commitment"]) == 0.0
  # Encoding pads with zeros: the same as encoding the explicitly zero-padded clip.
  padded = jnp.pad(x, ((0, 0), (0, 4 * HOP - 1000)))
  np.testing.assert_allclose(tiny_model.encode(padded), aux["latents"], rtol=1e-6, atol=1e-6)


def test_bfloat16_compute_close_to_float32(tiny_model):
  m16 = ss.SoundStream(**ss.TINY_CONFIG, dtype="bfloat16", rngs=_rngs(0))  # same weights
  x = jnp.asarray(np.random.default_rng(3).uniform(-1, 1, (1, 6 * HOP)), jnp.float32)
  z32, z16 = _encode(tiny_model, x), _encode(m16, x)
  assert z16.dtype == jnp.float32
  assert 0 < float(jnp.linalg.norm(z16 - z32) / jnp.linalg.norm(z32)) < 0.05
  y32, y16 = _decode(tiny_model, z32), _decode(m16, z32)
  assert y16.dtype == jnp.float32
  assert float(jnp.linalg.norm(y16 - y32) / jnp.linalg.norm(y32)) < 0.05


# --- residual vector quantizer --------------------------------------------------------------------
# Every test uses d = 4 and 8 codes (mostly z [4, 16, 4]) so compiled programs are shared.
def _rvq(**kwargs):
  config = dict(num_quantizers=4, codebook_size=8, dim=4, ema_decay=0.99,
                dead_code_threshold=0.0, kmeans_iters=10, quantizer_dropout=True)
  config.update(kwargs)
  return quantizers.ResidualVectorQuantizer(**config, rngs=_rngs(0))


def _z(seed=0, shape=(4, 16, 4)):
  return jax.random.normal(jax.random.key(seed), shape)


def _sq_error(rvq, z, n):
  z_q, _ = rvq(z, train=False, num_quantizers=n)
  return float(jnp.sum(jnp.square(z - z_q)))


def _set_state(rvq, codebook_kd, size_k, embed_sum_kd):
  rvq.codebook.set_value(jnp.asarray(codebook_kd, jnp.float32)[None])
  rvq.cluster_size.set_value(jnp.asarray(size_k, jnp.float32)[None])
  rvq.embed_sum.set_value(jnp.asarray(embed_sum_kd, jnp.float32)[None])
  rvq.initialized.set_value(jnp.ones((), jnp.bool_))


def test_rvq_error_non_increasing_in_stages_with_kmeans_codebooks():
  """With each stage's codes = k-means centroids of that stage's residuals (of this batch), a
  stage replaces Σ‖r‖² by Σ‖r − c‖² <= Σ‖r‖² − Σ_k n_k‖c_k‖², so the error cannot grow."""
  rvq = _rvq(num_quantizers=4)
  z = _z()
  rvq.kmeans_init(z, jax.random.key(1))
  assert bool(rvq.initialized[...])
  errors = [float(jnp.sum(jnp.square(z)))] + [_sq_error(rvq, z, n) for n in range(1, 5)]
  assert all(b <= a * (1 + 1e-5) for a, b in zip(errors, errors[1:])), errors
  assert errors[-1] < 0.5 * errors[1] < 0.5 * errors[0]


def test_kmeans_init_reduces_quantization_error():
  centres = jax.random.normal(jax.random.key(0), (8, 4)) * 3.0
  labels = jax.random.randint(jax.random.key(1), (64,), 0, 8)
  data = centres[labels] + 0.05 * jax.random.normal(jax.random.key(2), (64, 4))
  z = data.reshape(4, 16, 4)
  random_init = _sq_error(_rvq(num_quantizers=1), z, 1)
  rows = _rvq(num_quantizers=1, kmeans_iters=0)
  rows.kmeans_init(z, jax.random.key(3))
  rows_error = _sq_error(rows, z, 1)
  kmeans = _rvq(num_quantizers=1, kmeans_iters=10)
  kmeans.kmeans_init(z, jax.random.key(3))  # the same random starting rows, then Lloyd
  kmeans_error = _sq_error(kmeans, z, 1)
  assert kmeans_error <= rows_error
  assert kmeans_error < 0.1 * random_init
  # The first training call initializes by k-means itself.
  trained = _rvq(num_quantizers=1, kmeans_iters=10)
  assert not bool(trained.initialized[...])
  trained(z, train=True, rng=jax.random.key(4))
  assert bool(trained.initialized[...])
  assert _sq_error(trained, z, 1) < 0.5 * random_init
  # ... leaving Lloyd fixed points: every used code is (up to the EMA step) its members' mean.
  x = np.asarray(z).reshape(-1, 4)
  codes = np.asarray(trained.codebook[...][0])
  assign = np.argmin(((x[:, None] - codes[None]) ** 2).sum(-1), axis=1)
  for k in np.unique(assign):
    np.testing.assert_allclose(codes[k], x[assign == k].mean(0), atol=1e-3)


def test_quantizer_dropout_samples_uniform_stage_counts():
  rvq = _rvq(num_quantizers=4)
  z = _z(0, (2000, 1, 4))
  rvq.kmeans_init(z, jax.random.key(1))
  fixed = [np.asarray(rvq(z, train=False, num_quantizers=n)[0]) for n in range(1, 5)]
  z_q, aux = rvq(z, train=True, rng=jax.random.key(2))
  n_b = np.asarray(aux["num_quantizers"])
  freqs = np.bincount(n_b, minlength=5)[1:] / len(n_b)
  np.testing.assert_allclose(freqs, 0.25, atol=0.04)  # ±4σ for 2000 draws
  # Each example's output is exactly the n_b-stage quantization (with the pre-update codebooks).
  expected = np.stack([fixed[n - 1][b] for b, n in enumerate(n_b)])
  np.testing.assert_allclose(np.asarray(z_q), expected, atol=1e-5)
  # Eval uses every stage; a fixed count disables dropout in training too.
  assert set(np.asarray(rvq(z, train=False)[1]["num_quantizers"])) == {4}
  assert set(np.asarray(rvq(z, train=True, rng=jax.random.key(3),
                            num_quantizers=2)[1]["num_quantizers"])) == {2}


def test_ema_update_matches_numpy():
  decay, eps, k = 0.9, 1e-5, 8
  rvq = _rvq(num_quantizers=1, ema_decay=decay, laplace_eps=eps, quantizer_dropout=False)
  rng = np.random.default_rng(0)
  codebook = rng.normal(size=(k, 4)).astype(np.float32)
  size = rng.uniform(0.5, 4.0, size=k).astype(np.float32)
  embed_sum = rng.normal(size=(k, 4)).astype(np.float32)
  _set_state(rvq, codebook, size, embed_sum)
  z = _z(5)
  z_q, aux = rvq(z, train=True, rng=jax.random.key(0))

  x = np.asarray(z, np.float64).reshape(-1, 4)
  assign = np.argmin(((x[:, None, :] - codebook[None]) ** 2).sum(-1), axis=1)
  np.testing.assert_allclose(np.asarray(z_q).reshape(-1, 4), codebook[assign], atol=1e-6)
  counts = np.bincount(assign, minlength=k)
  sums = np.stack([x[assign == i].sum(0) for i in range(k)])
  new_size = decay * size + (1 - decay) * counts
  new_sum = decay * embed_sum + (1 - decay) * sums
  total = new_size.sum()
  smoothed = (new_size + eps) / (total + k * eps) * total
  np.testing.assert_allclose(rvq.cluster_size[...][0], new_size, rtol=1e-5)
  np.testing.assert_allclose(rvq.embed_sum[...][0], new_sum, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(rvq.codebook[...][0], new_sum / smoothed[:, None], rtol=1e-5,
                             atol=1e-6)
  commitment = np.mean((x - codebook[assign]) ** 2)
  np.testing.assert_allclose(aux["losses"]["commitment"], commitment, rtol=1e-5)
  probs = counts / counts.sum()
  perplexity = np.exp(-np.sum(probs[probs > 0] * np.log(probs[probs > 0])))
  np.testing.assert_allclose(aux["metrics"]["perplexity_0"], perplexity, rtol=1e-5)
  np.testing.assert_allclose(aux["metrics"]["codebook_usage_0"], np.mean(counts > 0))
  np.testing.assert_array_equal(np.asarray(aux["codes"]).reshape(-1), assign)


def test_straight_through_gradient_and_commitment_gradient():
  rvq = _rvq(num_quantizers=2)
  z = _z()
  rvq.kmeans_init(z, jax.random.key(1))
  g = jax.grad(lambda z: jnp.sum(rvq(z, train=False)[0] * 2.0))(z)
  np.testing.assert_allclose(g, 2.0 * np.ones(z.shape))  # identity through the quantizer
  z_q = rvq(z, train=False)[0]
  g_commit = jax.grad(lambda z: rvq(z, train=False)[1]["losses"]["commitment"])(z)
  np.testing.assert_allclose(g_commit, 2 * (z - z_q) / z.size, rtol=1e-4, atol=1e-7)


def test_dead_codes_replaced_by_batch_vectors():
  rvq = _rvq(num_quantizers=1, dead_code_threshold=1.0, quantizer_dropout=False)
  rng = np.random.default_rng(0)
  live = rng.normal(size=(4, 4)).astype(np.float32)  # codes 0-3: near the data
  far = 100.0 + rng.normal(size=(4, 4)).astype(np.float32)  # codes 4-7: never nearest
  codebook = np.concatenate([live, far])
  size = np.array([10.0] * 4 + [0.5] * 4, np.float32)
  _set_state(rvq, codebook, size, codebook * size[:, None])
  z = np.asarray(_z(6))
  _, aux = rvq(jnp.asarray(z), train=True, rng=jax.random.key(0))
  assert float(aux["metrics"]["dead_codes_0"]) == 4.0
  new = np.asarray(rvq.codebook[...][0])
  batch = z.reshape(-1, 4)
  for k in range(4, 8):  # dead: now exactly one of the batch's vectors
    assert np.min(np.abs(batch - new[k]).sum(-1)) == 0.0
  for k in range(4):  # alive: only moved by the EMA step
    assert np.abs(new[k] - codebook[k]).max() < 0.5
  # The stored statistics reproduce the replaced codes.
  np.testing.assert_allclose(rvq.embed_sum[...][0][4:], new[4:] * np.asarray(
      rvq.cluster_size[...][0][4:, None]), rtol=1e-3)


# --- discriminators -------------------------------------------------------------------------------
def test_discriminators_structure_and_gradients():
  disc = discriminators.SoundStreamDiscriminator(
      stft_kwargs=ss.TINY_STFT_DISCRIMINATOR, wave_kwargs=ss.TINY_WAVE_DISCRIMINATOR,
      rngs=_rngs(0))
  x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, 1024)), jnp.float32)
  outputs = disc(x)
  assert len(outputs) == 4  # STFT + 3 waveform scales
  for logits, features in outputs:
    assert logits.ndim == 2 and logits.shape[0] == 2 and logits.dtype == jnp.float32
    assert features and all(f.shape[0] == 2 for f in features)
  # STFT: frames (1024 − 64)/16 + 1 = 61 -> /2 in time once; frequency 32 bins -> /4 -> 1 logit.
  assert outputs[0][0].shape == (2, 31)
  # Waveform scales: 1024, 512, 256 samples, each /4 twice (SAME padding).
  assert [o[0].shape[1] for o in outputs[1:]] == [64, 32, 16]

  def loss(d, audio):
    # Every parameter, final biases included, moves the mean squared logits.
    return sum(jnp.mean(jnp.square(logits)) for logits, _ in d(audio))

  grads_fn = nnx.jit(nnx.grad(loss, argnums=(0, 1)))  # w.r.t. parameters and the waveform

  grads, g_audio = grads_fn(disc, x)
  norms = [float(jnp.linalg.norm(g)) for g in jax.tree.leaves(grads)]
  assert len(norms) == len(jax.tree.leaves(nnx.state(disc, nnx.Param)))
  assert all(np.isfinite(norms)) and min(norms) > 0
  assert float(jnp.abs(g_audio).sum()) > 0


def test_avg_pool_excludes_padding():
  x = jnp.arange(1.0, 9.0)[None]
  # windows of 4, stride 2, one padded zero each side that is not counted:
  # [pad,1,2,3] [2,3,4,5] [4,5,6,7] [6,7,8,pad]
  np.testing.assert_allclose(discriminators.avg_pool_1d(x)[0], [2.0, 3.5, 5.5, 7.0])


# --- training -------------------------------------------------------------------------------------
def test_adam_steps_reduce_reconstruction_loss():
  model = ss.SoundStream(**ss.TINY_CONFIG, rngs=_rngs(1))
  optimizer = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)
  t = np.arange(4 * HOP) / 16_000
  audio = jnp.asarray(np.stack([0.5 * np.sin(2 * np.pi * 440 * t),
                                0.3 * np.sin(2 * np.pi * 1500 * t)]), jnp.float32)

  def loss_fn(m, audio, rng):
    recon, aux = m(audio, train=True, rng=rng)
    rec = audio_losses.multiscale_mel_loss(audio, recon, sample_rate=16_000,
                                           window_lengths=(64, 128, 256), n_mels=16)
    return rec + jnp.mean(jnp.abs(audio - recon)) + aux["losses"]["commitment"], rec

  @nnx.jit
  def step(m, opt, audio, rng):
    (_, rec), grads = nnx.value_and_grad(loss_fn, has_aux=True)(m, audio, rng)
    opt.update(m, grads)
    return rec

  codebook_before = np.asarray(model.quantizer.codebook[...])
  losses = [float(step(model, optimizer, audio, jax.random.key(i))) for i in range(24)]
  assert losses[-1] < 0.8 * losses[0], losses  # measured 0.74 after 24 steps
  # The forward pass updated the quantizer state through the jitted grad step.
  assert bool(model.quantizer.initialized[...])
  assert not np.allclose(np.asarray(model.quantizer.codebook[...]), codebook_before)
