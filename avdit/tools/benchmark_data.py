r"""Input-side speed: decoding real files into clips, and how long training waits for data.

  python -m avdit.tools.benchmark_data [--video=../shared/data/aist_dance_sample.mp4] \
      [--sizes=64,128] [--steps=40] [--json=PATH]
  python -m avdit.tools.benchmark_data ... --tfds_data_dir=DIR --tfds_name=av_folder/NAME

1. Decode + preprocess. For each frame size S in --sizes, `av_decode.decode_file` of --video at
   10 fps, S x S, 16 kHz mono, then `av_decode.cut_clips` (17 frames, stride 17: back-to-back
   clips) and `av_decode.clip_dict` of every clip (the contiguous arrays the trainer consumes).
   Timed end to end (open, demux, decode, resample, scale + crop, cut); the best of --repeats
   runs. Reported: clips/s, and x real time = seconds of source (the container's declared
   duration, all of which is decoded) per second of wall time. One process, one file at a time,
   as each decode worker of `avdit.data.prepare` does.

2. Data wait of a tiny training run. The AVDiT `tiny` config (configs/avdit_synthetic.py:tiny;
   --config overrides it) is run for --warmup_steps + --steps steps in a loop that mirrors the
   trainer's (`avdit.training.loop.run` as `avdit.training.train` calls it): `next(iterator)` on the
   grain iterator of `pipeline.make_train_iterator` -> the trainer's `to_device` (its model inputs
   as global arrays) -> the jitted, donated train step the trainer builds
   (`training.setup.setup_train` over the config's mesh, `sharding.training_mesh`), with the
   trainer's latent statistics (`setup.estimate_latent_stats`), once with data.prefetch_buffer=2
   (one reader thread filling a 2-batch buffer, the default) and once with 0 (no reader thread: the
   batch is made inside `next`). The step is compiled once, before either run, on clips that do not
   come from the measured iterators, so no buffer is filled while compiling. Unlike the trainer, the
   loop blocks on the step's result every step (`jax.block_until_ready`), only so that each step's
   wall time can be split into: data wait (time inside `next(iterator)`), transfer (`global_batch`),
   and compute (dispatch + the step until its result is ready). The data-wait fraction is sum(data
   wait) / sum(step wall time) over the timed steps (target: under 5% with prefetch). The trainer
   does not block, so its host loop can run ahead by one dispatched step; the blocking loop here is
   the stricter setting for the prefetch thread (same overlap, no slack). With --tfds_data_dir and
   --tfds_name the same is measured on that prepared TFDS dataset (its train split, at the geometry
   recorded in the dataset, which replaces config.clip); otherwise on the synthetic world only.
"""
from __future__ import annotations

import json
import os
import time

import jax
import numpy as np
from absl import app
from absl import flags
from ml_collections import config_flags

from avdit import sharding
from avdit.data import av_decode
from avdit.data import pipeline
from avdit.training import loop
from avdit.training import setup as setup_lib

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_VIDEO = os.path.join(os.path.dirname(_ROOT), "shared", "data", "aist_dance_sample.mp4")
# The decode geometry of the AIST++ / landscape datasets (configs/avdit_aist.py).
DECODE_FPS = 10.0
DECODE_SAMPLE_RATE = 16000
CLIP_FRAMES = 17
CLIP_STRIDE_FRAMES = 17

_VIDEO = flags.DEFINE_string("video", DEFAULT_VIDEO, "Audiovisual file to decode.")
_SIZES = flags.DEFINE_list("sizes", ["64", "128"], "Square frame sizes to decode at.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Decode runs per size (the best is reported).")
_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(_ROOT, "configs", "avdit_synthetic.py") + ":tiny",
    "Training config of the data-wait runs (path[:variant]).", lock_config=False)
_STEPS = flags.DEFINE_integer("steps", 40, "Timed train steps per prefetch setting.")
_WARMUP_STEPS = flags.DEFINE_integer("warmup_steps", 3,
                                     "Untimed steps before the timed ones, per setting.")
_PREFETCH = flags.DEFINE_list("prefetch_buffers", ["2", "0"],
                              "data.prefetch_buffer values to compare.")
_SKIP_DECODE = flags.DEFINE_bool("skip_decode", False, "Only measure the data wait.")
_SKIP_TRAIN = flags.DEFINE_bool("skip_train", False, "Only measure decoding.")
_TFDS_DATA_DIR = flags.DEFINE_string("tfds_data_dir", None,
                                     "Also measure the data wait on this prepared TFDS dataset "
                                     "(with --tfds_name).")
