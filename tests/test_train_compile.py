"""AOT compilation for a TPU topology from this CPU host (needs the `aot` extra: libtpu)."""
import os
import subprocess
import sys

import pytest

from avdit.tools import train_compile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _compile(*flags):
  env = dict(os.environ, JAX_PLATFORMS="cpu", ALLOW_MULTIPLE_LIBTPU_LOAD="1",
             TF_CPP_MIN_LOG_LEVEL="3")
  proc = subprocess.run([sys.executable, "-m", "avdit.tools.train_compile", *flags], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=600)
  return proc.returncode, proc.stdout, proc.stderr


def test_tiny_train_step_compiles_for_v5e_and_reports_memory():
  rc, out, err = _compile("--config=configs/avdit_monologues.py:tiny", "--topology=v5e:2x2",
                          "--config.mesh.ici_parallelism.fsdp=4", "--config.data.batch_size=4")
  assert rc == 0, err[-3000:]
  assert "4 x v5e (16.00 GiB HBM, 197 TFLOP/s bf16 each)" in out
  assert "mesh {'data': 1, 'fsdp': 4, 'tensor': 1}" in out
  assert "precomputed_latents: True" in out  # the learned autoencoders are not in the step
  peak_line = [l for l in out.splitlines() if l.startswith("per-chip memory:")][0]
  peak_gib = float(peak_line.split("peak ")[1].split(" GiB")[0])
  assert 0 < peak_gib < 16
  assert "fits: peak" in out and "days" in out


@pytest.mark.slow  # ~25 s; the fit report itself runs by default in the test above
def test_a_step_that_cannot_fit_exits_with_a_clear_error():
  # 4096 clips of 1387 tokens on 4 chips: the [B, H, L, L] attention scores alone are ~30 GiB.
  rc, out, err = _compile("--config=configs/avdit_monologues.py:tiny", "--topology=v5e:2x2",
                          "--config.mesh.ici_parallelism.fsdp=4",
                          "--config.data.batch_size=4096")
  assert rc == 3, (out + err)[-3000:]
  assert "does not fit v5e's 16.00 GiB HBM" in err and "remat" in err


def test_sampler_compiles_for_v5e():
  rc, out, err = _compile("--config=configs/avdit_monologues.py:tiny", "--topology=v5e:2x2",
                          "--mode=sample", "--config.mesh.ici_parallelism.fsdp=4",
                          "--config.sample.num_steps=4", "--config.sample.num_clips=4",
                          "--config.model.remat=dots_saveable")  # training remat: off to sample
  assert rc == 0, err[-3000:]
  assert "task: a2v" in out and "fits: peak" in out


@pytest.mark.parametrize("name,message", [
    ("v5e-256", "cannot read topology"),
    ("v9z:4x4", "unknown TPU chip 'v9z'"),
])
def test_bad_topology_names(name, message):
  """Unknown names fail before anything is compiled, with the expected form in the message."""
  with pytest.raises(ValueError, match=message):
    train_compile.parse_topology(name)


def test_topology_chip_counts():
  assert train_compile.parse_topology("v5e:16x16")[2] == 256
  assert train_compile.parse_topology("v5p:4x4x4")[2] == 64


def test_batch_that_does_not_divide_the_mesh_is_a_clear_error():
  rc, _, err = _compile("--config=configs/avdit_monologues.py:tiny", "--topology=v5e:2x2",
                        "--config.mesh.ici_parallelism.fsdp=4", "--config.data.batch_size=6")
  assert rc != 0 and "batch_size=6 is not divisible by the data x fsdp" in err


def test_device_kinds_map_to_chips():
  from avdit import hardware

  class FakeDevice:
    def __init__(self, kind):
      self.device_kind = kind

  assert hardware.chip_of(FakeDevice("TPU v5 lite")) == "v5e"
  assert hardware.CHIPS["v5e"].peak_bf16_flops == 197e12
  assert hardware.chip_of(FakeDevice("cpu")) is None


@pytest.mark.slow  # the default tiny config already compiles splash + scan (fsdp=4) above
def test_splash_attention_and_scanned_layers_compile_for_v5e_with_tensor_parallel_heads():
  """The Pallas splash kernel is lowered by Mosaic for the TPU (not interpreted) and runs per
  shard in a shard_map: heads split over tensor=2, batch over fsdp=2."""
  rc, out, err = _compile("--config=configs/avdit_monologues.py:tiny", "--topology=v5e:2x2",
                          "--config.mesh.ici_parallelism.fsdp=2",
                          "--config.mesh.ici_parallelism.tensor=2", "--config.data.batch_size=4",
                          "--config.model.attention=splash", "--config.model.scan_layers=True")
  assert rc == 0, err[-3000:]
  assert "mesh {'data': 1, 'fsdp': 2, 'tensor': 2}" in out
  assert "attention splash" in out and "fits: peak" in out
