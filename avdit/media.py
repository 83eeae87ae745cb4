"""Outputs a person can look at: mp4 clips, side-by-side comparisons, frame strips, an index page.

Every sampled clip is written as

* `write_mp4`: the result itself, one H.264 (or MPEG-4 part 2) video stream + one AAC stream;
* `write_comparison_mp4`: condition | result side by side, with coloured bars under each panel
  telling, frame by frame, whether the video and the audio of that time-segment were given
  (grey) or generated (green), like the paper's rater stimuli;
* `write_strip_png`: a still summary (frames, waveform, spectrogram) with the conditioning spans
  shaded;
* `write_index_html`: `samples/index.html` linking all of the above.

Arrays follow the rest of the project: video uint8 [F, H, W, 3] (RGB), audio float32 [L] mono in
[-1, 1], task masks bool [2, N] (row 0 video, row 1 audio; True = given as the clean condition).
Sampling, the evaluation and the autoencoder trainer all write these, so this sits below them.
"""
from __future__ import annotations

import html
import os
import pathlib
import urllib.parse
from collections.abc import Mapping, Sequence
from fractions import Fraction
from typing import Any

import av
import numpy as np

from avdit import layout as layout_lib

PathLike = str | os.PathLike

# Encoders in order of preference. H.264 plays in every browser; MPEG-4 part 2 is the fallback
# that every FFmpeg build ships (it plays in VLC/ffplay but not in most browsers).
VIDEO_CODECS = ("libx264", "h264", "mpeg4")
AUDIO_CODECS = ("aac", "libfdk_aac")

GIVEN_RGB = np.array([128, 128, 128], np.uint8)  # grey: this segment was the clean condition
GENERATED_RGB = np.array([40, 200, 70], np.uint8)  # green: this segment was generated
_GIVEN_MPL = tuple(GIVEN_RGB / 255.0)
_GENERATED_MPL = tuple(GENERATED_RGB / 255.0)

_MAX_STRIP_FRAMES = 9


# --------------------------------------------------------------------------------------------
# Codec choice
# --------------------------------------------------------------------------------------------
def _has_encoder(name: str) -> bool:
  try:
    av.codec.Codec(name, "w")
  except (ValueError, av.FFmpegError):  # UnknownCodecError is a ValueError
    return False
  return True


def pick_video_codec() -> str:
  """The first encoder of VIDEO_CODECS this PyAV/FFmpeg build has."""
  for name in VIDEO_CODECS:
    if _has_encoder(name):
      return name
  raise RuntimeError(f"none of the video encoders {VIDEO_CODECS} is in this FFmpeg build")


def pick_audio_codec() -> str:
  """The first encoder of AUDIO_CODECS this PyAV/FFmpeg build has."""
  for name in AUDIO_CODECS:
    if _has_encoder(name):
      return name
  raise RuntimeError(f"none of the audio encoders {AUDIO_CODECS} is in this FFmpeg build")


def _fps_fraction(fps: float | Fraction) -> Fraction:
  """fps as an exact-enough Fraction: 8 -> 8/1, 29.97002997 -> 30000/1001."""
  if fps <= 0:
    raise ValueError(f"fps must be positive, got {fps}")
  # mpeg4 rejects time bases with a denominator above 2**16 - 1, so keep it small.
  return Fraction(fps).limit_denominator(1001)


# --------------------------------------------------------------------------------------------
# Array preparation
# --------------------------------------------------------------------------------------------
def _check_video(video_fhwc: np.ndarray, name: str = "video_fhwc") -> np.ndarray:
  video_fhwc = np.asarray(video_fhwc)
  if video_fhwc.ndim != 4 or video_fhwc.shape[-1] != 3 or video_fhwc.shape[0] < 1:
    raise ValueError(f"{name} must be [F, H, W, 3] with F >= 1, got shape {video_fhwc.shape}")
  if video_fhwc.dtype != np.uint8:
    raise ValueError(f"{name} must be uint8 (0..255), got {video_fhwc.dtype}")
  return video_fhwc


