"""FVD's I3D and FAD's VGGish: converter round trips and forwards against TensorFlow references.

Each network gets a TF checkpoint written in its public layout (names and shapes taken from the
original sources and restated here, not from the module under test) with random values; the
converter turns it into .npz, the Flax module loads it, and its forward is compared with a
reference forward built directly from the checkpoint arrays with tf.nn ops (a second code path).
The VGGish frontend is compared with a numpy float64 transcription of mel_features.py, using
TF's own mel matrix (tf.signal.linear_to_mel_weight_matrix, which the TF team tests against
mel_features to 3e-6).
"""
from __future__ import annotations

import jax
import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from avdit.evaluation import convert_features, i3d, vggish  # noqa: E402

# --- public layouts, restated from deepmind/kinetics-i3d i3d.py and vggish_slim.py ----------------
I3D_SCOPE = "RGB/inception_i3d"
# (Branch_0, Branch_1 1x1, Branch_1 3x3, Branch_2 1x1, Branch_2 3x3, Branch_3) per block.
I3D_MIXED = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32), "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64), "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64), "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128), "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}
VGGISH_CONVS = (("conv1", 64), ("conv2", 128), ("conv3/conv3_1", 256), ("conv3/conv3_2", 256),
                ("conv4/conv4_1", 512), ("conv4/conv4_2", 512))
I3D_WIDTH = 0.25  # Narrow I3D in the default run; the full width is in the slow test.
VGGISH_WIDTH = 0.125


def _scaled(channels: int, width: float) -> int:
  return max(1, int(round(channels * width)))


def _i3d_units(width: float) -> list[tuple[str, tuple[int, int, int], int, int]]:
  """(name, kernel, in, out) of every Unit3D, as in the original source."""
  c = lambda n: _scaled(n, width)
  units = [("Conv3d_1a_7x7", (7, 7, 7), 3, c(64)), ("Conv3d_2b_1x1", (1, 1, 1), c(64), c(64)),
           ("Conv3d_2c_3x3", (3, 3, 3), c(64), c(192))]
  cin = c(192)
  for block, channels in I3D_MIXED.items():
    b0, b1a, b1b, b2a, b2b, b3 = (c(n) for n in channels)
    third = "Conv3d_0a_3x3" if block == "Mixed_5b" else "Conv3d_0b_3x3"  # The original's name.
    units += [(f"{block}/Branch_0/Conv3d_0a_1x1", (1, 1, 1), cin, b0),
              (f"{block}/Branch_1/Conv3d_0a_1x1", (1, 1, 1), cin, b1a),
              (f"{block}/Branch_1/Conv3d_0b_3x3", (3, 3, 3), b1a, b1b),
              (f"{block}/Branch_2/Conv3d_0a_1x1", (1, 1, 1), cin, b2a),
              (f"{block}/Branch_2/{third}", (3, 3, 3), b2a, b2b),
              (f"{block}/Branch_3/Conv3d_0b_1x1", (1, 1, 1), cin, b3)]
    cin = b0 + b1b + b2b + b3
  return units + [("Logits/Conv3d_0c_1x1", (1, 1, 1), cin, 400)]


def random_i3d_arrays(width: float, seed: int = 0, scope: str = I3D_SCOPE) -> dict:
  """Random weights in the public layout; He-scaled kernels keep activations O(1) to the end."""
  rng = np.random.default_rng(seed)
  arrays = {}
  for name, kernel, cin, cout in _i3d_units(width):
    fan_in = cin * int(np.prod(kernel))
    arrays[f"{scope}/{name}/conv_3d/w"] = (
        rng.standard_normal((*kernel, cin, cout)) * np.sqrt(2.0 / fan_in)).astype(np.float32)
    if name.startswith("Logits"):
      arrays[f"{scope}/{name}/conv_3d/b"] = rng.normal(0, 0.1, (cout,)).astype(np.float32)
      continue
    stat = lambda lo, hi: rng.uniform(lo, hi, (1, 1, 1, 1, cout)).astype(np.float32)
    arrays[f"{scope}/{name}/batch_norm/beta"] = stat(-0.3, 0.3)
    arrays[f"{scope}/{name}/batch_norm/moving_mean"] = stat(-0.2, 0.2)
    arrays[f"{scope}/{name}/batch_norm/moving_variance"] = stat(0.5, 2.0)
  return arrays


