r"""Linear probes: can disc height and pitch be read linearly from a latent space?

  python -m avdit.evaluation.probe --config=configs/avdit_pipeline.py --workdir=DIR
  python -m avdit.evaluation.probe --config=configs/avdit_fixed_latents.py --measure=pooling

Encodes held-out clips of the synthetic world with the config's latent space and fits ridge
regressions on half of them, scored by R² on the other half:
  video  one latent frame (all h·w·d_v values of a segment) -> disc centre y and x, averaged
         over the segment's frames (pixels);
  audio  one audio latent (d_a values), or it with its neighbours -> log pitch at its centre.
An AVDiT has to map one onto the other; a latent space from which neither is readable makes
that map hard whatever the transformer does (the raw space-to-depth audio frame scores R² ~0:
the pitch is in the waveform's phase pattern, not in any linear function of it).

It also prints the video's pooling gain (`pooling_gain`): on the latents as the config
normalizes them, how much of the x̂0 error of the skip path's per-token guess c_skip x_t a
denoiser removes by also reading the mean noisy token of the clip and of the segment, at a few
noise levels. That is the easiest thing a denoiser can learn about video (a flat background
shared by a clip's tokens); where it is ~0 (whitened space-to-depth video), a video term that
stays at the skip path's error is not a failure to learn but nothing easy to learn.
"""
from __future__ import annotations

import json

import jax
import numpy as np
from absl import app
from absl import flags
from ml_collections import config_flags

from avdit import layout as layout_lib
from avdit import workdir as workdir_lib
from avdit.data import pipeline
from avdit.data import synthetic
from avdit.diffusion import loss as loss_lib
from avdit.diffusion import schedule as schedule_lib
from avdit.diffusion import skip as skip_lib
from avdit.models import latent_space as latent_lib


def _define_flags():
  """Flags of the command line only: importing the functions defines none."""
  config_flags.DEFINE_config_file("config", None, "AVDiT or pipeline config.")
  flags.DEFINE_string("workdir", "", "Pipeline workdir (its autoencoders).")
  flags.DEFINE_integer("num_clips", 256, "Held-out clips (half fit, half scored).")
  flags.DEFINE_integer("audio_context", 2, "Neighbours on each side.")
  flags.DEFINE_list("measure", ["linear", "pooling"],
                    "linear: the ridge probes (minutes on 768-channel tokens); pooling: the "
                    "video's pooling gain (seconds; AVDiT configs only)")


PENALTIES = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)  # relative to the Gram matrix's mean diagonal


def _ridge_fit_r2(features_train, target_train, features_test, target_test, penalty) -> float:
  mean, std = features_train.mean(0), features_train.std(0) + 1e-8
  a, b = (features_train - mean) / std, (features_test - mean) / std
  a, b = np.c_[a, np.ones(len(a))], np.c_[b, np.ones(len(b))]
  gram = a.T @ a
  weights = np.linalg.solve(gram + penalty * np.trace(gram) / len(gram) * np.eye(len(gram)),
                            a.T @ target_train)
  residual = target_test - b @ weights
  return float(1.0 - residual.var() / target_test.var())


def ridge_r2(features_train, target_train, features_test, target_test) -> float:
  """R² on the test rows of a ridge fit whose penalty is chosen on a split of the train rows."""
  split = len(features_train) * 3 // 4
  best = max(PENALTIES, key=lambda p: _ridge_fit_r2(
      features_train[:split], target_train[:split], features_train[split:],
      target_train[split:], p))
  return _ridge_fit_r2(features_train, target_train, features_test, target_test, best)


def with_neighbours(latents_blc: np.ndarray, context: int) -> np.ndarray:
  """[B, l, c] -> [B, l, (2·context + 1)·c]: each latent with its neighbours (edges repeated)."""
  padded = np.pad(latents_blc, ((0, 0), (context, context), (0, 0)), mode="edge")
  length = latents_blc.shape[1]
  return np.concatenate([padded[:, k:k + length] for k in range(2 * context + 1)], -1)


def probe(latents: dict, truth: dict, layout: layout_lib.ClipLayout,
          audio_context: int) -> dict[str, float]:
  """R² of every probe; `truth`: disc_xy [B, F, 2] and log_pitch [B, l_a] (ground truth)."""
  video_bnf = np.asarray(latents["video"]).reshape(*latents["video"].shape[:2], -1)
  audio_blc = np.asarray(latents["audio"])
  half = video_bnf.shape[0] // 2
  segment_f = layout.segment_of_frame
  disc_xy_bn2 = np.stack([truth["disc_xy"][:, segment_f == n].mean(1)
                          for n in range(layout.num_segments)], 1)
  results = {}

  def fit(name, features, target):
    flat = lambda x: x.reshape(-1, x.shape[-1]) if x.ndim == 3 else x.reshape(-1)
    results[name] = ridge_r2(flat(features[:half]), flat(target[:half]),
                             flat(features[half:]), flat(target[half:]))

  fit("video_latent_to_disc_y", video_bnf, disc_xy_bn2[..., 1])
  fit("video_latent_to_disc_x", video_bnf, disc_xy_bn2[..., 0])
  fit("audio_latent_to_log_pitch", audio_blc, truth["log_pitch"])
  fit(f"audio_latent_and_{audio_context}_neighbours_to_log_pitch",
      with_neighbours(audio_blc, audio_context), truth["log_pitch"])
  return results