def _pad_to_even(video_fhwc: np.ndarray) -> np.ndarray:
  """Pads H and W up to even sizes (yuv420p halves both for chroma) by repeating the edge.

  Padding, not cropping, so no generated pixel is lost; repeating the edge row/column keeps the
  extra line invisible instead of drawing a black stripe.
  """
  _, height, width, _ = video_fhwc.shape
  pad_h, pad_w = height % 2, width % 2
  if not (pad_h or pad_w):
    return video_fhwc
  return np.pad(video_fhwc, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")


def _fit_audio(audio_l: np.ndarray, num_samples: int) -> np.ndarray:
  """float32 [num_samples]: clipped to [-1, 1], trimmed or zero-padded to the video's length."""
  audio_l = np.asarray(audio_l, np.float32)
  if audio_l.ndim != 1:
    raise ValueError(f"audio_l must be mono [L], got shape {audio_l.shape}")
  # NaNs from a diverged sampler would otherwise turn into full-scale clicks in the encoder.
  audio_l = np.clip(np.nan_to_num(audio_l, nan=0.0), -1.0, 1.0)
  if audio_l.shape[0] >= num_samples:
    return np.ascontiguousarray(audio_l[:num_samples])
  return np.pad(audio_l, (0, num_samples - audio_l.shape[0]))


def _resample(audio_l: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
  """float32 [L * rate_out / rate_in] via FFmpeg's resampler (no scipy at runtime)."""
  resampler = av.AudioResampler(format="fltp", layout="mono", rate=rate_out)
  frame = av.AudioFrame.from_ndarray(audio_l[None, :], format="fltp", layout="mono")
  frame.sample_rate = rate_in
  frame.pts = 0
  frame.time_base = Fraction(1, rate_in)
  chunks = [f.to_ndarray()[0] for f in resampler.resample(frame)]
  chunks += [f.to_ndarray()[0] for f in resampler.resample(None)]
  out = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
  return out.astype(np.float32)


# --------------------------------------------------------------------------------------------
# mp4
# --------------------------------------------------------------------------------------------
def write_mp4(path: PathLike, video_fhwc: np.ndarray, audio_l: np.ndarray, fps: float,
              sample_rate: int, *, video_codec: str | None = None, crf: int = 18) -> None:
  """Writes a clip as an mp4 with one video and one audio stream.

  Args:
    path: the .mp4 to write; its parent directory is created.
    video_fhwc: uint8 [F, H, W, 3] RGB frames. Odd H or W are padded (edge pixels) to even.
    audio_l: float [L] mono waveform in [-1, 1]; clipped to [-1, 1], then trimmed or
      zero-padded to round(F / fps * sample_rate) samples so the audio lasts as long as the video.
    fps: frames per second, may be fractional (29.97 is stored as 30000/1001).
    sample_rate: Hz of `audio_l`. Rates AAC does not support are resampled to the nearest one
      above (or the highest).
    video_codec: force an encoder (tests use "mpeg4"); default: H.264 if available, else mpeg4.
    crf: H.264 constant rate factor (lower = better); 18 is visually near-lossless.
  """
  video_fhwc = _pad_to_even(_check_video(video_fhwc))
  num_frames, height, width, _ = video_fhwc.shape
  rate = _fps_fraction(fps)
  if sample_rate <= 0:
    raise ValueError(f"sample_rate must be positive, got {sample_rate}")
  num_samples = int(round(num_frames / rate * sample_rate))
  audio_l = _fit_audio(audio_l, num_samples)

  video_codec = video_codec or pick_video_codec()
  audio_codec = pick_audio_codec()
  audio_rates = av.codec.Codec(audio_codec, "w").audio_rates
  if audio_rates and sample_rate not in audio_rates:
    above = [r for r in audio_rates if r > sample_rate]
    target = min(above) if above else max(audio_rates)
    audio_l = _fit_audio(_resample(audio_l, sample_rate, target),
                         int(round(num_frames / rate * target)))
    sample_rate = target

  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  # faststart moves the index to the front so browsers can start playing before the download ends.
  with av.open(str(path), mode="w", format="mp4",
               container_options={"movflags": "+faststart"}) as container:
    video_stream = container.add_stream(video_codec, rate=rate)
    video_stream.width, video_stream.height = width, height
    video_stream.pix_fmt = "yuv420p"
    video_stream.codec_context.time_base = 1 / rate  # pts counts frames
    if video_codec in ("libx264", "h264"):
      video_stream.codec_context.options = {"crf": str(crf), "preset": "medium"}
    else:
      # mpeg4 defaults to 200 kb/s, which smears small clips; fixed quantiser 3 is sharp.
      video_stream.codec_context.qscale = True
      video_stream.codec_context.global_quality = 3

    audio_stream = container.add_stream(audio_codec, rate=sample_rate)
    audio_stream.codec_context.layout = "mono"
    audio_stream.codec_context.format = "fltp"
    audio_stream.codec_context.time_base = Fraction(1, sample_rate)  # pts counts samples
    audio_stream.codec_context.bit_rate = 128_000

    container.start_encoding()  # opens the encoders, so frame_size is known
    audio_format = audio_stream.codec_context.format.name
    frame_size = audio_stream.codec_context.frame_size
    capabilities = audio_stream.codec_context.codec.capabilities
    if frame_size <= 0 or capabilities & av.codec.Capabilities.variable_frame_size:
      frame_size = 1024
    if not capabilities & av.codec.Capabilities.small_last_frame and num_samples % frame_size:
      # This encoder wants whole frames: pad the tail with silence (< one audio frame).
      audio_l = np.pad(audio_l, (0, frame_size - num_samples % frame_size))
    chunk_starts = list(range(0, audio_l.shape[0], frame_size))

    def encode_audio_chunk(start: int) -> None:
      # Mono is [1, samples] for planar and packed formats alike.
      samples = audio_l[None, start:start + frame_size]
      if audio_format.startswith("s16"):
        samples = np.round(samples * 32767.0).astype(np.int16)
      frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples), format=audio_format,
                                         layout="mono")
      frame.sample_rate = sample_rate
      frame.pts = start
      frame.time_base = Fraction(1, sample_rate)
      container.mux(audio_stream.encode(frame))

    # Interleave: before frame i, encode the audio that starts before frame i's time, so the
    # muxer does not have to buffer one whole stream.
    next_chunk = 0
    for i in range(num_frames):
      frame_start_sample = i / rate * sample_rate
      while next_chunk < len(chunk_starts) and chunk_starts[next_chunk] <= frame_start_sample:
        encode_audio_chunk(chunk_starts[next_chunk])
        next_chunk += 1
      frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(video_fhwc[i]), format="rgb24")
      frame.pts = i
      frame.time_base = video_stream.codec_context.time_base
      container.mux(video_stream.encode(frame))
    for start in chunk_starts[next_chunk:]:
      encode_audio_chunk(start)
    container.mux(video_stream.encode(None))
    container.mux(audio_stream.encode(None))


