"""Training: exact resume, preemption, non-finite stop, and the main job's outputs."""
import json
import os
import signal
import subprocess
import sys

import av
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from avdit import checkpointing
from avdit import sharding
from avdit.errors import UserError
from avdit.sampling import generate
from avdit.training import budget
from avdit.training import loop
from avdit.training import state as state_lib
from avdit.training import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _params(summary):
  return jax.tree_util.tree_leaves(jax.device_get(summary["state"].params))


def test_resume_matches_uninterrupted_run(tiny_config, tmp_path):
  straight = train.train(tiny_config, str(tmp_path / "straight"), record_batches=True)
  assert straight["step"] == 6
  # "Killed" after 4 steps (checkpoints at 3 and 4), then rerun with the same config.
  first = train.train(tiny_config, str(tmp_path / "resumed"), steps_this_run=4,
                      record_batches=True)
  assert first["step"] == 4 and first["stopped_by"] == "steps_this_run"
  second = train.train(tiny_config, str(tmp_path / "resumed"), record_batches=True)
  assert second["step"] == 6
  seen = first["batch_indices"] + second["batch_indices"]
  assert len(seen) == 6
  for a, b in zip(straight["batch_indices"], seen):
    np.testing.assert_array_equal(a, b)
  for a, b in zip(_params(straight), _params(second)):
    np.testing.assert_array_equal(a, b)
  # EMA and the optimizer moments are restored too.
  for a, b in zip(jax.tree_util.tree_leaves(jax.device_get(straight["state"])),
                  jax.tree_util.tree_leaves(jax.device_get(second["state"]))):
    np.testing.assert_array_equal(a, b)
  # The untrained model's parameters did move; throughput and MFU are logged.
  assert straight["metrics"]["grad_norm"] > 0
  assert 0 < straight["metrics"]["mfu"] < 1.5 and straight["metrics"]["tflops_per_device"] > 0


def _budget_config(minutes, kept=7):
  return ml_collections.ConfigDict(dict(
      budget_minutes=minutes, budget_kept_checkpoints=kept, checkpoint_every=300,
      warmup_steps=100))


def test_time_budget_steps_closed_form():
  # Worked by hand: 10 min at 0.2 s a step = 3000 step-times, 1000 kept back: 2000 fit, 1800 on
  # multiples of 300; 7 kept checkpoints every 1800 / 7 = 257 -> 300.
  assert budget.budget_steps(_budget_config(10.0), 0.2, 1000) == {"num_steps": 1800,
                                                                 "keep_period": 300}
  # 60 min at 0.25 s = 14400, 3000 kept back: 11400; 11400 / 7 = 1629 -> 1500 (5.4 x 300).
  assert budget.budget_steps(_budget_config(60.0), 0.25, 3000) == {"num_steps": 11400,
                                                                  "keep_period": 1500}
  # No time left: the first checkpoint past the warm-up; no kept checkpoints asked: none.
  assert budget.budget_steps(_budget_config(-5.0, kept=0), 0.25, 3000) == {"num_steps": 300,
                                                                         "keep_period": 0}


def test_reserve_is_counted_in_training_clips():
  # 24000 clips: 3000 steps of batch 8, 6000 of batch 4 (each half the time: the same minutes).
  config = ml_collections.ConfigDict(dict(train=dict(budget_reserve_clips=24000),
                                          data=dict(batch_size=8)))
  assert budget.reserve_steps(config) == 3000
  config.data.batch_size = 4
  assert budget.reserve_steps(config) == 6000
  del config.train["budget_reserve_clips"]  # no reserve asked: none
  assert budget.reserve_steps(config) == 0


def test_warmup_stable_decay_schedule_closed_form():
  config = ml_collections.ConfigDict(dict(
      learning_rate=1e-3, end_learning_rate_factor=0.1, num_steps=100, warmup_steps=10,
      decay_fraction=0.2, decay_start=0))
  lr = state_lib.learning_rate_schedule(config)
  # By hand: 0 -> 1e-3 over 10 steps, held to step 80 (100 - 0.2 x 100), linear to 1e-4 at 100.
  for step, expected in ((0, 0.0), (5, 5e-4), (10, 1e-3), (79, 1e-3), (80, 1e-3),
                         (90, 5.5e-4), (100, 1e-4), (150, 1e-4)):
    assert float(lr(step)) == pytest.approx(expected, rel=1e-5, abs=1e-9), step
  config.decay_start = 60  # set by the clock: 60 -> 100 linear
  lr = state_lib.learning_rate_schedule(config)
  assert float(lr(59)) == pytest.approx(1e-3) and float(lr(70)) == pytest.approx(7.75e-4)
  config.decay_start = budget.HOLD  # the clock has not decided: the peak, held past num_steps
  lr = state_lib.learning_rate_schedule(config)
  assert float(lr(100)) == pytest.approx(1e-3) and float(lr(10**6)) == pytest.approx(1e-3)


