"""Small audiovisual test files with a known content, written with PyAV.

Every fixture video shows a pattern that survives H.264/VP8 compression and scaling:

* the frame is cut into `NUM_BANDS` horizontal bands; band 0 is a horizontal grey ramp
  (value round(255 * x / (W - 1)) at column x), so a centre crop can be checked by the grey level
  found at the output's left and right edges;
* bands 1..NUM_BANDS-1 hold the bits of the source frame index (most significant first) as black
  (0) or white (255) stripes spanning the whole width, so a horizontal crop never touches them and
  `read_frame_index` recovers the index from any decoded frame.

The audio is a quiet tone plus a loud click (a 1 ms pulse) at the time of a chosen source frame,
so the A/V alignment of a decoder can be checked to within a few milliseconds: the click's sample
must sit at that frame's time. Stereo files carry the tone in opposite phase in the two channels
(it cancels in the channel average) and a second tone that is the same in both, so a mono downmix
that averages the channels is distinguishable from one that keeps a single channel. Files with more
channels (5.1) carry the second tone (and the click) in every channel.

Variable frame rate files (`write_av(frame_seconds=...)`) show frame i at frame_seconds[i].
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Sequence
from fractions import Fraction

import av
import numpy as np

NUM_BANDS = 8  # band 0: grey ramp; bands 1..7: 7 bits of the frame index (up to 127)
MAX_INDEX = 2 ** (NUM_BANDS - 1) - 1
TONE_HZ = 440.0  # cancels in the stereo average
COMMON_TONE_HZ = 1000.0  # same in both channels: survives the average
TONE_AMPLITUDE = 0.1
CLICK_AMPLITUDE = 0.8
CLICK_SECONDS = 0.001
VFR_TIME_BASE = Fraction(1, 1000)  # video time base of variable frame rate files: 1 ms
AUDIO_LAYOUTS = {1: "mono", 2: "stereo", 6: "5.1"}

# container suffix -> (video encoder, audio encoder, audio rate override or None)
CODECS = {
    ".mp4": ("libx264", "aac", None),
    ".mkv": ("libx264", "aac", None),
    ".webm": ("libvpx", "libopus", 48000),  # Opus only runs at 8/12/16/24/48 kHz
}


@dataclasses.dataclass(frozen=True)
class Fixture:
  """What was written: enough to compute what a correct decoder must return."""

  path: str
  fps: int
  width: int
  height: int
  num_frames: int  # source video frames, frame i at t = i / fps
  sample_rate: int  # of the encoded audio (0 if no audio stream)
  channels: int
  audio_start_seconds: float  # pts of the first audio sample
  audio_seconds: float  # duration of the audio signal written (before codec padding)
  click_frame: int | None  # the click sits at the time of that frame
  # Variable frame rate files: frame i at frame_seconds[i], the last shown until ~end_seconds
  # (None: frame i at i / fps, the video ends at num_frames / fps).
  frame_seconds: tuple[float, ...] | None = None
  end_seconds: float | None = None

  @property
  def click_seconds(self) -> float:
    if self.frame_seconds is not None:
      return self.frame_seconds[self.click_frame]
    return self.click_frame / self.fps

  @property
  def video_seconds(self) -> float:
    if self.end_seconds is not None:
      return self.end_seconds
    return self.num_frames / self.fps


def has_encoder(name: str) -> bool:
  try:
    av.codec.Codec(name, "w")
  except (ValueError, av.FFmpegError):
    return False
  return True


def pattern_frame(index: int, width: int, height: int) -> np.ndarray:
  """uint8 [H, W, 3]: the ramp band and the bits of `index` (see the module docstring)."""
  if not 0 <= index <= MAX_INDEX:
    raise ValueError(f"frame index {index} does not fit in {NUM_BANDS - 1} bits")
  band_h = (np.arange(height) * NUM_BANDS) // height
  ramp_w = np.round(255.0 * np.arange(width) / max(1, width - 1))
  frame_hw = np.zeros((height, width), np.float64)
  frame_hw[band_h == 0] = ramp_w
  for bit in range(NUM_BANDS - 1):
    if (index >> (NUM_BANDS - 2 - bit)) & 1:
      frame_hw[band_h == bit + 1] = 255.0
  return np.repeat(frame_hw.astype(np.uint8)[..., None], 3, axis=-1)


def read_frame_index(frame_hwc: np.ndarray) -> int:
  """The source frame index shown by a decoded (scaled, horizontally cropped) pattern frame."""
  height, width = frame_hwc.shape[:2]
  luma_hw = frame_hwc.astype(np.float64).mean(axis=-1)
  index = 0
  for bit in range(NUM_BANDS - 1):
    row = int((bit + 1.5) * height / NUM_BANDS)  # centre row of band bit + 1
    index = 2 * index + int(luma_hw[row, width // 4: width - width // 4].mean() > 127.5)
  return index


def ramp_value_at(source_x: np.ndarray, width: int) -> np.ndarray:
  """Grey level of the ramp band at (fractional) source column `source_x`."""
  return 255.0 * np.asarray(source_x, np.float64) / (width - 1)


def audio_signal(num_samples: int, sample_rate: int, channels: int,
                 click_sample: int | None) -> np.ndarray:
  """float32 [channels, num_samples]: tone(s) plus the click (see the module docstring)."""
  t_l = np.arange(num_samples) / sample_rate
  tone_l = TONE_AMPLITUDE * np.sin(2 * np.pi * TONE_HZ * t_l)
  common_l = TONE_AMPLITUDE * np.sin(2 * np.pi * COMMON_TONE_HZ * t_l)
  if channels == 1:
    signal_cl = (tone_l + common_l)[None]
  elif channels == 2:
    signal_cl = np.stack([tone_l + common_l, -tone_l + common_l])
  elif channels in AUDIO_LAYOUTS:
    signal_cl = np.repeat(common_l[None], channels, axis=0)
  else:
    raise ValueError(f"channels must be one of {sorted(AUDIO_LAYOUTS)}, got {channels}")
  if click_sample is not None and 0 <= click_sample < num_samples:
    width = max(1, int(round(CLICK_SECONDS * sample_rate)))
    signal_cl[:, click_sample:click_sample + width] += CLICK_AMPLITUDE
  return np.clip(signal_cl, -1.0, 1.0).astype(np.float32)


def write_av(path: str | os.PathLike, *, fps: int = 25, width: int = 64, height: int = 48,
             seconds: float = 2.0, sample_rate: int = 16000, channels: int = 1,
             audio_start_seconds: float = 0.0, audio_seconds: float | None = None,
             with_audio: bool = True, click_frame: int | None = None,
             faststart: bool = True, frame_seconds: Sequence[float] | None = None,
             audio_codec: str | None = None) -> Fixture:
  """Writes a pattern video (+ tone and click audio) and returns what it holds.

  Args:
    path: .mp4, .mkv or .webm; the codecs come from `CODECS`.
    fps: source frame rate; video frame i has pts i in time base 1 / fps.
    width, height: source frame size (even: yuv420p).
    seconds: video duration (round(seconds * fps) frames; with `frame_seconds`, when the last
      frame ends).
    sample_rate, channels: of the audio written (webm forces 48 kHz for Opus); channels 1, 2
      or 6 (5.1).
    audio_start_seconds: pts of the first audio sample; > 0 makes the audio start later than the
      video (the muxer records it as an empty edit / start offset).
    audio_seconds: duration of the audio signal; default: up to the end of the video.
    with_audio: False writes a video-only file.
    click_frame: the source frame whose time gets the click (default: the middle frame after
      the audio start).
    faststart: mp4 only: put the index (moov) in front of the data.
    frame_seconds: a variable frame rate: frame i at frame_seconds[i] (increasing, rounded to
      `VFR_TIME_BASE`), the last one shown until `seconds` (only about, in mp4: its muxer takes
      durations in decode order, so keep the last interval short); `fps` is then only the
      stream's nominal rate.
    audio_codec: an audio encoder instead of the container's default (e.g. "pcm_u8" in .mkv:
      8-bit unsigned samples).
  """
  path = pathlib.Path(path)
  video_codec, default_audio_codec, forced_rate = CODECS[path.suffix]
  audio_codec = audio_codec or default_audio_codec
  sample_rate = forced_rate or sample_rate
  if frame_seconds is None:
    frame_pts = None
    num_frames = int(round(seconds * fps))
    video_end = num_frames / fps
  else:
    frame_pts = [int(round(t / VFR_TIME_BASE)) for t in frame_seconds]
    frame_seconds = tuple(float(p * VFR_TIME_BASE) for p in frame_pts)
    if any(b <= a for a, b in zip(frame_pts, frame_pts[1:])) or frame_seconds[-1] >= seconds:
      raise ValueError("frame_seconds must increase and stay below seconds")
    num_frames = len(frame_pts)
    video_end = float(seconds)
  if click_frame is None:
    if frame_seconds is None:
      first = int(np.ceil(audio_start_seconds * fps))
    else:
      first = int(np.searchsorted(frame_seconds, audio_start_seconds))
    click_frame = (first + num_frames) // 2
  click_time = click_frame / fps if frame_seconds is None else frame_seconds[click_frame]
  if audio_seconds is None:
    audio_seconds = video_end - audio_start_seconds
  options = {"movflags": "+faststart"} if faststart and path.suffix == ".mp4" else {}
  with av.open(str(path), mode="w", container_options=options) as container:
    video = container.add_stream(video_codec, rate=fps)
    video.width, video.height = width, height
    video.pix_fmt = "yuv420p"
    video_time_base = Fraction(1, fps) if frame_pts is None else VFR_TIME_BASE
    video.codec_context.time_base = video_time_base
    if video_codec == "libx264":
      # Near-lossless keeps the bit stripes crisp; veryfast still uses B-frames (pts reordering).
      video.codec_context.options = {"crf": "12", "preset": "veryfast"}
    else:
      video.codec_context.options = {"crf": "10", "b": "2M", "deadline": "realtime"}
    streams = [video]
    if with_audio:
      audio = container.add_stream(audio_codec, rate=sample_rate)
      audio.codec_context.layout = AUDIO_LAYOUTS[channels]
      audio.codec_context.time_base = Fraction(1, sample_rate)
      audio.codec_context.bit_rate = 128_000
      streams.append(audio)
    container.start_encoding()

    packets = []
    for i in range(num_frames):
      frame = av.VideoFrame.from_ndarray(pattern_frame(i, width, height), format="rgb24")
      frame.pts = i if frame_pts is None else frame_pts[i]
      frame.time_base = video_time_base
      packets += video.encode(frame)
    packets += video.encode(None)
    if frame_pts is not None:  # each frame lasts until the next, the last one until `seconds`
      ends = dict(zip(frame_pts, frame_pts[1:] + [int(round(seconds / VFR_TIME_BASE))]))
      for packet in packets:
        pts = int(round(packet.pts * packet.time_base / VFR_TIME_BASE))
        packet.duration = int(round((ends[pts] - pts) * VFR_TIME_BASE / packet.time_base))

    if with_audio:
      offset = int(round(audio_start_seconds * sample_rate))
      num_samples = int(round(audio_seconds * sample_rate))
      click_sample = int(round(click_time * sample_rate)) - offset
      signal_cl = audio_signal(num_samples, sample_rate, channels, click_sample)
      ctx = audio.codec_context
      frame_size = ctx.frame_size if ctx.frame_size > 0 else 960
      fmt = ctx.format.name
      for start in range(0, num_samples, frame_size):
        chunk_cl = signal_cl[:, start:start + frame_size]
        if chunk_cl.shape[1] < frame_size:  # whole frames for encoders that need them
          chunk_cl = np.pad(chunk_cl, ((0, 0), (0, frame_size - chunk_cl.shape[1])))
        if not fmt.endswith("p"):  # packed: [1, samples * channels], interleaved
          chunk_cl = chunk_cl.T.reshape(1, -1)
        if fmt.startswith("s16"):
          chunk_cl = np.round(chunk_cl * 32767).astype(np.int16)
        elif fmt.startswith("u8"):  # unsigned 8-bit: silence at 128
          chunk_cl = np.round(128 + chunk_cl * 127).astype(np.uint8)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk_cl), format=fmt,
                                           layout=ctx.layout.name)
        frame.sample_rate = sample_rate
        frame.pts = offset + start
        frame.time_base = Fraction(1, sample_rate)
        packets += audio.encode(frame)
      packets += audio.encode(None)

    # Mux in time order so no muxer has to buffer a whole stream.
    packets.sort(key=lambda p: float(p.dts * p.time_base) if p.dts is not None else 0.0)
    for packet in packets:
      container.mux(packet)

  return Fixture(path=str(path), fps=fps, width=width, height=height, num_frames=num_frames,
                 sample_rate=sample_rate if with_audio else 0,
                 channels=channels if with_audio else 0,
                 audio_start_seconds=audio_start_seconds if with_audio else 0.0,
                 audio_seconds=audio_seconds if with_audio else 0.0,
                 click_frame=click_frame if with_audio else None,
                 frame_seconds=frame_seconds,
                 end_seconds=None if frame_seconds is None else video_end)


def write_truncated(source: str | os.PathLike, path: str | os.PathLike,
                    fraction: float = 0.5) -> str:
  """Copies the first `fraction` of the bytes of `source` to `path` (a cut-off download)."""
  data = pathlib.Path(source).read_bytes()
  pathlib.Path(path).write_bytes(data[:int(len(data) * fraction)])
  return str(path)


def write_garbage(path: str | os.PathLike, num_bytes: int = 20_000, seed: int = 0) -> str:
  """Random bytes under a video file name."""
  data = np.random.default_rng(seed).integers(0, 256, num_bytes, dtype=np.uint8).tobytes()
  pathlib.Path(path).write_bytes(data)
  return str(path)


def write_corrupt(source: str | os.PathLike, path: str | os.PathLike, *, fraction: float = 0.5,
                  num_bytes: int = 2000, seed: int = 0) -> str:
  """Copies `source` to `path` with `num_bytes` random bytes from `fraction` of the file on.

  In the middle of an interleaved file they hit audio and video packets alike (a damaged disk
  sector or a bad download block); the container's index is untouched when it is in front.
  """
  data = bytearray(pathlib.Path(source).read_bytes())
  start = int(len(data) * fraction)
  data[start:start + num_bytes] = np.random.default_rng(seed).integers(
      0, 256, num_bytes, dtype=np.uint8).tobytes()
  pathlib.Path(path).write_bytes(bytes(data))
  return str(path)


def write_corrupt_packets(source: str | os.PathLike, path: str | os.PathLike, *,
                          stream: str = "video", fraction: float = 0.5, num_packets: int = 1,
                          seed: int = 0) -> list[float]:
  """Copies `source` to `path` with the payload of `num_packets` packets of one stream damaged.

  The packets are the first of that stream (audio or video) stored from `fraction` of the file
  on; each keeps its first 8 bytes (an H.264 NAL's length and header) and the rest is random, so
  the container and the other stream are intact and only that stream's decoder meets garbage.
  Returns the damaged packets' pts (seconds).
  """
  data = bytearray(pathlib.Path(source).read_bytes())
  start = int(len(data) * fraction)
  with av.open(str(source)) as container:
    packets = [(packet.pos, packet.size, float(packet.pts * packet.time_base))
               for packet in container.demux(getattr(container.streams, stream)[0])
               if packet.size > 8 and packet.pos >= start][:num_packets]
  if len(packets) < num_packets:
    raise ValueError(f"fewer than {num_packets} {stream} packets after byte {start}")
  rng = np.random.default_rng(seed)
  for pos, size, _ in packets:
    data[pos + 8:pos + size] = rng.integers(0, 256, size - 8, dtype=np.uint8).tobytes()
  pathlib.Path(path).write_bytes(bytes(data))
  return [seconds for _, _, seconds in packets]
