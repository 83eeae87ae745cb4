r"""Linear probes: can disc height and pitch be read linearly from a latent space?

  python -m avdit.evaluation.probe --config=configs/avdit_pipeline.py --workdir=DIR

Encodes held-out clips of the synthetic world with the config's latent space and fits ridge
regressions on half of them, scored by R² on the other half:
  video  one latent frame (all h·w·d_v values of a segment) -> disc centre y and x, averaged
         over the segment's frames (pixels);
  audio  one audio latent (d_a values), or it with its neighbours -> log pitch at its centre.
An AVDiT has to map one onto the other; a latent space from which neither is readable makes
that map hard whatever the transformer does (the raw space-to-depth audio frame scores R² ~0:
the pitch is in the waveform's phase pattern, not in any linear function of it).
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
from avdit.models import latent_space as latent_lib


def _define_flags():
  """Flags of the command line only: importing the functions defines none."""
  config_flags.DEFINE_config_file("config", None, "AVDiT or pipeline config.")
  flags.DEFINE_string("workdir", "", "Pipeline workdir (its autoencoders).")
  flags.DEFINE_integer("num_clips", 256, "Held-out clips (half fit, half scored).")
  flags.DEFINE_integer("audio_context", 2, "Neighbours on each side.")


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
  results = probe(latents, ground_truth(clips, layout), layout, args.audio_context)
  print(json.dumps({k: round(v, 3) for k, v in results.items()}, indent=2))


if __name__ == "__main__":
  _define_flags()
  app.run(main)