def test_late_condition_tasks_weight_the_late_phase():
  config = ml_collections.ConfigDict(dict(
      diffusion=dict(condition_tasks="a2v,v2a,continue", late_condition_tasks="inpaint"),
      train=dict(num_steps=100, warmup_steps=10, decay_fraction=0.2, decay_start=0)))
  at = state_lib.condition_weights_at(config, num_segments=5)
  thirds, inpaint = [1 / 3, 1 / 3, 1 / 3, 0.0], [0.0, 0.0, 0.0, 1.0]
  np.testing.assert_allclose(at(jnp.int32(79)), thirds)  # no late_fraction: the decay's, 100 - 20
  np.testing.assert_allclose(at(jnp.int32(80)), inpaint)
  config.train.decay_start = budget.HOLD  # a clock that has not started the decay: held
  np.testing.assert_allclose(state_lib.condition_weights_at(config, 5)(jnp.int32(10**6)), thirds)
  config.train.decay_start = 60
  np.testing.assert_allclose(state_lib.condition_weights_at(config, 5)(jnp.int32(60)), inpaint)
  config.train.update(late_fraction=0.35, late_start=0)  # its own phase: from 100 - 35
  at = state_lib.condition_weights_at(config, num_segments=5)
  np.testing.assert_allclose(at(jnp.int32(64)), thirds)
  np.testing.assert_allclose(at(jnp.int32(65)), inpaint)
  config.train.update(late_fraction=0.0, late_start=30)  # a start alone sets the phase too
  np.testing.assert_allclose(state_lib.condition_weights_at(config, 5)(jnp.int32(30)), inpaint)
  np.testing.assert_allclose(state_lib.condition_weights_at(config, 5)(jnp.int32(29)), thirds)
  config.train.update(late_fraction=0.35, late_start=budget.HOLD)  # the clock holds it, whatever
  np.testing.assert_allclose(state_lib.condition_weights_at(config, 5)(jnp.int32(99)), thirds)
  with pytest.raises(ValueError, match="needs >= 3 segments"):  # checked before any step
    state_lib.condition_weights_at(config, num_segments=2)
  config.train.update(decay_fraction=0.0, late_fraction=0.0, late_start=0)  # a cosine, no phase
  with pytest.raises(ValueError, match="late_fraction > 0"):
    state_lib.condition_weights_at(config, num_segments=5)
  config.diffusion.late_condition_tasks = ""  # unset: condition_tasks to the end
  np.testing.assert_allclose(state_lib.condition_weights_at(config, 5)(jnp.int32(10**6)), thirds)


def _clock_config():
  return ml_collections.ConfigDict(dict(checkpoint_every=300, decay_fraction=0.2))


def test_clock_end_closed_form():
  # At 3000, 40 min left at 0.2 s: 12000 step-times - 1000 = 11000 -> 10800 more, end 13800;
  # its decay (2760 steps) starts at 11040, after the next checkpoint (3300): not yet.
  assert budget.clock_end(3000, 2400.0, 0.2, 1000, _clock_config()) == (13800, [])
  # The machine slows to 0.4 s: 6000 - 1000 -> 4800 more, end 7800, decay 1560 from 6240.
  assert budget.clock_end(3000, 2400.0, 0.4, 1000, _clock_config()) == (7800, [])
  # With a late phase over the last 60%: 4680 steps from 3120, before the next checkpoint.
  late = _clock_config()
  late.late_fraction = 0.6
  assert budget.clock_end(3000, 2400.0, 0.4, 1000, late) == (7800, ["late"])
  # At 6000 with 10 min left at 0.4 s: 1500 - 1000 -> 300 more: end 6300, decay from now.
  assert budget.clock_end(6000, 600.0, 0.4, 1000, _clock_config()) == (6300, ["decay"])
  # Past the deadline: one more interval, decaying.
  assert budget.clock_end(6000, -60.0, 0.4, 1000, _clock_config()) == (6300, ["decay"])


