"""The grain input pipeline: shuffled, repeated, host-sharded batches of training clips.

    source (SyntheticWorld | TfdsClips) -> shuffle (global, reseeded per epoch) -> repeat forever
      -> host batches of b = B / process_count -> host shard [process_index::process_count]
      -> to_iter_dataset (thread prefetch)
      [-> mp_prefetch -> copy out of shared memory, when worker_count > 0]

Sources (`config.data.name`, `make_source`): "synthetic", the seeded bouncing-disc world
(avdit.data.synthetic), or "tfds", one split of a prepared TFDS dataset read by random access
from its ArrayRecord shards (`tfds.data_source`; datasets of video files are made by
`python -m avdit.data.prepare`, avdit.data.av_folder). Both give the same clip dicts: video uint8
[F, H, W, 3], audio float32 [L] and a unique int64 `index` (the synthetic world adds its ground
truth; a TFDS clip's index is its record number in the split). Before any TFDS clip is read, the
dataset's recorded geometry is checked against `config.clip`.

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

import operator

from absl import flags
from absl import logging
import grain
import jax
import numpy as np

from avdit.data import synthetic
from avdit.errors import UserError

SUPPORTED_DATASETS = ("synthetic", "tfds", "latent_cache")


class TfdsClips:
  """Random-access clips of one split of a prepared TFDS dataset, in the trainer's format.

  Only what the trainer and the sampler read (video, audio, index) is returned. A grain source (len + getitem) over `tfds.data_source`'s ArrayRecord reader; picklable, so
  grain's worker processes open their own readers.
  """

  def __init__(self, source, name: str, split: str):
    self._source = source
    self.name = name
    self.split = split

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index) -> dict[str, np.ndarray]:
    index = operator.index(index)
    record = self._source[index]
    return {"video": np.asarray(record["video"], np.uint8),
            "audio": np.asarray(record["audio"], np.float32),
            "index": np.array(index, np.int64)}

  def __repr__(self) -> str:
    return f"TfdsClips({self.name}, split={self.split!r}, {len(self)} clips)"


def check_tfds_geometry(builder, layout) -> None:
  """Raises ValueError if the dataset's clips are not the clips `layout` describes."""
  from avdit.data import av_folder  # TFDS only for TFDS data
  geometry = av_folder.dataset_geometry(builder)
  name = f"{builder.info.full_name} ({builder.data_dir})"
  fix = ("prepare the dataset at the config's geometry (python -m avdit.data.prepare "
         "--config=YOUR_CONFIG ...) or set config.clip to the dataset's")
  if geometry is not None:
    mismatches = geometry.mismatches(layout)
    if mismatches:
      raise UserError(f"TFDS dataset {name} does not match config.clip: "
                       f"{'; '.join(mismatches)}. {fix}.")
    return
  # A dataset not made by avdit: its tensor shapes are all there is to check.
  features = builder.info.features
  shapes = {key: tuple(features[key].shape) for key in ("video", "audio") if key in features}
  expected = {"video": (layout.num_frames, layout.height, layout.width, 3),
              "audio": (layout.audio_samples,)}
  if shapes != expected:
    raise UserError(f"TFDS dataset {name} has clips {shapes}, config.clip needs {expected}. "
                     f"{fix}.")
  logging.warning("TFDS dataset %s records no fps / sample_rate; only its shapes were checked.",
                  name)


def _tfds_source(data_config, layout, split: str) -> TfdsClips:
  # Imported here so that synthetic runs never load TFDS; it also registers `av_folder`.
  from avdit.data import av_folder
  name = data_config.get("tfds_name", None)
  if not name:
    raise ValueError("data.name='tfds' needs data.tfds_name (e.g. 'av_folder/aist').")
  data_dir = data_config.get("data_dir", None) or None
  builder = av_folder.load_builder(name, data_dir)
  check_tfds_geometry(builder, layout)
  if split not in builder.info.splits:
    raise UserError(f"TFDS dataset {name} in {data_dir} has no split {split!r}; it has "
                     f"{sorted(builder.info.splits)}.")
  return TfdsClips(builder.as_data_source(split=split), name=name, split=split)