# --------------------------------------------------------------------------------------------
# Comparison mp4
# --------------------------------------------------------------------------------------------
def _check_mask(condition_mask: np.ndarray, layout: layout_lib.ClipLayout) -> np.ndarray:
  condition_mask = np.asarray(condition_mask, bool)
  expected = (layout_lib.NUM_MODALITIES, layout.num_segments)
  if condition_mask.shape != expected:
    raise ValueError(f"condition_mask must be bool {list(expected)} (video row, audio row), "
                     f"got shape {condition_mask.shape}")
  return condition_mask


def _frame_masks(condition_mask: np.ndarray, layout: layout_lib.ClipLayout,
                 num_frames: int) -> tuple[np.ndarray, np.ndarray]:
  """bool [F] twice: was each frame's video / audio segment given as the condition."""
  if num_frames != layout.num_frames:
    raise ValueError(f"the clip has {num_frames} frames but the layout says {layout.num_frames}")
  segment_f = layout.segment_of_frame
  return (condition_mask[layout_lib.VIDEO, segment_f],
          condition_mask[layout_lib.AUDIO, segment_f])


def not_given_look(frame_hwc: np.ndarray) -> np.ndarray:
  """uint8 [H, W, 3]: a frame the model did NOT see, greyed, darkened and hatched.

  Darkening alone could pass for a dark scene; the diagonal hatching makes "not given" obvious.
  """
  luma_hw = frame_hwc.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
  dim_hw = 0.35 * luma_hw
  rows, cols = np.indices(luma_hw.shape)
  hatch_hw = ((rows + cols) % 12) < 2
  dim_hw = np.where(hatch_hw, 0.5 * dim_hw + 60.0, dim_hw)
  return np.repeat(np.clip(dim_hw, 0, 255).astype(np.uint8)[..., None], 3, axis=-1)