def _vggish_kernels(width: float) -> dict[str, tuple[int, ...]]:
  """Kernel shape of every layer of vggish_slim (96x64 input, four 2x2 pools: 6x4 at the end)."""
  c = lambda n: _scaled(n, width)
  shapes, cin = {}, 1
  for name, channels in VGGISH_CONVS:
    shapes[name] = (3, 3, cin, c(channels))
    cin = c(channels)
  shapes["fc1/fc1_1"] = (6 * 4 * cin, c(4096))
  shapes["fc1/fc1_2"] = (c(4096), c(4096))
  shapes["fc2"] = (c(4096), 128)
  return shapes


def random_vggish_arrays(width: float, seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  arrays = {}
  for name, shape in _vggish_kernels(width).items():
    fan_in = int(np.prod(shape[:-1]))
    arrays[f"vggish/{name}/weights"] = (
        rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
    arrays[f"vggish/{name}/biases"] = rng.normal(0, 0.05, (shape[-1],)).astype(np.float32)
  return arrays


def write_checkpoint_v2(prefix: str, arrays: dict) -> None:
  """A TF V2 checkpoint bundle (PREFIX.index + PREFIX.data-*), as tf.compat.v1.train.Saver."""
  names = sorted(arrays)
  tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names),
                    tensors=[arrays[n] for n in names])


def write_checkpoint_v1(path: str, arrays: dict) -> None:
  """A TF V1 single-file checkpoint, the format of the public vggish_model.ckpt."""
  names = sorted(arrays)
  tf.raw_ops.Save(filename=path, tensor_names=names, data=[arrays[n] for n in names])


# --- TF reference forwards ------------------------------------------------------------------------
def tf_i3d_logits(arrays: dict, video_bthwc: np.ndarray, scope: str = I3D_SCOPE) -> np.ndarray:
  """kinetics-i3d's InceptionI3d (inference), written with tf.nn ops from the arrays."""

  def unit(x, name, stride=1, logits=False):
    w = arrays[f"{scope}/{name}/conv_3d/w"]
    y = tf.nn.conv3d(x, w, strides=[1, stride, stride, stride, 1], padding="SAME")
    if logits:
      return y + arrays[f"{scope}/{name}/conv_3d/b"]
    bn = lambda s: arrays[f"{scope}/{name}/batch_norm/{s}"]
    y = tf.nn.batch_normalization(y, bn("moving_mean"), bn("moving_variance"), offset=bn("beta"),
                                  scale=None, variance_epsilon=1e-3)
    return tf.nn.relu(y)

  pool = lambda x, k, s: tf.nn.max_pool3d(x, [1, *k, 1], [1, *s, 1], padding="SAME")
  net = unit(tf.constant(video_bthwc, tf.float32), "Conv3d_1a_7x7", stride=2)
  net = pool(net, (1, 3, 3), (1, 2, 2))
  net = unit(unit(net, "Conv3d_2b_1x1"), "Conv3d_2c_3x3")
  net = pool(net, (1, 3, 3), (1, 2, 2))
  for block in I3D_MIXED:
    if block == "Mixed_4b":
      net = pool(net, (3, 3, 3), (2, 2, 2))
    if block == "Mixed_5b":
      net = pool(net, (2, 2, 2), (2, 2, 2))
    third = "Conv3d_0a_3x3" if block == "Mixed_5b" else "Conv3d_0b_3x3"
    b = lambda name: f"{block}/{name}"
    branches = [unit(net, b("Branch_0/Conv3d_0a_1x1")),
                unit(unit(net, b("Branch_1/Conv3d_0a_1x1")), b("Branch_1/Conv3d_0b_3x3")),
                unit(unit(net, b("Branch_2/Conv3d_0a_1x1")), b(f"Branch_2/{third}")),
                unit(pool(net, (3, 3, 3), (1, 1, 1)), b("Branch_3/Conv3d_0b_1x1"))]
    net = tf.concat(branches, axis=4)
  return tf_i3d_head(arrays, net, scope)


