r"""Ahead-of-time compilation for a TPU topology from a CPU host: does the config fit, how fast?

  JAX_PLATFORMS=cpu python -m avdit.tools.train_compile --config=configs/avdit_monologues.py \
      --topology=v5e:16x16                      # the train step on 256 v5e chips
  JAX_PLATFORMS=cpu python -m avdit.tools.train_compile --config=configs/avdit_monologues.py \
      --topology=v5e:4x4 --mode=sample          # the whole DDIM sampling loop on 16 chips

Needs `pip install libtpu` (the `tpu` extra of jax), which describes TPU slices without TPUs
(`jax.experimental.topologies`); the runtime stays on the CPU. Builds the trainer's run
abstractly (`avdit.training.setup`: the train state and batch as ShapeDtypeStructs with their
shardings over the config's mesh), lowers and compiles the step for the
topology, and prints per-chip memory (arguments, outputs, temporaries, peak), the compiler's
FLOPs, and the step time at a given MFU from the analytic FLOPs. Exits with status 3 and a clear
message when the peak does not fit the chip's HBM. Latent spaces whose encoder is not part of
the step (the learned autoencoders) are compiled on precomputed latents, as training on a latent
cache runs.
"""
from __future__ import annotations

import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
from absl import app
from absl import flags
from ml_collections import config_flags

from avdit import hardware
from avdit import layout as layout_lib
from avdit import sharding
from avdit import tasks as tasks_lib
from avdit.diffusion import schedule as schedule_lib
from avdit.models import avdit as avdit_model
from avdit.sampling import generate
from avdit.sampling import samplers
from avdit.training import setup as setup_lib
from avdit.training import state as state_lib

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (path[:variant]).",
                                          lock_config=True)