def comparison_frames(condition_video_fhwc: np.ndarray, generated_video_fhwc: np.ndarray,
                      condition_mask: np.ndarray,
                      layout: layout_lib.ClipLayout) -> np.ndarray:
  """uint8 [F, H + 2 * (gap + bar), 2W, 3]: condition | result, with status bars underneath.

  Under each panel, the upper bar is the video status and the lower bar the audio status of
  that frame's time-segment: grey = given as the condition, green = generated.
  """
  condition_video_fhwc = _check_video(condition_video_fhwc, "condition_video_fhwc")
  generated_video_fhwc = _check_video(generated_video_fhwc, "generated_video_fhwc")
  if condition_video_fhwc.shape != generated_video_fhwc.shape:
    raise ValueError(f"condition and generated videos differ in shape: "
                     f"{condition_video_fhwc.shape} vs {generated_video_fhwc.shape}")
  condition_mask = _check_mask(condition_mask, layout)
  num_frames, height, width, _ = generated_video_fhwc.shape
  video_given_f, audio_given_f = _frame_masks(condition_mask, layout, num_frames)

  bar = max(4, 2 * round(height / 24))  # even, so an even H keeps an even total
  gap = 2
  out_fhwc = np.zeros((num_frames, height + 2 * (gap + bar), 2 * width, 3), np.uint8)
  for f in range(num_frames):
    left_hwc = (condition_video_fhwc[f] if video_given_f[f]
                else not_given_look(condition_video_fhwc[f]))
    out_fhwc[f, :height, :width] = left_hwc
    out_fhwc[f, :height, width:] = generated_video_fhwc[f]
    for row, given in ((0, video_given_f[f]), (1, audio_given_f[f])):
      top = height + gap + row * (gap + bar)
      colour = GIVEN_RGB if given else GENERATED_RGB
      # A black column between the two panels' bars shows which panel each belongs to.
      out_fhwc[f, top:top + bar, :width - 1] = colour
      out_fhwc[f, top:top + bar, width + 1:] = colour
  return out_fhwc


def write_comparison_mp4(path: PathLike, condition_video_fhwc: np.ndarray,
                         generated_video_fhwc: np.ndarray, generated_audio_l: np.ndarray,
                         condition_mask: np.ndarray, layout: layout_lib.ClipLayout) -> None:
  """Writes condition | result side by side with the result's sound (see `comparison_frames`).

  Args:
    path: the .mp4 to write.
    condition_video_fhwc: uint8 [F, H, W, 3], the input clip; its frames in generated video
      segments are shown greyed and hatched (the model did not see them).
    generated_video_fhwc: uint8 [F, H, W, 3], the sampled clip.
    generated_audio_l: float [L] mono in [-1, 1], the sampled audio (the sound of the mp4).
    condition_mask: bool [2, N], row 0 video, row 1 audio; True = given.
    layout: the clip's ClipLayout (fps, sample rate, segments).
  """
  frames_fhwc = comparison_frames(condition_video_fhwc, generated_video_fhwc, condition_mask,
                                  layout)
  write_mp4(path, frames_fhwc, generated_audio_l, layout.fps, layout.sample_rate)


# --------------------------------------------------------------------------------------------
# Strip png
# --------------------------------------------------------------------------------------------
def _strip_frame_indices(num_frames: int, max_frames: int = _MAX_STRIP_FRAMES) -> np.ndarray:
  """int [<= max_frames]: every frame, or an even subsample including the first and last."""
  if num_frames <= max_frames:
    return np.arange(num_frames)
  return np.unique(np.round(np.linspace(0, num_frames - 1, max_frames)).astype(int))