def tf_i3d_head(arrays: dict, mixed_5c, scope: str = I3D_SCOPE) -> np.ndarray:
  """Logits of a Mixed_5c map: the original VALID 2x7x7 average pool (clamped to the map on short
  axes, the documented generalization), logits conv, mean over positions."""
  shape = np.shape(mixed_5c)
  ksize = [1, min(2, shape[1]), min(7, shape[2]), min(7, shape[3]), 1]
  net = tf.nn.avg_pool3d(tf.constant(mixed_5c, tf.float32), ksize, [1] * 5, padding="VALID")
  w, b = (arrays[f"{scope}/Logits/Conv3d_0c_1x1/conv_3d/{k}"] for k in ("w", "b"))
  logits = tf.nn.conv3d(net, w, [1] * 5, padding="VALID") + b
  return tf.reduce_mean(logits, axis=[1, 2, 3]).numpy()


def tf_vggish_embeddings(arrays: dict, examples_nft: np.ndarray,
                         embedding_relu: bool) -> np.ndarray:
  """vggish_slim's network with tf.nn ops from the arrays."""
  get = lambda name: (arrays[f"vggish/{name}/weights"], arrays[f"vggish/{name}/biases"])
  net = tf.reshape(tf.constant(examples_nft, tf.float32), [-1, 96, 64, 1])
  for name, _ in VGGISH_CONVS:
    w, b = get(name)
    net = tf.nn.relu(tf.nn.conv2d(net, w, strides=1, padding="SAME") + b)
    if name in ("conv1", "conv2", "conv3/conv3_2", "conv4/conv4_2"):
      net = tf.nn.max_pool2d(net, 2, 2, padding="SAME")
  net = tf.reshape(net, [tf.shape(net)[0], -1])
  for name in ("fc1/fc1_1", "fc1/fc1_2"):
    w, b = get(name)
    net = tf.nn.relu(tf.matmul(net, w) + b)
  w, b = get("fc2")
  net = tf.matmul(net, w) + b
  return (tf.nn.relu(net) if embedding_relu else net).numpy()


def numpy_log_mel(waveform_l: np.ndarray) -> np.ndarray:
  """mel_features.log_mel_spectrogram with VGGish's parameters, in float64 numpy."""
  num_frames = 1 + (len(waveform_l) - 400) // 160
  frames = np.stack([waveform_l[i * 160:i * 160 + 400] for i in range(num_frames)])
  window = 0.5 - 0.5 * np.cos(2 * np.pi / 400 * np.arange(400))  # Periodic Hann.
  spectrogram = np.abs(np.fft.rfft(frames * window, 512))
  mel = tf.signal.linear_to_mel_weight_matrix(64, 257, 16000, 125.0, 7500.0,
                                              dtype=tf.float64).numpy()
  return np.log(spectrogram @ mel + 0.01)


def closed_form_frechet(a_nd: np.ndarray, b_nd: np.ndarray) -> float:
  mu_a, mu_b = a_nd.mean(0), b_nd.mean(0)
  cov_a, cov_b = np.cov(a_nd, rowvar=False), np.cov(b_nd, rowvar=False)
  # tr((Σa Σb)^½) = Σ sqrt(eigenvalues of Σa Σb), which are real and non-negative.
  trace_sqrt = np.sum(np.sqrt(np.clip(np.linalg.eigvals(cov_a @ cov_b).real, 0, None)))
  return float(np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a + cov_b) - 2 * trace_sqrt)


