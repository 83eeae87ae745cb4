"""VGGish in Flax NNX with its exact log-mel frontend: the audio embedding of the Fréchet audio
distance (FAD).

VGGish (Hershey et al. 2017) as released in tensorflow/models `research/audioset/vggish`
(`vggish_slim.py`, `vggish_input.py`, `mel_features.py`, `vggish_params.py`,
`vggish_postprocess.py`):

Frontend (`log_mel_spectrogram`, `waveform_to_examples`; jnp, float32): 16 kHz mono; STFT
magnitudes of 25 ms frames (400 samples, no padding, the tail that does not fill a frame is
dropped) every 10 ms (160 samples) under a periodic Hann window, FFT length 512 (the next power
of two); 64 mel bands from 125 to 7500 Hz whose triangles are linear in HTK mel
(1127·ln(1 + f/700)) with the DC bin excluded; log(mel + 0.01); framed into non-overlapping
examples of 96 frames × 64 bands (0.96 s).

Network (`VGGish.__call__`, examples [N, 96, 64] → [N, 128]): 3×3 'SAME' convs with bias and
ReLU, 2×2 stride-2 'SAME' max pools: conv1 (64), pool1, conv2 (128), pool2, conv3/conv3_1 (256),
conv3/conv3_2 (256), pool3, conv4/conv4_1 (512), conv4/conv4_2 (512), pool4, flatten (height,
width, channel order, as slim.flatten of NHWC: 6·4·512 = 12288), fc1/fc1_1 (4096, ReLU),
fc1/fc1_2 (4096, ReLU), fc2 (128). The current `vggish_slim.py` (and its README: "the embedding
layer does not include a final non-linear activation") leaves fc2 linear, which is the default
here; the 2017–2020 releases (which the original FAD numbers and torchvggish-based FAD tools used)
applied a ReLU to fc2: pass `embedding_relu=True` to `load` to reproduce those.

Postprocessor (`postprocess`, optional): the AudioSet release's PCA/whitening (`pca_eigen_vectors`
[128, 128], `pca_means` [128] from vggish_pca_params.npz), clipped to ±2 and quantized to uint8.
FAD uses the raw embeddings, not these.

FAD (Kilgour et al. 2019, google-research/frechet_audio_distance, `audioset_model.py` and
`create_embeddings_main.py`): each clip is loudness-normalized (divided by max(0.1, max(x)) —
the maximum, not the maximum magnitude, as in the original), cut into 1 s windows every 8000
samples (0.5 s; windows that do not fit are dropped), each window gives one 96-frame example and
one 128-d embedding; all windows of all clips form the embedding set whose Gaussian is compared
(`embeddings`, then `fad`). Audio must be 16 kHz: other rates are refused (the reference resamples
with resampy, which this project does not depend on; avdit's audio is 16 kHz).

Weights (nothing is downloaded at run time). Download the public TF1 checkpoint
  https://storage.googleapis.com/audioset/vggish_model.ckpt
and, optionally, the PCA parameters
  https://storage.googleapis.com/audioset/vggish_pca_params.npz
then convert once with
  python -m avdit.evaluation.convert_features --network=vggish \
      --checkpoint=vggish_model.ckpt --pca_params=vggish_pca_params.npz --output=vggish.npz
and `load("vggish.npz")`. The .npz is flat, keyed by the public names (`vggish/conv1/weights`
[3, 3, 1, 64], `vggish/conv1/biases` [64], ..., `vggish/fc2/biases` [128]) plus the optional
`pca_eigen_vectors`, `pca_means`, and `__network__` = "vggish", `__width__` (1.0 for the public
network; tests use narrower ones).
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from avdit.evaluation import feature_weights
from avdit.models import audio_losses

NETWORK = "vggish"
CHECKPOINT_SCOPE = "vggish"
# vggish_params.py.
SAMPLE_RATE = 16000
WINDOW_SAMPLES = 400  # 0.025 s.
HOP_SAMPLES = 160  # 0.010 s.
FFT_LENGTH = 512  # 2 ** ceil(log2(400)).
NUM_BANDS = 64
MEL_MIN_HZ = 125.0
MEL_MAX_HZ = 7500.0
LOG_OFFSET = 0.01
EXAMPLE_FRAMES = 96  # 0.96 s windows and hops.
EMBEDDING_SIZE = 128
PCA_EIGEN_VECTORS = "pca_eigen_vectors"
PCA_MEANS = "pca_means"
QUANTIZE_MIN, QUANTIZE_MAX = -2.0, 2.0
# frechet_audio_distance: 1 s windows every `model_step_size` = 8000 samples, loudness floor 0.1.
FAD_WINDOW_SAMPLES = SAMPLE_RATE
FAD_STEP_SAMPLES = 8000
FAD_MIN_PEAK = 0.1

_CONVS = (("conv1", 64), ("conv2", 128), ("conv3/conv3_1", 256), ("conv3/conv3_2", 256),
          ("conv4/conv4_1", 512), ("conv4/conv4_2", 512))
_POOL_AFTER = ("conv1", "conv2", "conv3/conv3_2", "conv4/conv4_2")
_POOLED_HW = (EXAMPLE_FRAMES // 16, NUM_BANDS // 16)  # Four 2x2 pools: 96x64 -> 6x4.


class VGGishWeight(nnx.Variable):
  """Frozen VGGish weights: not an nnx.Param, so never trained or counted as model parameters."""


@dataclasses.dataclass(frozen=True)
class LayerSpec:
  """One conv (kernel [3, 3, in, out]) or dense (kernel [in, out]) layer with bias."""

  name: str
  kernel_shape: tuple[int, ...]

  @property
  def is_conv(self) -> bool:
    return len(self.kernel_shape) == 4


def layer_specs(width: float = 1.0) -> list[LayerSpec]:
  """Every layer in forward order; `width` scales all channels but the 128-d embedding."""
  c = lambda n: max(1, int(round(n * width)))
  specs, in_channels = [], 1
  for name, channels in _CONVS:
    specs.append(LayerSpec(name, (3, 3, in_channels, c(channels))))
    in_channels = c(channels)
  flat = _POOLED_HW[0] * _POOLED_HW[1] * in_channels
  specs += [LayerSpec("fc1/fc1_1", (flat, c(4096))), LayerSpec("fc1/fc1_2", (c(4096), c(4096))),
            LayerSpec("fc2", (c(4096), EMBEDDING_SIZE))]
  return specs


def checkpoint_shapes(width: float = 1.0) -> dict[str, tuple[int, ...]]:
  """{public checkpoint name: shape} of every variable of the network."""
  shapes = {}
  for spec in layer_specs(width):
    shapes[f"{CHECKPOINT_SCOPE}/{spec.name}/weights"] = spec.kernel_shape
    shapes[f"{CHECKPOINT_SCOPE}/{spec.name}/biases"] = (spec.kernel_shape[-1],)
  return shapes


# --- frontend ------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=4)
def mel_matrix(num_spectrogram_bins: int = FFT_LENGTH // 2 + 1, sample_rate: int = SAMPLE_RATE,
               num_bands: int = NUM_BANDS, lower_hz: float = MEL_MIN_HZ,
               upper_hz: float = MEL_MAX_HZ) -> np.ndarray:
  """[bins, bands] float64 weights of mel_features.spectrogram_to_mel_matrix (mel = |S| @ W)."""
  hz_to_mel = lambda f: 1127.0 * np.log(1.0 + np.asarray(f, np.float64) / 700.0)
  bins_mel = hz_to_mel(np.linspace(0.0, sample_rate / 2.0, num_spectrogram_bins))
  edges_mel = np.linspace(hz_to_mel(lower_hz), hz_to_mel(upper_hz), num_bands + 2)
  lower, center, upper = edges_mel[:-2], edges_mel[1:-1], edges_mel[2:]
  rising = (bins_mel[:, None] - lower) / (center - lower)
  falling = (upper - bins_mel[:, None]) / (upper - center)
  weights = np.maximum(0.0, np.minimum(rising, falling))
  weights[0, :] = 0.0  # HTK excludes the DC bin.
  weights.setflags(write=False)
  return weights


def _check_audio(shape: tuple[int, ...], sample_rate: int) -> None:
  if sample_rate != SAMPLE_RATE:
    raise ValueError(f"VGGish needs {SAMPLE_RATE} Hz audio, got sample_rate={sample_rate}; "
                     f"resample first (the reference uses resampy)")
  if len(shape) != 2:
    raise ValueError(f"audio must be a mono waveform batch [B, L], got shape {tuple(shape)}")


def log_mel_spectrogram(audio_bl, sample_rate: int = SAMPLE_RATE) -> jax.Array:
  """Stabilized log-mel spectrogram [B, T, 64] of waveforms [B, L] (T = 1 + (L − 400) // 160)."""
  _check_audio(np.shape(audio_bl), sample_rate)
  audio = jnp.asarray(audio_bl, jnp.float32)
  if audio.shape[1] < WINDOW_SAMPLES:
    raise ValueError(f"audio of {audio.shape[1]} samples is shorter than one "
                     f"{WINDOW_SAMPLES}-sample STFT window")
  return _log_mel(audio)


@jax.jit
def _log_mel(audio_bl: jax.Array) -> jax.Array:
  frames_btn = audio_losses.frame_signal(audio_bl, WINDOW_SAMPLES, HOP_SAMPLES, center=False)
  window = audio_losses.get_window("hann", WINDOW_SAMPLES)  # Periodic, as mel_features.
  magnitude = jnp.abs(jnp.fft.rfft(frames_btn * window, n=FFT_LENGTH, axis=-1))
  mel = jnp.matmul(magnitude, jnp.asarray(mel_matrix(), jnp.float32),
                   precision=jax.lax.Precision.HIGHEST)
  return jnp.log(mel + LOG_OFFSET)


def frame_examples(log_mel_btf: jax.Array) -> jax.Array:
  """Non-overlapping 96-frame examples [B, E, 96, 64] (mel_features.frame; the tail is dropped)."""
  num_examples = log_mel_btf.shape[1] // EXAMPLE_FRAMES
  if num_examples == 0:
    raise ValueError(f"{log_mel_btf.shape[1]} log-mel frames are fewer than one "
                     f"{EXAMPLE_FRAMES}-frame example (0.96 s of audio plus 15 ms)")
  kept = log_mel_btf[:, :num_examples * EXAMPLE_FRAMES]
  return jnp.reshape(kept, (kept.shape[0], num_examples, EXAMPLE_FRAMES, kept.shape[2]))


def waveform_to_examples(audio_bl, sample_rate: int = SAMPLE_RATE) -> jax.Array:
  """vggish_input.waveform_to_examples for a batch: [B, L] → examples [B, E, 96, 64]."""
  return frame_examples(log_mel_spectrogram(audio_bl, sample_rate))


def fad_examples(audio_bl, sample_rate: int = SAMPLE_RATE, *,
                 step_samples: int = FAD_STEP_SAMPLES,
                 normalize_loudness: bool = True) -> jax.Array:
  """FAD's inputs: one 96-frame example per 1 s window, [B, W, 96, 64], W = 1 + (L − 16000) //
  step (frechet_audio_distance's AudioSetModel.extract_features with its default settings)."""
  _check_audio(np.shape(audio_bl), sample_rate)
  audio = jnp.asarray(audio_bl, jnp.float32)
  length = audio.shape[1]
  if length < FAD_WINDOW_SAMPLES:
    raise ValueError(f"FAD embeds 1 s windows; audio of {length} samples is shorter than "
                     f"{FAD_WINDOW_SAMPLES}")
  if step_samples < 1:
    raise ValueError(f"step_samples must be >= 1, got {step_samples}")
  return _fad_examples(audio, step_samples, normalize_loudness)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _fad_examples(audio_bl: jax.Array, step_samples: int,
                  normalize_loudness: bool) -> jax.Array:
  if normalize_loudness:
    audio_bl = audio_bl / jnp.maximum(FAD_MIN_PEAK, jnp.max(audio_bl, axis=1, keepdims=True))
  starts = np.arange(0, audio_bl.shape[1] - FAD_WINDOW_SAMPLES + 1, step_samples)
  windows = audio_bl[:, starts[:, None] + np.arange(FAD_WINDOW_SAMPLES)[None, :]]  # [B, W, 16000]
  batch, num_windows = windows.shape[:2]
  examples = frame_examples(_log_mel(jnp.reshape(windows, (batch * num_windows, -1))))
  # A 1 s window has 98 log-mel frames: exactly one example each.
  return jnp.reshape(examples[:, 0], (batch, num_windows, EXAMPLE_FRAMES, NUM_BANDS))


# --- network --------------------------------------------------------------------------------------
class VGGish(nnx.Module):
  """VGGish embedding network; `__call__` maps log-mel examples [N, 96, 64] to [N, 128].

  Weights are zeros until set (`load` reads a converted checkpoint).
  """

  def __init__(self, *, width: float = 1.0, embedding_relu: bool = False):
    if not width > 0:
      raise ValueError(f"width must be positive, got {width}")
    self.width, self.embedding_relu = float(width), bool(embedding_relu)
    self.specs = tuple(layer_specs(width))
    # numpy placeholders moved to the device: jnp.zeros would compile one fill per shape.
    zeros = lambda shape: VGGishWeight(jnp.asarray(np.zeros(shape, np.float32)))
    self.kernels = nnx.List([zeros(s.kernel_shape) for s in self.specs])
    self.biases = nnx.List([zeros((s.kernel_shape[-1],)) for s in self.specs])
    # The optional PCA postprocessor; identity placeholders until `set_pca`.
    self.has_pca = False
    self.pca_eigen_vectors = VGGishWeight(jnp.asarray(np.eye(EMBEDDING_SIZE, dtype=np.float32)))
    self.pca_means = VGGishWeight(jnp.asarray(np.zeros(EMBEDDING_SIZE, np.float32)))

  def set_pca(self, eigen_vectors: np.ndarray, means: np.ndarray) -> None:
    eigen_vectors, means = np.asarray(eigen_vectors), np.asarray(means).reshape(-1)
    if eigen_vectors.shape != (EMBEDDING_SIZE, EMBEDDING_SIZE) or means.shape != (EMBEDDING_SIZE,):
      raise ValueError(f"PCA parameters must be {PCA_EIGEN_VECTORS} [128, 128] and {PCA_MEANS} "
                       f"[128], got {eigen_vectors.shape} and {means.shape}")
    self.pca_eigen_vectors.value = jnp.asarray(eigen_vectors.astype(np.float32))
    self.pca_means.value = jnp.asarray(means.astype(np.float32))
    self.has_pca = True

  def __call__(self, examples_ntf: jax.Array) -> jax.Array:
    x = jnp.asarray(examples_ntf, jnp.float32)
    if x.ndim != 3 or x.shape[1:] != (EXAMPLE_FRAMES, NUM_BANDS):
      raise ValueError(f"examples must be [N, {EXAMPLE_FRAMES}, {NUM_BANDS}], got "
                       f"{tuple(x.shape)}")
    x = x[..., None]  # [N, 96, 64, 1]: time is the image height, mel bands its width.
    for spec, kernel, bias in zip(self.specs, self.kernels, self.biases):
      if spec.is_conv:
        x = jax.lax.conv_general_dilated(x, kernel.value, (1, 1), "SAME",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                         precision=jax.lax.Precision.HIGHEST)
      else:
        if x.ndim == 4:
          x = jnp.reshape(x, (x.shape[0], -1))  # slim.flatten: (h, w, c) order.
        x = jnp.matmul(x, kernel.value, precision=jax.lax.Precision.HIGHEST)
      x = x + bias.value
      if spec.name != "fc2" or self.embedding_relu:
        x = jax.nn.relu(x)
      if spec.name in _POOL_AFTER:
        x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "SAME")
    return x

  def postprocess(self, embeddings_nd) -> np.ndarray:
    """AudioSet PCA + whitening, clipped to ±2 and quantized: uint8 [N, 128] (as
    vggish_postprocess.Postprocessor). Needs the PCA parameters in the converted file."""
    if not self.has_pca:
      raise ValueError("no PCA parameters loaded: convert with --pca_params=vggish_pca_params.npz")
    embeddings = np.asarray(embeddings_nd, np.float64)
    if embeddings.ndim != 2 or embeddings.shape[1] != EMBEDDING_SIZE:
      raise ValueError(f"embeddings must be [N, {EMBEDDING_SIZE}], got {embeddings.shape}")
    eigen = np.asarray(self.pca_eigen_vectors.value, np.float64)
    means = np.asarray(self.pca_means.value, np.float64)
    pca = (embeddings - means) @ eigen.T
    clipped = np.clip(pca, QUANTIZE_MIN, QUANTIZE_MAX)
    return ((clipped - QUANTIZE_MIN) * (255.0 / (QUANTIZE_MAX - QUANTIZE_MIN))).astype(np.uint8)

  def embed_examples(self, examples_nft, *, batch_size: int = 256) -> np.ndarray:
    """Embeddings [N, 128] (float32 numpy) of log-mel examples [N, 96, 64], jitted in batches."""
    examples = np.asarray(examples_nft, np.float32)
    if batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    out = [np.asarray(_embed(self, jnp.asarray(examples[i:i + batch_size])))
           for i in range(0, examples.shape[0], batch_size)]
    return (np.concatenate(out, axis=0) if out
            else np.zeros((0, EMBEDDING_SIZE), np.float32))

  def embeddings(self, audio_bl, sample_rate: int, *, step_samples: int = FAD_STEP_SAMPLES,
                 normalize_loudness: bool = True, batch_size: int = 256) -> np.ndarray:
    """FAD embeddings [B, W, 128] of 16 kHz waveforms [B, L]: one per 1 s window (`fad_examples`);
    `fad` pools the windows of all clips. About `batch_size` windows are embedded at a time."""
    audio = np.asarray(audio_bl, np.float32)
    _check_audio(audio.shape, sample_rate)
    if audio.shape[0] == 0:
      raise ValueError("audio has no clips")
    num_windows = 1 + max(audio.shape[1] - FAD_WINDOW_SAMPLES, 0) // max(step_samples, 1)
    clips_per_chunk = max(1, batch_size // num_windows)  # Bounds the examples held at once.
    chunks = []
    for start in range(0, audio.shape[0], clips_per_chunk):
      examples = np.asarray(fad_examples(audio[start:start + clips_per_chunk], sample_rate,
                                         step_samples=step_samples,
                                         normalize_loudness=normalize_loudness))
      flat = self.embed_examples(examples.reshape(-1, EXAMPLE_FRAMES, NUM_BANDS),
                                 batch_size=batch_size)
      chunks.append(flat.reshape(examples.shape[0], examples.shape[1], EMBEDDING_SIZE))
    return np.concatenate(chunks, axis=0)


@nnx.jit
def _embed(model: VGGish, examples_nft: jax.Array) -> jax.Array:
  return model(examples_nft)


# --- weights and metric ---------------------------------------------------------------------------
def load(path: str, *, embedding_relu: bool = False) -> VGGish:
  """A `VGGish` with the weights (and PCA parameters, if converted) of a converted checkpoint."""
  weights, width = feature_weights.read_weights(path, NETWORK)
  pca = {k: weights.pop(k) for k in (PCA_EIGEN_VECTORS, PCA_MEANS) if k in weights}
  if len(pca) == 1:
    raise ValueError(f"{path}: PCA parameters need both {PCA_EIGEN_VECTORS} and {PCA_MEANS}, "
                     f"found only {sorted(pca)}")
  feature_weights.check_shapes({k: v.shape for k, v in weights.items()}, checkpoint_shapes(width),
                               path)
  model = VGGish(width=width, embedding_relu=embedding_relu)
  as_device = lambda a: jnp.asarray(np.asarray(a, np.float32))
  for spec, kernel, bias in zip(model.specs, model.kernels, model.biases):
    kernel.value = as_device(weights[f"{CHECKPOINT_SCOPE}/{spec.name}/weights"])
    bias.value = as_device(weights[f"{CHECKPOINT_SCOPE}/{spec.name}/biases"])
  if pca:
    model.set_pca(pca[PCA_EIGEN_VECTORS], pca[PCA_MEANS])
  return model


def fad(real_embeddings, generated_embeddings) -> float:
  """Fréchet audio distance between two embedding sets [..., 128] (leading axes are pooled,
  e.g. the [B, W, 128] of `VGGish.embeddings`)."""
  from avdit.evaluation import distribution  # pylint: disable=import-outside-toplevel
  flat = lambda e: np.reshape(np.asarray(e), (-1, np.shape(e)[-1]))
  return float(distribution.frechet_distance_of_features(flat(real_embeddings),
                                                         flat(generated_embeddings)))
