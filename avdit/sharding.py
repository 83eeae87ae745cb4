"""Device meshes, logical-axis rules and the shardings of the train state and batch (SPEC §9).

Mesh axes are `data`, `fsdp` and `tensor`. `config.mesh` gives the parallelism of each axis within
a slice (ICI; one axis may be -1 = "the rest of the devices") and across slices (DCN). Every
parameter of AVDiT carries logical axis names (`avdit/models/layers.py: LogicalAxes`);
`config.mesh.logical_axis_rules` maps each name to mesh axes, so the same model shards as pure
data parallel, FSDP, or FSDP + tensor parallel by configuration alone. The batch is sharded over
`data` x `fsdp`.

Training, sampling, evaluation and the tools all place arrays with these, so they sit below them
all; the one piece that builds a train state (`training.state.sharded_train_state`) lives there,
and `training.setup` builds a whole run on a mesh.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import jax
import numpy as np
from flax import nnx
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")


def resolve_parallelism(parallelism: dict[str, int], num_devices: int, what: str) -> tuple:
  """Per-axis sizes for MESH_AXES with at most one -1 filled in; clear errors otherwise."""
  sizes = [int(parallelism.get(axis, 1)) for axis in MESH_AXES]
  unknown = [i for i, s in enumerate(sizes) if s == -1]
  if len(unknown) > 1:
    raise ValueError(f"{what}: at most one mesh axis may be -1, got {dict(zip(MESH_AXES, sizes))}")
  if any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f"{what}: mesh axis sizes must be positive or -1, got "
                     f"{dict(zip(MESH_AXES, sizes))}")
  known = math.prod(s for s in sizes if s != -1)
  if unknown:
    if num_devices % known:
      raise ValueError(f"{what}: {num_devices} devices are not divisible by the fixed axes "
                       f"{dict(zip(MESH_AXES, sizes))} (product {known})")
    sizes[unknown[0]] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise ValueError(f"{what}: mesh {dict(zip(MESH_AXES, sizes))} has {math.prod(sizes)} "
                     f"devices but {num_devices} are available; use -1 on one axis to fill")
  return tuple(sizes)


def make_mesh(mesh_config, devices=None) -> Mesh:
  """The (data, fsdp, tensor) mesh; multi-slice (DCN) when `mesh_config.num_slices > 1`."""
  devices = list(jax.devices() if devices is None else devices)
  num_slices = int(mesh_config.get("num_slices", 1))
  if len(devices) % num_slices:
    raise ValueError(f"{len(devices)} devices do not split into {num_slices} slices")
  per_slice = len(devices) // num_slices
  ici = resolve_parallelism(dict(mesh_config.ici_parallelism), per_slice, "mesh.ici_parallelism")
  if num_slices == 1:
    try:
      array = mesh_utils.create_device_mesh(ici, devices)
    except (ValueError, NotImplementedError, AssertionError):
      # Fake CPU devices and unusual topologies: a plain reshape is correct, only less tuned.
      array = np.asarray(devices).reshape(ici)
  else:
    dcn = resolve_parallelism(dict(mesh_config.dcn_parallelism), num_slices,
                              "mesh.dcn_parallelism")
    array = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices)
  return Mesh(array, MESH_AXES)


def logical_axis_rules(mesh_config) -> tuple[tuple[str, object], ...]:
  """The config's rules as a tuple of (logical name, mesh axis | tuple of axes | None)."""
  rules = []
  for name, target in mesh_config.logical_axis_rules:
    if isinstance(target, list):
      target = tuple(target)
    for axis in (target if isinstance(target, tuple) else (target,)):
      if axis is not None and axis not in MESH_AXES:
        raise ValueError(f"logical axis rule {name!r} -> {target!r} names an unknown mesh axis "
                         f"{axis!r}; mesh axes are {MESH_AXES}")
    rules.append((name, target))
  return tuple(rules)


def state_shardings(abstract_state, mesh: Mesh, rules):
  """NamedShardings for a pytree of nnx Variables (params, optimizer moments, EMA) by the rules.

  Optimizer moments mirror the parameters' Variables (and their logical names); scalars and
  anything without names are replicated.
  """
  with nnx.logical_axis_rules(rules):
    specs = nnx.get_partition_spec(abstract_state)
  is_spec = lambda x: isinstance(x, P) or x is None
  shapes = jax.tree.map(lambda x: tuple(x.shape), abstract_state)
  flat_specs, treedef = jax.tree.flatten(specs, is_leaf=is_spec)
  flat_shapes = treedef.flatten_up_to(shapes)
  return treedef.unflatten([NamedSharding(mesh, divisible_spec(spec, shape, mesh))
                            for spec, shape in zip(flat_specs, flat_shapes)])