# --- fixtures -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def i3d_files(tmp_path_factory):
  """A narrow random I3D checkpoint in the public layout (plus an out-of-scope variable the
  converter must ignore) and its conversion."""
  root = tmp_path_factory.mktemp("i3d")
  arrays = random_i3d_arrays(I3D_WIDTH)
  write_checkpoint_v2(str(root / "model.ckpt"),
                      {**arrays, "global_step": np.array(7, np.int64)})
  summary = convert_features.convert("i3d", str(root), str(root / "i3d.npz"),  # The directory.
                                     width=I3D_WIDTH)
  return arrays, root, summary


@pytest.fixture(scope="module")
def vggish_files(tmp_path_factory):
  """A narrow random VGGish checkpoint in V1 format, random PCA parameters, their conversion."""
  root = tmp_path_factory.mktemp("vggish")
  arrays = random_vggish_arrays(VGGISH_WIDTH)
  write_checkpoint_v1(str(root / "vggish_model.ckpt"), arrays)
  rng = np.random.default_rng(1)
  pca = {"pca_eigen_vectors": rng.normal(0, 0.3, (128, 128)).astype(np.float32),
         "pca_means": rng.normal(0, 0.1, (128, 1)).astype(np.float32)}  # Column, as released.
  np.savez(root / "vggish_pca_params.npz", **pca)
  convert_features.convert("vggish", str(root / "vggish_model.ckpt"), str(root / "vggish.npz"),
                           pca_params_path=str(root / "vggish_pca_params.npz"),
                           width=VGGISH_WIDTH)
  return arrays, pca, root


# --- I3D ------------------------------------------------------------------------------------------
def test_i3d_public_layout_matches_the_original():
  expected = {}
  for name, kernel, cin, cout in _i3d_units(1.0):
    expected[f"{I3D_SCOPE}/{name}/conv_3d/w"] = (*kernel, cin, cout)
    if name.startswith("Logits"):
      expected[f"{I3D_SCOPE}/{name}/conv_3d/b"] = (cout,)
    else:
      for s in ("beta", "moving_mean", "moving_variance"):
        expected[f"{I3D_SCOPE}/{name}/batch_norm/{s}"] = (1, 1, 1, 1, cout)
  assert i3d.checkpoint_shapes() == expected
  # Spot checks straight from the original: the logits see 1024 channels, and Mixed_5b keeps
  # its "0a" name for the second conv of Branch_2.
  assert expected[f"{I3D_SCOPE}/Logits/Conv3d_0c_1x1/conv_3d/w"] == (1, 1, 1, 1024, 400)
  assert expected[f"{I3D_SCOPE}/Mixed_5b/Branch_2/Conv3d_0a_3x3/conv_3d/w"] == (3, 3, 3, 32, 128)


def test_i3d_converted_forward_matches_tensorflow(i3d_files):
  arrays, root, summary = i3d_files
  assert summary["ignored"] == ["global_step"]
  with np.load(root / "i3d.npz") as data:  # The converter copies values exactly.
    for name, value in arrays.items():
      np.testing.assert_array_equal(data[name], value)
  model = i3d.load(str(root / "i3d.npz"))
  rng = np.random.default_rng(2)
  video_u8 = rng.integers(0, 256, (2, 16, 40, 52, 3), dtype=np.uint8)
  got = model.features(video_u8, resolution=(64, 64), batch_size=2)
  # Reference: TF1 resize, scale to [-1, 1], TF network.
  frames = tf.compat.v1.image.resize_bilinear(video_u8.reshape(-1, 40, 52, 3), (64, 64))
  video = 2.0 * np.reshape(frames.numpy(), (2, 16, 64, 64, 3)) / 255.0 - 1.0
  want = tf_i3d_logits(arrays, video)
  assert got.shape == (2, 400)
  assert np.std(want) > 0.1 and np.std(want[0] - want[1]) > 0.01  # Informative, distinct logits.
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_i3d_logits_head_uses_the_original_valid_pool(i3d_files):
  """Maps at least 2x7x7 (224x224 inputs) take the original VALID pool, not a global mean."""
  arrays, root, _ = i3d_files
  model = i3d.load(str(root / "i3d.npz"))
  channels = arrays[f"{I3D_SCOPE}/Logits/Conv3d_0c_1x1/conv_3d/w"].shape[3]
  rng = np.random.default_rng(3)
  mixed_5c = rng.uniform(0, 1, (2, 3, 9, 8, channels)).astype(np.float32)
  mixed_5c[:, :, :3] += 2.0  # Uneven in space, so the VALID pool differs from a global mean.
  got = np.asarray(model.logits_from_features(mixed_5c))
  want = tf_i3d_head(arrays, mixed_5c)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
  global_mean = tf_i3d_head(arrays, mixed_5c.mean(axis=(1, 2, 3), keepdims=True))
  assert np.abs(global_mean - want).max() > 1e-2  # The check tells the two pools apart.
  assert i3d.logits_pool_window((2, 7, 7)) == (2, 7, 7)
  assert i3d.logits_pool_window((1, 2, 9)) == (1, 2, 7)


