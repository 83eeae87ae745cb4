"""The latent interface between pixels/waveforms and the diffusion model (SPEC §1, §8).

A latent space turns a clip (video uint8 [B, F, H, W, 3], audio float32 [B, L]) into latents
{"video": [B, N, h, w, d_v], "audio": [B, l_a, d_a]} with exactly the segment structure of
`ClipLayout` (first frame alone, then groups of `temporal_factor` frames; `audio_hop` samples per
audio latent) and back. The learned autoencoders plug in behind the same two methods; the
diffusion code only sees `encode`/`decode` and the per-channel normalization below.

`SpaceToDepth` is the fixed, exactly invertible one: pixels reshaped to channels, and the waveform
either reshaped too (`audio_transform="waveform"`), as its MDCT frames (`"mdct"`, avdit/models/
mdct.py: exact, orthogonal, pitch is where the energy lies) or as its log-magnitude STFT
(`"logmag"`, avdit/models/spectrogram.py: phase-free, decoded by Griffin-Lim). Frame 0 is repeated
`temporal_factor` times so that segment 0 has the same channel count as the others (decoding
averages the copies, which is exact on encoded data and a projection on generated latents).
"""
from __future__ import annotations

import base64
import dataclasses
import json
from typing import Mapping, Protocol

import jax.numpy as jnp
import numpy as np

from avdit import layout as layout_lib
from avdit.models import mdct
from avdit.models import spectrogram

Latents = dict[str, jnp.ndarray]


class LatentSpace(Protocol):
  layout: layout_lib.ClipLayout

  def encode(self, video_bfhwc: jnp.ndarray, audio_bl: jnp.ndarray) -> Latents:
    ...

  def decode(self, latents: Latents) -> tuple[jnp.ndarray, jnp.ndarray]:
    ...


def check_clip_shapes(layout: layout_lib.ClipLayout, video_bfhwc, audio_bl) -> None:
  """Clear errors for clips that do not match the configured geometry."""
  expected_video = (layout.num_frames, layout.height, layout.width, 3)
  if video_bfhwc.ndim != 5 or tuple(video_bfhwc.shape[1:]) != expected_video:
    hint = ""
    if video_bfhwc.ndim == 5 and (video_bfhwc.shape[1] - 1) % layout.temporal_factor:
      hint = f" ({video_bfhwc.shape[1]} frames is not 1 + {layout.temporal_factor}k)"
    raise ValueError(f"video of shape {tuple(video_bfhwc.shape)} does not match the clip "
                     f"[B, {', '.join(map(str, expected_video))}]{hint}")
  if audio_bl.ndim != 2 or audio_bl.shape[1] != layout.audio_samples:
    raise ValueError(
        f"audio of shape {tuple(audio_bl.shape)} does not match the clip: expected [B, "
        f"{layout.audio_samples}] samples ({layout.num_frames} frames at {layout.fps} fps, "
        f"{layout.sample_rate} Hz)")
  if audio_bl.shape[0] != video_bfhwc.shape[0]:
    raise ValueError(f"video batch {video_bfhwc.shape[0]} != audio batch {audio_bl.shape[0]}")


AUDIO_TRANSFORMS = {"waveform": None, "mdct": mdct, "logmag": spectrogram}


def encode_fixed_audio(layout: layout_lib.ClipLayout, audio_transform: str,
                       audio_bl) -> jnp.ndarray:
  """Audio latents [B, l_a, d_a] of a fixed transform (AUDIO_TRANSFORMS) of zero-padded audio."""
  pad = layout.audio_latents * layout.audio_hop - layout.audio_samples
  audio = jnp.pad(jnp.asarray(audio_bl, jnp.float32), ((0, 0), (0, pad)))
  transform = AUDIO_TRANSFORMS[audio_transform]
  if transform is None:
    return audio.reshape(audio.shape[0], *layout.audio_latent_shape)
  return transform.forward(audio, layout.audio_hop)


def decode_fixed_audio(layout: layout_lib.ClipLayout, audio_transform: str,
                       audio_latents) -> jnp.ndarray:
  """Waveforms [B, L] (unclipped) of `encode_fixed_audio`'s latents, cut to the clip length."""
  transform = AUDIO_TRANSFORMS[audio_transform]
  audio = (transform.inverse(audio_latents) if transform is not None
           else audio_latents.reshape(audio_latents.shape[0], -1))
  return audio[:, :layout.audio_samples]


