"""The training loop itself (avdit/training/loop.py), driven by a tiny fake model: no network.

The fake state is one vector updated by a jitted, donated step from grain batches of numbers, so a
run of a dozen steps takes well under a second and every number it logs can be recomputed here.
"""
import os
import signal

import flax.struct
import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest

from avdit import checkpointing
from avdit import hardware
from avdit.training import loop

PAYLOADS = ("notes",)
NUM_STEPS, LOG_EVERY, CHECKPOINT_EVERY = 10, 4, 3


@flax.struct.dataclass
class FakeState:
  step: jax.Array
  w: jax.Array


def _step(state, x):
  w = 0.5 * state.w + jnp.mean(x)
  loss = jnp.sum(w)
  metrics = {"loss": loss, "loss_is_finite": jnp.isfinite(loss).astype(jnp.float32)}
  return FakeState(step=state.step + 1, w=w), metrics


fake_step = jax.jit(_step, donate_argnums=(0,))


def fresh_state():
  return FakeState(step=jnp.zeros((), jnp.int32), w=jnp.zeros((3,), jnp.float32))


def data_iter(values=None):
  values = np.arange(2 * NUM_STEPS + 8, dtype=np.float32) if values is None else values
  return iter(grain.MapDataset.source(values).batch(2).to_iter_dataset())


class RecordingWriter:
  """A metric writer that keeps what it is given."""

  def __init__(self):
    self.scalars = []

  def write_scalars(self, step, scalars):
    self.scalars.append((int(step), dict(scalars)))

  def flush(self):
    pass

  def close(self):
    pass


def train_config(**overrides):
  return ml_collections.ConfigDict(dict(keep_checkpoints=100, async_checkpointing=True,
                                        **overrides))


def run(workdir, state=None, iterator=None, writer=None, payloads=None, **kwargs):
  """One `loop.run` in `workdir`, resuming from its latest checkpoint as a trainer does."""
  iterator = data_iter() if iterator is None else iterator
  manager = loop.open_checkpoints(str(workdir), train_config(), PAYLOADS)
  state, restored = loop.restore_latest(manager, fresh_state() if state is None else state,
                                        iterator, PAYLOADS)
  seen = []
  result = loop.run(fake_step, state, iterator, to_device=lambda b: jnp.asarray(b),
                    manager=manager, writer=writer or RecordingWriter(),
                    payloads=payloads or {"notes": {"kind": "fake"}}, num_steps=NUM_STEPS,
                    log_every=LOG_EVERY, checkpoint_every=CHECKPOINT_EVERY,
                    on_batch=lambda b: seen.append(np.asarray(b)), **kwargs)
  return result, restored, seen


def saved_steps(workdir):
  return sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())


def replay(batches):
  """(w, per-step losses) of the fake step on `batches`, in numpy."""
  w, losses = np.zeros(3, np.float32), []
  for b in batches:
    w = np.float32(0.5) * w + np.float32(np.mean(b))
    losses.append(float(np.sum(w)))
  return w, losses


@pytest.fixture(autouse=True)
def known_peak(monkeypatch):
  """A fixed peak instead of timing a 2048^2 matmul on the CPU."""
  monkeypatch.setattr(hardware, "peak_flops_per_device", lambda: (1e12, "test"))


