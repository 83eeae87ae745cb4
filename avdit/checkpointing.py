"""Orbax checkpoints holding a train state, its data iterator and JSON payloads together.

One `CheckpointManager` under `<workdir>/checkpoints`, items:
  state     the train state (params, optimizer, EMA, step)   StandardSave/Restore
  data_iter the grain iterator's position                    grain.checkpoint.CheckpointSave/Restore
  <payload> one JSON item per payload saved beside the state JsonSave/Restore
            AVDiT: `latent` (per-channel latent normalization + space);
            the autoencoders: `model` (kind and constructor arguments)
Saves are asynchronous, the newest `keep` are kept, and a save is forced on a preemption signal
(the loop of avdit/training/loop.py). Restoring for sampling reads `state` and `latent` only.
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


def restore_for_sampling(workdir: str, abstract_state, step: int = -1):
  """(state, latent_payload, step) from the latest (step=-1) or a given checkpoint."""
  directory = checkpoint_dir(workdir)
  if not workdir_lib.path(directory).is_dir():
    raise FileNotFoundError(f"no checkpoint directory {directory}: train first "
                            f"(--mode=train or train_and_sample with --workdir={workdir})")
  manager = make_manager(workdir, read_only=True, async_save=False)
  steps = manager.all_steps()
  if not steps:
    raise FileNotFoundError(f"no checkpoint in {directory}: train first (--mode=train)")
  if step == -1:
    step = max(steps)
  elif step not in steps:
    raise FileNotFoundError(f"no checkpoint for step {step} in {directory}; have {sorted(steps)}")
  restored = manager.restore(
      step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                    latent=ocp.args.JsonRestore()))
  manager.close()
  return restored["state"], restored["latent"], step


def abstract_like(tree):
  """ShapeDtypeStructs (with shardings where present) for restoring onto the same placement."""
  return jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, tree)