def test_tf1_bilinear_resize_matches_tensorflow():
  rng = np.random.default_rng(4)
  frames = rng.uniform(0, 255, (3, 17, 23, 3)).astype(np.float32)
  resize = jax.jit(i3d.resize_bilinear_tf1, static_argnums=1)
  for size in ((40, 31), (7, 11)):  # Up and down by non-integer factors.
    want = tf.compat.v1.image.resize_bilinear(frames, size).numpy()
    np.testing.assert_allclose(np.asarray(resize(frames, size)), want, rtol=1e-5, atol=1e-3)


def test_i3d_features_rejects_bad_video(i3d_files):
  model = i3d.load(str(i3d_files[1] / "i3d.npz"))
  with pytest.raises(ValueError, match=r"\[B, T, H, W, 3\]"):
    model.features(np.zeros((16, 64, 64, 3), np.uint8))
  with pytest.raises(ValueError, match="0..255"):
    model.features(np.full((1, 4, 8, 8, 3), -1.0, np.float32))


@pytest.mark.slow
def test_full_width_i3d_at_224_matches_tensorflow(tmp_path):
  """The public network size and FVD resolution end to end (VALID 2x7x7 pool over 2 steps)."""
  arrays = random_i3d_arrays(1.0, seed=5)
  write_checkpoint_v2(str(tmp_path / "model.ckpt"), arrays)
  convert_features.convert("i3d", str(tmp_path / "model.ckpt"), str(tmp_path / "i3d.npz"))
  model = i3d.load(str(tmp_path / "i3d.npz"))
  video_u8 = np.random.default_rng(6).integers(0, 256, (1, 17, 128, 128, 3), dtype=np.uint8)
  got = model.features(video_u8, num_frames=None)  # All 17 frames: the pool's 2 time steps.
  frames = tf.compat.v1.image.resize_bilinear(video_u8.reshape(-1, 128, 128, 3), (224, 224))
  want = tf_i3d_logits(arrays, 2.0 * frames.numpy().reshape(1, 17, 224, 224, 3) / 255.0 - 1.0)
  np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3 * np.abs(want).max())


def test_fvd_is_the_frechet_distance_of_the_features():
  rng = np.random.default_rng(7)
  real, generated = rng.normal(0, 1, (200, 24)), rng.normal(0.2, 1.1, (300, 24))
  assert i3d.fvd(real, generated) == pytest.approx(closed_form_frechet(real, generated), rel=1e-6)


# --- VGGish ---------------------------------------------------------------------------------------
def test_vggish_public_layout_matches_the_original():
  shapes = vggish.checkpoint_shapes()
  expected = {}
  for name, kernel in _vggish_kernels(1.0).items():
    expected[f"vggish/{name}/weights"], expected[f"vggish/{name}/biases"] = kernel, kernel[-1:]
  assert shapes == expected
  assert shapes["vggish/fc1/fc1_1/weights"] == (12288, 4096)
  assert shapes["vggish/fc2/weights"] == (4096, 128)