class SpaceToDepth:
  """Pixels ×`spatial_factor` in space and ×`temporal_factor` in time to channels; audio frames."""

  def __init__(self, layout: layout_lib.ClipLayout, audio_transform: str = "waveform"):
    if audio_transform not in AUDIO_TRANSFORMS:
      raise ValueError(f"unknown latent.audio_transform {audio_transform!r}; use one of "
                       f"{tuple(AUDIO_TRANSFORMS)}")
    self.audio_transform = audio_transform
    expected = (layout.temporal_factor * layout.spatial_factor**2 * 3, layout.audio_hop)
    if (layout.video_channels, layout.audio_channels) != expected:
      raise ValueError(f"space_to_depth gives (video, audio) channels {expected}, the config says "
                       f"({layout.video_channels}, {layout.audio_channels})")
    self.layout = layout

  def encode(self, video_bfhwc, audio_bl) -> Latents:
    lay = self.layout
    check_clip_shapes(lay, video_bfhwc, audio_bl)
    b = video_bfhwc.shape[0]
    tf, sf = lay.temporal_factor, lay.spatial_factor
    pixels = jnp.asarray(video_bfhwc, jnp.float32) / 127.5 - 1.0
    padded = jnp.concatenate([jnp.repeat(pixels[:, :1], tf - 1, axis=1), pixels], axis=1)
    x = padded.reshape(b, lay.num_segments, tf, lay.latent_height, sf, lay.latent_width, sf, 3)
    x = x.transpose(0, 1, 3, 5, 2, 4, 6, 7)  # [B, N, h, w, tf, sf, sf, 3]
    video = x.reshape(b, *lay.video_latent_shape)
    return {"video": video, "audio": encode_fixed_audio(lay, self.audio_transform, audio_bl)}

  def decode(self, latents: Latents) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(video uint8 [B, F, H, W, 3], audio float32 [B, L] clipped to [-1, 1])."""
    lay = self.layout
    tf, sf = lay.temporal_factor, lay.spatial_factor
    video = latents["video"]
    b = video.shape[0]
    x = video.reshape(b, lay.num_segments, lay.latent_height, lay.latent_width, tf, sf, sf, 3)
    x = x.transpose(0, 1, 4, 2, 5, 3, 6, 7)  # [B, N, tf, h, sf, w, sf, 3]
    frames = x.reshape(b, lay.num_segments * tf, lay.height, lay.width, 3)
    first = frames[:, :tf].mean(axis=1, keepdims=True)
    pixels = jnp.concatenate([first, frames[:, tf:]], axis=1)
    video_u8 = jnp.round(jnp.clip((pixels + 1.0) * 127.5, 0, 255)).astype(jnp.uint8)
    audio = decode_fixed_audio(lay, self.audio_transform, latents["audio"])
    return video_u8, jnp.clip(audio, -1.0, 1.0)


class PrecomputedLatents:
  """Batches that already hold latents (a latent cache): `encode` checks shapes, passes through.

  Used to train on cached autoencoder latents and to compile the train step ahead of time for
  latent spaces whose encoder is not part of the step. Decoding needs the autoencoder that made
  the cache, so it is an error here.
  """

  def __init__(self, layout: layout_lib.ClipLayout):
    self.layout = layout

  def encode(self, video, audio) -> Latents:
    for name, x, shape in (("video", video, self.layout.video_latent_shape),
                           ("audio", audio, self.layout.audio_latent_shape)):
      if tuple(x.shape[1:]) != tuple(shape):
        raise ValueError(f"precomputed {name} latents of shape {tuple(x.shape)} do not match "
                         f"[B, {', '.join(map(str, shape))}]")
    return {"video": jnp.asarray(video, jnp.float32), "audio": jnp.asarray(audio, jnp.float32)}

  def decode(self, latents: Latents):
    raise NotImplementedError("precomputed latents cannot be decoded without their autoencoder")


class LearnedLatents:
  """MAGVIT-v2 (video) continuous latents, and SoundStream's (audio) or a fixed audio transform.

  Each autoencoder is rebuilt from its own checkpoint (kind and constructor arguments are saved
  with it) with its EMA parameters. Its identity must agree with the config: clip geometry,
  latent channels, and the segment structure (time/space factors, hop); otherwise a clear error.

  `audio_transform` other than "soundstream" ("logmag": avdit/models/spectrogram.py) replaces
  SoundStream by that exact transform, as in `SpaceToDepth`. Why: SoundStream's round trip alone
  puts the pitch 1.5 px of height from the disc (the v2a target) and linear probes do not read
  the pitch from its latents (R^2 0.08), while the log-magnitude STFT carries it phase-free with
  a 0.03 px round trip, and it needs no training (docs/learning_the_link.md).
  """

  def __init__(self, layout: layout_lib.ClipLayout, video_workdir: str, audio_workdir: str,
               audio_transform: str = "soundstream"):
    from avdit.models import autoencoders  # pylint: disable=g-import-not-at-top
    self.layout = layout
    self.audio_transform = audio_transform
    self.video_model, self.video_identity, self.video_step = autoencoders.load_autoencoder(
        video_workdir)
    self.identity = {"video": dict(self.video_identity, workdir=str(video_workdir),
                                   step=int(self.video_step))}
    if audio_transform == "soundstream":
      self.audio_model, audio_identity, audio_step = autoencoders.load_autoencoder(audio_workdir)
      self.identity["audio"] = dict(audio_identity, workdir=str(audio_workdir),
                                    step=int(audio_step))
    elif audio_transform in AUDIO_TRANSFORMS:
      self.audio_model = None
      self.identity["audio"] = {"modality": "audio", "kind": audio_transform,
                                "hop": layout.audio_hop}
    else:
      raise ValueError(f"unknown latent.audio_transform {audio_transform!r} for learned latents; "
                       f"use soundstream or one of {tuple(AUDIO_TRANSFORMS)}")
    check_autoencoders_match(layout, self.identity, self.video_model, self.audio_model)

  def encode(self, video_bfhwc, audio_bl) -> Latents:
    check_clip_shapes(self.layout, video_bfhwc, audio_bl)
    pixels = jnp.asarray(video_bfhwc, jnp.float32) / 127.5 - 1.0
    if self.audio_model is None:
      audio_latents = encode_fixed_audio(self.layout, self.audio_transform, audio_bl)
    else:
      audio_latents = self.audio_model.encode(jnp.asarray(audio_bl, jnp.float32))
    return {"video": self.video_model.encode(pixels), "audio": audio_latents}

  def decode(self, latents: Latents) -> tuple[jnp.ndarray, jnp.ndarray]:
    pixels = self.video_model.decode(latents["video"])
    video_u8 = jnp.round(jnp.clip((pixels + 1.0) * 127.5, 0, 255)).astype(jnp.uint8)
    if self.audio_model is None:
      audio = decode_fixed_audio(self.layout, self.audio_transform, latents["audio"])
    else:
      audio = self.audio_model.decode(latents["audio"])[:, :self.layout.audio_samples]
    return video_u8, jnp.clip(audio, -1.0, 1.0)


def check_autoencoders_match(layout, identity: dict, video_model, audio_model) -> None:
  """Clear errors when the autoencoders do not make this layout's latents."""
  problems = []
  expected_clip = {"num_frames": layout.num_frames, "fps": float(layout.fps),
                   "height": layout.height, "width": layout.width,
                   "sample_rate": layout.sample_rate}
  learned = ("video", "audio") if audio_model is not None else ("video",)
  for modality in learned:
    ident = identity[modality]
    if ident["modality"] != modality:
      problems.append(f"the {modality} autoencoder ({ident.get('workdir')}) is a "
                      f"{ident['kind']}, which encodes {ident['modality']}")
      continue
    clip = {k: (float(v) if k == "fps" else v) for k, v in ident["clip"].items()
            if k in expected_clip}
    if clip != expected_clip:
      problems.append(f"the {modality} autoencoder was trained on clips {clip}, the config's "
                      f"are {expected_clip}")
  if identity["video"]["modality"] == "video":
    if video_model.latent_dim != layout.video_channels:
      problems.append(f"MAGVIT-v2 latent_dim {video_model.latent_dim} != latent.video_channels "
                      f"{layout.video_channels}")
    factors = (video_model.spatial_factor, video_model.temporal_factor)
    if factors != (layout.spatial_factor, layout.temporal_factor):
      problems.append(f"MAGVIT-v2 down-samples (space, time) by {factors}, the layout by "
                      f"{(layout.spatial_factor, layout.temporal_factor)}")
  if audio_model is None and layout.audio_channels != layout.audio_hop:
    problems.append(f"{identity['audio']['kind']} audio has latent.audio_hop "
                    f"{layout.audio_hop} channels, the config says {layout.audio_channels}")
  elif audio_model is not None and identity["audio"]["modality"] == "audio":
    if audio_model.latent_dim != layout.audio_channels:
      problems.append(f"SoundStream latent_dim {audio_model.latent_dim} != "
                      f"latent.audio_channels {layout.audio_channels}")
    if audio_model.hop != layout.audio_hop:
      problems.append(f"SoundStream hop {audio_model.hop} != latent.audio_hop {layout.audio_hop}")
  if problems:
    raise ValueError("learned latent space does not match the config: " + "; ".join(problems))