def clip_data_config(config):
  """The data section whose clips a run reads: `config.data`, or `config.data.raw` for a
  pipeline config (its AVDiT reads the clips through the latent cache)."""
  return config.data.raw if config.data.get("name") == "latent_cache" else config.data


def make_source(data_config, layout, seed: int | None = None, num_clips: int | None = None,
                split: str | None = None):
  """The random-access clip source named by `data_config.name` at the geometry of `layout`.

  synthetic: the world seeded `seed` (default data.seed) of `num_clips` (default data.num_clips).
  tfds: split `split` (default data.train_split) of data.tfds_name in data.data_dir; seed and
  num_clips do not apply (the dataset is what it is).
  """
  if data_config.name not in SUPPORTED_DATASETS:
    raise ValueError(f"unknown data.name {data_config.name!r}; supported: "
                     f"{', '.join(SUPPORTED_DATASETS)}")
  if data_config.name == "tfds":
    return _tfds_source(data_config, layout,
                        split or data_config.get("train_split", None) or "train")
  if data_config.name == "latent_cache":
    # Latents of data.raw's clips (avdit.data.latent_cache); the trainer checks them against
    # the config's autoencoders.
    from avdit.data import latent_cache  # pylint: disable=g-import-not-at-top
    return latent_cache.LatentCacheSource(data_config.cache_dir, layout)
  return synthetic.SyntheticWorld.from_layout(
      layout, num_clips=data_config.num_clips if num_clips is None else num_clips,
      seed=data_config.seed if seed is None else seed,
      disc_brighter=data_config.get("disc_brighter", False))


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
  process_count: video uint8 [b, F, H, W, 3], audio float32 [b, L], index int64 [b]; the
  synthetic world adds disc_xy float32 [b, F, 2], disc_color / background_color uint8 [b, 3],
  pitch_hz float32 [b, F], bounce_frames bool [b, F].
  """
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} is outside [0, {process_count}).")
  batch_size = host_batch_size(data_config.batch_size, process_count)
  world = make_source(data_config, layout)
  if len(world) < data_config.batch_size:
    raise UserError(f"the training data ({world!r}) has {len(world)} clips, fewer than one "
                     f"global batch ({data_config.batch_size}).")

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
  """Held-out clips, stacked like a training batch.

  synthetic: clips 0..num_clips-1 of the world seeded `seed`, deterministic in (seed, num_clips,
  layout); `seed` must differ from `data_config.seed`, whose world is the training data.
  tfds: num_clips clips evenly spaced over data.eval_split (records i * n // num_clips, spread
  over the split's files by TFDS's hashed record order); `seed` is not used, the split is what
  holds the data out.
  """
  if num_clips < 1:
    raise ValueError(f"num_clips={num_clips} must be at least 1.")
  if data_config.name == "latent_cache":  # held-out *clips* come from the data it encoded
    return make_eval_clips(data_config.raw, layout, num_clips, seed)
  if data_config.name == "tfds":
    split = data_config.get("eval_split", None) or "test"
    if split == (data_config.get("train_split", None) or "train"):
      raise UserError(f"data.eval_split={split!r} is the training split: those clips are not "
                       "held out.")
    source = make_source(data_config, layout, split=split)
    if len(source) < num_clips:
      raise UserError(f"{num_clips} eval clips asked of {source!r}, which has {len(source)}.")
    clips = [source[i * len(source) // num_clips] for i in range(num_clips)]
  else:
    if seed == data_config.seed:
      raise ValueError(f"eval seed {seed} equals data.seed: those clips are training clips, not "
                       f"held out; pass a different seed.")
    world = make_source(data_config, layout, seed=seed, num_clips=num_clips)
    clips = [world[i] for i in range(num_clips)]
  return {key: np.stack([clip[key] for clip in clips]) for key in clips[0]}