def test_vggish_frontend_matches_mel_features():
  np.testing.assert_allclose(
      vggish.mel_matrix(),
      tf.signal.linear_to_mel_weight_matrix(64, 257, 16000, 125.0, 7500.0,
                                            dtype=tf.float64).numpy(), atol=1e-6)
  rng = np.random.default_rng(8)
  t = np.arange(24000) / 16000.0
  audio = np.stack([0.5 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(t.size),
                    0.3 * rng.standard_normal(t.size)])
  got = np.asarray(vggish.log_mel_spectrogram(audio, 16000))
  want = np.stack([numpy_log_mel(a) for a in audio])
  assert got.shape == want.shape == (2, 148, 64)
  np.testing.assert_allclose(got, want, atol=2e-4)
  examples = np.asarray(vggish.waveform_to_examples(audio, 16000))
  assert examples.shape == (2, 1, 96, 64)  # 148 frames: one 96-frame example, the tail dropped.
  np.testing.assert_allclose(examples[:, 0], want[:, :96], atol=2e-4)


def test_fad_examples_follow_the_reference_windowing():
  rng = np.random.default_rng(9)
  audio = 0.4 * rng.uniform(-1, 1, (2, 34000))
  audio[1] *= 0.1  # Peak below 0.1: FAD's normalization divides by 0.1, not the peak.
  got = np.asarray(vggish.fad_examples(audio, 16000))
  assert got.shape == (2, 3, 96, 64)  # 1 s windows at 0, 0.5 s, 1 s; 34000 samples fit 3.
  for b in range(2):
    normalized = audio[b] / max(0.1, audio[b].max())
    for w in range(3):
      window = normalized[8000 * w:8000 * w + 16000]
      np.testing.assert_allclose(got[b, w], numpy_log_mel(window)[:96], atol=2e-4)


def test_vggish_converted_forward_matches_tensorflow(vggish_files):
  arrays, pca, root = vggish_files
  model = vggish.load(str(root / "vggish.npz"))
  rng = np.random.default_rng(10)
  audio = 0.3 * rng.standard_normal((2, 16000 + 8000))
  got = model.embeddings(audio, 16000)
  assert got.shape == (2, 2, 128)
  examples = np.asarray(vggish.fad_examples(audio, 16000)).reshape(-1, 96, 64)
  want = tf_vggish_embeddings(arrays, examples, embedding_relu=False).reshape(2, 2, 128)
  assert np.std(want) > 0.05 and (want < 0).any()  # Linear fc2: negative values survive.
  np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4 * np.abs(want).max())
  np.testing.assert_array_equal(model.embeddings(audio, 16000, batch_size=2), got)  # Chunked.
  relu_model = vggish.load(str(root / "vggish.npz"), embedding_relu=True)
  np.testing.assert_allclose(relu_model.embed_examples(examples),
                             tf_vggish_embeddings(arrays, examples, embedding_relu=True),
                             rtol=1e-3, atol=1e-4 * np.abs(want).max())
  # PCA postprocessor as vggish_postprocess.Postprocessor.postprocess.
  flat = got.reshape(-1, 128).astype(np.float64)
  pca_applied = np.dot(pca["pca_eigen_vectors"], flat.T - pca["pca_means"].reshape(-1, 1)).T
  quantized = ((np.clip(pca_applied, -2, 2) + 2) * (255.0 / 4)).astype(np.uint8)
  # float32 vs float64 may move a value across an integer boundary: at most 1 step.
  assert np.abs(model.postprocess(flat).astype(int) - quantized).max() <= 1
  assert np.mean(model.postprocess(flat) == quantized) > 0.98


def test_vggish_refuses_other_sample_rates(vggish_files):
  model = vggish.load(str(vggish_files[2] / "vggish.npz"))
  with pytest.raises(ValueError, match="16000 Hz"):
    model.embeddings(np.zeros((1, 44100)), 44100)
  with pytest.raises(ValueError, match="shorter than 16000"):
    model.embeddings(np.zeros((1, 8000)), 16000)


def test_fad_pools_windows_of_all_clips():
  rng = np.random.default_rng(11)
  real, generated = rng.normal(0, 1, (60, 3, 128)), rng.normal(0.1, 1.2, (70, 3, 128))
  want = closed_form_frechet(real.reshape(-1, 128), generated.reshape(-1, 128))
  assert vggish.fad(real, generated) == pytest.approx(want, rel=1e-6)