_TFDS_NAME = flags.DEFINE_string("tfds_name", None, "e.g. av_folder/aist (with --tfds_data_dir).")
_JSON = flags.DEFINE_string("json", None, "Also write the results to this JSON file.")


# --------------------------------------------------------------------------------------------
# 1. Decode + preprocess
# --------------------------------------------------------------------------------------------
def decode_and_cut(path: str, size: int) -> tuple[av_decode.DecodedAV, list[dict]]:
  """One file -> the trainer's clip dicts at size x size (what is timed, see the docstring)."""
  decoded = av_decode.decode_file(path, fps=DECODE_FPS, height=size, width=size,
                                  sample_rate=DECODE_SAMPLE_RATE)
  clips = av_decode.cut_clips(decoded, num_frames=CLIP_FRAMES, stride_frames=CLIP_STRIDE_FRAMES)
  return decoded, [av_decode.clip_dict(clip) for clip in clips]


def benchmark_decode(path: str, size: int, repeats: int) -> dict:
  """Best-of-`repeats` wall time of `decode_and_cut` and the throughput it gives."""
  times = []
  for _ in range(max(1, repeats)):
    start = time.perf_counter()
    decoded, clips = decode_and_cut(path, size)
    times.append(time.perf_counter() - start)
  best = min(times)
  source_seconds = decoded.source_duration_seconds
  return {"size": size, "fps": DECODE_FPS, "sample_rate": DECODE_SAMPLE_RATE,
          "clip_frames": CLIP_FRAMES, "stride_frames": CLIP_STRIDE_FRAMES,
          "clips": len(clips), "source_seconds": source_seconds,
          "decoded_frames": decoded.num_frames, "seconds": best, "seconds_all": times,
          "clips_per_second": len(clips) / best,
          "realtime_factor": source_seconds / best}


# --------------------------------------------------------------------------------------------
# 2. Data wait of a training loop
# --------------------------------------------------------------------------------------------
def tfds_config(config, data_dir: str, name: str):
  """`config` reading TFDS dataset `name` in `data_dir`, its clip set to the dataset's geometry."""
  from avdit.data import av_folder  # TFDS only for TFDS data
  config = config.copy_and_resolve_references()
  geometry = av_folder.dataset_geometry(av_folder.load_builder(name, data_dir))
  with config.unlocked():
    config.data.name = "tfds"
    config.data.tfds_name = name
    config.data.data_dir = data_dir
    if geometry is not None:  # else config.clip stays, and the pipeline checks the shapes
      config.clip.update(num_frames=geometry.num_frames, fps=geometry.fps,
                         height=geometry.height, width=geometry.width,
                         sample_rate=geometry.sample_rate)
  return config


def _setup_training(config):
  """The trainer's run (training.setup, the trainer's latent statistics), its step compiled.

  Returns (mesh, state, train_step, layout). The step is compiled (and run once) on the first
  clips of the data source, stacked, so that no measured iterator is touched before its run.
  """
  setup = setup_lib.setup_train(config, sharding.training_mesh(config))
  layout, mesh = setup.layout, setup.mesh
  train_step = setup.make_step(
      setup_lib.estimate_latent_stats(config, layout, setup.latent_space))
  source = pipeline.make_source(config.data, layout)
  clips = [source[i] for i in range(min(len(source), config.data.batch_size))]
  first = {k: np.stack([c[k] for c in clips]) for k in setup_lib.MODEL_INPUTS}
  state, metrics = train_step(setup.state,
                              loop.device_inputs(setup_lib.MODEL_INPUTS, mesh)(first))
  jax.block_until_ready((state, metrics))
  return mesh, state, train_step, layout


def _timed_loop(config, layout, mesh, state, train_step, steps: int, warmup_steps: int):
  """(state, per-step seconds of data wait, transfer and the whole step) over the timed steps."""
  iterator = pipeline.make_train_iterator(config.data, layout)
  to_device = loop.device_inputs(setup_lib.MODEL_INPUTS, mesh)  # the trainer's
  wait, transfer, total = [], [], []
  try:
    for step in range(warmup_steps + steps):
      start = time.perf_counter()
      batch = next(iterator)
      got_batch = time.perf_counter()
      inputs = to_device(batch)
      transferred = time.perf_counter()
      state, metrics = train_step(state, inputs)
      jax.block_until_ready((state, metrics))  # for timing only; the trainer does not block
      end = time.perf_counter()
      if step >= warmup_steps:
        wait.append(got_batch - start)
        transfer.append(transferred - got_batch)
        total.append(end - start)
  finally:
    close = getattr(iterator, "close", None)
    if close is not None:
      close()
  return state, np.array(wait), np.array(transfer), np.array(total)


