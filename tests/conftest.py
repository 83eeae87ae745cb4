"""Shared fixtures: tiny layouts and configs so every test runs in seconds on 2 CPU cores."""
import os
import sys

import pytest

# Tests run on the CPU; quiet TensorFlow (imported by clu) before anything imports it.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

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
