"""Tests of the grain input pipeline over the synthetic world and a prepared TFDS dataset:
batches, order, host sharding, checkpoint/resume, workers, geometry checks."""
from __future__ import annotations

import grain
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest

from avdit import layout as layout_lib
from avdit.data import pipeline

LAYOUT = layout_lib.ClipLayout(num_frames=5, fps=8.0, height=16, width=16, sample_rate=8000,
                               video_channels=4, audio_channels=320)
NUM_CLIPS, BATCH = 24, 4
EPOCH_BATCHES = NUM_CLIPS // BATCH


def data_config(**overrides) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict(dict(
      name="synthetic", seed=0, num_clips=NUM_CLIPS, shuffle_seed=0, batch_size=BATCH,
      worker_count=0, prefetch_buffer=2))
  config.update(overrides)
  return config


def take(iterator, n: int) -> list[dict[str, np.ndarray]]:
  return [next(iterator) for _ in range(n)]


def assert_batches_equal(batches_a, batches_b):
  assert len(batches_a) == len(batches_b)
  for a, b in zip(batches_a, batches_b):
    assert a.keys() == b.keys()
    for key in a:
      assert type(a[key]) is np.ndarray and type(b[key]) is np.ndarray, key
      assert a[key].dtype == b[key].dtype and a[key].tobytes() == b[key].tobytes(), key


def make_iterator(**overrides):
  process = {key: overrides.pop(key) for key in ("process_index", "process_count")
             if key in overrides}
  return pipeline.make_train_iterator(data_config(**overrides), LAYOUT, **process)


def test_batch_shapes_and_dtypes():
  f, h, w, num_samples = 5, 16, 16, LAYOUT.audio_samples
  expected = {"video": ((BATCH, f, h, w, 3), np.uint8), "audio": ((BATCH, num_samples), np.float32),
              "disc_xy": ((BATCH, f, 2), np.float32), "disc_color": ((BATCH, 3), np.uint8),
              "background_color": ((BATCH, 3), np.uint8), "pitch_hz": ((BATCH, f), np.float32),
              "bounce_frames": ((BATCH, f), np.bool_), "index": ((BATCH,), np.int64)}
  batch = next(make_iterator())
  assert set(batch) == set(expected)
  for key, (shape, dtype) in expected.items():
    assert batch[key].shape == shape and batch[key].dtype == dtype, key


def test_config_errors():
  with pytest.raises(ValueError, match="synthetic"):
    make_iterator(name="kinetics")
  with pytest.raises(ValueError, match="divisible"):
    make_iterator(batch_size=6, process_index=0, process_count=4)


def test_same_seeds_same_batches_and_shuffle_seed_changes_order():
  first, again = take(make_iterator(), 3), take(make_iterator(), 3)
  assert_batches_equal(first, again)
  order = np.concatenate([b["index"] for b in take(make_iterator(), EPOCH_BATCHES)])
  other = np.concatenate([b["index"] for b in take(make_iterator(shuffle_seed=1),
                                                    EPOCH_BATCHES)])
  assert sorted(order) == sorted(other) == list(range(NUM_CLIPS))
  assert not np.array_equal(order, other)
  assert not np.array_equal(order, np.arange(NUM_CLIPS))  # actually shuffled


def test_epochs_cover_everything_and_reshuffle():
  indices = np.concatenate([b["index"] for b in take(make_iterator(), 2 * EPOCH_BATCHES)])
  epoch_0, epoch_1 = indices[:NUM_CLIPS], indices[NUM_CLIPS:]
  assert sorted(epoch_0) == sorted(epoch_1) == list(range(NUM_CLIPS))
  assert not np.array_equal(epoch_0, epoch_1)