def _clock_plan(tmp_path, monkeypatch, seconds_per_step: float, **train):
  """(a ClockPlan over a 3000 s budget with 1000 step-times reserved, its mock clock [seconds],
  the configs it compiled a step for); its step is named by how many were compiled."""
  config = ml_collections.ConfigDict(dict(train=dict(
      _clock_config(), num_steps=9000, decay_start=0, learning_rate=1e-3, warmup_steps=100)))
  config.train.update(train)
  now, built = [0.0], []
  monkeypatch.setattr(budget.time, "monotonic", lambda: now[0])
  plan = budget.ClockPlan(config, str(tmp_path), deadline=3000.0,
                          plan={"num_steps": 9000, "seconds_per_step": seconds_per_step,
                                "reserve_steps": 1000},
                          make_step=lambda c: built.append(c) or f"step {len(built)}")
  return plan, now, built


def test_clock_plan_follows_a_machine_that_slows_down(tmp_path, monkeypatch):
  plan, now, built = _clock_plan(tmp_path, monkeypatch, 0.2)
  assert plan.held_config.train.decay_start == budget.HOLD
  # Step 300 at 100 s: the measured 0.2 s; 2900 s left: 14500 - 1000 -> 13500 more: 13800.
  now[0] = 100.0
  assert plan.at_checkpoint(300) == (13800, None)
  # Step 600 at 400 s: 1 s a step over the interval; 2600 - 1000 -> 1500 more: 2100, whose
  # decay (420 steps) starts at 1680: later than 900, so not yet.
  now[0] = 400.0
  assert plan.at_checkpoint(600) == (2100, None)
  # Step 1500 at 1300 s: still 1 s; 1700 - 1000 = 700 -> 600 more: 2100, decay from 1680 < 1800.
  now[0] = 1300.0
  assert plan.at_checkpoint(1500) == (2100, "step 1")
  assert len(built) == 1 and built[0].train.decay_start == 1500
  assert built[0].train.num_steps == 2100
  saved = json.loads((tmp_path / budget.BUDGET_FILE).read_text())
  assert saved["num_steps"] == 2100 and saved["decay_start"] == 1500
  # Once decaying, the plan is fixed whatever the clock says.
  now[0] = 5000.0
  assert plan.at_checkpoint(1800) == (2100, None) and len(built) == 1


def test_clock_plan_starts_a_late_phase_and_then_the_decay(tmp_path, monkeypatch):
  plan, now, built = _clock_plan(tmp_path, monkeypatch, 1.0, late_fraction=0.4, late_start=0)
  assert plan.held_config.train.late_start == plan.held_config.train.decay_start == budget.HOLD
  # Step 300 at 300 s: 2700 - 1000 -> 1500 more: 1800, late phase (720) from 1080: not yet.
  now[0] = 300.0
  assert plan.at_checkpoint(300) == (1800, None)
  # Step 900 at 900 s: 2100 - 1000 -> 1100 more, 900 on checkpoints: 1800, late from 1080 < 1200.
  now[0] = 900.0
  assert plan.at_checkpoint(900) == (1800, "step 1")
  assert built[0].train.late_start == 900 and built[0].train.decay_start == budget.HOLD
  # Step 1500 at 1500 s: 1500 - 1000 -> 300 more: 1800, its decay (360) from 1440 < 1800.
  now[0] = 1500.0
  assert plan.at_checkpoint(1500) == (1800, "step 2")
  assert (built[1].train.late_start, built[1].train.decay_start) == (900, 1500)
  saved = json.loads((tmp_path / budget.BUDGET_FILE).read_text())
  assert (saved["late_start"], saved["decay_start"]) == (900, 1500)


def test_clock_plan_fixes_a_shorter_late_phase_with_the_decay(tmp_path, monkeypatch):
  plan, now, built = _clock_plan(tmp_path, monkeypatch, 1.0, decay_fraction=0.5,
                                 late_fraction=0.1, late_start=0)
  # Step 900 at 900 s: 2100 - 1000 -> 900 more: 1800, its decay (900) from now; the end fixed,
  # the last 10% (180 steps) from 1620, after the next checkpoint: set with it.
  now[0] = 900.0
  assert plan.at_checkpoint(900) == (1800, "step 1")
  assert (built[0].train.decay_start, built[0].train.late_start) == (900, 1620)
  assert json.loads((tmp_path / budget.BUDGET_FILE).read_text())["late_start"] == 1620


