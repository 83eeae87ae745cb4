"""The grain input pipeline: shuffled, repeated, host-sharded batches of training clips.

    source (SyntheticWorld) -> shuffle (global, reseeded per epoch) -> repeat forever
      -> host batches of b = B / process_count -> host shard [process_index::process_count]
      -> to_iter_dataset (thread prefetch)
      [-> mp_prefetch -> copy out of shared memory, when worker_count > 0]

Sharding after the global shuffle and repeat means the hosts split every global batch:
global step s uses shuffled positions [s*B, (s+1)*B) of the infinite stream, host p taking the
contiguous block [s*B + p*b, s*B + (p+1)*b). `make_array_from_process_local_data` puts host p's
block at rows [p*b, (p+1)*b) of the global batch (devices are ordered by process in the mesh), so
the global batch, and hence the whole run, does not depend on the host count; within an epoch
the hosts see disjoint clips whose union is the whole world.

The returned `grain.DatasetIterator` checkpoints with `get_state()`/`set_state()` or, next to
the model in an orbax `Composite`, with `grain.checkpoint.CheckpointSave(iterator)` /
`grain.checkpoint.CheckpointRestore(iterator)`.
"""
from __future__ import annotations

from absl import flags
import grain
import jax
import numpy as np

from avdit.data import synthetic

SUPPORTED_DATASETS = ("synthetic",)


def make_source(data_config, layout, seed: int | None = None,
                num_clips: int | None = None) -> synthetic.SyntheticWorld:
  """The random-access clip source named by `data_config.name` at the geometry of `layout`."""
  if data_config.name not in SUPPORTED_DATASETS:
    raise ValueError(f"unknown data.name {data_config.name!r}; supported: "
                     f"{', '.join(SUPPORTED_DATASETS)}")
  return synthetic.SyntheticWorld.from_layout(
      layout, num_clips=data_config.num_clips if num_clips is None else num_clips,
      seed=data_config.seed if seed is None else seed)


def _grain_shuffle_seed(shuffle_seed: int) -> int:
  """A well-mixed 32-bit shuffle seed for grain.

  grain reshuffles epoch e with seed `seed + e`, so raw user seeds 0 and 1 would give the same
  orders shifted by one epoch; hashing the user seed keeps nearby seeds unrelated.
  """
  return int(np.random.SeedSequence([int(shuffle_seed), 0x5EED]).generate_state(1)[0])


def host_batch_size(global_batch_size: int, process_count: int) -> int:
  if global_batch_size % process_count:
    raise ValueError(f"data.batch_size={global_batch_size} is not divisible by the "
                     f"process_count={process_count} hosts; each host loads an equal share.")
  return global_batch_size // process_count


def make_train_dataset(data_config, layout, *, process_index: int | None = None,
                       process_count: int | None = None) -> grain.IterDataset:
  """The infinite per-host training dataset of batches (see the module docstring).

  Each element is a dict of stacked numpy arrays with per-host batch b = batch_size /
  process_count: video uint8 [b, F, H, W, 3], audio float32 [b, L], disc_xy float32 [b, F, 2],
  disc_color / background_color uint8 [b, 3], pitch_hz float32 [b, F], bounce_frames bool [b, F],
  index int64 [b].
  """
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} is outside [0, {process_count}).")
  batch_size = host_batch_size(data_config.batch_size, process_count)
  world = make_source(data_config, layout)
  if len(world) < data_config.batch_size:
    raise ValueError(f"data.num_clips={len(world)} is smaller than one global batch "
                     f"({data_config.batch_size}).")

  ds = grain.MapDataset.source(world)
  ds = ds.shuffle(seed=_grain_shuffle_seed(data_config.shuffle_seed))
  ds = ds.repeat(None)  # infinite; each epoch gets its own shuffle
  ds = ds.batch(batch_size, drop_remainder=True)[process_index::process_count]

  prefetch_buffer = int(data_config.get("prefetch_buffer", 2))
  # One reader thread overlaps data with the train step; more would only fight the step for the
  # few cores (grain's default is 16 threads and a 500-element buffer).
  read_options = grain.ReadOptions(num_threads=1 if prefetch_buffer > 0 else 0,
                                   prefetch_buffer_size=prefetch_buffer)
  iter_ds = ds.to_iter_dataset(read_options)
  worker_count = int(data_config.get("worker_count", 0))
  if worker_count > 0:
    if not flags.FLAGS.is_parsed():
      # grain reads its absl flags (e.g. --grain_enable_multiprocess_worker_profiling) when it
      # starts workers, which raises UnparsedFlagAccessError outside an absl app (scripts,
      # pytest); there the defaults are what we want.
      flags.FLAGS.mark_as_parsed()
    iter_ds = iter_ds.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=worker_count, per_worker_buffer_size=max(1, prefetch_buffer)))
    # Workers hand batches over as grain SharedMemoryArrays (an ndarray subclass whose shared
    # memory is unlinked when it is garbage collected); copying them out gives plain arrays
    # whatever worker_count is and frees the shared memory at once (~3 MB per batch).
    iter_ds = iter_ds.map(_to_plain_arrays)
  return iter_ds


def _to_plain_arrays(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  return {key: np.array(value) for key, value in batch.items()}


def make_train_iterator(data_config, layout, *, process_index: int | None = None,
                        process_count: int | None = None) -> grain.DatasetIterator:
  """A checkpointable iterator over `make_train_dataset` (call `.close()` when using workers)."""
  return iter(make_train_dataset(data_config, layout, process_index=process_index,
                                 process_count=process_count))


def make_eval_clips(data_config, layout, num_clips: int, seed: int) -> dict[str, np.ndarray]:
  """Clips 0..num_clips-1 of a held-out world seeded `seed`, stacked like a training batch.

  Deterministic in (seed, num_clips, layout); `seed` must differ from `data_config.seed`, whose
  world is the training data.
  """
  if num_clips < 1:
    raise ValueError(f"num_clips={num_clips} must be at least 1.")
  if seed == data_config.seed:
    raise ValueError(f"eval seed {seed} equals data.seed: those clips are training clips, not "
                     f"held out; pass a different seed.")
  world = make_source(data_config, layout, seed=seed, num_clips=num_clips)
  clips = [world[i] for i in range(num_clips)]
  return {key: np.stack([clip[key] for clip in clips]) for key in clips[0]}