def divisible_spec(spec, shape, mesh: Mesh) -> P:
  """`spec` with every dimension that its mesh axes do not divide evenly left unsharded.

  jit refuses uneven shardings; a 3-channel RGB output conv, a 1-channel waveform conv or a
  bias of odd size stays replicated rather than failing the rule that shards its siblings.
  """
  if not isinstance(spec, P):
    return P()
  entries = []
  for size, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    names = () if axes is None else (axes if isinstance(axes, tuple) else (axes,))
    shards = math.prod(mesh.shape[a] for a in names)
    entries.append(axes if shards and size % shards == 0 else None)
  return P(*entries)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Examples split over data x fsdp; everything else of a batch array replicated."""
  return NamedSharding(mesh, P(BATCH_AXES))


def check_batch_divides(global_batch_size: int, mesh_shape) -> None:
  """Clear error when the global batch does not split evenly over data x fsdp."""
  shards = mesh_shape["data"] * mesh_shape["fsdp"]
  if global_batch_size % shards:
    raise ValueError(f"data.batch_size={global_batch_size} is not divisible by the data x fsdp "
                     f"mesh axes ({mesh_shape['data']} x {mesh_shape['fsdp']} = {shards})")


def global_batch(local_batch: dict, mesh: Mesh) -> dict:
  """Host-local numpy batches -> global jax.Arrays sharded over data x fsdp (multi-host safe)."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local_batch.items()}


def training_mesh(config, devices=None) -> Mesh:
  """config.mesh over `devices` (default: all), checked to split the global batch evenly."""
  mesh = make_mesh(config.mesh, devices)
  check_batch_divides(config.data.batch_size, mesh.shape)
  return mesh


def jit_step(step_fn, state_shardings=None, batch_sharding=None):
  """`step_fn(state, batch) -> (state, metrics)` jitted with the state donated; with shardings,
  explicit in/out shardings over their mesh (metrics replicated)."""
  if state_shardings is None:
    return jax.jit(step_fn, donate_argnums=(0,))
  replicated = NamedSharding(batch_sharding.mesh, P())
  return jax.jit(step_fn, in_shardings=(state_shardings, batch_sharding),
                 out_shardings=(state_shardings, replicated), donate_argnums=(0,))


def replicated_batch(full_batch: dict, mesh: Mesh, pad_to_mesh: bool = False):
  """(global arrays sharded over data x fsdp, rows) from a batch every host holds in full.

  For data every process computes identically (held-out clips for sampling and evaluation).
  With `pad_to_mesh`, the batch is padded with copies of its last row up to a multiple of
  data x fsdp; the caller keeps the first `rows`.
  """
  sharding = batch_sharding(mesh)
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  rows = next(iter(full_batch.values())).shape[0]
  padded_rows = -(-rows // shards) * shards if pad_to_mesh else rows
  check_batch_divides(padded_rows, mesh.shape)
  out = {}
  for key, value in full_batch.items():
    value = np.asarray(value)
    if padded_rows > rows:
      value = np.concatenate([value, np.repeat(value[-1:], padded_rows - rows, axis=0)])
    out[key] = jax.make_array_from_callback(value.shape, sharding, lambda idx, v=value: v[idx])
  return out, rows


def fetch(tree):
  """A pytree of (possibly multi-host sharded) arrays as numpy on every host."""
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  if jax.process_count() == 1:
    return jax.device_get(tree)
  return multihost_utils.process_allgather(tree, tiled=True)


def with_shardings(abstract_tree, shardings):
  """ShapeDtypeStructs carrying `shardings` (for restoring or compiling onto a mesh)."""
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract_tree, shardings)


def largest_unsharded(state, shardings) -> tuple[str, int]:
  """(path, size) of the largest array that is fully replicated under `shardings`."""
  best = ("", 0)
  flat_state = jax.tree_util.tree_flatten_with_path(state)[0]
  flat_shard = jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, NamedSharding))
  for (path, leaf), sharding in zip(flat_state, flat_shard):
    if sharding.is_fully_replicated and leaf.size > best[1]:
      best = (jax.tree_util.keystr(path), int(leaf.size))
  return best


def create_in_shardings(create: Callable[[], Any], shardings):
  """`create()` run as one jit whose outputs land in `shardings`, so no host ever holds the
  whole state.

  On CPU the program is compiled at XLA backend optimization level 0: it runs once, and
  optimizing its hundreds of random-number fusions triples its compile time (tiny SoundStream
  state: 11 s -> 3.6 s; the values agree to float32 round-off). Other backends compile as usual.
  """
  options = {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else None
  return jax.jit(create, out_shardings=shardings).lower().compile(compiler_options=options)()

