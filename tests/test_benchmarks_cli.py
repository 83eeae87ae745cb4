"""Smoke tests of the data and autoencoder benchmark commands at their smallest settings.

Both commands run as subprocesses (their absl flags would clash in one process), started together
so that their start-up and compilation overlap; each test waits for its own. XLA's backend
optimizations are off in them (--xla_backend_optimization_level=0): that cuts the compile time
(mostly the models' per-shape initializers: ~11 s -> ~3 s per autoencoder) and the tests check
the reports, not the speed.
"""
import json
import math
import os
import subprocess
import sys

import pytest

# Benchmarks are commands, not tests; these only check that their reports are well formed.
pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VIDEO = os.path.join(os.path.dirname(ROOT), "shared", "data", "aist_dance_sample.mp4")
TIMEOUT_SECONDS = 300


def _start(module, json_path, *flags):
  xla_flags = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", XLA_FLAGS=xla_flags)
  return subprocess.Popen([sys.executable, "-m", module, f"--json={json_path}", *flags],
                          cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("benchmarks")
  started = {
      "data": (_start("avdit.tools.benchmark_data", tmp / "data.json", f"--video={VIDEO}",
                      "--sizes=32", "--repeats=1", "--steps=6", "--warmup_steps=2"),
               tmp / "data.json"),
      "autoencoders": (_start("avdit.tools.benchmark_autoencoders", tmp / "ae.json",
                              "--settings=tiny", "--batch=1", "--repeats=1", "--train_steps=1"),
                       tmp / "ae.json"),
  }
  yield started
  for proc, _ in started.values():
    if proc.poll() is None:
      proc.kill()
      proc.wait()


def _result(runs, name):
  proc, json_path = runs[name]
  output, _ = proc.communicate(timeout=TIMEOUT_SECONDS)
  assert proc.returncode == 0, output[-4000:]
  with open(json_path) as f:
    return json.load(f), output


def _positive(x):
  return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.mark.skipif(not os.path.exists(VIDEO), reason="needs the shared AIST++ sample")
def test_data_benchmark_reports_throughput_and_wait_fraction(runs):
  out, text = _result(runs, "data")
  (decode,) = out["decode"]
  assert decode["size"] == 32 and decode["clips"] > 0
  assert _positive(decode["clips_per_second"]) and _positive(decode["realtime_factor"])
  assert {r["prefetch_buffer"] for r in out["data_wait"]} == {2, 0}
  for r in out["data_wait"]:
    assert r["data"] == "synthetic" and r["steps"] == 6
    assert 0.0 <= r["data_wait_fraction"] <= 1.0
    assert 0.0 <= r["data_wait_fraction"] + r["transfer_fraction"] <= 1.0
    assert _positive(r["step_seconds_mean"]) and _positive(r["steps_per_second"])
  assert "x real time" in text and "data wait" in text


def test_autoencoder_benchmark_reports_throughput_and_mfu(runs):
  out, text = _result(runs, "autoencoders")
  assert _positive(out["peak_flop_per_second"])
  assert {(r["model"], r["setting"]) for r in out["results"]} == {
      ("magvit2", "tiny"), ("soundstream", "tiny")}
  for r in out["results"]:
    assert r["num_params"]["total"] == r["num_params"]["encoder"] + r["num_params"]["decoder"]
    assert r["num_params"]["total"] > 0
    assert not r["guarded"]
    for name in ("encode", "decode"):
      assert _positive(r["encode_decode"][name]["clips_per_second"])
      assert _positive(r["encode_decode"][name]["xla_flops_per_clip"])
    step = r["train_step"]
    assert _positive(step["step_seconds"]) and _positive(step["flops_per_step"])
    assert 0 < step["mfu"] < 1.5 and math.isfinite(step["loss"])
    # The 3x-forward rule against XLA's own count of the compiled step (backward + Adam).
    assert 2.5 < step["train_step_xla_flops"] / step["forward_xla_flops"] < 3.5
  assert "MFU" in text