def _log_spectrogram(audio_l: np.ndarray, sample_rate: int) -> tuple[np.ndarray, float]:
  """(dB [freq, time] relative to its max and floored at -80, seconds per column).

  A Hann STFT in numpy (scipy is only a dev dependency). Windows are centred on column k * hop
  (the signal is zero-padded by half a window at both ends), so the columns span the whole clip.
  """
  n_fft = 512 if sample_rate >= 16_000 else 256
  hop = n_fft // 4
  padded_l = np.pad(np.asarray(audio_l, np.float64), (n_fft // 2, n_fft // 2))
  num_windows = 1 + max(0, padded_l.shape[0] - n_fft) // hop
  starts = np.arange(num_windows) * hop
  windows_tn = padded_l[starts[:, None] + np.arange(n_fft)[None, :]] * np.hanning(n_fft)
  power_tk = np.abs(np.fft.rfft(windows_tn, axis=-1)) ** 2
  db_tk = 10.0 * np.log10(power_tk + 1e-12)
  db_tk = np.maximum(db_tk - db_tk.max(), -80.0)
  return db_tk.T, hop / sample_rate


def _shade_and_mark(ax, given_n: np.ndarray, layout: layout_lib.ClipLayout,
                    line_colour: str = "k") -> None:
  """Shades the given segments' time-spans grey and draws the segment borders."""
  for n in range(layout.num_segments):
    start, end = layout.segment_bounds(n)
    if given_n[n]:
      ax.axvspan(start, end, color=_GIVEN_MPL, alpha=0.35, lw=0, zorder=0)
    if n:
      ax.axvline(start, color=line_colour, lw=0.6, ls=":", alpha=0.7, zorder=3)
  ax.set_xlim(0.0, layout.duration)


def write_strip_png(path: PathLike, condition_video_fhwc: np.ndarray,
                    generated_video_fhwc: np.ndarray, condition_audio_l: np.ndarray,
                    generated_audio_l: np.ndarray, condition_mask: np.ndarray,
                    layout: layout_lib.ClipLayout, title: str) -> None:
  """Writes a still summary of one sample as a PNG (dpi 100).

  Rows: condition frames (not-given ones greyed/hatched, given ones outlined grey), generated
  frames (generated ones outlined green), the generated waveform, its spectrogram, and the
  condition waveform. Audio rows shade the audio-given time-spans grey and mark segment borders.

  Args:
    path: the .png to write; its parent directory is created.
    condition_video_fhwc, generated_video_fhwc: uint8 [F, H, W, 3].
    condition_audio_l, generated_audio_l: float [L] mono in [-1, 1].
    condition_mask: bool [2, N], row 0 video, row 1 audio; True = given.
    layout: the clip's ClipLayout.
    title: shown on top of the figure.
  """
  # The object-oriented API with an explicit Agg canvas never touches pyplot's global backend,
  # so this works headless and does not disturb an interactive session that imported pyplot.
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  from matplotlib.patches import Patch

  condition_video_fhwc = _check_video(condition_video_fhwc, "condition_video_fhwc")
  generated_video_fhwc = _check_video(generated_video_fhwc, "generated_video_fhwc")
  condition_mask = _check_mask(condition_mask, layout)
  num_frames, height, width, _ = generated_video_fhwc.shape
  video_given_f, _ = _frame_masks(condition_mask, layout, num_frames)
  segment_f = layout.segment_of_frame
  shown = _strip_frame_indices(num_frames)
  sample_rate = layout.sample_rate
  generated_audio_l = np.clip(np.nan_to_num(np.asarray(generated_audio_l, np.float32)), -1, 1)
  condition_audio_l = np.clip(np.nan_to_num(np.asarray(condition_audio_l, np.float32)), -1, 1)

  fig_width = 12.0
  frame_row_height = min(3.0, fig_width / len(shown) * height / width + 0.35)
  heights = [frame_row_height, frame_row_height, 1.3, 1.8, 1.3]
  fig = Figure(figsize=(fig_width, sum(heights) + 0.9), dpi=100)
  FigureCanvasAgg(fig)
  grid = fig.add_gridspec(len(heights), 1, height_ratios=heights, hspace=0.55,
                          left=0.07, right=0.98, top=1 - 0.65 / (sum(heights) + 0.9),
                          bottom=0.35 / (sum(heights) + 0.9))
  fig.suptitle(title, fontsize=12)

  for row, (label, video_fhwc) in enumerate((("condition", condition_video_fhwc),
                                             ("generated", generated_video_fhwc))):
    frame_grid = grid[row].subgridspec(1, len(shown), wspace=0.06)
    for col, f in enumerate(shown):
      ax = fig.add_subplot(frame_grid[0, col])
      given = bool(video_given_f[f])
      if row == 0:
        image_hwc = video_fhwc[f] if given else not_given_look(video_fhwc[f])
        edge, edge_width = (_GIVEN_MPL, 3.0) if given else ("0.8", 0.8)
      else:
        image_hwc = video_fhwc[f]
        edge, edge_width = (_GENERATED_MPL, 3.0) if not given else (_GIVEN_MPL, 1.5)
      ax.imshow(image_hwc, interpolation="nearest")
      ax.set_xticks([])
      ax.set_yticks([])
      for spine in ax.spines.values():
        spine.set_edgecolor(edge)
        spine.set_linewidth(edge_width)
      ax.set_title(f"{f / layout.fps:.2f}s  seg {segment_f[f]}", fontsize=7, pad=2)
      if col == 0:
        ax.set_ylabel(label, fontsize=9)

  time_l = np.arange(generated_audio_l.shape[0]) / sample_rate
  audio_given_n = condition_mask[layout_lib.AUDIO]

  ax_wave = fig.add_subplot(grid[2])
  ax_wave.plot(time_l, generated_audio_l, color=_GENERATED_MPL, lw=0.5)
  ax_wave.set_ylim(-1.05, 1.05)
  ax_wave.set_ylabel("generated", fontsize=8)
  ax_wave.set_title("generated audio (grey spans: audio given as condition)", fontsize=8, pad=3)

  ax_spec = fig.add_subplot(grid[3], sharex=ax_wave)
  db_ft, column_seconds = _log_spectrogram(generated_audio_l, sample_rate)
  ax_spec.imshow(db_ft, origin="lower", aspect="auto", cmap="magma", vmin=-80, vmax=0,
                 extent=(-0.5 * column_seconds, (db_ft.shape[1] - 0.5) * column_seconds,
                         0.0, sample_rate / 2000.0), interpolation="nearest")
  ax_spec.set_ylabel("kHz", fontsize=8)
  ax_spec.set_title("generated audio spectrogram (dB)", fontsize=8, pad=3)

  ax_cond = fig.add_subplot(grid[4], sharex=ax_wave)
  cond_time_l = np.arange(condition_audio_l.shape[0]) / sample_rate
  # Faint where the audio was not given, so the eye lands on what the model actually heard.
  ax_cond.plot(cond_time_l, condition_audio_l, color="0.75", lw=0.5)
  audio_given_l = audio_given_n[layout.segment_of_time(cond_time_l)]
  ax_cond.plot(cond_time_l, np.where(audio_given_l, condition_audio_l, np.nan), color="0.2",
               lw=0.5)
  ax_cond.set_ylim(-1.05, 1.05)
  ax_cond.set_ylabel("condition", fontsize=8)
  ax_cond.set_xlabel("time (s); dotted lines: segment borders", fontsize=8)

  for ax, line_colour in ((ax_wave, "k"), (ax_spec, "w"), (ax_cond, "k")):
    _shade_and_mark(ax, audio_given_n, layout, line_colour)
    ax.tick_params(labelsize=7)
  # The shading sits under the spectrogram image; outline the given spans there instead.
  for n in np.flatnonzero(audio_given_n):
    start, end = layout.segment_bounds(int(n))
    ax_spec.axvspan(start, end, facecolor="none", edgecolor="w", hatch="//", lw=0, alpha=0.5)

  fig.legend(handles=[Patch(color=_GIVEN_MPL, label="given (condition)"),
                      Patch(color=_GENERATED_MPL, label="generated")],
             loc="upper right", fontsize=8, ncol=2, frameon=False)
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(str(path), dpi=100)


# --------------------------------------------------------------------------------------------
# index.html
# --------------------------------------------------------------------------------------------
_ENTRY_KEYS = ("title", "task", "spec", "sampler", "videos", "png")

_CSS = """
body { font-family: sans-serif; margin: 1.5em; background: #fafafa; color: #222; }
section { background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: 1em;
          margin-bottom: 1.5em; }
table { border-collapse: collapse; margin-bottom: 0.8em; font-size: 0.9em; }
td { padding: 2px 10px 2px 0; vertical-align: top; }
td.key { color: #666; }
code { background: #f0f0f0; padding: 0 3px; }
video { max-width: 100%; margin: 0 0.8em 0.8em 0; vertical-align: top; }
img { max-width: 100%; border: 1px solid #eee; }
.legend span { display: inline-block; width: 1em; height: 0.8em; margin: 0 0.3em 0 0.8em; }
"""


def _href(target: PathLike, samples_dir: pathlib.Path) -> str:
  """A URL for `target` relative to the index page (absolute paths are made relative)."""
  target = pathlib.Path(target)
  if target.is_absolute():
    target = pathlib.Path(os.path.relpath(target, samples_dir))
  return urllib.parse.quote(target.as_posix())


def _text(value: Any) -> str:
  if isinstance(value, Mapping):
    return ", ".join(f"{k}={v}" for k, v in value.items())
  return str(value)


def write_index_html(samples_dir: PathLike, entries: Sequence[Mapping[str, Any]]) -> pathlib.Path:
  """Writes `samples_dir/index.html` listing every sample; returns its path.

  Each entry is a dict with (all optional):
    "title": heading (default: the task name),
    "task": task name, "spec": task spec string,
    "sampler": sampler settings, a dict (shown as k=v) or a string,
    "videos": mp4 paths (a path or a list), each shown as `<video controls>`,
    "png": the strip image,
  and any other keys (seed, step, ...) shown as extra rows. Paths may be absolute or relative
  to `samples_dir`. All text is HTML-escaped.
  """
  samples_dir = pathlib.Path(samples_dir)
  samples_dir.mkdir(parents=True, exist_ok=True)

  def esc(value: Any) -> str:
    return html.escape(_text(value), quote=True)

  grey = "#%02x%02x%02x" % tuple(GIVEN_RGB)
  green = "#%02x%02x%02x" % tuple(GENERATED_RGB)
  parts = [
      "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
      "<title>avdit samples</title>", f"<style>{_CSS}</style>", "</head>", "<body>",
      "<h1>avdit samples</h1>",
      f'<p class="legend">Comparison videos: left = condition (greyed/hatched where not given), '
      f'right = result. Bars under the panels, top = video, bottom = audio:'
      f'<span style="background:{grey}"></span>given'
      f'<span style="background:{green}"></span>generated</p>',
  ]
  for number, entry in enumerate(entries):
    title = entry.get("title") or entry.get("task") or f"sample {number}"
    parts.append(f'<section id="sample-{number}">')
    parts.append(f"<h2>{esc(title)}</h2>")
    parts.append("<table>")
    rows = [("task", entry.get("task")), ("spec", entry.get("spec")),
            ("sampler", entry.get("sampler"))]
    rows += [(k, v) for k, v in entry.items() if k not in _ENTRY_KEYS]
    for key, value in rows:
      if value is None:
        continue
      shown = f"<code>{esc(value)}</code>" if key == "spec" else esc(value)
      parts.append(f'<tr><td class="key">{esc(key)}</td><td>{shown}</td></tr>')
    parts.append("</table>")
    videos = entry.get("videos") or []
    if isinstance(videos, (str, os.PathLike)):
      videos = [videos]
    for video in videos:
      href = esc(_href(video, samples_dir))
      parts.append(f'<video controls preload="metadata" src="{href}">'
                   f'<a href="{href}">{esc(pathlib.Path(video).name)}</a></video>')
    if entry.get("png"):
      href = esc(_href(entry["png"], samples_dir))
      parts.append(f'<div><a href="{href}"><img src="{href}" alt="{esc(title)}"></a></div>')
    parts.append("</section>")
  parts += ["</body>", "</html>", ""]
  index_path = samples_dir / "index.html"
  index_path.write_text("\n".join(parts), encoding="utf-8")
  return index_path