def test_clock_plan_reads_the_median_of_the_last_intervals(tmp_path, monkeypatch):
  # A fast machine (0.1 s a step) with one slow interval, then a lasting slowdown.
  plan, now, _ = _clock_plan(tmp_path, monkeypatch, 0.1)
  for step, seconds in ((300, 30.0), (600, 60.0), (900, 90.0)):
    now[0] = seconds
    plan.at_checkpoint(step)
  # Step 1200 at 390 s: this interval at 1 s a step, the two before at 0.1: the median 0.1;
  # 2610 s left: 26100 - 1000 -> 24900 more: 26100 (the last interval alone: 1610 -> 2700).
  now[0] = 390.0
  assert plan.at_checkpoint(1200) == (26100, None)
  # A second slow interval: the median is 1 s; 2310 - 1000 -> 1200 more: 2700, whose decay
  # (540 steps) starts at 2160: after the next checkpoint (1800), so not yet.
  now[0] = 690.0
  assert plan.at_checkpoint(1500) == (2700, None)
  assert json.loads((tmp_path / budget.BUDGET_FILE).read_text())["seconds_per_step_now"] == 1.0


def test_time_budget_run_keeps_to_the_clock_and_its_plan_on_resume(tiny_config, tmp_path):
  with tiny_config.unlocked():
    tiny_config.train.update(num_steps=0, budget_minutes=0.0)
  with pytest.raises(UserError, match="budget_minutes"):
    train.train(tiny_config, str(tmp_path))
  # A budget smaller than a step: the first checkpoint past the 3 warm-up steps, 6. At the
  # checkpoint of step 3 the minutes are spent: the end stays at 6 and the decay starts at 3.
  with tiny_config.unlocked():
    tiny_config.train.update(budget_minutes=1e-6, budget_kept_checkpoints=1, decay_fraction=0.2,
                             late_fraction=0.5, checkpoint_every=3, warmup_steps=3, log_every=1)
    tiny_config.diffusion.late_condition_tasks = "inpaint"  # its phase started by the clock too
  first = train.train(tiny_config, str(tmp_path))
  chosen = json.loads((tmp_path / budget.BUDGET_FILE).read_text())
  assert first["step"] == chosen["num_steps"] == 6 and chosen["keep_period"] == 6
  assert chosen["decay_start"] == chosen["late_start"] == 3 and chosen["seconds_per_step"] > 0
  # The last step's learning rate is the decaying schedule's (step 5 of 3 -> 6), not the peak.
  peak, end = tiny_config.train.learning_rate, tiny_config.train.end_learning_rate_factor
  expected = peak + (peak * end - peak) * (5 - 3) / (6 - 3)
  assert first["metrics"]["learning_rate"] == pytest.approx(expected, rel=1e-5)
  # Rerun with a larger budget: the run keeps the plan it saved (its schedule), trains none.
  with tiny_config.unlocked():
    tiny_config.train.budget_minutes = 100.0
  again = train.train(tiny_config, str(tmp_path))
  assert again["step"] == 6 and not again["metrics"]
  assert json.loads((tmp_path / budget.BUDGET_FILE).read_text()) == chosen


@pytest.mark.slow  # ~20 s; test_loop.py stops on a non-finite loss by default
def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tiny_config, tmp_path):
  with tiny_config.unlocked():
    tiny_config.train.update(learning_rate=1e38, warmup_steps=0, num_steps=8, log_every=1)
  with pytest.raises(loop.NonFiniteLossError, match="became non-finite at step") as err:
    train.train(tiny_config, str(tmp_path))
  ckpts = sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit())
  # Whatever was saved was saved before the failure, and the message names it.
  bad_step = int(str(err.value).split("at step ")[1].split(";")[0])
  assert all(s < bad_step for s in ckpts)
  assert (f"step {ckpts[-1]}" in str(err.value)) if ckpts else "no checkpoint" in str(err.value)