def make_latent_space(config, layout: layout_lib.ClipLayout) -> LatentSpace:
  # The latent space's own channels (the model's layout has latent.video_rank of them, if set).
  layout = dataclasses.replace(layout, video_channels=config.latent.video_channels)
  if config.latent.name == "space_to_depth":
    return SpaceToDepth(layout, config.latent.get("audio_transform", "waveform"))
  if config.latent.name == "precomputed":
    return PrecomputedLatents(layout)
  if config.latent.name == "learned":
    return LearnedLatents(layout, config.latent.video_autoencoder_workdir,
                          config.latent.audio_autoencoder_workdir,
                          config.latent.get("audio_transform", "soundstream"))
  raise ValueError(f"unknown latent space {config.latent.name!r}; available: space_to_depth, "
                   "precomputed, learned (MAGVIT-v2 + SoundStream runs named by "
                   "latent.video_autoencoder_workdir / latent.audio_autoencoder_workdir)")


# --- normalization: per channel, then optionally whitened --------------------------------------
def estimate_stats(latents: Latents, eps: float = 1e-3, shared: tuple[str, ...] = (),
                   whiten: tuple[str, ...] = (), whiten_rank: int = 128,
                   keep: Mapping[str, int] | None = None,
                   direction_scale: str = "unit") -> dict[str, np.ndarray]:
  """Per-channel mean/std over every axis but the last, float32 numpy; std floored at `eps`.

  Modalities named in `shared` get one mean and std for all their channels (still stored per
  channel): for MDCT audio, per-channel scaling would blow the near-silent bins up to the
  tone's weight in the loss.

  Modalities named in `whiten` are then rotated onto their principal directions and each
  direction i scaled by 1/sqrt(λ_i + λ_rank) (an invertible map, same channel count): the
  `whiten_rank` strongest directions get roughly unit variance, weaker ones proportionally less.
  Why: on space-to-depth video a few directions (the flat background colour) carry ~95% of the
  variance, so a per-channel MSE spends the model on colour and the disc (the part the tasks
  are about) is a few percent of the loss; a model narrower than the token also can only output
  `width` directions, and whitening makes those the ones that matter.

  `keep` {modality: k} (whitened modalities only) keeps only the k strongest directions: the
  normalized latents then have k channels and `denormalize` projects back onto that subspace
  (latent.video_rank). Why: a 768-channel space-to-depth token holds a few numbers of content
  (colours, an edge); at k = 64 the oracle still finds the disc in 99.6% of round-tripped frames
  at 0.12 px of height, and the loss is no longer spread over hundreds of weak directions.

  `direction_scale="shared"` rotates (and keeps k directions) without equalizing: every direction
  gets one scale, chosen so that the kept directions' variances average 1, so the data keeps its
  natural spectrum (the background colour most of the variance). Why: under isotropic diffusion
  noise a strong direction then survives to higher noise levels than a weak one, as in pixel
  space, and the x0 loss weighs what is shared by a clip's tokens most (README, measured by
  `probe --measure=pooling`: whitened, a clip's mean token removes ~1% of the video's x0 error,
  at the natural spectrum more than half at t >= 500); `diffusion.input_scale` still gives the
  network a whitened view of it.
  """
  if direction_scale not in ("unit", "shared"):
    raise ValueError(f"direction_scale must be 'unit' or 'shared', got {direction_scale!r}")
  keep = dict(keep or {})
  if set(keep) - set(whiten):
    raise ValueError(f"keep={keep} needs those modalities whitened (whiten={whiten})")
  stats = {}
  for name, x in latents.items():
    x = np.asarray(x, np.float64).reshape(-1, x.shape[-1])
    pooled = x.reshape(-1, 1) if name in shared else x
    ones = np.ones((x.shape[-1],))
    mean, std = pooled.mean(0) * ones, np.maximum(pooled.std(0), eps) * ones
    stats[f"{name}_mean"], stats[f"{name}_std"] = mean.astype(np.float32), std.astype(np.float32)
    if name in whiten:
      directions, eigenvalues = _principal_directions((x - mean) / std)
      k = keep.get(name, directions.shape[1])
      if direction_scale == "shared":
        scale = np.full_like(eigenvalues, np.sqrt(eigenvalues[:k].mean()))
      else:  # λ_i / (λ_i + λ_rank) along direction i
        floor = max(eigenvalues[min(whiten_rank, len(eigenvalues)) - 1], 1e-6)
        scale = np.sqrt(eigenvalues + floor)
      stats[f"{name}_directions"], stats[f"{name}_direction_std"] = directions[:, :k], scale[:k]
    # Per channel after all of it (diffusion/skip.py's data variance): 1 per channel, shared
    # stats aside; λ_i / (λ_i + λ_rank) along whitened directions (λ_i / mean λ when "shared").
    normalized = normalize({name: x}, {k: v for k, v in stats.items() if k.startswith(name)})
    stats[f"{name}_normalized_var"] = normalized[name].var(0).astype(np.float32)
  return stats


