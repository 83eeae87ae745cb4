"""Training: exact resume, preemption, non-finite stop, and the main job's outputs."""
import json
import os
import signal
import subprocess
import sys

import av
import jax
import ml_collections
import numpy as np
import pytest

from avdit.errors import UserError
from avdit.sampling import generate
from avdit.training import loop
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


def _budget_config(minutes, reserve, kept=7):
  return ml_collections.ConfigDict(dict(
      budget_minutes=minutes, budget_reserve_steps=reserve, budget_kept_checkpoints=kept,
      checkpoint_every=300, warmup_steps=100))


def test_time_budget_steps_closed_form():
  # Worked by hand: 10 min at 0.2 s a step = 3000 step-times, 1000 kept back: 2000 fit, 1800 on
  # multiples of 300; 7 kept checkpoints every 1800 / 7 = 257 -> 300.
  assert train.budget_steps(_budget_config(10.0, 1000), 0.2) == {"num_steps": 1800,
                                                                 "keep_period": 300}
  # 60 min at 0.25 s = 14400, 3000 kept back: 11400; 11400 / 7 = 1629 -> 1500 (5.4 x 300).
  assert train.budget_steps(_budget_config(60.0, 3000), 0.25) == {"num_steps": 11400,
                                                                  "keep_period": 1500}
  # No time left: the first checkpoint past the warm-up; no kept checkpoints asked: none.
  assert train.budget_steps(_budget_config(-5.0, 3000, kept=0), 0.25) == {"num_steps": 300,
                                                                         "keep_period": 0}


def test_time_budget_run_is_saved_and_kept_on_resume(tiny_config, tmp_path):
  with tiny_config.unlocked():
    tiny_config.train.update(num_steps=0, budget_minutes=0.0)
  with pytest.raises(UserError, match="budget_minutes"):
    train.train(tiny_config, str(tmp_path))
  # A budget smaller than a step: the first checkpoint past the warm-up (2 steps): 3.
  with tiny_config.unlocked():
    tiny_config.train.update(budget_minutes=1e-6, budget_kept_checkpoints=1)
  first = train.train(tiny_config, str(tmp_path))
  chosen = json.loads((tmp_path / train.BUDGET_FILE).read_text())
  assert first["step"] == chosen["num_steps"] == 3 and chosen["keep_period"] == 3
  assert chosen["seconds_per_step"] > 0
  # Rerun with a larger budget: the run keeps the steps it chose (its schedule), trains none.
  with tiny_config.unlocked():
    tiny_config.train.budget_minutes = 100.0
  again = train.train(tiny_config, str(tmp_path))
  assert again["step"] == 3 and not again["metrics"]
  assert json.loads((tmp_path / train.BUDGET_FILE).read_text()) == chosen


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