def test_autoguidance_loads_the_runs_earlier_checkpoint_as_its_guide(tiny_config, tmp_path):
  train.train(tiny_config, str(tmp_path))  # checkpoints at steps 3 and 6
  mesh = sharding.make_mesh(tiny_config.mesh)
  loaded = generate.load_for_sampling(tiny_config, str(tmp_path), mesh)
  with tiny_config.unlocked():
    tiny_config.sample.autoguidance_weight = 2.0
  for step in (-1, 6):  # none given, or not earlier than the sampled checkpoint
    with tiny_config.unlocked():
      tiny_config.sample.autoguidance_step = step
    with pytest.raises(UserError, match="earlier checkpoint"):
      generate.sampling_denoiser(tiny_config, str(tmp_path), loaded, mesh)
  with tiny_config.unlocked():
    tiny_config.sample.update(autoguidance_step=3, autoguidance_modalities="vid")
  with pytest.raises(UserError, match="autoguidance_modalities"):
    generate.sampling_denoiser(tiny_config, str(tmp_path), loaded, mesh)
  with tiny_config.unlocked():
    tiny_config.sample.autoguidance_modalities = "video,audio"
  apply_fn, params, settings = generate.sampling_denoiser(tiny_config, str(tmp_path), loaded, mesh)
  assert settings["autoguidance_guide_step"] == 3 and settings["autoguidance_weight"] == 2.0
  # The guide is the run's own model at step 3, restored by the plain loader for comparison.
  with tiny_config.unlocked():
    tiny_config.sample.update(checkpoint_step=3, autoguidance_weight=0.0)
  early = generate.load_for_sampling(tiny_config, str(tmp_path), mesh)
  assert early[-1] == 3 and loaded[-1] == 6
  layout = loaded[0]
  rng = np.random.default_rng(0)
  noisy = {k: jnp.asarray(rng.standard_normal(s), jnp.float32)
           for k, s in layout.latent_shapes(2).items()}
  t_bmn = jnp.full((2, 2, layout.num_segments), 400.0)
  good = loaded[2](loaded[3], noisy, t_bmn, None)
  guide = early[2](early[3], noisy, t_bmn, None)
  guided = apply_fn(params, noisy, t_bmn, None)
  for k in noisy:
    assert float(jnp.abs(good[k] - guide[k]).max()) > 1e-4  # the two models differ
    np.testing.assert_allclose(guided[k], 3.0 * good[k] - 2.0 * guide[k], rtol=1e-4, atol=1e-5)
  # autoguidance_fraction picks the same guide here: the only earlier checkpoint, step 3.
  with tiny_config.unlocked():
    tiny_config.sample.update(checkpoint_step=-1, autoguidance_weight=2.0, autoguidance_step=-1,
                              autoguidance_fraction=0.9)
  apply_fn, params, settings = generate.sampling_denoiser(tiny_config, str(tmp_path), loaded, mesh)
  np.testing.assert_allclose(apply_fn(params, noisy, t_bmn, None)["video"], guided["video"],
                             rtol=1e-6)
  assert settings["autoguidance_guide_step"] == 3
  with tiny_config.unlocked():
    tiny_config.sample.autoguidance_fraction = 0.0
  # A smaller network of another run guides the video alone; its shape comes from its
  # config.json, not from the sampled run's config.
  small = tiny_config.copy_and_resolve_references()
  with small.unlocked():
    small.model.update(width=32, depth=1)
    small.train.num_steps = 3
  train.train(small, str(tmp_path / "small"))
  with tiny_config.unlocked():
    tiny_config.sample.update(checkpoint_step=-1, autoguidance_weight=0.5, autoguidance_step=-1,
                              autoguidance_workdir=str(tmp_path / "small"),
                              autoguidance_modalities="video")
  apply_fn, params, settings = generate.sampling_denoiser(tiny_config, str(tmp_path), loaded, mesh)
  assert "autoguidance_guide_step" not in settings  # another run's: its latest checkpoint
  small_loaded = generate.load_for_sampling(small, str(tmp_path / "small"), mesh)
  small_out = small_loaded[2](small_loaded[3], noisy, t_bmn, None)
  guided = apply_fn(params, noisy, t_bmn, None)
  np.testing.assert_allclose(guided["video"], 1.5 * good["video"] - 0.5 * small_out["video"],
                             rtol=1e-4, atol=1e-5)
  np.testing.assert_array_equal(guided["audio"], good["audio"])


