r"""Train-step and sampler speed, with MFU against a matmul peak measured in the same run.

  python -m avdit.tools.benchmark --config=configs/avdit_synthetic.py:bench [--steps=5]

Prints the measured matmul peak (a jitted fp32 2048x2048 matmul on this machine), train-step
time, tokens/s, achieved FLOP/s and MFU (analytic FLOPs of `flops_per_example`: forward x3 for
forward+backward, +1 forward for self-conditioning), and the sampler's time per DDIM step.
Compilation is excluded from every timing; each number is the median of the timed repeats.

--dtype=bfloat16 runs the model in bfloat16 (parameters stay float32) and also measures the
bfloat16 matmul peak (bfloat16 inputs, float32 accumulation: the form of the model's matmuls,
which this CPU runs on its AMX units); its MFU is against that peak, the fp32 line stays for
comparison. --profile adds a breakdown: model forward, forward+backward of one pass, and the
attention core alone at the model's shape.

Allocator: XLA:CPU allocates each run's temporaries (~2 GB for the bench train step) with
malloc, and glibc serves blocks that large with fresh mmaps, so every step pays page faults and
kernel page zeroing on all of it. --malloc_keep_heap calls mallopt() before JAX starts so freed
memory stays in the process heap for the next step (same as MALLOC_ARENA_MAX=1
MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=<huge> in the environment). It is off by default and
reported in the output when on.
"""
from __future__ import annotations

import ctypes
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app
from absl import flags
from flax import nnx
from ml_collections import config_flags

from avdit import hardware
from avdit import sharding
from avdit.data import pipeline
from avdit.diffusion import schedule as schedule_lib
from avdit.models import avdit as avdit_model
from avdit.models import layers
from avdit.models import latent_space as latent_lib
from avdit.sampling import generate
from avdit.sampling import samplers
from avdit.training import setup as setup_lib

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (path[:variant]).",
                                          lock_config=True)
_STEPS = flags.DEFINE_integer("steps", 5, "Timed train steps (after one compile+warm-up step).")
_SAMPLE_STEPS = flags.DEFINE_integer("sample_steps", 10, "DDIM steps in the timed sampler run.")
_SKIP_SAMPLER = flags.DEFINE_bool("skip_sampler", False, "Only time the train step.")
_JSON = flags.DEFINE_string("json", None, "Also write the results to this JSON file.")
_SHARDED = flags.DEFINE_bool(
    "sharded", False, "Time the step sharded over config.mesh on all devices (e.g. 8 fake CPU "
    "devices: XLA_FLAGS=--xla_force_host_platform_device_count=8), as training runs it.")
_DTYPE = flags.DEFINE_enum(
    "dtype", None, ["float32", "bfloat16"],
    "Override config.model.dtype (the compute dtype; parameters stay float32). bfloat16 also "
    "measures the bfloat16 matmul peak and reports the MFU against it.")
_PROFILE = flags.DEFINE_bool(
    "profile", False, "Also time the model forward, forward+backward of one pass (no "
    "self-conditioning, no optimizer) and the attention core alone (forward, forward+backward).")
_MALLOC_KEEP_HEAP = flags.DEFINE_bool(
    "malloc_keep_heap", False, "mallopt() so that glibc keeps freed memory in the heap instead "
    "of returning large blocks to the kernel (see the module docstring).")


def malloc_keep_heap() -> None:
  """glibc: one arena, no mmap'd blocks, no trimming, so each step reuses the last one's pages.

  Must run before JAX starts its threads (arena count) and allocates its first large buffers.
  """
  libc = ctypes.CDLL("libc.so.6")
  m_trim_threshold, m_top_pad, m_mmap_max, m_arena_max = -1, -2, -4, -8
  # mallopt's value is an int; -1 becomes SIZE_MAX for the trim threshold (never trim).
  for option, value in ((m_arena_max, 1), (m_mmap_max, 0), (m_trim_threshold, -1),
                        (m_top_pad, 256 << 20)):
    if libc.mallopt(option, value) != 1:
      raise RuntimeError(f"mallopt({option}, {value}) failed")