def test_logs_and_saves_at_their_cadence(tmp_path):
  writer = RecordingWriter()
  result, restored, seen = run(tmp_path, writer=writer, flops_per_step=6e9,
                               evaluate=lambda state: {"w0": float(state.w[0])})
  assert restored is None and result.step == NUM_STEPS and result.stopped_by is None
  # Checkpoints every 3 steps and at the end; logs every 4 steps and at the end.
  assert saved_steps(tmp_path) == [3, 6, 9, 10]
  logged = [(step, s) for step, s in writer.scalars if "loss" in s]
  assert [step for step, _ in logged] == [4, 8, 10]
  # Each log is the mean over its window of the steps' metrics, fetched at log time.
  _, losses = replay(seen)
  for (step, scalars), window in zip(logged, [losses[0:4], losses[4:8], losses[8:10]]):
    assert scalars["loss"] == pytest.approx(np.mean(window), rel=1e-6)
    assert scalars["seconds_per_step"] > 0
    assert scalars["mfu"] == pytest.approx(
        6e9 / scalars["seconds_per_step"] / jax.device_count() / 1e12)
  assert result.metrics == logged[-1][1]
  # The end-of-training hook ran once, on the final state, and its numbers were written.
  final_w, _ = replay(seen)
  assert result.evaluation == {"w0": pytest.approx(final_w[0])}
  assert (NUM_STEPS, {"eval_w0": result.evaluation["w0"]}) in writer.scalars
  # The payload went beside the state.
  manager = checkpointing.make_manager(str(tmp_path), read_only=True, async_save=False,
                                       item_names=(*checkpointing.TRAINING_ITEMS, *PAYLOADS))
  payload = manager.restore(10, args=ocp.args.Composite(notes=ocp.args.JsonRestore()))["notes"]
  assert payload == {"kind": "fake"}
  manager.close()


def test_non_finite_loss_stops_with_a_clear_error_and_saves_nothing_after(tmp_path):
  values = np.arange(2 * NUM_STEPS + 8, dtype=np.float32)
  values[10] = np.nan  # batch 5 (0-based): the loss is non-finite from step 6 on
  with pytest.raises(loop.NonFiniteLossError,
                     match=r"became non-finite at step 6; stopping without saving\. the last "
                           r"good checkpoint is step 3 in .*checkpoints\. Lower"):
    run(tmp_path, iterator=data_iter(values))
  # The checkpoint due at step 6 was refused (and the one of step 3 is complete).
  assert saved_steps(tmp_path) == [3]
  # Before any checkpoint: the message says so.
  values[2] = np.nan
  with pytest.raises(loop.NonFiniteLossError, match="at step 2;.*no checkpoint had been"):
    run(tmp_path / "early", iterator=data_iter(values))
  assert saved_steps(tmp_path / "early") == []


def test_resume_reaches_the_state_of_an_uninterrupted_run(tmp_path):
  evaluated = []
  straight, _, straight_seen = run(tmp_path / "straight")
  first, _, first_seen = run(tmp_path / "resumed", steps_this_run=4,
                             evaluate=lambda s: evaluated.append(s) or {})
  assert first.step == 4 and first.stopped_by == "steps_this_run" and not evaluated
  assert saved_steps(tmp_path / "resumed") == [3, 4]  # the stop saved its step
  # A new process: fresh state and iterator, restored from the latest checkpoint.
  second, restored, second_seen = run(tmp_path / "resumed", payloads={"notes": {"n": 2}})
  assert restored == {"notes": {"kind": "fake"}}
  assert second.step == NUM_STEPS and second.stopped_by is None
  for a, b in zip(straight_seen, first_seen + second_seen, strict=True):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(jax.device_get(straight.state.w),
                                jax.device_get(second.state.w))
  assert int(second.state.step) == NUM_STEPS
  # Rerunning a finished run takes no step and changes nothing.
  again, _, again_seen = run(tmp_path / "resumed")
  assert again.step == NUM_STEPS and again_seen == [] and again.metrics == {}


def test_sigterm_saves_a_checkpoint_and_stops(tmp_path):
  def on_batch(batch):
    if batch[0] == 4.0:  # the third batch: SIGTERM arrives during step 3
      os.kill(os.getpid(), signal.SIGTERM)

  manager = loop.open_checkpoints(str(tmp_path), train_config(), PAYLOADS)
  previous = signal.getsignal(signal.SIGTERM)
  result = loop.run(fake_step, fresh_state(), data_iter(), to_device=jnp.asarray,
                    manager=manager, writer=RecordingWriter(), payloads={"notes": {}},
                    num_steps=NUM_STEPS, log_every=100, checkpoint_every=100, on_batch=on_batch)
  assert result.stopped_by == "SIGTERM" and result.step == 3
  assert saved_steps(tmp_path) == [3] and result.metrics["loss"] > 0
  assert signal.getsignal(signal.SIGTERM) is previous  # the handler is put back


