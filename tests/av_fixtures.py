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
that averages the channels is distinguishable from one that keeps a single channel.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
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
  click_frame: int | None  # the click sits at t = click_frame / fps

  @property
  def click_seconds(self) -> float:
    return self.click_frame / self.fps

  @property
  def video_seconds(self) -> float:
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
  else:
    raise ValueError(f"channels must be 1 or 2, got {channels}")
  if click_sample is not None and 0 <= click_sample < num_samples:
    width = max(1, int(round(CLICK_SECONDS * sample_rate)))
    signal_cl[:, click_sample:click_sample + width] += CLICK_AMPLITUDE
  return np.clip(signal_cl, -1.0, 1.0).astype(np.float32)


def write_av(path: str | os.PathLike, *, fps: int = 25, width: int = 64, height: int = 48,
             seconds: float = 2.0, sample_rate: int = 16000, channels: int = 1,
             audio_start_seconds: float = 0.0, audio_seconds: float | None = None,
             with_audio: bool = True, click_frame: int | None = None,
             faststart: bool = True) -> Fixture:
  """Writes a pattern video (+ tone and click audio) and returns what it holds.

  Args:
    path: .mp4, .mkv or .webm; the codecs come from `CODECS`.
    fps: source frame rate; video frame i has pts i in time base 1 / fps.
    width, height: source frame size (even: yuv420p).
    seconds: video duration (round(seconds * fps) frames).
    sample_rate, channels: of the audio written (webm forces 48 kHz for Opus).
    audio_start_seconds: pts of the first audio sample; > 0 makes the audio start later than the
      video (the muxer records it as an empty edit / start offset).
    audio_seconds: duration of the audio signal; default: up to the end of the video.
    with_audio: False writes a video-only file.
    click_frame: the source frame whose time gets the click (default: the middle frame after
      the audio start).
    faststart: mp4 only: put the index (moov) in front of the data.
  """
  path = pathlib.Path(path)
  video_codec, audio_codec, forced_rate = CODECS[path.suffix]
  sample_rate = forced_rate or sample_rate
  num_frames = int(round(seconds * fps))
  if click_frame is None:
    first = int(np.ceil(audio_start_seconds * fps))
    click_frame = (first + num_frames) // 2
  if audio_seconds is None:
    audio_seconds = num_frames / fps - audio_start_seconds
  options = {"movflags": "+faststart"} if faststart and path.suffix == ".mp4" else {}
  with av.open(str(path), mode="w", container_options=options) as container:
    video = container.add_stream(video_codec, rate=fps)
    video.width, video.height = width, height
    video.pix_fmt = "yuv420p"
    video.codec_context.time_base = Fraction(1, fps)
    if video_codec == "libx264":
      # Near-lossless keeps the bit stripes crisp; veryfast still uses B-frames (pts reordering).
      video.codec_context.options = {"crf": "12", "preset": "veryfast"}
    else:
      video.codec_context.options = {"crf": "10", "b": "2M", "deadline": "realtime"}
    streams = [video]
    if with_audio:
      audio = container.add_stream(audio_codec, rate=sample_rate)
      audio.codec_context.layout = "mono" if channels == 1 else "stereo"
      audio.codec_context.time_base = Fraction(1, sample_rate)
      audio.codec_context.bit_rate = 128_000
      streams.append(audio)
    container.start_encoding()

    packets = []
    for i in range(num_frames):
      frame = av.VideoFrame.from_ndarray(pattern_frame(i, width, height), format="rgb24")
      frame.pts = i
      frame.time_base = Fraction(1, fps)
      packets += video.encode(frame)
    packets += video.encode(None)

    if with_audio:
      offset = int(round(audio_start_seconds * sample_rate))
      num_samples = int(round(audio_seconds * sample_rate))
      click_sample = int(round(click_frame / fps * sample_rate)) - offset
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
                 click_frame=click_frame if with_audio else None)


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
