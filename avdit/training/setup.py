"""One way to build an AVDiT training run: layout -> latent space -> model -> state -> shardings ->
the jitted step.

The trainer, the benchmarks and the ahead-of-time compiler all build their run here, so what they
time or compile is the step training runs. As maxtext's `setup_train_loop` and
`train_compile.get_shaped_inputs`: `setup_train(config, mesh, abstract=True)` builds the same
pieces with the state as ShapeDtypeStructs (carrying their shardings on a mesh), allocating
nothing, and `TrainSetup.shaped_inputs` gives the step's batch alike, for `step.lower(...)`.

The step also needs the latent statistics, which are not part of the setup because where they
come from depends on the run: a resumed run reads them from its checkpoint, a new run takes
`estimate_latent_stats` (a latent cache's own, else estimated on training clips), an abstract
run uses placeholders of their shapes (`placeholder_stats`). `TrainSetup.make_step(stats)` then
builds it.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from avdit import layout as layout_lib
from avdit import sharding
from avdit.data import pipeline
from avdit.models import avdit as avdit_model
from avdit.models import layers
from avdit.models import latent_space as latent_lib
from avdit.training import state as state_lib

MODEL_INPUTS = ("video", "audio")  # the rest of a batch is ground truth for metrics
# Latent spaces built from the config alone; the others load trained autoencoders.
_SELF_CONTAINED_LATENTS = ("space_to_depth", "precomputed")


@dataclasses.dataclass(frozen=True)
class TrainSetup:
  """The pieces of a run, before its latent statistics and its step."""
  config: Any
  layout: layout_lib.ClipLayout
  # The config's latent space (encodes clips for the statistics, decodes samples); None in an
  # abstract run whose latent space would load trained autoencoders.
  latent_space: latent_lib.LatentSpace | None
  # What the step encodes its inputs with: `latent_space`, or a pass-through when the batches
  # hold latents already (a latent cache, or an abstract run without its autoencoders).
  step_latent_space: latent_lib.LatentSpace
  mesh: Mesh | None  # None: one default device, no shardings
  graphdef: Any
  state: state_lib.TrainState  # arrays or, abstract, ShapeDtypeStructs
  state_shardings: state_lib.TrainState | None  # NamedShardings on a mesh
  flops_per_step: int  # analytic model FLOPs of one train step of the global batch
  num_params: int

  @property
  def batch_sharding(self):
    return None if self.mesh is None else sharding.batch_sharding(self.mesh)

  @property
  def precomputed_latents(self) -> bool:
    return isinstance(self.step_latent_space, latent_lib.PrecomputedLatents)

  def make_step(self, latent_stats):
    """The jitted `train_step(state, batch) -> (state, metrics)`, state donated, over the mesh."""
    return state_lib.make_train_step(
        self.config, self.layout, self.graphdef, self.step_latent_space, latent_stats,
        state_shardings=self.state_shardings, batch_sharding=self.batch_sharding)

  def shaped_inputs(self) -> dict[str, jax.ShapeDtypeStruct]:
    """The step's global batch as ShapeDtypeStructs (batch-sharded on a mesh): clips, or their
    latents when the step does not encode."""
    batch = self.config.data.batch_size
    if self.precomputed_latents:
      shapes = {k: (v, jnp.float32) for k, v in self.layout.latent_shapes(batch).items()}
    else:
      shapes = {"video": ((batch, self.layout.num_frames, self.layout.height, self.layout.width,
                           3), jnp.uint8),
                "audio": ((batch, self.layout.audio_samples), jnp.float32)}
    return {k: jax.ShapeDtypeStruct(shape, dtype, sharding=self.batch_sharding)
            for k, (shape, dtype) in shapes.items()}


def setup_train(config, mesh: Mesh | None, *, abstract: bool = False) -> TrainSetup:
  """The run of `config` on `mesh` (None: the default device); `abstract`: nothing allocated.

  On a mesh the state is created directly in its shardings (`state.sharded_train_state`), and
  the global batch must split evenly over its data x fsdp axes.
  """
  layout = layout_lib.layout_from_config(config)
  latent_space, step_latent_space = _latent_spaces(config, layout, abstract)
  if mesh is None:
    make = state_lib.abstract_train_state if abstract else state_lib.create_train_state
    (graphdef, state), state_shardings = make(config, layout), None
  else:
    sharding.check_batch_divides(config.data.batch_size, mesh.shape)
    graphdef, state, state_shardings = state_lib.sharded_train_state(config, layout, mesh,
                                                                     abstract=abstract)
  return TrainSetup(
      config=config, layout=layout, latent_space=latent_space,
      step_latent_space=step_latent_space, mesh=mesh, graphdef=graphdef, state=state,
      state_shardings=state_shardings,
      flops_per_step=avdit_model.train_flops_per_step(config.model, layout,
                                                      config.data.batch_size),
      num_params=layers.count_params(state.params))


def _latent_spaces(config, layout, abstract: bool):
  """(the config's latent space or None, the one the step encodes with); see TrainSetup."""
  if abstract and config.latent.name not in _SELF_CONTAINED_LATENTS:
    # No trained autoencoders to load ahead of time: the step runs on their latents, as
    # training on a latent cache does.
    return None, latent_lib.PrecomputedLatents(layout)
  latent_space = latent_lib.make_latent_space(config, layout)
  if config.data.name == "latent_cache":  # batches hold latents already
    return latent_space, latent_lib.PrecomputedLatents(layout)
  return latent_space, latent_space


def estimate_latent_stats(config, layout, latent_space):
  """Latent normalization of a new run: a latent cache's own (estimated over every cached clip
  when it was written; its batches hold latents, not clips), else latent_space.estimate_stats
  on the first `stats_clips` train clips."""
  world = pipeline.make_source(config.data, layout)
  if config.data.name == "latent_cache":
    return world.stats
  clips = [world[i] for i in range(min(config.latent.stats_clips, len(world)))]
  latents = jax.jit(latent_space.encode)(np.stack([c["video"] for c in clips]),
                                         np.stack([c["audio"] for c in clips]))
  return latent_lib.estimate_stats_for_config(latents, config.latent)


def placeholder_stats(config, layout) -> dict[str, np.ndarray]:
  """Statistics of the shapes `estimate_latent_stats` gives (identity normalization), so that an
  abstract step has the same operations, the whitening rotation included."""
  stats = {}
  # (the latent space's channels, the model's): they differ with latent.video_rank.
  for name, channels, kept in (
      ("video", config.latent.video_channels, layout.video_channels),
      ("audio", layout.audio_channels, layout.audio_channels)):
    stats[f"{name}_mean"] = np.zeros((channels,), np.float32)
    stats[f"{name}_std"] = np.ones((channels,), np.float32)
    if name in latent_lib.config_modalities(config.latent, "whiten"):
      stats[f"{name}_directions"] = np.eye(channels, kept, dtype=np.float32)
      stats[f"{name}_direction_std"] = np.ones((kept,), np.float32)
  return stats
