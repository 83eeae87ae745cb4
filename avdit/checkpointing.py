"""Orbax checkpoints holding a train state, its data iterator and JSON payloads together.

One `CheckpointManager` under `<workdir>/checkpoints`, items:
  state     the train state (params, optimizer, EMA, step)   StandardSave/Restore
  data_iter the grain iterator's position                    grain.checkpoint.CheckpointSave/Restore
  <payload> one JSON item per payload saved beside the state JsonSave/Restore
            AVDiT: `latent` (per-channel latent normalization + space);
            the autoencoders: `model` (kind and constructor arguments)
Saves are asynchronous, the newest `keep` are kept, and a save is forced on a preemption signal
(the loop of avdit/training/loop.py). Restoring for sampling reads `latent` and the EMA (or raw)
parameters of `state` only; initializing a new run from another's checkpoint (fine-tuning,
train.init_from) reads the `params` and `ema_params` of `state`, checked first against the
shapes in its metadata.
"""
from __future__ import annotations

from etils import epath
import grain
import jax
import orbax.checkpoint as ocp

from avdit import workdir as workdir_lib


TRAINING_ITEMS = ("state", "data_iter")  # then one JSON item per payload


def checkpoint_dir(workdir: str) -> str:
  return str(workdir_lib.path(workdir, "checkpoints"))


def make_manager(workdir: str, *, keep: int = 3, async_save: bool = True,
                 read_only: bool = False,
                 item_names: tuple[str, ...] = (*TRAINING_ITEMS, "latent"),
                 keep_period: int | None = None) -> ocp.CheckpointManager:
  """`keep_period`: checkpoints at multiples of it are never deleted (the learning curve's)."""
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, enable_async_checkpointing=async_save, create=not read_only,
      read_only=read_only, keep_period=keep_period or None)
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options, item_names=item_names)


def save(manager, step: int, state, data_iter, payloads: dict[str, dict], *,
         force: bool = False):
  """The state, the data iterator's position and each JSON payload (item name -> dict)."""
  items = {name: ocp.args.JsonSave(payload) for name, payload in payloads.items()}
  return manager.save(
      step,
      args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                              data_iter=grain.checkpoint.CheckpointSave(data_iter), **items),
      force=force)


def restore_for_training(manager, step: int, abstract_state, data_iter,
                         payload_names: tuple[str, ...] = ("latent",)):
  """(state, {name: payload}); `data_iter` is moved to the saved position in place."""
  items = {name: ocp.args.JsonRestore() for name in payload_names}
  restored = manager.restore(
      step,
      args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                              data_iter=grain.checkpoint.CheckpointRestore(data_iter), **items))
  return restored["state"], {name: restored[name] for name in payload_names}


def set_aside(manager, step: int) -> str:
  """Moves checkpoint `step` (one that does not read back) to <workdir>/damaged_checkpoints/,
  kept whole for inspection and out of the manager's way (a later save of that step is a new
  directory); returns where it went."""
  source = epath.Path(manager.directory) / str(step)
  aside = epath.Path(manager.directory).parent / "damaged_checkpoints"
  aside.mkdir(parents=True, exist_ok=True)
  target, copy = aside / str(step), 1
  while target.exists():  # never replace an earlier damaged copy of the same step
    target, copy = aside / f"{step}.{copy}", copy + 1
  source.rename(target)
  manager.reload()
  return str(target)


def checkpoint_steps(workdir: str) -> list[int]:
  """Steps of every checkpoint in `workdir`, ascending."""
  manager = make_manager(workdir, read_only=True, async_save=False)
  steps = sorted(manager.all_steps())
  manager.close()
  return steps


def resolve_step(workdir: str, step: int = -1) -> int:
  """The checkpoint step of `workdir` to read: the latest (step=-1) or `step`, which must exist.

  Raises:
    FileNotFoundError: no checkpoint directory, no checkpoint, or no checkpoint at `step`.
  """
  directory = checkpoint_dir(workdir)
  if not workdir_lib.path(directory).is_dir():
    raise FileNotFoundError(f"no checkpoint directory {directory}: train first "
                            f"(--mode=train or train_and_sample with --workdir={workdir})")
  steps = checkpoint_steps(workdir)
  if not steps:
    raise FileNotFoundError(f"no checkpoint in {directory}: train first (--mode=train)")
  if step == -1:
    return max(steps)
  if step not in steps:
    raise FileNotFoundError(f"no checkpoint for step {step} in {directory}; have {steps}")
  return step


def restore_for_sampling(workdir: str, abstract_params, step: int = -1, ema: bool = True):
  """(params, latent_payload, step) from the latest (step=-1) or a given checkpoint: the EMA
  (`ema`) or the raw parameters onto `abstract_params`' shardings; the optimizer's moments
  (twice the parameters) are not read."""
  step = resolve_step(workdir, step)
  name = "ema_params" if ema else "params"
  params = restore_subtrees(workdir, step, {name: abstract_params})[name]
  return params, read_payload(workdir, step, "latent"), step


# --- Initializing a new run from another run's checkpoint (fine-tuning) ---------------------------
def parse_run_spec(spec: str) -> tuple[str, int]:
  """'DIR[:step]' -> (DIR, step), step -1 (the latest) when absent; 'gs://b/run' has no step."""
  head, sep, tail = spec.rpartition(":")
  if sep and head and tail.isdigit():
    return head, int(tail)
  return spec, -1


def _state_item(workdir: str, step: int) -> str:
  return str(workdir_lib.path(checkpoint_dir(workdir), str(step), "state"))


def saved_state_shapes(workdir: str, step: int) -> dict[str, tuple[int, ...]]:
  """'params/blocks/0/attn/...' -> shape of every array of a checkpoint's `state` item, read
  from its metadata (no array is loaded)."""
  metadata = ocp.StandardCheckpointer().metadata(_state_item(workdir, step)).item_metadata
  return {path_name(path): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_flatten_with_path(metadata.tree)[0]}


def path_name(path) -> str:
  """A pytree key path as 'a/b/0/c', the same for a restored tree and its metadata (the
  trailing 'value' of an nnx.Param is dropped)."""
  parts = [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]
  return "/".join(parts[:-1] if parts and parts[-1] == "value" else parts)


def read_payload(workdir: str, step: int, name: str) -> dict:
  """One JSON item saved beside the state (e.g. `latent`)."""
  manager = make_manager(workdir, read_only=True, async_save=False, item_names=(name,))
  payload = manager.restore(step, args=ocp.args.Composite(**{name: ocp.args.JsonRestore()}))
  manager.close()
  return payload[name]


def restore_subtrees(workdir: str, step: int, abstract_items: dict):
  """{name: tree} of the named top-level entries of a checkpoint's `state` (e.g. params and
  ema_params), restored onto the shardings of `abstract_items`; the rest is not read."""
  return ocp.PyTreeCheckpointer().restore(
      _state_item(workdir, step),
      args=ocp.args.PyTreeRestore(
          item=abstract_items,
          restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_items),
          partial_restore=True))


def abstract_like(tree):
  """ShapeDtypeStructs (with shardings where present) for restoring onto the same placement."""
  return jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, tree)