def test_autoguide_step_is_the_given_step_or_the_kept_checkpoint_nearest_the_fraction(
    monkeypatch):
  kept = [600, 1200, 1800, 3600, 5400, 9000, 10500]
  monkeypatch.setattr(checkpointing, "checkpoint_steps", lambda workdir: kept)
  sample = ml_collections.ConfigDict(dict(autoguidance_weight=0.5, autoguidance_step=-1,
                                          autoguidance_fraction=1 / 3))
  assert generate.autoguide_step(sample, "run", 10500) == 3600  # 3500: 3600 is nearest
  sample.autoguidance_fraction = 0.5
  assert generate.autoguide_step(sample, "run", 10500) == 5400  # 5250
  assert generate.autoguide_step(sample, "run", 1800) == 600  # 900: only earlier ones count
  sample.autoguidance_step = 1800  # a given step wins over the fraction
  assert generate.autoguide_step(sample, "run", 10500) == 1800
  for step, fraction, at in ((10500, 0.5, 10500), (1000, 0.0, 10500), (-1, 0.0, 10500),
                             (-1, 0.5, 600)):
    sample.update(autoguidance_step=step, autoguidance_fraction=fraction)
    with pytest.raises(UserError, match="earlier checkpoint"):
      generate.autoguide_step(sample, "run", at)


def test_sampling_without_checkpoint_is_a_clear_error(tiny_config, tmp_path):
  with pytest.raises(FileNotFoundError, match="no checkpoint directory .* train first"):
    generate.sample(tiny_config, str(tmp_path))


def _main(workdir, *overrides, mode="train_and_sample", **popen):
  cmd = [sys.executable, "-m", "avdit.main", "--config=configs/avdit_synthetic.py:tiny",
         f"--workdir={workdir}", f"--mode={mode}", *overrides]
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, **popen)


# ~60 s (two subprocesses compile the step). By default test_loop.py covers the SIGTERM save and
# stop in process, and test_resume_matches_uninterrupted_run the AVDiT resume.
@pytest.mark.slow
def test_sigterm_saves_and_rerun_resumes(tmp_path):
  proc = _main(tmp_path, "--config.train.num_steps=100000", "--config.train.log_every=1",
               "--config.train.checkpoint_every=100000", mode="train")
  lines = []
  for line in proc.stdout:  # wait until training has taken a few steps
    lines.append(line)
    if "] [3] " in line or line.startswith("[3] "):
      proc.send_signal(signal.SIGTERM)
      break
  out = "".join(lines) + proc.stdout.read()
  assert proc.wait(timeout=120) == 0, out[-3000:]
  assert "stopped by SIGTERM at step" in out
  stopped_at = int(out.split("stopped by SIGTERM at step ")[1].split(";")[0])
  assert os.path.isdir(tmp_path / "checkpoints" / str(stopped_at))
  resumed = _main(tmp_path, f"--config.train.num_steps={stopped_at + 2}", mode="train")
  out2 = resumed.communicate(timeout=300)[0]
  assert resumed.returncode == 0, out2[-3000:]
  assert f"Resumed from step {stopped_at}" in out2
  assert os.path.isdir(tmp_path / "checkpoints" / str(stopped_at + 2))


# ~50 s (a subprocess trains and samples every task); by default test_fixed_latent_job.py runs
# train -> sample -> eval in process and checks that its mp4s play with sound.
@pytest.mark.slow
def test_main_job_writes_checkpoint_events_and_playable_mp4s(tmp_path):
  proc = _main(tmp_path)
  out = proc.communicate(timeout=600)[0]
  assert proc.returncode == 0, out[-3000:]
  assert os.path.isdir(tmp_path / "checkpoints" / "6")
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path))
  samples = tmp_path / "samples"
  mp4s = sorted(p for p in os.listdir(samples) if p.endswith(".mp4"))
  assert {"joint_0.mp4", "a2v_0_compare.mp4", "av_inpaint_0.mp4"} <= set(mp4s)
  for name in mp4s:
    with av.open(str(samples / name)) as container:
      assert [s.type for s in container.streams] in (["video", "audio"], ["audio", "video"])
      video, audio = container.streams.video[0], container.streams.audio[0]
      frames = sum(1 for _ in container.decode(video=0))
      assert frames == 9  # the tiny clip: 9 frames at 8 fps
      duration = float(audio.duration * audio.time_base)
      assert duration == pytest.approx(9 / 8, abs=1 / 8)
      assert audio.sample_rate == 16000
  html = (samples / "index.html").read_text()
  assert "a2v_0_compare.mp4" in html and "joint_0.png" in html


def test_bad_mode_and_missing_workdir_are_clear(tmp_path):
  proc = _main("", mode="train")
  out = proc.communicate(timeout=120)[0]
  assert proc.returncode != 0 and "--workdir is required" in out