def damage(workdir, step):
  """Flips the bytes of checkpoint `step`'s state data files, as a disk or copy fault would."""
  data_dir = os.path.join(workdir, "checkpoints", str(step), "state", "d")
  for name in os.listdir(data_dir):
    path = os.path.join(data_dir, name)
    with open(path, "rb") as f:
      data = bytearray(f.read())
    data[len(data) // 2:] = bytes(b ^ 0xFF for b in data[len(data) // 2:])
    with open(path, "wb") as f:
      f.write(bytes(data))


def test_a_damaged_newest_checkpoint_resumes_from_the_one_before_and_is_kept(tmp_path, caplog):
  straight, _, _ = run(tmp_path / "straight")
  run(tmp_path / "damaged", steps_this_run=4)
  damage(tmp_path / "damaged", 4)
  with caplog.at_level("ERROR"):
    second, _, second_seen = run(tmp_path / "damaged")
  assert "STEP 4 DOES NOT READ BACK" in caplog.text and "from step 3" in caplog.text
  kept = tmp_path / "damaged" / "damaged_checkpoints" / "4"
  assert kept.is_dir() and (kept / "state" / "d").is_dir()  # set aside whole, not deleted
  # Resumed at step 3: steps 4..10 are taken again, to the uninterrupted run's state.
  assert len(second_seen) == NUM_STEPS - 3 and second.step == NUM_STEPS
  np.testing.assert_array_equal(jax.device_get(straight.state.w),
                                jax.device_get(second.state.w))
  assert 4 not in saved_steps(tmp_path / "damaged")


def test_when_no_checkpoint_reads_back_nothing_is_moved_and_the_error_is_raised(tmp_path):
  run(tmp_path, steps_this_run=4)
  other_shape = FakeState(step=jnp.zeros((), jnp.int32), w=jnp.zeros((5,), jnp.float32))
  manager = loop.open_checkpoints(str(tmp_path), train_config(), PAYLOADS)
  with pytest.raises(Exception):  # a changed config, not a damaged disk
    loop.restore_latest(manager, other_shape, data_iter(), PAYLOADS)
  manager.close()
  assert saved_steps(tmp_path) == [3, 4] and not (tmp_path / "damaged_checkpoints").exists()


def _double_step(state, x):  # the fake step with w moved twice as far: a recognisable swap
  w = 0.5 * state.w + 2.0 * jnp.mean(x)
  loss = jnp.sum(w)
  return FakeState(step=state.step + 1, w=w), {"loss": loss, "loss_is_finite": loss * 0 + 1.0}


def test_the_checkpoint_hook_moves_the_end_and_swaps_the_step(tmp_path):
  calls = []

  def at_checkpoint(step):  # at 3: end at 12; at 6: end at 14 with the other step; after: keep
    calls.append(step)
    plan = {3: (12, None), 6: (14, jax.jit(_double_step, donate_argnums=(0,)))}
    return plan.get(step, (14, None))

  result, _, seen = run(tmp_path, at_checkpoint=at_checkpoint)
  # Called after the periodic checkpoints only (not the last one), the run ends where it says.
  assert result.step == 14 and calls == [3, 6, 9, 12]
  assert saved_steps(tmp_path) == [3, 6, 9, 12, 14]
  w = np.zeros(3, np.float32)  # numpy: steps 1-6 the first step, 7-14 the doubled one
  for i, b in enumerate(seen):
    w = np.float32(0.5) * w + np.float32(1.0 if i < 6 else 2.0) * np.float32(np.mean(b))
  np.testing.assert_allclose(np.asarray(result.state.w), w, rtol=1e-6)
