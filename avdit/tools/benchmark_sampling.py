r"""Sequential vs parallel (Picard) sampling: wall time, parallel iterations, denoiser calls.

  XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu \
  python -m avdit.tools.benchmark_sampling --config=configs/monl_ablation.py \
      --workdir=/tmp/monl_ablation/monl [--tasks=a2v|av_continue] [--steps=50] [--windows=8,16]

For every task: the sequential sampler (`config.sample`'s sampler and steps) and the parallel
sampler for each window W (tolerance `config.sample.parallel_tolerance`), on a batch of
`--batch` held-out clips sharded over the config's mesh (all devices), with the checkpoint in
--workdir (without it: freshly initialized parameters, whose smooth denoiser converges in fewer
iterations than a trained one). Prints wall time (median of --repeats, compilation excluded),
parallel iterations, denoiser evaluations (NFE, per clip; a window evaluates W steps per call)
and the RMS difference from the sequential result over the generated elements.

On a CPU the "devices" share the same cores, so the wall time shows the cost of the extra NFE
rather than a speed-up: parallel sampling pays off when W·B rows keep accelerators busy that
B rows alone would not.
"""
from __future__ import annotations

import json
import time

import jax
import numpy as np
from absl import app
from absl import flags
from ml_collections import config_flags

from avdit import layout as layout_lib
from avdit import sharding
from avdit import tasks as tasks_lib
from avdit.data import pipeline
from avdit.diffusion import schedule as schedule_lib
from avdit.models import latent_space as latent_lib
from avdit.sampling import generate
from avdit.sampling import parallel as parallel_lib
from avdit.sampling import samplers
from avdit.training import state as state_lib

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (path[:variant]).",
                                          lock_config=False)
_WORKDIR = flags.DEFINE_string("workdir", None, "A trained model's workdir (optional).")
_TASKS = flags.DEFINE_string("tasks", "a2v|av_continue", "Tasks, '|'-separated.")
_STEPS = flags.DEFINE_integer("steps", None, "Sampler steps (default: config.sample.num_steps).")
_WINDOWS = flags.DEFINE_string("windows", "8,16", "Parallel window sizes W, comma-separated.")
_BATCH = flags.DEFINE_integer("batch", 8, "Clips per sampler call.")
_REPEATS = flags.DEFINE_integer("repeats", 2, "Timed repeats (after one compiling call).")
_JSON = flags.DEFINE_string("json", None, "Also write the results to this JSON file.")


def _timed(fn, repeats: int) -> tuple[float, object]:
  result = jax.block_until_ready(fn())  # compiles
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    result = jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return float(np.median(times)), result


def _load(config, mesh):
  if _WORKDIR.value:
    layout, latent_space, apply_fn, params, stats, step = generate.load_for_sampling(
        config, _WORKDIR.value, mesh)
    return layout, latent_space, apply_fn, params, stats, f"checkpoint step {step}"
  layout = layout_lib.layout_from_config(config)
  latent_space = latent_lib.make_latent_space(config, layout)
  graphdef, state, _ = state_lib.sharded_train_state(generate.inference_config(config), layout,
                                                     mesh)
  stats = {f"{k}_{s}": np.full(n, 0.0 if s == "mean" else 1.0, np.float32)
           for k, n in (("video", layout.video_channels), ("audio", layout.audio_channels))
           for s in ("mean", "std")}
  return (layout, latent_space, generate.make_apply_fn(graphdef), state.params, stats,
          "untrained parameters")


def main(argv):
  del argv
  config = _CONFIG.value
  if _STEPS.value:
    config.sample.num_steps = _STEPS.value
  mesh = sharding.make_mesh(config.mesh)
  layout, latent_space, apply_fn, params, stats, origin = _load(config, mesh)
  schedule = schedule_lib.from_config(config.diffusion)
  spec = samplers.SamplerSpec.from_config(config.sample, config.diffusion, config.model)
  clips = pipeline.make_eval_clips(config.data, layout, _BATCH.value,
                                            seed=generate.held_out_seed(config, 0))
  condition, _ = generate.encode_condition(latent_space, stats, clips, mesh)
  print(f"devices: {len(jax.devices())} ({jax.devices()[0].platform}), mesh {dict(mesh.shape)}; "
        f"{origin}; {spec.sampler}, {spec.num_steps} steps, batch {_BATCH.value}")
  results = []
  for task in tasks_lib.parse_tasks(_TASKS.value, layout):
    task_spec = samplers.SamplerSpec.from_config(config.sample, config.diffusion, config.model,
                                                 task=task)
    rng = jax.random.key(0)
    with jax.set_mesh(mesh):
      seconds, reference = _timed(lambda: samplers.sample_latents(
          apply_fn, params, condition, task.condition_mask, rng, schedule=schedule,
          layout=layout, spec=task_spec), _REPEATS.value)
    row = {"task": task.name, "sequential_seconds": seconds, "sequential_nfe": spec.num_steps}
    print(f"{task.name}: sequential {seconds:.2f} s, {spec.num_steps} steps")
    generated = {k: np.asarray(v) > 0.5 for k, v in layout.expand_to_latents(
        task.generate_mask[None].astype(np.float32)).items()}
    for window in (int(w) for w in _WINDOWS.value.split(",")):
      parallel = parallel_lib.ParallelSpec(window, float(config.sample.parallel_tolerance))
      with jax.set_mesh(mesh):
        seconds, (latents, stats_p) = _timed(lambda p=parallel: parallel_lib.sample_latents_parallel(
            apply_fn, params, condition, task.condition_mask, rng, schedule=schedule,
            layout=layout, spec=task_spec, parallel=p), _REPEATS.value)
      diff = [np.asarray((latents[k] - reference[k]) ** 2)[np.broadcast_to(
          np.asarray(generated[k]), latents[k].shape)] for k in layout_lib.MODALITIES]
      rms = float(np.sqrt(np.mean(np.concatenate(diff))))
      entry = {"window": window, "tolerance": parallel.parallel_tolerance, "seconds": seconds,
               "iterations": int(stats_p["iterations"]), "nfe": int(stats_p["nfe"]),
               "padded_nfe": int(stats_p["padded_nfe"]), "rms_vs_sequential": rms}
      row.setdefault("parallel", []).append(entry)
      print(f"  parallel W={window}: {seconds:.2f} s, {entry['iterations']} iterations "
            f"(vs {spec.num_steps} steps), NFE {entry['nfe']} (padded {entry['padded_nfe']}), "
            f"RMS vs sequential {rms:.4f}")
    results.append(row)
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump({"devices": len(jax.devices()), "origin": origin, "results": results}, f,
                indent=2)


if __name__ == "__main__":
  flags.mark_flag_as_required("config")
  app.run(main)
