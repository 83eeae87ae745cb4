"""Multi-host training, for real: two processes joined by `jax.distributed` on this machine.

Each process owns 2 fake CPU devices (4 in all), loads only its half of every global batch, and
the train step runs over the 4-device mesh with cross-process collectives (gloo). The run must
equal a single process with 4 devices: the global batches are the same clips in the same rows
(pipeline.py gives host p rows [p*b, (p+1)*b)) and the mesh partitions the same computation, so
only the order of the cross-device sums may differ (tolerance 1e-6 on O(1) values; measured
<= 2e-7).
"""
import json
import os
import socket
import subprocess

import pytest
import sys

import jax
import numpy as np

from avdit.sampling import generate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OVERRIDES = ["--config.data.batch_size=4", "--config.train.num_steps=4",
             "--config.train.checkpoint_every=2"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _command(workdir):
  return [sys.executable, "-m", "avdit.main", "--config=configs/avdit_synthetic.py:tiny",
          "--mode=train", f"--workdir={workdir}", *OVERRIDES]


def _env(devices, **extra):
  env = {k: v for k, v in os.environ.items()
         if k not in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")}
  env.update(JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
             XLA_FLAGS=(os.environ.get("XLA_FLAGS", "")
                        + f" --xla_force_host_platform_device_count={devices}").strip(), **extra)
  return env


def _restored_params(workdir, config):
  """The sampling path's restore: onto this process's mesh, which differs from the training one."""
  *_, params, _, step = generate.load_for_sampling(config, workdir)
  return step, jax.tree_util.tree_leaves(jax.device_get(params))


@pytest.mark.slow  # three JAX processes at once (~2 min of both cores); sharding runs by default
def test_two_processes_train_like_one(tiny_config, tmp_path):
  port = _free_port()
  multi = tmp_path / "two_hosts"
  procs = [subprocess.Popen(_command(multi), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            env=_env(2, JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
                                     JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i)))
           for i in range(2)]
  single = tmp_path / "one_host"  # the reference, run at the same time (compiling dominates)
  reference = subprocess.Popen(_command(single), cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, env=_env(4))
  logs = [p.communicate(timeout=300)[0] for p in procs]
  for i, (p, log) in enumerate(zip(procs, logs)):
    assert p.returncode == 0, f"process {i} failed:\n{log[-3000:]}"
  assert "CpuDevice(id=2049)" in logs[0]  # each process saw the other's devices
  reference_log = reference.communicate(timeout=300)[0]
  assert reference.returncode == 0, reference_log[-3000:]

  # Only host 0 writes the summary and config; both wrote their data-iterator position.
  assert (multi / "train_summary.json").exists() and (multi / "config.json").exists()
  assert sorted(os.listdir(multi / "checkpoints" / "4" / "data_iter")) == [
      "commit_success.txt", "process_0-of-2.json", "process_1-of-2.json"]
  metrics = [json.loads((d / "train_summary.json").read_text())["metrics"]
             for d in (multi, single)]
  for key in ("loss", "loss_video", "loss_audio", "grad_norm"):
    np.testing.assert_allclose(metrics[0][key], metrics[1][key], rtol=0, atol=1e-6)
  with tiny_config.unlocked():
    tiny_config.data.batch_size = 4
    tiny_config.train.num_steps = 4
  (step_a, state_a), (step_b, state_b) = (_restored_params(str(d), tiny_config)
                                          for d in (multi, single))
  assert step_a == step_b == 4
  assert len(state_a) == len(state_b) > 10
  for a, b in zip(state_a, state_b):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