def measure_bf16_matmul_peak(size: int = 2048, repeats: int = 20) -> float:
  """FLOP/s of the best of `repeats` jitted bfloat16 x bfloat16 -> float32 size x size matmuls.

  One matmul per call: chaining would add a float32 -> bfloat16 conversion pass between the
  matmuls, which would lower the peak (and flatter the MFU). The call overhead is <1% of it.
  """
  a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32).astype(jnp.bfloat16)
  b = (jax.random.normal(jax.random.key(1), (size, size), jnp.float32) / size).astype(
      jnp.bfloat16)
  matmul = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32))
  matmul(a, b).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a, b).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2 * size**3 / best


def _median_seconds(fn, *args, repeats: int = 5) -> float:
  """Median wall time of fn(*args) after one untimed (compiling) call."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def profile_breakdown(config, train_result: dict) -> dict:
  """Seconds of the model forward, forward+backward of one pass, and the attention core alone.

  The one-pass forward+backward has neither the self-conditioning forward nor the optimizer;
  the train step is ≈ forward + (forward+backward) + optimizer. GFLOP/s from the analytic
  counts (attention core: 4·L²·d per layer per forward).
  """
  layout, graphdef = train_result["_layout"], train_result["_graphdef"]
  params = train_result["_state"].params
  batch = config.data.batch_size
  rng = np.random.default_rng(0)
  noisy = {name: jnp.asarray(rng.standard_normal(shape), jnp.float32)
           for name, shape in layout.latent_shapes(batch).items()}
  timesteps = jnp.asarray(rng.integers(0, 1000, (batch, 2, layout.num_segments)), jnp.float32)
  self_cond = noisy if config.model.self_condition else None

  def forward(params, noisy, timesteps, self_cond):
    return nnx.merge(graphdef, params)(noisy, timesteps, self_cond)

  def loss(params, *inputs):
    return sum(jnp.sum(jnp.square(y)) for y in forward(params, *inputs).values())

  flops = train_result["flops_breakdown_per_example_forward"]
  model_flops = flops["total"] * batch
  inputs = (params, noisy, timesteps, self_cond)
  out = {"forward_seconds": _median_seconds(jax.jit(forward), *inputs),
         "forward_backward_seconds": _median_seconds(jax.jit(jax.grad(loss)), *inputs)}
  out["forward_gflop_per_second"] = model_flops / out["forward_seconds"] / 1e9
  out["forward_backward_gflop_per_second"] = (3 * model_flops / out["forward_backward_seconds"]
                                              / 1e9)

  # The attention core of one layer at the model's shape, in the model's compute dtype.
  cfg = config.model
  dtype = jnp.dtype(cfg.dtype)
  shape = (batch, layout.num_tokens, cfg.num_heads, cfg.width // cfg.num_heads)
  q, k, v = (jnp.asarray(rng.standard_normal(shape), dtype) for _ in range(3))
  cotangent = jnp.asarray(rng.standard_normal(shape), jnp.float32)
  core = {"xla": layers.xla_attention, "flash": layers.flash_attention,
          "chunked": lambda q, k, v: layers.chunked_attention(q, k, v, cfg.attention_chunk)}[
              cfg.attention]
  core_grad = jax.jit(jax.grad(
      lambda q, k, v: jnp.sum(core(q, k, v).astype(jnp.float32) * cotangent), argnums=(0, 1, 2)))
  core_flops = flops["attention_core"] // cfg.depth * batch
  out["attention_core_forward_seconds"] = _median_seconds(jax.jit(core), q, k, v)
  out["attention_core_forward_backward_seconds"] = _median_seconds(core_grad, q, k, v)
  out["attention_core_forward_gflop_per_second"] = (
      core_flops / out["attention_core_forward_seconds"] / 1e9)
  out["attention_core_forward_backward_gflop_per_second"] = (
      3 * core_flops / out["attention_core_forward_backward_seconds"] / 1e9)
  return out


def benchmark_train_step(config, steps: int) -> dict:
  """The trainer's step (training.setup), on one device or, with --sharded, over config.mesh."""
  setup = setup_lib.setup_train(config, sharding.training_mesh(config) if _SHARDED.value else None)
  layout, state = setup.layout, setup.state
  stats = setup_lib.estimate_latent_stats(config, layout, setup.latent_space)
  train_step = setup.make_step(stats)
  batch = next(pipeline.make_train_iterator(config.data, layout))
  batch = {k: jnp.asarray(batch[k]) for k in setup_lib.MODEL_INPUTS}
  if setup.mesh is not None:
    batch = sharding.global_batch(jax.device_get(batch), setup.mesh)
    print(f"sharded over mesh {dict(setup.mesh.shape)} ({setup.mesh.size} devices)")
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
  flops_per_step = setup.flops_per_step
  return {"step_seconds": step_time, "step_seconds_all": times,
          "first_step_seconds_incl_compile": compile_and_first,
          "tokens_per_second": config.data.batch_size * layout.num_tokens / step_time,
          "flops_per_step": flops_per_step, "flop_per_second": flops_per_step / step_time,
          "flops_breakdown_per_example_forward": flops,
          "num_params": setup.num_params,
          "tokens": layout.num_tokens, "batch": config.data.batch_size,
          "loss": float(metrics["loss"]), "_state": state, "_graphdef": setup.graphdef,
          "_stats": stats, "_batch": batch, "_layout": layout,
          # What the step encodes batches with (a latent cache's batches are latents already).
          "_latent_space": setup.step_latent_space}


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
  if _MALLOC_KEEP_HEAP.value:
    malloc_keep_heap()
  config = _CONFIG.value
  if _DTYPE.value is not None:
    config.model.dtype = _DTYPE.value
  print(f"devices: {jax.devices()}")
  if _MALLOC_KEEP_HEAP.value:
    print("allocator: --malloc_keep_heap (glibc keeps freed memory; see the module docstring)")
  peak = hardware.measure_matmul_peak()
  print(f"measured fp32 matmul peak: {peak / 1e9:.1f} GFLOP/s")
  low_precision = config.model.dtype != "float32"
  if low_precision:
    bf16_peak = measure_bf16_matmul_peak()
    print(f"measured bf16 matmul peak (bf16 inputs, fp32 accumulation): {bf16_peak / 1e9:.1f} "
          "GFLOP/s")
  result = benchmark_train_step(config, _STEPS.value)
  mfu = result["flop_per_second"] / peak
  print(f"train step ({config.model.dtype} compute, attention={config.model.attention}): "
        f"{result['step_seconds']:.3f} s (median of {_STEPS.value}; first incl. "
        f"compile {result['first_step_seconds_incl_compile']:.1f} s), batch {result['batch']} x "
        f"{result['tokens']} tokens, {result['num_params'] / 1e6:.2f}M params")
  if low_precision:
    bf16_mfu = result["flop_per_second"] / bf16_peak
    print(f"tokens/s: {result['tokens_per_second']:.0f}   achieved: "
          f"{result['flop_per_second'] / 1e9:.1f} GFLOP/s   MFU vs the bf16 peak: "
          f"{bf16_mfu:.3f}   (vs the fp32 peak: {mfu:.3f}, not an MFU of this run's precision)")
  else:
    print(f"tokens/s: {result['tokens_per_second']:.0f}   achieved: "
          f"{result['flop_per_second'] / 1e9:.1f} GFLOP/s   MFU: {mfu:.3f}")
  breakdown = result["flops_breakdown_per_example_forward"]
  print("forward FLOPs per example: " + ", ".join(
      f"{k} {v / breakdown['total']:.1%}" for k, v in breakdown.items() if k != "total"))
  out = {k: v for k, v in result.items() if not k.startswith("_")}
  out.update(matmul_peak_flop_per_second=peak, mfu=mfu, malloc_keep_heap=_MALLOC_KEEP_HEAP.value,
             model={k: v for k, v in config.model.to_dict().items()})
  if low_precision:
    out.update(bf16_matmul_peak_flop_per_second=bf16_peak, mfu_vs_bf16_peak=bf16_mfu)
  if _PROFILE.value:
    profile = profile_breakdown(config, result)
    print(f"profile: model forward {profile['forward_seconds']:.3f} s "
          f"({profile['forward_gflop_per_second']:.0f} GFLOP/s), forward+backward of one pass "
          f"{profile['forward_backward_seconds']:.3f} s "
          f"({profile['forward_backward_gflop_per_second']:.0f} GFLOP/s)")
    print(f"profile: attention core of one layer [B, L, H, Dh] forward "
          f"{profile['attention_core_forward_seconds'] * 1e3:.1f} ms "
          f"({profile['attention_core_forward_gflop_per_second']:.0f} GFLOP/s), "
          f"forward+backward {profile['attention_core_forward_backward_seconds'] * 1e3:.1f} ms "
          f"({profile['attention_core_forward_backward_gflop_per_second']:.0f} GFLOP/s)")
    out["profile"] = profile
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