def config_modalities(latent_config, field: str) -> tuple[str, ...]:
  """The modalities a comma-separated `latent_config.<field>` names ("video,audio")."""
  return tuple(filter(None, latent_config.get(field, "").split(",")))


def estimate_stats_for_config(latents: Latents, latent_config) -> dict[str, np.ndarray]:
  """`estimate_stats` with the options of `config.latent` (shared_stats, whiten, whiten_rank,
  video_rank, direction_scale)."""
  video_rank = latent_config.get("video_rank", 0)
  return estimate_stats(latents, shared=config_modalities(latent_config, "shared_stats"),
                        whiten=config_modalities(latent_config, "whiten"),
                        whiten_rank=latent_config.get("whiten_rank", 128),
                        keep={"video": video_rank} if video_rank else None,
                        direction_scale=latent_config.get("direction_scale", "unit"))


def _principal_directions(x_nc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Principal directions [C, C] (columns, strongest first) and their variances λ, float32."""
  eigenvalues, directions = np.linalg.eigh(np.cov(x_nc, rowvar=False))
  eigenvalues = np.maximum(eigenvalues[::-1], 0.0)
  return directions[:, ::-1].astype(np.float32), eigenvalues.astype(np.float32)


def normalize(latents: Latents, stats) -> Latents:
  out = {k: (v - stats[f"{k}_mean"]) / stats[f"{k}_std"] for k, v in latents.items()}
  return {k: (v @ stats[f"{k}_directions"]) / stats[f"{k}_direction_std"]
          if f"{k}_directions" in stats else v for k, v in out.items()}


def denormalize(latents: Latents, stats) -> Latents:
  out = {k: (v * stats[f"{k}_direction_std"]) @ stats[f"{k}_directions"].T
         if f"{k}_directions" in stats else v for k, v in latents.items()}
  return {k: v * stats[f"{k}_std"] + stats[f"{k}_mean"] for k, v in out.items()}


def stats_to_json(stats) -> dict:
  """Vectors as lists; matrices (whitening directions) as base64 float32, 4 bytes a value."""
  def encode(value):
    value = np.asarray(value, np.float32)
    if value.ndim < 2:
      return value.tolist()
    return {"shape": list(value.shape),
            "float32_base64": base64.b64encode(value.tobytes()).decode()}
  return {k: encode(v) for k, v in stats.items()}


def stats_from_json(payload) -> dict[str, np.ndarray]:
  if isinstance(payload, (str, bytes)):
    payload = json.loads(payload)
  def decode(value):
    if isinstance(value, dict):
      flat = np.frombuffer(base64.b64decode(value["float32_base64"]), np.float32)
      return flat.reshape(value["shape"]).copy()
    return np.asarray(value, np.float32)
  return {k: decode(v) for k, v in payload.items()}
