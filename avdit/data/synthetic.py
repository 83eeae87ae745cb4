"""The synthetic audiovisual world: a bouncing disc you can hear (SPEC §10).

Each clip shows a coloured disc moving with constant velocity inside the frame, bouncing
elastically off the walls, on a background of a second colour. The audio is a sine tone whose
pitch follows the disc's height (a fixed log-frequency map, higher on screen = higher pitch) plus
a short click at every wall bounce. Motion is analytic in continuous time (a reflection fold of
the free straight-line motion), so video frame k (t = k / fps) and audio sample i
(t = i / sample_rate) read the same trajectory and agree exactly; the returned ground truth
(disc centre, colours, pitch, bounce frames) feeds the oracle metrics.

Pixel coordinates: pixel (row i, column j) has its centre at (x, y) = (j, i); the frame spans
[-0.5, W - 0.5] x [-0.5, H - 0.5] and y grows downwards (row 0 is the top of the screen).
"""
from __future__ import annotations

import dataclasses
import math
import operator

import numpy as np

# Pitch map: log-linear in height, from the top row's centre (y = 0) to the bottom row's (H - 1).
PITCH_TOP_HZ = 2000.0
PITCH_BOTTOM_HZ = 200.0
TONE_AMPLITUDE = 0.3
CLICK_AMPLITUDE = 0.5
CLICK_SECONDS = 0.005
CLICK_DECAY_SECONDS = 0.0012  # e-folding time: the burst has died to ~1.5% after 5 ms
RADIUS_FRACTION = 0.15  # of min(H, W)
# Colours are redrawn until the channel-summed |disc - background| reaches this, so the disc is
# always clearly visible (uniform draws pass about half of the time).
MIN_COLOR_DISTANCE = 240
# Speed in lengths of the (shorter) free span of the disc centre per second: the sum of the
# per-axis bounce rates is then ~0.6-1.4 per second, i.e. 1-3 bounces in a typical 2 s clip.
SPEED_RANGE = (0.5, 1.0)

_LOG_PITCH_RANGE = math.log(PITCH_TOP_HZ / PITCH_BOTTOM_HZ)


def luminance(rgb) -> float:
  """Rec. 601 luma of an RGB colour (0..255)."""
  return float(np.dot(np.asarray(rgb, np.float64), (0.299, 0.587, 0.114)))


def pitch_of_height(y_pixels, height: int) -> np.ndarray:
  """Tone frequency (Hz) of a disc centre at row coordinate `y_pixels` (any shape, float64).

  Log-linear: y = 0 (top row) -> 2000 Hz, y = height - 1 (bottom row) -> 200 Hz. The disc centre
  stays ~0.15 H from the edges, so clips use roughly 280-1430 Hz of the map.
  """
  y = np.asarray(y_pixels, np.float64)
  height_above_bottom = (height - 1 - y) / (height - 1)  # 0 at the bottom row, 1 at the top
  return PITCH_BOTTOM_HZ * np.exp(height_above_bottom * _LOG_PITCH_RANGE)


def height_of_pitch(hz, height: int) -> np.ndarray:
  """Row coordinate (pixels, float64, shape of `hz`) whose tone is `hz`: `pitch_of_height`^-1."""
  height_above_bottom = np.log(np.asarray(hz, np.float64) / PITCH_BOTTOM_HZ) / _LOG_PITCH_RANGE
  return (height - 1) - height_above_bottom * (height - 1)


def disc_position(t_seconds, start_xy, velocity_xy, low_xy, high_xy) -> np.ndarray:
  """Disc centre (x, y) in pixels at times `t_seconds` [...]: float64 [..., 2].

  The free motion `start + velocity * t` is folded into [low, high] per axis (elastic reflection
  at the walls) with a period-2*span triangle wave, so any time is exact without stepping.
  """
  t = np.asarray(t_seconds, np.float64)[..., None]
  low = np.asarray(low_xy, np.float64)
  span = np.asarray(high_xy, np.float64) - low
  unfolded = np.asarray(start_xy, np.float64) - low + np.asarray(velocity_xy, np.float64) * t
  phase = np.mod(unfolded, 2.0 * span)
  return low + span - np.abs(phase - span)


def bounce_times(start_xy, velocity_xy, low_xy, high_xy, duration: float) -> np.ndarray:
  """Sorted float64 [num_bounces]: times in (0, duration) at which the disc hits a wall.

  In units of the span, the unfolded coordinate `(start - low + v t) / span` crosses an integer
  exactly when the folded one touches low or high.
  """
  times = []
  for axis in range(2):
    velocity = float(velocity_xy[axis])
    if velocity == 0.0:
      continue
    span = float(high_xy[axis]) - float(low_xy[axis])
    offset = float(start_xy[axis]) - float(low_xy[axis])
    first, last = sorted((offset / span, (offset + velocity * duration) / span))
    crossings = np.arange(math.floor(first) + 1, math.floor(last) + 1, dtype=np.float64)
    times.append((crossings * span - offset) / velocity)
  if not times:
    return np.zeros((0,), np.float64)
  all_times = np.sort(np.concatenate(times))
  return all_times[(all_times > 0.0) & (all_times < duration)]