def test_hosts_see_disjoint_shards_of_the_global_batches():
  hosts = [take(make_iterator(process_index=p, process_count=2), EPOCH_BATCHES)
           for p in range(2)]
  assert all(b["video"].shape[0] == BATCH // 2 for host in hosts for b in host)
  seen = [np.concatenate([b["index"] for b in host]) for host in hosts]
  assert not set(seen[0]) & set(seen[1])
  # EPOCH_BATCHES half-batches per host are one epoch in all.
  assert sorted(np.concatenate(seen)) == list(range(NUM_CLIPS))
  # Host p holds rows [p*b, (p+1)*b) of each global batch of the single-host run, the rows
  # make_array_from_process_local_data gives it, so the global batch does not depend on the
  # number of hosts.
  single = take(make_iterator(), EPOCH_BATCHES // 2)
  for step, batch in enumerate(single):
    stacked = np.concatenate([hosts[0][step]["index"], hosts[1][step]["index"]])
    np.testing.assert_array_equal(stacked, batch["index"])


def test_resume_from_get_state_is_bit_identical():
  uninterrupted = take(make_iterator(), 7)
  iterator = make_iterator()
  take(iterator, 4)
  state = iterator.get_state()
  take(iterator, 2)  # moves on; the saved state must not
  fresh = make_iterator()
  fresh.set_state(state)
  assert_batches_equal(take(fresh, 3), uninterrupted[4:7])


@pytest.mark.parametrize("async_save", [False, True])
def test_resume_through_orbax_checkpoint_manager(tmp_path, async_save):
  uninterrupted = take(make_iterator(), 8)
  iterator = make_iterator()
  take(iterator, 5)
  options = ocp.CheckpointManagerOptions(enable_async_checkpointing=async_save)
  # Saved as the trainer does: the data iterator next to the model state in one Composite.
  with ocp.CheckpointManager(tmp_path / "ckpt", options=options) as manager:
    manager.save(5, args=ocp.args.Composite(
        state=ocp.args.StandardSave({"step": np.array(5, np.int32)}),
        data_iter=grain.checkpoint.CheckpointSave(iterator)))
    # Orbax runs grain's (synchronous) handler before `save` returns, so training on while an
    # async save finishes does not move the saved position.
    take(iterator, 2)
    manager.wait_until_finished()

  fresh = make_iterator()
  with ocp.CheckpointManager(tmp_path / "ckpt", options=options) as manager:
    assert manager.latest_step() == 5
    restored = manager.restore(5, args=ocp.args.Composite(
        state=ocp.args.StandardRestore({"step": np.array(0, np.int32)}),
        data_iter=grain.checkpoint.CheckpointRestore(fresh)))
  assert int(restored.state["step"]) == 5
  assert restored.data_iter is fresh  # restored in place
  assert_batches_equal(take(fresh, 3), uninterrupted[5:8])


def test_multiprocessing_prefetch_matches_in_process_and_resumes():
  # grain's mp_prefetch spawns a fresh worker process (~1 s here); one worker is enough to check
  # that batches cross the process boundary unchanged and that its (different, per-worker)
  # state format restores.
  in_process = take(make_iterator(), 6)
  iterator = make_iterator(worker_count=1)
  try:
    assert_batches_equal(take(iterator, 3), in_process[:3])
    state = iterator.get_state()
  finally:
    iterator.close()
  fresh = make_iterator(worker_count=1)
  try:
    fresh.set_state(state)
    assert_batches_equal(take(fresh, 3), in_process[3:6])
  finally:
    fresh.close()


def test_eval_clips_are_deterministic_and_held_out():
  config = data_config()
  clips = pipeline.make_eval_clips(config, LAYOUT, num_clips=3, seed=7)
  again = pipeline.make_eval_clips(config, LAYOUT, num_clips=3, seed=7)
  assert clips["video"].shape == (3, 5, 16, 16, 3)
  assert clips["audio"].shape == (3, LAYOUT.audio_samples)
  np.testing.assert_array_equal(clips["index"], [0, 1, 2])
  assert_batches_equal([clips], [again])
  train_clips = pipeline.make_source(config, LAYOUT)
  for i in range(3):
    assert not np.array_equal(clips["video"][i], train_clips[i]["video"])
  with pytest.raises(ValueError, match="held out"):
    pipeline.make_eval_clips(config, LAYOUT, num_clips=3, seed=config.seed)


# --------------------------------------------------------------------------------------------
# TFDS data: a tiny dataset prepared from fixture videos at LAYOUT's geometry
# --------------------------------------------------------------------------------------------
TFDS_TRAIN_FILES, TFDS_CLIPS_PER_FILE = 4, 3  # 2 s at 8 fps = 16 frames: clips at 0, 5, 10
TFDS_TRAIN_CLIPS = TFDS_TRAIN_FILES * TFDS_CLIPS_PER_FILE


@pytest.fixture(scope="module")
def tfds_data(tmp_path_factory):
  """data_config overrides reading a prepared av_folder dataset (12 train, 3 test clips)."""
  import tensorflow_datasets as tfds
  import av_fixtures as fx
  from avdit.data import av_folder
  from avdit.data import prepare
  tfds.disable_progress_bar()
  videos = tmp_path_factory.mktemp("videos")
  for split, count in (("train", TFDS_TRAIN_FILES), ("test", 1)):
    (videos / split).mkdir()
    for i in range(count):
      fx.write_av(videos / split / f"{i}.mp4", fps=16, width=24, height=16, seconds=2.0,
                  sample_rate=8000)
  geometry = av_folder.ClipGeometry(fps=LAYOUT.fps, height=LAYOUT.height, width=LAYOUT.width,
                                    num_frames=LAYOUT.num_frames, sample_rate=LAYOUT.sample_rate,
                                    stride_frames=LAYOUT.num_frames)
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  report = prepare.prepare_dataset(videos, data_dir,
                                   av_folder.AvFolderConfig.from_geometry(geometry, name="tiny"))
  assert report["splits"]["train"]["clips"] == TFDS_TRAIN_CLIPS
  return dict(name="tfds", tfds_name="av_folder/tiny", data_dir=data_dir, train_split="train",
              eval_split="test")


def test_tfds_batches_have_the_trainer_keys_shapes_and_dtypes(tfds_data):
  batches = take(make_iterator(**tfds_data), 2)
  for batch in batches:
    assert set(batch) == {"video", "audio", "index"}
    assert batch["video"].shape == (BATCH, 5, 16, 16, 3) and batch["video"].dtype == np.uint8
    assert batch["audio"].shape == (BATCH, LAYOUT.audio_samples)
    assert batch["audio"].dtype == np.float32
    assert batch["index"].dtype == np.int64
  source = pipeline.make_source(data_config(**tfds_data), LAYOUT)
  assert len(source) == TFDS_TRAIN_CLIPS
  for i in batches[0]["index"]:  # each row is the record its index names
    row = list(batches[0]["index"]).index(i)
    np.testing.assert_array_equal(batches[0]["video"][row], source[int(i)]["video"])
    np.testing.assert_array_equal(batches[0]["audio"][row], source[int(i)]["audio"])


def test_tfds_hosts_take_disjoint_blocks_covering_an_epoch(tfds_data):
  epoch_batches = TFDS_TRAIN_CLIPS // BATCH
  hosts = [take(make_iterator(process_index=p, process_count=2, **tfds_data), epoch_batches)
           for p in range(2)]
  seen = [np.concatenate([b["index"] for b in host]) for host in hosts]
  assert not set(seen[0]) & set(seen[1])
  assert sorted(np.concatenate(seen)) == list(range(TFDS_TRAIN_CLIPS))
  single = take(make_iterator(**tfds_data), epoch_batches)
  for step, batch in enumerate(single):
    np.testing.assert_array_equal(
        np.concatenate([hosts[0][step]["index"], hosts[1][step]["index"]]), batch["index"])


def test_tfds_iterator_resumes_from_get_state(tfds_data):
  uninterrupted = take(make_iterator(**tfds_data), 6)  # two epochs: reshuffled past the first
  iterator = make_iterator(**tfds_data)
  take(iterator, 2)
  state = iterator.get_state()
  take(iterator, 2)
  fresh = make_iterator(**tfds_data)
  fresh.set_state(state)
  assert_batches_equal(take(fresh, 4), uninterrupted[2:6])


def test_tfds_geometry_mismatch_and_missing_data_are_clear_errors(tfds_data, tmp_path):
  other = layout_lib.ClipLayout(num_frames=9, fps=10.0, height=16, width=16, sample_rate=8000,
                                video_channels=4, audio_channels=320)
  with pytest.raises(ValueError, match=r"num_frames 5 \(dataset\) vs 9 \(config.clip\); "
                                       r"fps 8 \(dataset\) vs 10"):
    pipeline.make_train_iterator(data_config(**tfds_data), other)
  with pytest.raises(FileNotFoundError, match="not prepared.*avdit.data.prepare --dataset=aist"):
    pipeline.make_source(data_config(**{**tfds_data, "tfds_name": "av_folder/aist",
                                        "data_dir": str(tmp_path)}), LAYOUT)
  with pytest.raises(ValueError, match="no split 'validation'"):
    pipeline.make_source(data_config(**tfds_data), LAYOUT, split="validation")


def test_tfds_eval_clips_come_from_the_eval_split(tfds_data):
  config = data_config(**tfds_data)
  clips = pipeline.make_eval_clips(config, LAYOUT, num_clips=2, seed=config.seed)  # no seed rule
  test_split = pipeline.make_source(config, LAYOUT, split="test")
  assert len(test_split) == 3
  assert set(clips) == {"video", "audio", "index"}
  np.testing.assert_array_equal(clips["index"], [0, 1])  # i * 3 // 2
  for row, index in enumerate(clips["index"]):
    np.testing.assert_array_equal(clips["video"][row], test_split[int(index)]["video"])
  with pytest.raises(ValueError, match="4 eval clips"):
    pipeline.make_eval_clips(config, LAYOUT, num_clips=4, seed=1)
  with pytest.raises(ValueError, match="not held out"):
    pipeline.make_eval_clips(data_config(**{**tfds_data, "eval_split": "train"}), LAYOUT,
                             num_clips=1, seed=1)


def test_tfds_source_crosses_to_grain_worker_processes(tfds_data):
  in_process = take(make_iterator(**tfds_data), 2)
  iterator = make_iterator(worker_count=1, **tfds_data)  # the source is pickled to the worker
  try:
    assert_batches_equal(take(iterator, 2), in_process)
  finally:
    iterator.close()