def pooling_gain(video_bnhwc: np.ndarray, data_var_c: np.ndarray, alpha_bars: dict,
                 rng: np.random.Generator,
                 loss_weight_c: np.ndarray | None = None) -> dict[str, dict[str, float]]:
  """Per noise level {t: ᾱ}: the mean squared x̂0 error of the skip guess c_skip x_t and of the
  per-channel least-squares combination of x_t, its segment's mean token and its clip's mean
  token (fit on the first half of the clips, scored on the second), and the fraction removed.
  Errors are weighted per channel by `loss_weight_c` (diffusion.loss_spectrum; the fit is per
  channel, so the weights change only how the channels add up)."""
  x0 = np.asarray(video_bnhwc, np.float64)
  weight_c = np.ones(x0.shape[-1]) if loss_weight_c is None else np.asarray(loss_weight_c)
  half = x0.shape[0] // 2
  out = {}
  for t, alpha_bar in alpha_bars.items():
    x_t = np.sqrt(alpha_bar) * x0 + np.sqrt(1 - alpha_bar) * rng.standard_normal(x0.shape)
    c_skip, _ = skip_lib.skip_coefficients(np.float64(alpha_bar), data_var_c.astype(np.float64))
    skip_error = float(np.mean(weight_c * (np.asarray(c_skip) * x_t[half:] - x0[half:]) ** 2))
    features = np.stack([x_t, np.broadcast_to(x_t.mean((2, 3), keepdims=True), x_t.shape),
                         np.broadcast_to(x_t.mean((1, 2, 3), keepdims=True), x_t.shape),
                         np.ones_like(x_t)], -1)  # [B, N, h, w, C, 4]
    fit, score = features[:half].reshape(-1, *features.shape[-2:]), features[half:]
    gram_c44 = np.einsum("ncf,ncg->cfg", fit, fit)
    moment_c4 = np.einsum("ncf,nc->cf", fit, x0[:half].reshape(-1, x0.shape[-1]))
    weights_c4 = np.linalg.solve(gram_c44 + 1e-9 * np.eye(4), moment_c4[..., None])[..., 0]
    squared = np.sum(weight_c * (np.einsum("...cf,cf->...c", score, weights_c4) - x0[half:]) ** 2)
    pooled_error = float(squared / x0[half:].size)
    out[str(t)] = {"skip_error": skip_error, "pooled_error": pooled_error,
                   "gain": 1.0 - pooled_error / skip_error}
  return out


def ground_truth(clips: dict, layout: layout_lib.ClipLayout) -> dict:
  """disc_xy [B, F, 2] and the log pitch at every audio latent's centre [B, l_a]."""
  centres_s = (np.arange(layout.audio_latents) + 0.5) * layout.audio_hop / layout.sample_rate
  centres_s = np.minimum(centres_s, (layout.num_frames - 1) / layout.fps)
  frames_s = np.arange(layout.num_frames) / layout.fps
  # The disc moves linearly between bounces; interpolating the per-frame centres is exact away
  # from bounces and close to it near them.
  y_bl = np.stack([np.interp(centres_s, frames_s, xy[:, 1]) for xy in clips["disc_xy"]])
  return {"disc_xy": np.asarray(clips["disc_xy"], np.float64),
          "log_pitch": np.log(synthetic.pitch_of_height(y_bl, layout.height))}


def main(argv):
  del argv
  args = flags.FLAGS
  config = args.config
  if "video_autoencoder" in config:
    if not args.workdir:
      raise app.UsageError("--workdir (the pipeline's) is required for learned latents")
    config = workdir_lib.with_stage_dirs(config, args.workdir)
  layout = layout_lib.layout_from_config(config)
  space = latent_lib.make_latent_space(config, layout)
  num_clips = args.num_clips
  clips = pipeline.make_eval_clips(config.data, layout, num_clips, seed=config.data.seed + 77)
  encode = jax.jit(space.encode)
  latents = {"video": [], "audio": []}
  for start in range(0, num_clips, 32):
    part = encode(clips["video"][start:start + 32], clips["audio"][start:start + 32])
    for k in latents:
      latents[k].append(np.asarray(part[k]))
  latents = {k: np.concatenate(v) for k, v in latents.items()}
  if "linear" in args.measure:
    results = probe(latents, ground_truth(clips, layout), layout, args.audio_context)
    print(json.dumps({k: round(v, 3) for k, v in results.items()}, indent=2))
  if "pooling" in args.measure and "diffusion" in config:
    # The AVDiT's normalization, estimated on the fitting half.
    half = {k: v[:num_clips // 2] for k, v in latents.items()}
    stats = latent_lib.estimate_stats_for_config(half, config.latent)
    video = latent_lib.normalize(latents, stats)["video"]
    data_var = stats.get("video_normalized_var", np.ones(video.shape[-1], np.float32))
    table = schedule_lib.from_config(config.diffusion).alpha_bar_table
    loss_weights = loss_lib.loss_channel_weights(config.diffusion, stats) or {}
    gains = pooling_gain(video, data_var, {t: float(table[t]) for t in (100, 300, 500, 800)},
                         np.random.default_rng(0), loss_weights.get("video"))
    print("video pooling gain (x0 error: skip path -> + segment and clip mean tokens):")
    print(json.dumps({t: {k: round(v, 4) for k, v in g.items()} for t, g in gains.items()},
                     indent=2))


if __name__ == "__main__":
  _define_flags()
  app.run(main)
