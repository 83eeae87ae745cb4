"""Shared fixtures: tiny layouts and configs so every test runs in seconds on 2 CPU cores."""
import os
import sys

import pytest

# Tests run on the CPU; quiet TensorFlow (imported by clu) before anything imports it.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# The suite is mostly compiling tiny programs, and most of XLA:CPU's compile time is LLVM's
# optimizer: without it (HLO passes still run; the float semantics are the same) the suite takes
# ~15% less. Subprocesses inherit it; `XLA_FLAGS` set by the user is kept as it is.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + " --xla_backend_optimization_level=0").strip()
# Many tests (and the subprocesses they start, which inherit this) compile the same tiny train
# and sample steps again: a persistent compilation cache, one per pytest worker and session so
# workers never read an entry the other is still writing, turns those recompiles into loads.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  import atexit  # noqa: E402
  import shutil  # noqa: E402
  import tempfile  # noqa: E402
  _cache_dir = tempfile.mkdtemp(
      prefix=f"avdit-test-jax-cache-{os.environ.get('PYTEST_XDIST_WORKER', 'main')}-")
  atexit.register(shutil.rmtree, _cache_dir, ignore_errors=True)
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache_dir
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.2"

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from avdit import layout as layout_lib  # noqa: E402


@pytest.fixture
def paper_layout():
  """Monologues geometry with space_to_depth channels: 17 frames, 8 fps, 128x128, 16 kHz."""
  return layout_lib.ClipLayout(num_frames=17, fps=8.0, height=128, width=128, sample_rate=16000,
                               video_channels=768, audio_channels=320)


@pytest.fixture
def tiny_config():
  from configs import avdit_synthetic
  return avdit_synthetic.get_config("tiny")
