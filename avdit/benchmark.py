r"""Train-step and sampler speed, with MFU against a matmul peak measured in the same run.

  python -m avdit.benchmark --config=configs/avdit_synthetic.py:bench [--steps=5]

Prints the measured matmul peak (a jitted fp32 2048x2048 matmul on this machine), train-step
time, tokens/s, achieved FLOP/s and MFU (analytic FLOPs of `flops_per_example`: forward x3 for
forward+backward, +1 forward for self-conditioning), and the sampler's time per DDIM step.
Compilation is excluded from every timing; each number is the median of the timed repeats.
"""
from __future__ import annotations

import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app
from absl import flags
from ml_collections import config_flags

from avdit import layout as layout_lib
from avdit.data import pipeline
from avdit.diffusion import schedule as schedule_lib
from avdit.models import avdit as avdit_model
from avdit.models import latent_space as latent_lib
from avdit.sampling import generate
from avdit.sampling import samplers
from avdit.training import state as state_lib

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (path[:variant]).",
                                          lock_config=True)
_STEPS = flags.DEFINE_integer("steps", 5, "Timed train steps (after one compile+warm-up step).")
_SAMPLE_STEPS = flags.DEFINE_integer("sample_steps", 10, "DDIM steps in the timed sampler run.")
_SKIP_SAMPLER = flags.DEFINE_bool("skip_sampler", False, "Only time the train step.")
_JSON = flags.DEFINE_string("json", None, "Also write the results to this JSON file.")


def measure_matmul_peak(size: int = 2048, repeats: int = 10) -> float:
  """FLOP/s of the best of `repeats` jitted fp32 size x size matmuls (10 chained per call)."""
  a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (size, size), jnp.float32) / size

  @jax.jit
  def chain(x):
    for _ in range(10):
      x = x @ b
    return x

  chain(a).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    chain(a).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 10 * 2 * size**3 / best


def benchmark_train_step(config, steps: int) -> dict:
  layout = layout_lib.layout_from_config(config)
  latent_space = latent_lib.make_latent_space(config, layout)
  batch_iter = pipeline.make_train_iterator(config.data, layout)
  batch = next(batch_iter)
  batch = {k: jnp.asarray(batch[k]) for k in ("video", "audio")}
  stats = latent_lib.estimate_stats(jax.jit(latent_space.encode)(batch["video"], batch["audio"]))
  graphdef, state = state_lib.create_train_state(config, layout)
  train_step = state_lib.make_train_step(config, layout, graphdef, latent_space, stats)
  start = time.perf_counter()
  state, metrics = train_step(state, batch)
  jax.block_until_ready(metrics)
  compile_and_first = time.perf_counter() - start
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    state, metrics = train_step(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  step_time = float(np.median(times))
  flops = avdit_model.flops_per_example(config.model, layout)
  passes = 3 + (1 if config.model.self_condition else 0)
  flops_per_step = flops["total"] * config.data.batch_size * passes
  return {"step_seconds": step_time, "step_seconds_all": times,
          "first_step_seconds_incl_compile": compile_and_first,
          "tokens_per_second": config.data.batch_size * layout.num_tokens / step_time,
          "flops_per_step": flops_per_step, "flop_per_second": flops_per_step / step_time,
          "flops_breakdown_per_example_forward": flops,
          "num_params": sum(x.size for x in jax.tree_util.tree_leaves(state.params)),
          "tokens": layout.num_tokens, "batch": config.data.batch_size,
          "loss": float(metrics["loss"]), "_state": state, "_graphdef": graphdef,
          "_stats": stats, "_batch": batch, "_latent_space": latent_space, "_layout": layout}


def benchmark_sampler(config, train_result: dict, num_steps: int) -> dict:
  layout = train_result["_layout"]
  condition = latent_lib.normalize(
      train_result["_latent_space"].encode(train_result["_batch"]["video"],
                                           train_result["_batch"]["audio"]),
      train_result["_stats"])
  apply_fn = generate.make_apply_fn(train_result["_graphdef"])
  params = train_result["_state"].ema_params
  spec = samplers.SamplerSpec(sampler="ddim", num_steps=num_steps, eta=0.0,
                              prediction=config.diffusion.prediction,
                              self_condition=config.model.self_condition)
  mask = np.zeros((2, layout.num_segments), bool)
  mask[1] = True  # a2v
  run = lambda: jax.block_until_ready(samplers.sample_latents(
      apply_fn, params, condition, mask, jax.random.key(0),
      schedule=schedule_lib.from_config(config.diffusion), layout=layout, spec=spec))
  run()
  times = []
  for _ in range(2):
    start = time.perf_counter()
    run()
    times.append(time.perf_counter() - start)
  seconds = float(np.median(times))
  return {"sampler": "ddim", "sampler_steps": num_steps, "sampler_batch": config.data.batch_size,
          "sampler_seconds": seconds, "seconds_per_ddim_step": seconds / num_steps}


def main(argv):
  del argv
  config = _CONFIG.value
  print(f"devices: {jax.devices()}")
  peak = measure_matmul_peak()
  print(f"measured fp32 matmul peak: {peak / 1e9:.1f} GFLOP/s")
  result = benchmark_train_step(config, _STEPS.value)
  mfu = result["flop_per_second"] / peak
  print(f"train step: {result['step_seconds']:.3f} s (median of {_STEPS.value}; first incl. "
        f"compile {result['first_step_seconds_incl_compile']:.1f} s), batch {result['batch']} x "
        f"{result['tokens']} tokens, {result['num_params'] / 1e6:.2f}M params")
  print(f"tokens/s: {result['tokens_per_second']:.0f}   achieved: "
        f"{result['flop_per_second'] / 1e9:.1f} GFLOP/s   MFU: {mfu:.3f}")
  breakdown = result["flops_breakdown_per_example_forward"]
  print("forward FLOPs per example: " + ", ".join(
      f"{k} {v / breakdown['total']:.1%}" for k, v in breakdown.items() if k != "total"))
  out = {k: v for k, v in result.items() if not k.startswith("_")}
  out.update(matmul_peak_flop_per_second=peak, mfu=mfu,
             model={k: v for k, v in config.model.to_dict().items()})
  if not _SKIP_SAMPLER.value:
    sampler = benchmark_sampler(config, result, _SAMPLE_STEPS.value)
    print(f"sampler: {sampler['seconds_per_ddim_step']:.3f} s per DDIM step "
          f"(batch {sampler['sampler_batch']}, a2v, self-conditioning "
          f"{'on' if config.model.self_condition else 'off'})")
    out.update(sampler)
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump(out, f, indent=2)


if __name__ == "__main__":
  flags.mark_flag_as_required("config")
  app.run(main)