_TOPOLOGY = flags.DEFINE_string("topology", "v5e:16x16", "TPU slice, e.g. v5e:16x16, v5p:4x4x4.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "sample"], "What to compile.")
_MFU = flags.DEFINE_float("mfu", 0.6, "Assumed MFU for the step-time estimate.")
_TASK = flags.DEFINE_string("task", "a2v", "Task compiled in --mode=sample.")


Chip = hardware.Chip
CHIPS = hardware.CHIPS
GIB = hardware.GIB


def parse_topology(name: str) -> tuple[str, Chip, int]:
  """(chip name, Chip, number of chips) of "v5e:16x16"; ValueError naming what is wrong."""
  match = re.fullmatch(r"(v\d+[a-z]*):(\d+(?:x\d+)*)", name.strip())
  if not match:
    raise ValueError(f"cannot read topology {name!r}: expected CHIP:AxB[xC], e.g. v5e:16x16")
  chip = match.group(1)
  if chip not in CHIPS:
    raise ValueError(f"unknown TPU chip {chip!r} in {name!r}; known: {', '.join(CHIPS)}")
  return chip, CHIPS[chip], int(np.prod([int(d) for d in match.group(2).split("x")]))


def topology_devices(name: str):
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  try:
    return topologies.get_topology_desc(platform="tpu", topology_name=name).devices
  except Exception as e:  # libtpu missing or the name unknown to it
    raise RuntimeError(f"could not describe TPU topology {name!r} ({e}); is libtpu installed "
                       "(pip install libtpu, the `tpu` extra of jax)?") from e


def compile_train_step(config, devices):
  """(compiled step, info dict) for the config's mesh over `devices`: the trainer's run
  (training.setup), abstract, with placeholder latent statistics of the real ones' shapes."""
  setup = setup_lib.setup_train(config, sharding.training_mesh(config, devices), abstract=True)
  step = setup.make_step(setup_lib.placeholder_stats(config, setup.layout))
  with state_lib.mesh_context(config, setup.mesh):
    compiled = compile_or_report(step.lower(setup.state, setup.shaped_inputs()))
  info = {"mesh": dict(setup.mesh.shape), "precomputed_latents": setup.precomputed_latents,
          "num_params": setup.num_params,
          "largest_unsharded_param": sharding.largest_unsharded(setup.state.params,
                                                                setup.state_shardings.params),
          "analytic_flops_per_step": setup.flops_per_step}
  return compiled, info


def compile_sampler(config, devices, task_spec: str):
  """(compiled sampling loop, info) for the EMA parameters and `config.sample` on `devices`."""
  config = generate.inference_config(config)
  layout = layout_lib.layout_from_config(config)
  mesh = sharding.make_mesh(config.mesh, devices)
  batch = config.sample.num_clips
  sharding.check_batch_divides(batch, mesh.shape)
  task = tasks_lib.parse_task(task_spec, layout)
  spec = samplers.SamplerSpec.from_config(config.sample, config.diffusion, config.model,
                                          task=task)
  batch_sharding = sharding.batch_sharding(mesh)
  condition = {k: jax.ShapeDtypeStruct(v, jnp.float32, sharding=batch_sharding)
               for k, v in layout.latent_shapes(batch).items()}
  graphdef, abstract, shardings = state_lib.sharded_train_state(config, layout, mesh,
                                                                abstract=True)
  with state_lib.mesh_context(config, mesh):
    run = samplers.compiled_sampler(generate.make_apply_fn(graphdef), task.condition_mask,
                                    schedule=schedule_lib.from_config(config.diffusion),
                                    layout=layout, spec=spec)
    key = jax.eval_shape(lambda: jax.random.key(0))
    compiled = compile_or_report(run.lower(abstract.ema_params, condition, key, None))
  passes = 2 if spec.guidance_weight and task.condition_mask.any() else 1
  flops = (avdit_model.flops_per_example(config.model, layout)["total"] * batch * passes
           * spec.num_steps)
  info = {"mesh": dict(mesh.shape), "task": task.name, "sampler": spec.sampler,
          "num_steps": spec.num_steps, "batch": batch, "analytic_flops_per_run": flops}
  return compiled, info


class DoesNotFit(Exception):
  pass


def compile_or_report(lowered):
  """Compiles; a TPU compiler's out-of-HBM refusal becomes DoesNotFit with its own numbers."""
  try:
    return lowered.compile()
  except jax.errors.JaxRuntimeError as e:
    if "RESOURCE_EXHAUSTED" in str(e):
      raise DoesNotFit(str(e).split("RESOURCE_EXHAUSTED:")[-1].strip()) from e
    raise


def memory_report(compiled) -> dict:
  mem = compiled.memory_analysis()
  report = {k: int(getattr(mem, f"{k}_size_in_bytes", 0) or 0)
            for k in ("argument", "output", "alias", "temp", "generated_code")}
  # Donated state aliases its output: count it once.
  report["peak"] = (report["argument"] + report["output"] - report["alias"] + report["temp"]
                    + report["generated_code"])
  return report


def compiler_flops(compiled) -> float | None:
  try:
    cost = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return float(cost.get("flops", 0.0)) if cost else None


def main(argv):
  del argv
  config = _CONFIG.value
  chip_name, chip, num_chips = parse_topology(_TOPOLOGY.value)
  devices = topology_devices(_TOPOLOGY.value)
  if len(devices) != num_chips:
    raise ValueError(f"topology {_TOPOLOGY.value} described {len(devices)} devices, "
                     f"expected {num_chips}")
  fix = ("try model.remat=full, model.dtype=bfloat16, more fsdp (mesh.ici_parallelism) or a "
         "smaller batch")
  try:
    if _MODE.value == "train":
      compiled, info = compile_train_step(config, devices)
      analytic = info["analytic_flops_per_step"]
    else:
      compiled, info = compile_sampler(config, devices, _TASK.value)
      analytic = info["analytic_flops_per_run"]
  except DoesNotFit as e:
    print(f"error: the {_MODE.value} step does not fit {chip_name}'s {chip.hbm_bytes / GIB:.2f} "
          f"GiB HBM on {_TOPOLOGY.value} (the TPU compiler: {e}); {fix}", file=sys.stderr)
    sys.exit(3)
  mem = memory_report(compiled)
  gib = lambda b: f"{b / GIB:.2f} GiB"
  print(f"topology {_TOPOLOGY.value}: {num_chips} x {chip_name} ({gib(chip.hbm_bytes)} HBM, "
        f"{chip.peak_bf16_flops / 1e12:.0f} TFLOP/s bf16 each); mesh {info['mesh']}")
  for k, v in info.items():
    if k != "mesh":
      print(f"  {k}: {v}")
  print(f"  model: dtype {config.model.dtype}, remat {config.model.remat}, attention "
        f"{config.model.attention}, scan_layers {config.model.get('scan_layers', False)}, "
        "params fp32")
  print("per-chip memory: " + ", ".join(f"{k} {gib(v)}" for k, v in mem.items()))
  flops = compiler_flops(compiled)
  if flops:
    # cost_analysis counts a scan body once and Pallas kernels not at all; compare with the
    # analytic count only with model.scan_layers=False and attention="xla".
    undercounted = []
    if _MODE.value == "sample":
      undercounted.append("the sampler's scan body once")
    if config.model.get("scan_layers", False):
      undercounted.append("the scanned blocks once")
    if config.model.attention == "splash":
      undercounted.append("no Pallas attention")
    note = f" (XLA counts {', '.join(undercounted)})" if undercounted else ""
    print(f"compiler FLOPs per chip: {flops / 1e12:.3f} TFLOP{note}")
  seconds = analytic / (num_chips * chip.peak_bf16_flops * _MFU.value)
  what = "step" if _MODE.value == "train" else "sampling run"
  print(f"analytic FLOPs per {what}: {analytic / 1e12:.3f} TFLOP -> {seconds:.4g} s at "
        f"{_MFU.value:.0%} MFU")
  if _MODE.value == "train":
    steps = config.train.num_steps
    if steps:
      print(f"{steps} steps -> {steps * seconds / 86400:.3g} days")
    else:  # training.budget.fit_budget
      print("train.num_steps=0: the run's steps are set by its time budget when it starts")
  if mem["peak"] > chip.hbm_bytes:
    print(f"error: per-chip peak {gib(mem['peak'])} does not fit {chip_name}'s "
          f"{gib(chip.hbm_bytes)} HBM; {fix}", file=sys.stderr)
    sys.exit(3)
  print(f"fits: peak {gib(mem['peak'])} of {gib(chip.hbm_bytes)} per chip")


if __name__ == "__main__":
  flags.mark_flag_as_required("config")
  app.run(main)
