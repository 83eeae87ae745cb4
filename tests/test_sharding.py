"""Sharded training on 8 fake CPU devices equals the single-device step (SPEC §9).

The comparison runs in a subprocess (`sharding_worker.py`) because the fake device count must be
set before JAX starts. Tolerance: the sharded step sums gradients over devices in another order
than the single-device step, so float32 rounding differs at ~1e-7 of the values; after two AdamW
steps (lr 5e-4 at step 1) every parameter, moment and EMA entry must agree within 1e-5 absolute
(measured: 1.3e-6 to 4.7e-6 with the tiny config's x0-prediction, whose gradients on the
768-channel tokens are larger than ε-prediction's, which gave < 1e-6) and the losses within 1e-6
relative. A real sharding bug (a wrong reduction, a missing shard) changes values at the 1e-3
level or more.
"""
import json
import os
import subprocess
import sys

import pytest

from avdit import sharding

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_worker(tmp_path_factory, extra):
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  worker = [sys.executable, os.path.join(ROOT, "tests", "sharding_worker.py"),
            str(tmp_path_factory.mktemp("ckpt"))]
  proc = subprocess.run(worker + extra, cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=600, check=False)
  lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
  assert proc.returncode == 0 and lines, proc.stderr[-4000:]
  return json.loads(lines[-1][len("RESULT "):])


@pytest.fixture(scope="module")
def result(tmp_path_factory):
  """tensor x fsdp x data against one device (compiling dominates: ~1 min of one core)."""
  return _run_worker(tmp_path_factory, [])


@pytest.fixture(scope="module")
def extras(tmp_path_factory):
  """Scanned layers, the SoundStream step, fsdp=4 and pure data parallel (~2.5 min: `slow`)."""
  return _run_worker(tmp_path_factory, ["extras"])


def _assert_equals_single_device(got, reference_losses):
  assert got["init_max_abs_diff"] < 1e-7  # same initial parameters, created sharded
  for a, b in zip(reference_losses, got["losses"]):
    assert abs(a - b) <= 1e-6 * abs(a)
  assert got["state_max_abs_diff"] < 1e-5


def test_sharded_step_equals_single_device(result):
  assert result["num_devices"] == 8
  _assert_equals_single_device(result["meshes"]["tensor2_fsdp2_data2"],
                               result["reference_losses"])


@pytest.mark.slow  # the data axis also runs (at 2) in tensor2_fsdp2_data2 by default
def test_pure_data_parallel_step_equals_single_device_and_replicates(extras):
  _assert_equals_single_device(extras["data8"], extras["reference_losses"])
  assert extras["data8"]["num_sharded_params"] == 0


@pytest.mark.slow  # fsdp's rules also run in tensor2_fsdp2_data2 by default
def test_fsdp4_step_equals_single_device_and_shards_large_kernels(extras):
  fsdp = extras["fsdp4_data2"]
  _assert_equals_single_device(fsdp, extras["reference_losses"])
  assert fsdp["mlp_kernel_spec"] == "P('fsdp', 'tensor')"
  assert fsdp["num_sharded_params"] > 0
  # Whatever stays replicated is small next to the sharded kernels (tiny model: d = 64).
  assert fsdp["largest_unsharded_param"][1] <= 64 * 64


def test_activation_constraints_are_traced_into_the_step(result):
  # layers.constrain at the embedding, each block output, attention heads and MLP hidden.
  assert result["meshes"]["tensor2_fsdp2_data2"]["num_sharding_constraints"] >= 4


@pytest.mark.slow
def test_scanned_layers_shard_and_match_single_device(extras):
  scan = extras["scan"]
  assert scan["mlp_kernel_shape"] == [2, 64, 256]  # [layers, embed, mlp] of the tiny config
  assert scan["mlp_kernel_spec"] == "P(None, 'fsdp', 'tensor')"
  assert scan["state_max_abs_diff"] < 1e-5


@pytest.mark.slow
def test_autoencoder_step_shards_and_matches_single_device(extras):
  """SoundStream (generator + EMA codebooks) on fsdp=2 x data=4: parameters, EMA and codebooks
  agree to float32 round-off of the reordered sums (1e-3 relative to each array's largest
  entry; a wrong reduction would be off by O(1)). The residual units' 1x1 kernels start at zero,
  so after the one Adam step that moves them they hold only ±lr-sized entries, and Adam turns
  round-off in gradients near its eps into differences of that size: measured 3.1e-4."""
  got = extras["autoencoder"]
  assert got["num_sharded"] > 10
  reference, sharded = got["loss"]
  assert abs(reference - sharded) <= 1e-5 * abs(reference)
  assert got["generator_max_rel_diff"] < 1e-3


def test_large_parameters_are_sharded(result):
  tp = result["meshes"]["tensor2_fsdp2_data2"]
  assert tp["mlp_kernel_spec"] == "P('fsdp', 'tensor')"
  assert tp["num_sharded_params"] > 0
  # Whatever stays replicated is small next to the sharded kernels (tiny model: d = 64).
  assert tp["largest_unsharded_param"][1] <= 768


def test_checkpoint_restores_onto_another_mesh(result):
  assert result["restore"]["max_abs_diff"] == 0.0
  assert result["restore"]["mesh_of_restored"] == {"data": 8, "fsdp": 1, "tensor": 1}


@pytest.mark.parametrize("parallelism,devices,message", [
    (dict(data=3, fsdp=1, tensor=1), 8, "has 3 devices but 8 are available"),
    (dict(data=-1, fsdp=3, tensor=1), 8, "not divisible by the fixed axes"),
    (dict(data=-1, fsdp=-1, tensor=1), 8, "at most one mesh axis may be -1"),
    (dict(data=0, fsdp=1, tensor=1), 8, "must be positive or -1"),
])
def test_bad_mesh_errors(parallelism, devices, message):
  with pytest.raises(ValueError, match=message):
    sharding.resolve_parallelism(parallelism, devices, "mesh.ici_parallelism")


def test_mesh_fill_and_batch_division():
  assert sharding.resolve_parallelism(dict(data=-1, fsdp=4, tensor=2), 256, "m") == (32, 4, 2)
  sharding.check_batch_divides(256, {"data": 32, "fsdp": 4})
  with pytest.raises(ValueError, match=r"batch_size=6 is not divisible by the data x fsdp"):
    sharding.check_batch_divides(6, {"data": 2, "fsdp": 2})


def test_unknown_mesh_axis_in_rules():
  from ml_collections import ConfigDict
  bad = ConfigDict(dict(logical_axis_rules=(("embed", "model"),)))
  with pytest.raises(ValueError, match="unknown mesh axis 'model'"):
    sharding.logical_axis_rules(bad)