def benchmark_data_wait(config, steps: int, warmup_steps: int, prefetch_buffers,
                        data_label: str) -> list[dict]:
  """One record per prefetch buffer size: data-wait fraction and the step time split."""
  mesh, state, train_step, layout = _setup_training(config)
  results = []
  for buffer in prefetch_buffers:
    run_config = config.copy_and_resolve_references()
    with run_config.unlocked():
      run_config.data.prefetch_buffer = int(buffer)
    state, wait, transfer, total = _timed_loop(run_config, layout, mesh, state, train_step,
                                               steps, warmup_steps)
    results.append({
        "data": data_label, "prefetch_buffer": int(buffer),
        "worker_count": int(run_config.data.get("worker_count", 0)),
        "batch": config.data.batch_size, "steps": steps, "warmup_steps": warmup_steps,
        "clip": {k: config.clip[k] for k in ("num_frames", "fps", "height", "width",
                                            "sample_rate")},
        "data_wait_fraction": float(wait.sum() / total.sum()),
        "transfer_fraction": float(transfer.sum() / total.sum()),
        "step_seconds_mean": float(total.mean()),
        "step_seconds_median": float(np.median(total)),
        "data_wait_seconds_mean": float(wait.mean()),
        "data_wait_seconds_max": float(wait.max()),
        "transfer_seconds_mean": float(transfer.mean()),
        "steps_per_second": float(len(total) / total.sum()),
    })
  return results


def main(argv):
  del argv
  out = {"devices": [str(d) for d in jax.devices()]}
  print(f"devices: {jax.devices()}")
  if not _SKIP_DECODE.value:
    path = _VIDEO.value
    out["video"] = path
    out["decode"] = []
    print(f"decode + cut_clips + clip_dict of {path}: {DECODE_FPS:g} fps, "
          f"{DECODE_SAMPLE_RATE} Hz, clips of {CLIP_FRAMES} frames every {CLIP_STRIDE_FRAMES}; "
          f"best of {_REPEATS.value}")
    for size in (int(s) for s in _SIZES.value):
      r = benchmark_decode(path, size, _REPEATS.value)
      out["decode"].append(r)
      print(f"  {size}x{size}: {r['seconds']:.3f} s for {r['source_seconds']:.1f} s of source "
            f"({r['clips']} clips): {r['clips_per_second']:.1f} clips/s, "
            f"{r['realtime_factor']:.1f}x real time")
  if not _SKIP_TRAIN.value:
    config = _CONFIG.value
    buffers = [int(b) for b in _PREFETCH.value]
    runs = [("synthetic", config)]
    if bool(_TFDS_DATA_DIR.value) != bool(_TFDS_NAME.value):
      raise app.UsageError("--tfds_data_dir and --tfds_name go together.")
    if _TFDS_NAME.value:
      runs.append((f"tfds:{_TFDS_NAME.value}",
                   tfds_config(config, _TFDS_DATA_DIR.value, _TFDS_NAME.value)))
    out["data_wait"] = []
    print(f"data wait of a training loop (config variant {config.get('variant', '?')}, "
          f"{_STEPS.value} timed steps after {_WARMUP_STEPS.value}; blocking on every step for "
          "timing)")
    for label, run_config in runs:
      for r in benchmark_data_wait(run_config, _STEPS.value, _WARMUP_STEPS.value, buffers,
                                   label):
        out["data_wait"].append(r)
        print(f"  {label}, prefetch_buffer={r['prefetch_buffer']}: data wait "
              f"{r['data_wait_fraction']:.1%} of the step time (mean "
              f"{r['data_wait_seconds_mean'] * 1e3:.2f} ms, max "
              f"{r['data_wait_seconds_max'] * 1e3:.2f} ms), transfer "
              f"{r['transfer_fraction']:.1%}, step {r['step_seconds_mean'] * 1e3:.1f} ms "
              f"(batch {r['batch']})")
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump(out, f, indent=2)


if __name__ == "__main__":
  app.run(main)