# --- converter errors -----------------------------------------------------------------------------
def test_converter_reports_missing_files(tmp_path):
  with pytest.raises(FileNotFoundError, match="not found"):
    convert_features.convert("vggish", str(tmp_path / "nope.ckpt"), str(tmp_path / "out.npz"))
  with pytest.raises(FileNotFoundError, match="convert_features"):
    vggish.load(str(tmp_path / "nope.npz"))
  assert convert_features.main(["--network=i3d", f"--checkpoint={tmp_path}/nope",
                                f"--output={tmp_path}/out.npz"]) == 1
  assert not (tmp_path / "out.npz").exists()


@pytest.mark.parametrize("damage, message", [
    ("drop", r"1 missing variable\(s\): vggish/conv2/biases"),
    ("reshape", r"vggish/fc2/weights \(128, 512\) \(expected \(512, 128\)\)"),
    ("extra", r"1 unexpected variable\(s\): vggish/conv5/weights"),
])
def test_converter_rejects_wrong_layouts(tmp_path, damage, message):
  arrays = random_vggish_arrays(VGGISH_WIDTH)
  if damage == "drop":
    del arrays["vggish/conv2/biases"]
  elif damage == "reshape":
    arrays["vggish/fc2/weights"] = arrays["vggish/fc2/weights"].T.copy()
  else:
    arrays["vggish/conv5/weights"] = np.zeros((3, 3, 64, 64), np.float32)
  write_checkpoint_v2(str(tmp_path / "bad.ckpt"), arrays)
  with pytest.raises(ValueError, match=message):
    convert_features.convert("vggish", str(tmp_path / "bad.ckpt"), str(tmp_path / "out.npz"),
                             width=VGGISH_WIDTH)
  assert not (tmp_path / "out.npz").exists()


def test_public_width_converter_rejects_a_narrow_checkpoint(vggish_files):
  with pytest.raises(ValueError, match="shape mismatch"):
    convert_features.read_checkpoint("vggish", str(vggish_files[2] / "vggish_model.ckpt"))


def test_loaders_refuse_the_other_networks_file(i3d_files, vggish_files):
  with pytest.raises(ValueError, match="expected 'vggish'"):
    vggish.load(str(i3d_files[1] / "i3d.npz"))
  with pytest.raises(ValueError, match="expected 'i3d'"):
    i3d.load(str(vggish_files[2] / "vggish.npz"))


def test_i3d_converter_reads_another_scope_and_the_cli_writes(tmp_path):
  """The TF-Hub export and two-stream checkpoints name the scope differently; the output always
  uses the public RGB names."""
  arrays = random_i3d_arrays(I3D_WIDTH, seed=12, scope="module/RGB/inception_i3d")
  write_checkpoint_v2(str(tmp_path / "hub.ckpt"), arrays)
  convert_features.convert("i3d", str(tmp_path / "hub.ckpt"), str(tmp_path / "i3d.npz"),
                           width=I3D_WIDTH)
  with np.load(tmp_path / "i3d.npz") as data:
    np.testing.assert_array_equal(
        data[f"{I3D_SCOPE}/Mixed_4e/Branch_1/Conv3d_0b_3x3/conv_3d/w"],
        arrays["module/RGB/inception_i3d/Mixed_4e/Branch_1/Conv3d_0b_3x3/conv_3d/w"])
  # The CLI: the public width by default (which this narrow checkpoint does not match), the
  # narrow one when told.
  cli = ["--network=i3d", f"--checkpoint={tmp_path}/hub.ckpt", f"--output={tmp_path}/cli.npz"]
  assert convert_features.main(cli) == 1
  assert not (tmp_path / "cli.npz").exists()
  cli[1] += ".index"  # A file of the bundle names its prefix.
  assert convert_features.main(cli + [f"--width={I3D_WIDTH}"]) == 0
  assert i3d.load(str(tmp_path / "cli.npz")).width == I3D_WIDTH
