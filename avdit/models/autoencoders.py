"""The MAGVIT-v2 (video) and SoundStream (audio) autoencoders, built and loaded from checkpoints.

The autoencoder trainer (`avdit/training/autoencoder.py`) writes each run's checkpoint with the
model's identity (kind and constructor arguments); the learned latent space
(`latent_space.LearnedLatents`) rebuilds the EMA generator from that checkpoint alone. Building
and loading live here, beside the networks, so the latent space never imports the trainer.
"""
from __future__ import annotations

import jax
import orbax.checkpoint as ocp
from flax import nnx

from avdit import checkpointing
from avdit import workdir as workdir_lib
from avdit.models import magvit2
from avdit.models import soundstream

# An autoencoder checkpoint: the training items, then the model's identity as a JSON payload.
PAYLOADS = ("model",)
CHECKPOINT_ITEMS = (*checkpointing.TRAINING_ITEMS, *PAYLOADS)


def tupled(kwargs: dict) -> dict:
  """Constructor arguments with JSON's lists back as the tuples the modules take."""
  out = {}
  for k, v in kwargs.items():
    if isinstance(v, list):
      v = tuple(tuple(x) if isinstance(x, list) else x for x in v)
    out[k] = v
  return out


def build_generator(kind_name: str, kwargs: dict, dtype: str, seed: int):
  rngs = nnx.Rngs(seed)
  if kind_name == "magvit2":
    return magvit2.Magvit2(**tupled(kwargs), dtype=dtype, rngs=rngs)
  return soundstream.SoundStream(**tupled(kwargs), dtype=dtype, rngs=rngs)


def load_autoencoder(workdir: str, step: int = -1, use_ema: bool = True):
  """(generator nnx.Module with the run's EMA (or raw) parameters, identity dict, step)."""
  directory = checkpointing.checkpoint_dir(workdir)
  if not workdir_lib.path(directory).is_dir():
    raise FileNotFoundError(f"no autoencoder checkpoints in {directory}: train it first "
                            f"(python -m avdit.main --config=configs/<magvit2|soundstream>_... "
                            f"--mode=train --workdir={workdir})")
  manager = checkpointing.make_manager(workdir, read_only=True, async_save=False,
                                       item_names=CHECKPOINT_ITEMS)
  steps = manager.all_steps()
  if not steps:
    raise FileNotFoundError(f"no checkpoint in {directory}")
  step = max(steps) if step == -1 else step
  identity = manager.restore(step, args=ocp.args.Composite(model=ocp.args.JsonRestore()))["model"]
  gen = build_generator(identity["kind"], identity["model_kwargs"], identity["dtype"], 0)
  graphdef, params, gen_state = nnx.split(gen, nnx.Param, ...)
  abstract = {"gen_params": params, "gen_state": gen_state, "ema_params": params}
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract)
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.PyTreeRestore(item=abstract, partial_restore=True)))["state"]
  manager.close()
  chosen = restored["ema_params"] if use_ema else restored["gen_params"]
  return nnx.merge(graphdef, chosen, restored["gen_state"]), identity, step
