"""Decoding real audiovisual files into fixed-rate, time-aligned clips.

    decode_file(path, fps, height, width, sample_rate) -> DecodedAV
      video: first video stream -> frames picked by timestamp on the grid t0 + k / fps
             -> scale (cover) + centre crop -> RGB uint8 frames_thwc [T, H, W, 3]
      audio: first audio stream -> ffmpeg resampler (rate, mono = channel average,
             timestamp-driven gap filling) -> float32 audio_l [L], audio_l[0] at t0
    cut_clips(decoded, num_frames, stride_frames) -> [Clip]   (video [F, H, W, 3], audio [L_clip])
    clip_dict(clip) -> the dict the trainer consumes ({"video", "audio"} + metadata)

Time. Everything is placed on the source's presentation timeline (pts * time_base, seconds, edit
lists already applied by the demuxer), never by frame or sample index, because streams may start
at different times and timestamps are what players synchronise on.

* Video frame rate conversion: output frame k has the time t_k = t0 + k / fps and shows the latest
  decoded source frame whose pts <= t_k (a sample-and-hold of what a player would be displaying at
  t_k; `TIME_EPSILON_SECONDS` absorbs time-base rounding). Frames past the last source frame's end
  (pts + duration) are not produced. Source frames whose pts does not increase are dropped.
* The origin t0 is the first source video frame at or after the audio start (less
  `AUDIO_LEAD_TOLERANCE_SECONDS`): video that precedes the audio is dropped rather than paired with
  invented silence, and t0 stays on a real source frame. Audio before t0 is dropped; the at most
  `AUDIO_LEAD_TOLERANCE_SECONDS` of audio missing right at t0 are zero-padded. So `audio_l[0]` is
  the sample at t0 and `audio_l[i]` the sample at t0 + i / sample_rate.
* Audio timestamps are honoured through libswresample's compensation (`aresample` `async`): small
  timestamp gaps or overlaps are absorbed by a slight stretch/squeeze, and gaps above
  `min_hard_comp` (0.1 s) are filled with silence, so the waveform stays locked to its pts instead
  of drifting (the shared AIST++ sample has 29 gaps of 128 samples: 0.23 s of drift by its end if
  the decoded frames were simply concatenated).
* A stream may end before the other: `DecodedAV` keeps both as decoded, and `cut_clips` only makes
  clips where both exist (an audio track that stops early yields no clips past its end). Audio
  that stops at most `AUDIO_LEAD_TOLERANCE_SECONDS` before the video's end is zero-padded to it.

Pixels. The frame is scaled so that it covers height x width with its aspect ratio preserved
(the shorter side, relative to the target's aspect, is scaled to the target; the sample aspect
ratio of anamorphic video is honoured), then centre-cropped, by swscale (area averaging when
shrinking, bicubic when enlarging) to RGB. Only source frames that some output frame shows are
converted. Rotation metadata (phone videos) is not applied. The whole file is held in memory at
the output size (51 s at 10 fps and 128 x 128: 25 MB of frames).

Errors. Any file that cannot give correct clips raises `UnusableFile(reason, detail)` with
`reason` one of `REASONS` (see there); bad arguments raise ValueError. Damaged data inside a file
(a decoder error, or a frame the decoder flags corrupt, with more data after it) ends both
streams DAMAGE_MARGIN_SECONDS before it: the clips before the damage are kept
(`DecodedAV.damaged_at_seconds`).
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from fractions import Fraction
from typing import Any

import av
import numpy as np
from absl import logging

PathLike = str | os.PathLike

REASONS = {
    "unreadable": "the container cannot be opened or parsed (missing file, garbage, no index)",
    "no_video_stream": "the container has no video stream",
    "no_audio_stream": "the container has no audio stream",
    "bad_geometry": "the video has a zero or absurd frame size",
    "decode_error": "FFmpeg failed while demuxing or decoding, or a stream gave no frames",
    "truncated": "the streams stop well before the duration the container declares",
    "too_short": "audio and video overlap for less than one frame, or less than one clip",
}

# Shorter than any frame interval; absorbs pts * time_base rounding when comparing times.
TIME_EPSILON_SECONDS = 1e-4
# Audio may be missing for this long at t0 (or before the video's end) and is zero-padded there:
# timestamp rounding and codec priming jitter; inaudible and a quarter of one 20 ms audio latent.
AUDIO_LEAD_TOLERANCE_SECONDS = 0.005
# A stream that stops earlier than the container declares by more than this is a cut-off file.
TRUNCATION_TOLERANCE_SECONDS = 0.5
TRUNCATION_TOLERANCE_FRACTION = 0.02
# Damaged data inside a file: what precedes it by this much is kept (B-frames shown before a
# damaged packet may be predicted from it; x264 reorders a few frames, well under this).
DAMAGE_MARGIN_SECONDS = 0.5
# libswresample options: timestamp compensation up to 1000 samples/s of stretch, and a channel
# matrix normalised to sum 1 (plain average for stereo; the default keeps 0.707 * (L + R)).
_RESAMPLER_OPTIONS = {"async": "1000", "rematrix_maxval": "1.0"}
_MAX_SIDE = 16384  # larger frame sizes are treated as corrupt headers


class UnusableFile(Exception):
  """A file that gives no correct clip; `reason` is a key of `REASONS`, `detail` says more."""

  def __init__(self, reason: str, detail: str, path: PathLike | None = None):
    if reason not in REASONS:
      raise ValueError(f"unknown UnusableFile reason {reason!r}; known: {sorted(REASONS)}")
    self.reason = reason
    self.detail = detail
    self.path = None if path is None else os.fspath(path)
    where = f" ({self.path})" if self.path else ""
    super().__init__(f"{reason}: {detail}{where}")


@dataclasses.dataclass(frozen=True)
class DecodedAV:
  """One file's streams on a common clock: frames_thwc[k] and audio_l[round(k/fps*sr)] coincide.

  Attributes:
    source: the file's path.
    frames_thwc: uint8 [T, H, W, 3] RGB, frame k at source time t0 + k / fps.
    audio_l: float32 [L] mono in [-1, 1], sample i at source time t0 + i / sample_rate.
    fps: output frame rate.
    sample_rate: output audio rate (Hz).
    t0_seconds: source presentation time of frames_thwc[0] and audio_l[0].
    source_frame_seconds: float64 [T], the pts (seconds) of the source frame each output frame
      shows (for reports and tests of the frame-rate conversion).
    source_duration_seconds: the container's declared duration (or the longest stream's end).
    video_end_seconds, audio_end_seconds: where each decoded stream ends on the source clock.
    damaged_at_seconds: where damaged data inside the file stopped a stream (None: no damage);
      both streams then end DAMAGE_MARGIN_SECONDS before it.
  """

  source: str
  frames_thwc: np.ndarray
  audio_l: np.ndarray
  fps: float
  sample_rate: int
  t0_seconds: float
  source_frame_seconds: np.ndarray
  source_duration_seconds: float
  video_end_seconds: float
  audio_end_seconds: float
  damaged_at_seconds: float | None = None

  @property
  def num_frames(self) -> int:
    return int(self.frames_thwc.shape[0])

  @property
  def num_samples(self) -> int:
    return int(self.audio_l.shape[0])

  @property
  def common_seconds(self) -> float:
    """Length of the span (from t0) where both video frames and audio samples exist."""
    return min(self.num_frames / self.fps, self.num_samples / self.sample_rate)


@dataclasses.dataclass(frozen=True)
class Clip:
  """A fixed-size training clip cut from a `DecodedAV`.

  Attributes:
    video: uint8 [F, H, W, 3].
    audio: float32 [L], L = round(F / fps * sample_rate); audio[0] is at video[0]'s time.
    start_seconds: source presentation time of the first frame (and audio sample).
    source: the file's path.
    index: the clip's number within the file (0, 1, ...).
    first_frame: index of the first frame in the `DecodedAV`'s frames.
  """

  video: np.ndarray
  audio: np.ndarray
  start_seconds: float
  source: str
  index: int
  first_frame: int


# --------------------------------------------------------------------------------------------
# Opening and probing
# --------------------------------------------------------------------------------------------
def _open(path: PathLike) -> av.container.InputContainer:
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise UnusableFile("unreadable", "no such file", path)
  try:
    return av.open(path, mode="r")
  except (av.FFmpegError, UnicodeDecodeError, ValueError) as err:
    raise UnusableFile("unreadable", f"{type(err).__name__}: {err}", path) from err


def _seconds(value: int | None, time_base: Fraction | None) -> float | None:
  if value is None or time_base is None:
    return None
  return float(value * time_base)


def _stream_start(stream) -> float | None:
  return _seconds(stream.start_time, stream.time_base)


def _stream_end(stream) -> float | None:
  """Declared end (start + duration, seconds) of a stream, if the container says."""
  duration = _seconds(stream.duration, stream.time_base)
  if duration is None or duration <= 0:
    return None
  return (_stream_start(stream) or 0.0) + duration


def _container_end(container) -> float | None:
  if container.duration is None or container.duration <= 0:
    return None
  start = container.start_time or 0
  return (start + container.duration) / av.time_base


def _rate(value) -> float | None:
  return float(value) if value else None


def probe(path: PathLike) -> dict[str, Any]:
  """Container and stream facts, for reports (no decoding beyond the header).

  Returns:
    {"path", "format", "size_bytes", "bit_rate", "start_seconds", "duration_seconds",
     "streams": [{"index", "type", "codec", "time_base", "start_seconds", "duration_seconds",
                  "end_seconds", "frames", and for video "fps", "width", "height", "pix_fmt",
                  "sample_aspect_ratio"; for audio "sample_rate", "channels", "layout"}]}
    Times are seconds on the presentation clock; unknown values are None.
  Raises:
    UnusableFile("unreadable") if the container cannot be opened.
  """
  with _open(path) as container:
    streams = []
    for stream in container.streams:
      ctx = stream.codec_context
      info = {
          "index": stream.index,
          "type": stream.type,
          "codec": ctx.name if ctx is not None else None,
          "time_base": str(stream.time_base) if stream.time_base else None,
          "start_seconds": _stream_start(stream),
          "duration_seconds": _seconds(stream.duration, stream.time_base),
          "end_seconds": _stream_end(stream),
          "frames": stream.frames or None,
      }
      if stream.type == "video":
        sar = stream.sample_aspect_ratio
        info.update(fps=_rate(stream.average_rate) or _rate(stream.base_rate),
                    width=ctx.width, height=ctx.height,
                    pix_fmt=ctx.pix_fmt, sample_aspect_ratio=str(sar) if sar else None)
      elif stream.type == "audio":
        info.update(sample_rate=ctx.sample_rate, channels=ctx.channels,
                    layout=ctx.layout.name if ctx.layout else None)
      streams.append(info)
    return {
        "path": os.fspath(path),
        "format": container.format.name,
        "size_bytes": os.path.getsize(path),
        "bit_rate": container.bit_rate or None,
        "start_seconds": (container.start_time / av.time_base
                          if container.start_time is not None else None),
        "duration_seconds": (container.duration / av.time_base
                             if container.duration is not None else None),
        "streams": streams,
    }


# --------------------------------------------------------------------------------------------
# Audio
# --------------------------------------------------------------------------------------------
def _decode_frames(container, stream, path: str, what: str,
                   damage: list[float]) -> Iterator[Any]:
  """Decoded frames of `stream`; FFmpeg errors become UnusableFile.

  A decode error on the last packet of the file (a download cut off mid-packet) only ends the
  stream: the frames before it are sound, and whether too much is missing is then decided by the
  truncation check against the declared durations. An error with more data after it is
  corruption inside the file: it ends the stream too, and its source time (the failing packet's,
  or the flagged frame's) is appended to `damage` (`decode_file` keeps what precedes it). A
  frame the decoder flags as corrupt counts as such an error: FFmpeg's H.264 decoder conceals
  much damaged data instead of failing on it, returning the frame patched from its neighbours,
  only flagged, and the frames predicted from it are wrong too, unflagged; without the check
  such frames went into the clips silently.
  """
  packets = container.demux(stream)

  def damaged(seconds) -> None:
    if any(later.size for later in packets):  # else the very last packet: a cut-off file,
      damage.append(seconds if seconds is not None else 0.0)  # judged by the truncation check

  try:
    for packet in packets:
      try:
        frames = packet.decode()
      except av.FFmpegError as err:
        logging.info("%s: %s decoding stopped at damaged data: %s: %s", path, what,
                     type(err).__name__, err)
        damaged(_seconds(packet.pts, packet.time_base or stream.time_base))
        return
      for frame in frames:
        if frame.is_corrupt:
          damaged(_frame_seconds(frame, stream))
          return
        yield frame
  except av.FFmpegError as err:  # demuxer errors, and decoder errors while scanning ahead
    raise UnusableFile("decode_error", f"{what}: {type(err).__name__}: {err}", path) from err


def _decode_audio(path: str, sample_rate: int, damage: list[float]) -> tuple[np.ndarray, float]:
  """(float32 [L] mono at `sample_rate`, source time of sample 0) of the first audio stream
  (up to damage inside the file, whose time goes to `damage`: `_decode_frames`)."""
  resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate,
                                options=_RESAMPLER_OPTIONS)
  chunks: list[np.ndarray] = []
  start_seconds = None
  with _open(path) as container:
    if not container.streams.audio:
      raise UnusableFile("no_audio_stream", "the container has no audio stream", path)
    stream = container.streams.audio[0]
    try:
      for frame in _decode_frames(container, stream, path, "audio", damage):
        for out in resampler.resample(frame):
          if start_seconds is None and out.pts is not None:
            start_seconds = _seconds(out.pts, out.time_base)
          chunks.append(out.to_ndarray().reshape(-1))
      for out in resampler.resample(None):
        if start_seconds is None and out.pts is not None:
          start_seconds = _seconds(out.pts, out.time_base)
        chunks.append(out.to_ndarray().reshape(-1))
    except (av.FFmpegError, ValueError) as err:  # resampler; ValueError: format change
      raise UnusableFile("decode_error", f"audio: {type(err).__name__}: {err}", path) from err
    if start_seconds is None:
      start_seconds = _stream_start(stream) or 0.0
  audio_l = np.concatenate(chunks) if chunks else np.zeros((0,), np.float32)
  if not audio_l.size:
    raise UnusableFile("decode_error", "the audio stream decoded to no samples", path)
  # Decoders may overshoot (AAC, Opus); NaNs from a broken stream would become full-scale noise.
  audio_l = np.clip(np.nan_to_num(audio_l, nan=0.0, posinf=0.0, neginf=0.0), -1.0, 1.0)
  return audio_l.astype(np.float32, copy=False), start_seconds


# --------------------------------------------------------------------------------------------
# Video
# --------------------------------------------------------------------------------------------
def _cover_size(src_width: int, src_height: int, sar: Fraction | None, width: int,
                height: int) -> tuple[int, int]:
  """(scaled width, scaled height) covering width x height with the display aspect preserved."""
  display_width = src_width * (float(sar) if sar and sar > 0 else 1.0)
  scale = max(width / display_width, height / src_height)
  # max() guards against rounding a hair below the target on the tight side.
  return max(width, int(round(display_width * scale))), max(height, int(round(src_height * scale)))


class _FrameConverter:
  """Source VideoFrame -> uint8 [H, W, 3] RGB, scaled to cover and centre-cropped."""

  def __init__(self, path: str, width: int, height: int, sar: Fraction | None):
    self.path, self.width, self.height, self.sar = path, width, height, sar
    self._size_cache: dict[tuple[int, int], tuple[int, int, Any]] = {}

  def __call__(self, frame: av.VideoFrame) -> np.ndarray:
    key = (frame.width, frame.height)
    if key not in self._size_cache:
      if not (0 < frame.width <= _MAX_SIDE and 0 < frame.height <= _MAX_SIDE):
        raise UnusableFile("bad_geometry", f"decoded frame of size {frame.width}x{frame.height}",
                           self.path)
      scaled_w, scaled_h = _cover_size(frame.width, frame.height, self.sar, self.width,
                                       self.height)
      shrinking = scaled_w * scaled_h <= frame.width * frame.height
      interpolation = "AREA" if shrinking else "BICUBIC"
      self._size_cache[key] = (scaled_w, scaled_h, interpolation)
    scaled_w, scaled_h, interpolation = self._size_cache[key]
    rgb = frame.reformat(width=scaled_w, height=scaled_h, format="rgb24",
                         interpolation=interpolation).to_ndarray()
    top, left = (scaled_h - self.height) // 2, (scaled_w - self.width) // 2
    return np.ascontiguousarray(rgb[top:top + self.height, left:left + self.width])


def _frame_seconds(frame: av.VideoFrame, stream) -> float | None:
  time_base = frame.time_base or stream.time_base
  return _seconds(frame.pts, time_base)


def _frame_duration(frame: av.VideoFrame, stream, previous_interval: float | None,
                    fps: float) -> float:
  """Display duration of the last frame: its own, else the last interval, else 1/stream rate."""
  time_base = frame.time_base or stream.time_base
  duration = _seconds(getattr(frame, "duration", None), time_base)
  if duration and duration > 0:
    return duration
  if previous_interval:
    return previous_interval
  rate = _rate(stream.average_rate) or _rate(stream.base_rate) or fps
  return 1.0 / rate


def _decode_video(path: str, *, fps: float, height: int, width: int, audio_start: float,
                  damage: list[float]):
  """Frames on the grid t0 + k / fps (see the module docstring), up to damage inside the file,
  whose time goes to `damage` (`_decode_frames`).

  Returns:
    (uint8 [T, H, W, 3], float64 [T] source pts of each shown frame, t0, video end seconds).
  """
  frames: list[np.ndarray] = []
  shown_seconds: list[float] = []
  earliest_t0 = audio_start - AUDIO_LEAD_TOLERANCE_SECONDS
  with _open(path) as container:
    stream = container.streams.video[0]
    ctx = stream.codec_context
    if not (0 < ctx.width <= _MAX_SIDE and 0 < ctx.height <= _MAX_SIDE):
      raise UnusableFile("bad_geometry", f"video stream declares {ctx.width}x{ctx.height}", path)
    stream.thread_type = "AUTO"  # frame + slice threads; decoding is most of the cost
    convert = _FrameConverter(path, width, height, stream.sample_aspect_ratio)

    t0 = None
    decoded_any = False
    pending = None  # (frame, seconds): the frame on screen until the next one's pts
    pending_rgb = None
    last_interval = None

    def hold(frame, seconds, until):
      """Outputs `frame` for every grid time in [seconds, until)."""
      nonlocal pending_rgb
      while True:
        k = len(frames)
        t_k = t0 + k / fps
        if t_k + TIME_EPSILON_SECONDS >= until:
          return
        if pending_rgb is None:  # convert lazily: frames no grid time falls on are skipped
          pending_rgb = convert(frame)
        frames.append(pending_rgb)
        shown_seconds.append(seconds)

    try:
      for frame in _decode_frames(container, stream, path, "video", damage):
        decoded_any = True
        seconds = _frame_seconds(frame, stream)
        if seconds is None:  # no pts at all: continue from the last frame at the stream rate
          if pending is None:
            seconds = _stream_start(stream) or 0.0
          else:
            seconds = pending[1] + (last_interval or 1.0 / (_rate(stream.average_rate) or fps))
        if pending is not None and seconds <= pending[1] + TIME_EPSILON_SECONDS:
          continue  # non-increasing pts: a duplicate or broken frame
        if t0 is None:
          if seconds < earliest_t0:
            continue  # shown before the audio starts
          t0 = seconds
        if pending is not None:
          last_interval = seconds - pending[1]
          hold(*pending, until=seconds)
        pending, pending_rgb = (frame, seconds), None
    except av.FFmpegError as err:  # the scaler
      raise UnusableFile("decode_error", f"video: {type(err).__name__}: {err}", path) from err
    if not decoded_any:
      raise UnusableFile("decode_error", "the video stream decoded to no frames", path)
    if pending is None:
      raise UnusableFile("too_short", "no video frame at or after the audio start "
                         f"({audio_start:.3f} s)", path)
    end = pending[1] + _frame_duration(pending[0], stream, last_interval, fps)
    hold(*pending, until=end)
  if not frames:
    raise UnusableFile("too_short", "the video yields no frame on the output grid", path)
  return np.stack(frames), np.asarray(shown_seconds, np.float64), t0, end


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------
def _check_targets(fps: float, height: int, width: int, sample_rate: int) -> None:
  if not fps > 0:
    raise ValueError(f"fps must be positive, got {fps}")
  if height < 1 or width < 1:
    raise ValueError(f"height and width must be positive, got {height}x{width}")
  if sample_rate < 1:
    raise ValueError(f"sample_rate must be positive, got {sample_rate}")


def decode_file(path: PathLike, *, fps: float, height: int, width: int,
                sample_rate: int) -> DecodedAV:
  """Decodes the first video and audio streams of `path` onto one clock (module docstring).

  Args:
    path: an mp4/mov, mkv, webm or any container FFmpeg reads.
    fps: output frame rate (frames are picked by timestamp, never interpolated).
    height, width: output frame size (scale to cover, centre crop).
    sample_rate: output audio rate in Hz; the audio is mixed to mono (channel average).

  Returns:
    A `DecodedAV` whose frames_thwc[0] and audio_l[0] are both at `t0_seconds`.

  Raises:
    UnusableFile: see `REASONS`.
    ValueError: non-positive targets.
  """
  _check_targets(fps, height, width, sample_rate)
  path = os.fspath(path)
  fps = float(fps)
  with _open(path) as container:
    if not container.streams.video:
      raise UnusableFile("no_video_stream", "the container has no video stream", path)
    if not container.streams.audio:
      raise UnusableFile("no_audio_stream", "the container has no audio stream", path)
    declared_video_end = _stream_end(container.streams.video[0])
    declared_audio_end = _stream_end(container.streams.audio[0])
    declared_end = _container_end(container)

  # Audio first (cheap): its start decides where the video may begin.
  damage: list[float] = []  # source times where a stream stopped at damage inside the file
  audio_l, audio_start = _decode_audio(path, sample_rate, damage)
  audio_end = audio_start + audio_l.shape[0] / sample_rate
  frames_thwc, shown_seconds, t0, video_end = _decode_video(
      path, fps=fps, height=height, width=width, audio_start=audio_start, damage=damage)
  damaged_at = min(damage) if damage else None
  if damaged_at is not None:
    # Both streams end DAMAGE_MARGIN_SECONDS before the damage: frames shown before a damaged
    # packet may be predicted from it (B-frames), and an audio frame overlaps its neighbours.
    keep_until = damaged_at - DAMAGE_MARGIN_SECONDS
    num_frames = max(0, int(np.floor((keep_until - t0) * fps + TIME_EPSILON_SECONDS)))
    num_samples = max(0, int(np.floor((keep_until - audio_start) * sample_rate)))
    if not num_frames or not num_samples:
      raise UnusableFile("decode_error", f"damaged data at {damaged_at:.3f} s leaves nothing "
                         "usable before it", path)
    frames_thwc, shown_seconds = frames_thwc[:num_frames], shown_seconds[:num_frames]
    audio_l = audio_l[:num_samples]
    video_end = min(video_end, t0 + num_frames / fps)
    audio_end = min(audio_end, audio_start + num_samples / sample_rate)

  # A cut-off file decodes "fine" up to the cut: compare with what the container declares.
  for name, decoded_end, declared in (("video", video_end, declared_video_end),
                                      ("audio", audio_end, declared_audio_end),
                                      ("longest stream", max(video_end, audio_end), declared_end)):
    if declared is None or damaged_at is not None:  # damaged: cut on purpose, above
      continue
    tolerance = max(TRUNCATION_TOLERANCE_SECONDS, TRUNCATION_TOLERANCE_FRACTION * declared)
    if decoded_end < declared - tolerance:
      raise UnusableFile("truncated", f"{name} decodes to {decoded_end:.3f} s but the container "
                         f"declares {declared:.3f} s", path)

  # Put audio_l[0] at t0: drop what precedes it, zero-pad the small lead the rule allows.
  offset = int(round((t0 - audio_start) * sample_rate))
  if offset >= 0:
    audio_l = audio_l[offset:]
  else:
    audio_l = np.concatenate([np.zeros((-offset,), np.float32), audio_l])
  # Zero-pad a tail that stops just before the video's end (resampler/codec rounding).
  missing = int(round((video_end - t0) * sample_rate)) - audio_l.shape[0]
  if 0 < missing <= AUDIO_LEAD_TOLERANCE_SECONDS * sample_rate:
    audio_l = np.concatenate([audio_l, np.zeros((missing,), np.float32)])

  decoded = DecodedAV(
      source=path, frames_thwc=frames_thwc, audio_l=np.ascontiguousarray(audio_l), fps=fps,
      sample_rate=int(sample_rate), t0_seconds=float(t0), source_frame_seconds=shown_seconds,
      source_duration_seconds=float(declared_end if declared_end is not None
                                    else max(video_end, audio_end)),
      video_end_seconds=float(video_end), audio_end_seconds=float(audio_end),
      damaged_at_seconds=None if damaged_at is None else float(damaged_at))
  if decoded.common_seconds < 1.0 / fps:
    raise UnusableFile("too_short", f"audio ({audio_start:.3f}-{audio_end:.3f} s) and video "
                       f"(from {t0:.3f} to {video_end:.3f} s) overlap for less than one frame",
                       path)
  return decoded


def _clip_frames(num_frames, temporal_factor: int) -> int:
  """num_frames (int or a ClipLayout), checked to be 1 + temporal_factor * k."""
  if hasattr(num_frames, "num_frames"):  # a ClipLayout (already validated by it)
    return int(num_frames.num_frames)
  if isinstance(num_frames, bool) or int(num_frames) != num_frames:
    raise ValueError(f"num_frames must be an integer, got {num_frames!r}")
  num_frames = int(num_frames)
  if num_frames < 1 or (num_frames - 1) % temporal_factor:
    raise ValueError(
        f"num_frames={num_frames} is not 1 + {temporal_factor}k: the video autoencoder encodes "
        f"the first frame alone and the rest in groups of {temporal_factor} (e.g. 17).")
  return num_frames


def clip_audio_samples(num_frames: int, fps: float, sample_rate: int) -> int:
  """Audio samples of a clip of `num_frames` frames (the `ClipLayout.audio_samples` rule)."""
  return int(round(num_frames / fps * sample_rate))


def iter_clips(decoded: DecodedAV, *, num_frames, stride_frames: int,
               temporal_factor: int = 4) -> Iterator[Clip]:
  """Yields the clips of `cut_clips` one at a time (views into `decoded`, no copies)."""
  if hasattr(num_frames, "num_frames"):
    layout = num_frames
    temporal_factor = getattr(layout, "temporal_factor", temporal_factor)
    mismatch = [(name, getattr(layout, name), getattr(decoded, name))
                for name in ("fps", "sample_rate") if getattr(layout, name) != getattr(decoded,
                                                                                       name)]
    mismatch += [(name, getattr(layout, name), decoded.frames_thwc.shape[axis])
                 for name, axis in (("height", 1), ("width", 2))
                 if getattr(layout, name) != decoded.frames_thwc.shape[axis]]
    if mismatch:
      raise ValueError("the layout does not match the decoded file: "
                       + ", ".join(f"{n} {a} vs {b}" for n, a, b in mismatch))
  num_frames = _clip_frames(num_frames, temporal_factor)
  if isinstance(stride_frames, bool) or int(stride_frames) != stride_frames or stride_frames < 1:
    raise ValueError(f"stride_frames must be a positive integer, got {stride_frames!r}")
  stride_frames = int(stride_frames)
  num_samples = clip_audio_samples(num_frames, decoded.fps, decoded.sample_rate)
  index = 0
  first = 0
  while first + num_frames <= decoded.num_frames:
    audio_start = int(round(first / decoded.fps * decoded.sample_rate))
    if audio_start + num_samples > decoded.num_samples:
      break  # the audio stops here: later clips would carry silence that is not in the file
    yield Clip(video=decoded.frames_thwc[first:first + num_frames],
               audio=decoded.audio_l[audio_start:audio_start + num_samples],
               start_seconds=decoded.t0_seconds + first / decoded.fps,
               source=decoded.source, index=index, first_frame=first)
    index += 1
    first += stride_frames


def cut_clips(decoded: DecodedAV, *, num_frames, stride_frames: int,
              temporal_factor: int = 4) -> list[Clip]:
  """Clips of `num_frames` frames every `stride_frames` frames, with their audio.

  Clip j starts at output frame s = j * stride_frames (time t0 + s / fps) and holds frames
  [s, s + F) and audio samples [round(s / fps * sr), ... + round(F / fps * sr)). Only clips whose
  frames and samples all exist are made.

  Args:
    decoded: from `decode_file`.
    num_frames: F, 1 + temporal_factor * k; or an `avdit.layout.ClipLayout` (its num_frames and
      temporal_factor; its fps, sample_rate, height and width must match `decoded`).
    stride_frames: frames between clip starts (= F for back-to-back clips).
    temporal_factor: the video autoencoder's temporal stride (4).

  Raises:
    ValueError: bad num_frames / stride / layout.
    UnusableFile("too_short"): not even one clip fits.
  """
  clips = list(iter_clips(decoded, num_frames=num_frames, stride_frames=stride_frames,
                          temporal_factor=temporal_factor))
  if not clips:
    frames = num_frames.num_frames if hasattr(num_frames, "num_frames") else num_frames
    raise UnusableFile("too_short", f"{decoded.num_frames} frames / {decoded.num_samples} samples "
                       f"from t0 hold no clip of {frames} frames", decoded.source)
  return clips


def clip_dict(clip: Clip) -> dict[str, np.ndarray]:
  """The trainer's clip format: video uint8 [F, H, W, 3], audio float32 [L], plus metadata."""
  return {
      "video": np.ascontiguousarray(clip.video, np.uint8),
      "audio": np.ascontiguousarray(clip.audio, np.float32),
      "index": np.array(clip.index, np.int64),
      "start_seconds": np.array(clip.start_seconds, np.float64),
      "source": np.array(clip.source),
  }
