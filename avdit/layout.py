"""Clip geometry, time-segments and the token layout (SPEC §3).

Everything downstream (MoNL timestep vectors, task masks, the model's positional encodings and
AdaLN rows, samplers, metrics) reads the segment structure from one `ClipLayout`, built once from
the config. A time-segment is one latent frame of the video: segment 0 is video frame 0 alone,
segment k >= 1 is the k-th group of `temporal_factor` frames. Audio latent j belongs to the
segment that holds its centre (clamped to the last segment).

Latents travel as a dict `{"video": [B, N, h, w, d_v], "audio": [B, l_a, d_a]}`; the model turns
them into one token sequence [video tokens (t, h, w order) || audio tokens]. Conditioning rows are
indexed `m * N + n` (m = 0 video, m = 1 audio).
"""
from __future__ import annotations

import dataclasses
import functools
import math

import jax.numpy as jnp
import numpy as np

VIDEO, AUDIO = 0, 1
MODALITIES = ("video", "audio")
NUM_MODALITIES = 2


@dataclasses.dataclass(frozen=True)
class ClipLayout:
  """Pixel geometry of a clip and the latent/segment geometry it implies."""

  num_frames: int  # F = 1 + temporal_factor * k
  fps: float
  height: int
  width: int
  sample_rate: int
  video_channels: int  # d_v of the latent space
  audio_channels: int  # d_a of the latent space
  spatial_factor: int = 8
  temporal_factor: int = 4
  audio_hop: int = 320  # waveform samples per audio latent
  patch_size: int = 1  # spatial patch of the video latents, in latent pixels

  def __post_init__(self):
    tf, sf = self.temporal_factor, self.spatial_factor
    if self.num_frames < 1 or (self.num_frames - 1) % tf:
      raise ValueError(
          f"num_frames={self.num_frames} is not 1 + {tf}k: the first frame is encoded alone and "
          f"the rest in groups of {tf} (e.g. {1 + tf * max(1, (self.num_frames - 1) // tf)}).")
    for name, size in (("height", self.height), ("width", self.width)):
      if size % (sf * self.patch_size):
        raise ValueError(f"{name}={size} is not divisible by spatial_factor*patch_size="
                         f"{sf}*{self.patch_size}.")
    if self.fps <= 0 or self.sample_rate <= 0 or self.audio_hop <= 0:
      raise ValueError(f"fps, sample_rate and audio_hop must be positive: {self}")

  # --- pixel side --------------------------------------------------------------------------
  @property
  def duration(self) -> float:
    """Seconds covered by the clip's frames."""
    return self.num_frames / self.fps

  @property
  def audio_samples(self) -> int:
    """Waveform length L that exactly covers the frames (34 000 at 17 frames, 8 fps, 16 kHz)."""
    return int(round(self.duration * self.sample_rate))

  # --- latent side -------------------------------------------------------------------------
  @property
  def num_segments(self) -> int:
    """N = 1 + l_v: the number of video latent frames, one time-segment each."""
    return 1 + (self.num_frames - 1) // self.temporal_factor

  @property
  def latent_height(self) -> int:
    return self.height // self.spatial_factor

  @property
  def latent_width(self) -> int:
    return self.width // self.spatial_factor

  @property
  def audio_latents(self) -> int:
    """l_a: audio latents covering the waveform, the last one zero-padded (107 for 34 000)."""
    return math.ceil(self.audio_samples / self.audio_hop)

  @property
  def video_latent_shape(self) -> tuple[int, int, int, int]:
    return (self.num_segments, self.latent_height, self.latent_width, self.video_channels)

  @property
  def audio_latent_shape(self) -> tuple[int, int]:
    return (self.audio_latents, self.audio_channels)

  def latent_shapes(self, batch: int) -> dict[str, tuple[int, ...]]:
    return {"video": (batch, *self.video_latent_shape), "audio": (batch, *self.audio_latent_shape)}

  # --- segments and tokens -----------------------------------------------------------------
  def segment_of_time(self, seconds: np.ndarray) -> np.ndarray:
    """Segment holding each time (seconds), clamped to [0, N-1]."""
    frame = np.asarray(seconds, np.float64) * self.fps
    seg = np.where(frame < 1.0, 0, 1 + np.floor((frame - 1.0) / self.temporal_factor))
    return np.clip(seg, 0, self.num_segments - 1).astype(np.int32)

  def segment_bounds(self, segment: int) -> tuple[float, float]:
    """[start, end) in seconds of a segment."""
    if segment == 0:
      return 0.0, 1.0 / self.fps
    tf = self.temporal_factor
    return (1 + tf * (segment - 1)) / self.fps, (1 + tf * segment) / self.fps

  @functools.cached_property
  def segment_of_audio(self) -> np.ndarray:
    """int32 [l_a]: the segment holding the centre of each audio latent."""
    centres = (np.arange(self.audio_latents) + 0.5) * self.audio_hop / self.sample_rate
    return self.segment_of_time(centres)

  @functools.cached_property
  def segment_of_frame(self) -> np.ndarray:
    """int32 [F]: the segment of each video frame (0, then groups of temporal_factor)."""
    return self.segment_of_time((np.arange(self.num_frames) + 0.5) / self.fps)

  @property
  def video_tokens_per_segment(self) -> int:
    return (self.latent_height // self.patch_size) * (self.latent_width // self.patch_size)

  @property
  def num_video_tokens(self) -> int:
    return self.num_segments * self.video_tokens_per_segment

  @property
  def num_tokens(self) -> int:
    return self.num_video_tokens + self.audio_latents

  @property
  def num_rows(self) -> int:
    """Conditioning rows, one per (modality, segment): M * N."""
    return NUM_MODALITIES * self.num_segments

  @functools.cached_property
  def token_row(self) -> np.ndarray:
    """int32 [num_tokens]: the (modality, segment) row `m*N + n` of every token."""
    video = np.repeat(np.arange(self.num_segments), self.video_tokens_per_segment)
    audio = self.num_segments + self.segment_of_audio
    return np.concatenate([video, audio]).astype(np.int32)

  @functools.cached_property
  def segment_of_sample(self) -> np.ndarray:
    """int32 [L]: the segment of each waveform sample, that of the audio latent holding it."""
    return self.segment_of_audio[np.arange(self.audio_samples) // self.audio_hop]

  @functools.cached_property
  def token_seconds(self) -> np.ndarray:
    """float64 [num_tokens]: the time (s) each token stands for, on one axis for both modalities.

    A video token sits at the mean centre of its segment's frames (frame k covers
    [k / fps, (k + 1) / fps)), an audio latent at the centre of its hop: tokens of the two
    modalities that happen at the same time get the same time, whatever their rates.
    """
    frame_centres = (np.arange(self.num_frames) + 0.5) / self.fps
    segment_seconds = np.array([frame_centres[self.segment_of_frame == n].mean()
                                for n in range(self.num_segments)])
    video = np.repeat(segment_seconds, self.video_tokens_per_segment)
    audio = (np.arange(self.audio_latents) + 0.5) * self.audio_hop / self.sample_rate
    return np.concatenate([video, audio])

  # --- per-element values to latent shapes ---------------------------------------------------
  def expand_to_latents(self, values_bmn: jnp.ndarray) -> dict[str, jnp.ndarray]:
    """Broadcasts per-(modality, segment) values [B, M, N] to each modality's latent rank.

    Returns {"video": [B, N, 1, 1, 1], "audio": [B, l_a, 1]}, ready to multiply latents.
    """
    values_bmn = jnp.asarray(values_bmn)
    video = values_bmn[:, VIDEO, :][:, :, None, None, None]
    audio = jnp.take(values_bmn[:, AUDIO, :], jnp.asarray(self.segment_of_audio), axis=1)
    return {"video": video, "audio": audio[:, :, None]}


def layout_from_config(config) -> ClipLayout:
  """The layout of `config.clip` in the latent space `config.latent`, patched by `config.model`."""
  return ClipLayout(
      num_frames=config.clip.num_frames,
      fps=float(config.clip.fps),
      height=config.clip.height,
      width=config.clip.width,
      sample_rate=config.clip.sample_rate,
      # The channels the model sees: with latent.video_rank, the video latents' k principal
      # directions (latent_space.estimate_stats), else the latent space's own channels.
      video_channels=config.latent.get("video_rank", 0) or config.latent.video_channels,
      audio_channels=config.latent.audio_channels,
      spatial_factor=config.latent.spatial_factor,
      temporal_factor=config.latent.temporal_factor,
      audio_hop=config.latent.audio_hop,
      patch_size=config.model.patch_size,
  )
