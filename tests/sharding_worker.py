"""Run in a subprocess with 8 fake CPU devices (XLA_FLAGS must be set before JAX starts).

Prints one JSON line with the comparisons `test_sharding.py` asserts on.
"""
import json
import os
import sys

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")  # conftest's (compile time)
                           + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import numpy as np  # noqa: E402
import orbax.checkpoint as ocp  # noqa: E402

from avdit import layout as layout_lib  # noqa: E402
from avdit import sharding  # noqa: E402
from avdit.data import pipeline  # noqa: E402
from avdit.models import latent_space as latent_lib  # noqa: E402
from avdit.training import state as state_lib  # noqa: E402
from configs import avdit_synthetic  # noqa: E402

MESHES = {"data8": dict(data=8, fsdp=1, tensor=1),
          "fsdp4_data2": dict(data=2, fsdp=4, tensor=1),
          "tensor2_fsdp2_data2": dict(data=2, fsdp=2, tensor=2)}
STEPS = 2  # step 0 has lr 0 (warm-up from 0); step 1 moves the parameters


def leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


def setup():
  """(tiny config at batch 8, layout, latent space, latent stats, one batch)."""
  config = avdit_synthetic.get_config("tiny")
  config.data.batch_size = 8
  layout = layout_lib.layout_from_config(config)
  space = latent_lib.make_latent_space(config, layout)
  raw = next(pipeline.make_train_iterator(config.data, layout, process_index=0, process_count=1))
  batch = {k: raw[k] for k in ("video", "audio")}
  stats = latent_lib.estimate_stats(space.encode(batch["video"], batch["audio"]))
  return config, layout, space, stats, batch


def single_device_reference(config, layout, space, stats, batch):
  """(initial parameters, losses, final state leaves) of STEPS steps on one device."""
  graphdef, state = state_lib.create_train_state(config, layout)
  init = leaves(state.params)
  step = state_lib.make_train_step(config, layout, graphdef, space, stats)
  losses = []
  for _ in range(STEPS):
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"]))
  return init, losses, leaves(state)


def mesh_case(config, layout, space, stats, batch, name, init, reference):
  """The same steps on mesh `name`: differences from the reference, shardings; (json, state)."""
  config.mesh.ici_parallelism = MESHES[name]
  mesh = sharding.make_mesh(config.mesh)
  graphdef_m, state_m, shardings = state_lib.sharded_train_state(config, layout, mesh)
  init_diff = max(float(np.max(np.abs(a - b))) for a, b in zip(init, leaves(state_m.params)))
  step_m = state_lib.make_train_step(config, layout, graphdef_m, space, stats,
                                     state_shardings=shardings,
                                     batch_sharding=sharding.batch_sharding(mesh))
  lowered_text = step_m.lower(state_m, sharding.global_batch(batch, mesh)).as_text()
  mesh_losses = []
  for _ in range(STEPS):
    state_m, metrics = step_m(state_m, sharding.global_batch(batch, mesh))
    mesh_losses.append(float(metrics["loss"]))
  got = leaves(state_m)
  param_shardings = shardings.params
  sharded_names = sorted(
      jax.tree_util.keystr(p) for p, s in jax.tree_util.tree_flatten_with_path(
          param_shardings, is_leaf=lambda x: isinstance(x, jax.sharding.NamedSharding))[0]
      if not s.is_fully_replicated)
  return {
      "mesh_shape": dict(mesh.shape), "init_max_abs_diff": init_diff, "losses": mesh_losses,
      "state_max_abs_diff": max(float(np.max(np.abs(a - b))) for a, b in zip(reference, got)),
      "state_max_rel_diff": max(float(np.max(np.abs(a - b)) / (np.max(np.abs(a)) + 1e-12))
                                for a, b in zip(reference, got)),
      "largest_unsharded_param": sharding.largest_unsharded(state_m.params, param_shardings),
      "num_sharded_params": len(sharded_names),
      # Activation constraints traced into the step (layers.constrain at block boundaries).
      "num_sharding_constraints": lowered_text.count("sharding_constraint"),
      "mlp_kernel_spec": str(jax.tree.leaves(
          param_shardings.blocks[0].mlp.fc_in.kernel,
          is_leaf=lambda x: isinstance(x, jax.sharding.NamedSharding))[0].spec),
  }, state_m


def restore_case(config, layout, tmp_dir, state_m, got):
  """Save on the current mesh, restore onto the data=8 mesh: same values, new shardings."""
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(os.path.join(tmp_dir, "ckpt"), state_m)
    ckptr.wait_until_finished()
    config.mesh.ici_parallelism = MESHES["data8"]
    mesh8 = sharding.make_mesh(config.mesh)
    _, abstract = state_lib.abstract_train_state(config, layout)
    target_shardings = sharding.state_shardings(
        abstract, mesh8, sharding.logical_axis_rules(config.mesh))
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          abstract, target_shardings)
    restored = ckptr.restore(os.path.join(tmp_dir, "ckpt"), target)
  return {
      "max_abs_diff": max(float(np.max(np.abs(a - b))) for a, b in zip(got, leaves(restored))),
      "mesh_of_restored": dict(jax.tree.leaves(restored.params)[0].sharding.mesh.shape),
  }


def one_block(config):
  # How the step shards does not depend on depth, and every block more is compile time in each
  # program (~40% of this test's time at depth 2).
  config.model.depth = 1
  return config