@dataclasses.dataclass(frozen=True)
class ClipParams:
  """The random draws that define one clip (everything else follows analytically)."""

  radius: float  # pixels
  low_xy: np.ndarray  # float64 [2]: smallest disc centre (x, y) that keeps the disc in frame
  high_xy: np.ndarray  # float64 [2]: largest one
  start_xy: np.ndarray  # float64 [2]: disc centre at t = 0
  velocity_xy: np.ndarray  # float64 [2]: pixels per second
  disc_color: np.ndarray  # uint8 [3]
  background_color: np.ndarray  # uint8 [3]
  tone_phase: float  # radians at t = 0
  click_template: np.ndarray  # float32 [click_len]: decaying noise burst, peak |.| = 1


@dataclasses.dataclass(frozen=True)
class SyntheticWorld:
  """A seeded, random-access collection of `num_clips` bouncing-disc clips (a grain source)."""

  num_frames: int
  fps: float
  height: int
  width: int
  sample_rate: int
  num_clips: int
  seed: int = 0
  # The disc is the brighter of the two drawn colours (they are swapped when it is not). Without
  # this the disc and the background have the same colour distribution, so the *mean* frame given
  # the sound shows no disc at all: nothing like real footage, where what makes a sound looks,
  # on average, unlike the scene behind it. Colours stay random; only their order is fixed.
  disc_brighter: bool = False

  def __post_init__(self):
    if min(self.num_frames, self.height, self.width, self.sample_rate) < 1 or self.fps <= 0:
      raise ValueError(f"SyntheticWorld needs positive sizes and rates: {self}")
    if self.num_clips < 0 or self.seed < 0:
      raise ValueError(f"num_clips and seed must be non-negative: {self}")

  @classmethod
  def from_layout(cls, layout, num_clips: int, seed: int = 0,
                  disc_brighter: bool = False) -> SyntheticWorld:
    """The world with the pixel geometry of an `avdit.layout.ClipLayout`."""
    return cls(num_frames=layout.num_frames, fps=float(layout.fps), height=layout.height,
               width=layout.width, sample_rate=layout.sample_rate, num_clips=num_clips,
               seed=seed, disc_brighter=disc_brighter)

  @property
  def duration(self) -> float:
    """Seconds covered by the frames (frame k covers [k / fps, (k + 1) / fps))."""
    return self.num_frames / self.fps

  @property
  def audio_samples(self) -> int:
    """Waveform length L covering the frames (same rule as `ClipLayout.audio_samples`)."""
    return int(round(self.num_frames / self.fps * self.sample_rate))

  @property
  def radius(self) -> float:
    return RADIUS_FRACTION * min(self.height, self.width)

  def __len__(self) -> int:
    return self.num_clips

  def clip_params(self, index: int) -> ClipParams:
    """The random draws of clip `index`, from `np.random.default_rng([seed, index])`."""
    index = self._check_index(index)
    rng = np.random.default_rng([self.seed, index])
    radius = self.radius
    low_xy = np.array([radius - 0.5, radius - 0.5])
    high_xy = np.array([self.width - 0.5 - radius, self.height - 0.5 - radius])
    span_xy = high_xy - low_xy
    while True:
      disc_color, background_color = rng.integers(0, 256, size=(2, 3), dtype=np.int64)
      if np.abs(disc_color - background_color).sum() >= MIN_COLOR_DISTANCE:
        break
    if self.disc_brighter and luminance(disc_color) < luminance(background_color):
      disc_color, background_color = background_color, disc_color
    start_xy = low_xy + rng.uniform(0.0, 1.0, size=2) * span_xy
    speed = rng.uniform(*SPEED_RANGE) * span_xy.min()
    angle = rng.uniform(0.0, 2.0 * np.pi)
    velocity_xy = speed * np.array([np.cos(angle), np.sin(angle)])
    tone_phase = rng.uniform(0.0, 2.0 * np.pi)
    click_len = max(1, int(round(CLICK_SECONDS * self.sample_rate)))
    # One fixed-size noise draw per clip (reused by all its clicks) keeps the number of draws
    # independent of the bounce count.
    noise = rng.uniform(-1.0, 1.0, size=click_len)
    burst = noise * np.exp(-np.arange(click_len) / (CLICK_DECAY_SECONDS * self.sample_rate))
    click_template = (burst / np.abs(burst).max()).astype(np.float32)
    return ClipParams(radius=radius, low_xy=low_xy, high_xy=high_xy, start_xy=start_xy,
                      velocity_xy=velocity_xy, disc_color=disc_color.astype(np.uint8),
                      background_color=background_color.astype(np.uint8),
                      tone_phase=float(tone_phase), click_template=click_template)

  def position(self, params: ClipParams, t_seconds) -> np.ndarray:
    """Disc centre of clip `params` at `t_seconds` [...]: float64 [..., 2] (x, y) in pixels."""
    return disc_position(t_seconds, params.start_xy, params.velocity_xy, params.low_xy,
                         params.high_xy)

  def bounces(self, params: ClipParams) -> np.ndarray:
    """float64 [num_bounces]: the wall-bounce times of clip `params` within the clip."""
    return bounce_times(params.start_xy, params.velocity_xy, params.low_xy, params.high_xy,
                        self.duration)

  def render_video(self, params: ClipParams) -> np.ndarray:
    """uint8 [F, H, W, 3]: frame k shows the disc at t = k / fps, anti-aliased."""
    disc_xy = self.position(params, np.arange(self.num_frames) / self.fps)
    xs = np.arange(self.width, dtype=np.float64)
    ys = np.arange(self.height, dtype=np.float64)
    dist_fhw = np.sqrt((xs[None, None, :] - disc_xy[:, 0, None, None]) ** 2
                       + (ys[None, :, None] - disc_xy[:, 1, None, None]) ** 2)
    # Approximate pixel coverage of the disc: a 1-pixel linear ramp across the edge, so the disc
    # moves by sub-pixel amounts instead of snapping to the grid.
    coverage_fhw = np.clip(params.radius + 0.5 - dist_fhw, 0.0, 1.0)
    background = params.background_color.astype(np.float64)
    disc = params.disc_color.astype(np.float64)
    video_fhwc = background + coverage_fhw[..., None] * (disc - background)
    return np.round(video_fhwc).astype(np.uint8)

  def render_audio(self, params: ClipParams, bounce_seconds: np.ndarray) -> np.ndarray:
    """float32 [L] in [-1, 1]: the height-following tone plus a click at every bounce."""
    num_samples = self.audio_samples
    t_l = np.arange(num_samples) / self.sample_rate
    y_l = self.position(params, t_l)[:, 1]
    hz_l = pitch_of_height(y_l, self.height)
    # Phase-continuous tone: integrate the instantaneous frequency at audio rate (left sum, so
    # sample 0 has the initial phase exactly).
    phase_l = params.tone_phase + 2.0 * np.pi * np.concatenate(
        [[0.0], np.cumsum(hz_l[:-1])]) / self.sample_rate
    audio_l = TONE_AMPLITUDE * np.sin(phase_l)
    template = params.click_template.astype(np.float64)
    for t_bounce in bounce_seconds:
      start = int(math.ceil(t_bounce * self.sample_rate))
      if start >= num_samples:
        continue
      stop = min(num_samples, start + template.shape[0])
      audio_l[start:stop] += CLICK_AMPLITUDE * template[:stop - start]
    return np.clip(audio_l, -1.0, 1.0).astype(np.float32)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    """Clip `index` as fixed-shape numpy arrays.

    Returns:
      video: uint8 [F, H, W, 3]; audio: float32 [L] in [-1, 1];
      disc_xy: float32 [F, 2], disc centre (x, y) in pixels at t = k / fps;
      disc_color, background_color: uint8 [3];
      pitch_hz: float32 [F], the tone frequency at t = k / fps;
      bounce_frames: bool [F], True if a bounce happens in [k / fps, (k + 1) / fps);
      index: int64 [].
    """
    params = self.clip_params(index)
    frame_seconds = np.arange(self.num_frames) / self.fps
    disc_xy = self.position(params, frame_seconds)
    bounce_seconds = self.bounces(params)
    bounce_frames = np.zeros((self.num_frames,), bool)
    bounce_frame_index = np.floor(bounce_seconds * self.fps).astype(np.int64)
    bounce_frames[bounce_frame_index[bounce_frame_index < self.num_frames]] = True
    return {
        "video": self.render_video(params),
        "audio": self.render_audio(params, bounce_seconds),
        "disc_xy": disc_xy.astype(np.float32),
        "disc_color": params.disc_color,
        "background_color": params.background_color,
        "pitch_hz": pitch_of_height(disc_xy[:, 1], self.height).astype(np.float32),
        "bounce_frames": bounce_frames,
        "index": np.array(operator.index(index), np.int64),
    }

  def _check_index(self, index) -> int:
    index = operator.index(index)
    if not 0 <= index < self.num_clips:
      raise IndexError(f"clip index {index} is outside [0, {self.num_clips}) of {self}")
    return index