def main(tmp_dir):
  """Tensor x fsdp x data (which covers the data and fsdp rules too; pure data parallel and
  fsdp=4 alone run with the extras)."""
  config, layout, space, stats, batch = setup()
  one_block(config)
  init, losses, reference = single_device_reference(config, layout, space, stats, batch)
  out = {"num_devices": jax.device_count(), "reference_losses": losses, "meshes": {}}
  name = "tensor2_fsdp2_data2"
  out["meshes"][name], state_m = mesh_case(config, layout, space, stats, batch, name, init,
                                           reference)
  out["restore"] = restore_case(config, layout, tmp_dir, state_m, leaves(state_m))
  print("RESULT " + json.dumps(out))


def extras(config, layout, space, stats, batch):
  """The scanned-layers and autoencoder cases: a second process, run beside `main` (XLA's CPU
  compiler is mostly single-threaded, so two processes halve the wall time on 2 cores)."""
  out = {"scan": scanned_layers_case(config, layout, space, stats, batch),
         "autoencoder": autoencoder_case()}
  one_block(config)
  init, losses, reference = single_device_reference(config, layout, space, stats, batch)
  out["reference_losses"] = losses
  for name in ("fsdp4_data2", "data8"):
    out[name], _ = mesh_case(config, layout, space, stats, batch, name, init, reference)
  print("RESULT " + json.dumps(out))


def scanned_layers_case(config, layout, space, stats, batch):
  """model.scan_layers on tensor x fsdp x data: equal to its own single-device step, with the
  stacked kernels sharded behind an unsharded "layers" axis."""
  config.model.scan_layers = True
  graphdef, state = state_lib.create_train_state(config, layout)
  step = state_lib.make_train_step(config, layout, graphdef, space, stats)
  for _ in range(STEPS):
    state, _ = step(state, batch)
  reference = leaves(state)
  config.mesh.ici_parallelism = MESHES["tensor2_fsdp2_data2"]
  mesh = sharding.make_mesh(config.mesh)
  graphdef_m, state_m, shardings = state_lib.sharded_train_state(config, layout, mesh)
  step_m = state_lib.make_train_step(config, layout, graphdef_m, space, stats,
                                     state_shardings=shardings,
                                     batch_sharding=sharding.batch_sharding(mesh))
  for _ in range(STEPS):
    state_m, _ = step_m(state_m, sharding.global_batch(batch, mesh))
  config.model.scan_layers = False
  return {
      "state_max_abs_diff": max(float(np.max(np.abs(a - b)))
                                for a, b in zip(reference, leaves(state_m))),
      "mlp_kernel_shape": list(state_m.params.blocks.mlp.fc_in.kernel.shape),
      "mlp_kernel_spec": str(shardings.params.blocks.mlp.fc_in.kernel.get_value().spec),
  }



def autoencoder_case():
  """Tiny SoundStream (EMA codebooks, k-means init, quantizer dropout) on fsdp=2 x data=4 with
  its output channels sharded, against the same step on one device. The discriminators are
  left out to keep the suite short: they shard by the same rules (conv_out)."""
  from avdit.training import autoencoder  # pylint: disable=g-import-not-at-top
  from configs import soundstream_synthetic  # pylint: disable=g-import-not-at-top
  config = soundstream_synthetic.get_config("tiny")
  config.data.batch_size = 8
  config.loss.adversarial_weight = 0.0
  layout = autoencoder.clip_layout(config)
  raw = next(pipeline.make_train_iterator(config.data, layout, process_index=0, process_count=1))
  batch = {"audio": raw["audio"]}
  gen_graphdef, disc_graphdef, state = autoencoder.create_state(config)
  step = autoencoder.make_train_step(config, gen_graphdef, disc_graphdef)
  for _ in range(STEPS):
    state, metrics = step(state, batch)
  reference_loss = float(metrics["loss"])
  config.mesh.ici_parallelism = dict(data=4, fsdp=2, tensor=1)
  config.mesh.logical_axis_rules = tuple(
      (name, "fsdp" if name in ("conv_out", "dense_out") else target)
      for name, target in config.mesh.logical_axis_rules)
  mesh = sharding.make_mesh(config.mesh)
  gen_graphdef, disc_graphdef, state_m, shardings = autoencoder.sharded_state(config, mesh)
  step_m = autoencoder.make_train_step(config, gen_graphdef, disc_graphdef,
                                       state_shardings=shardings,
                                       batch_sharding=sharding.batch_sharding(mesh))
  for _ in range(STEPS):
    state_m, metrics = step_m(state_m, sharding.global_batch(batch, mesh))
  rel = lambda pairs: max(float(np.max(np.abs(np.asarray(a, np.float64) - b))
                                / (np.max(np.abs(a)) + 1e-12)) for a, b in pairs)
  generator = lambda s: leaves((s.gen_params, s.gen_state, s.ema_params))
  return {
      "loss": [reference_loss, float(metrics["loss"])],
      "generator_max_rel_diff": rel(zip(generator(state), generator(state_m))),
      "num_sharded": sum(not s.is_fully_replicated for s in jax.tree.leaves(
          shardings.gen_params, is_leaf=lambda x: isinstance(x, jax.sharding.NamedSharding))),
  }


if __name__ == "__main__":
  if sys.argv[2:] == ["extras"]:
    extras(*setup())
  else:
    main(sys.argv[1])
