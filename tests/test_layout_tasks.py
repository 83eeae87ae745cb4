"""Time-segments, segment_of_audio, the token layout and task masks (SPEC §3)."""
import numpy as np
import pytest

from avdit import layout as layout_lib
from avdit import tasks


def test_paper_token_counts(paper_layout):
  lay = paper_layout
  assert lay.num_segments == 5
  assert lay.audio_samples == 34_000
  assert lay.audio_latents == 107  # 34000 / 320 = 106.25, padded
  assert lay.num_video_tokens == 5 * 16 * 16 == 1280
  assert lay.num_tokens == 1387


def test_segment_of_audio_matches_brute_force(paper_layout):
  lay = paper_layout
  # Independent: list every segment's [start, end) from the frame grid and find each centre.
  frame_starts = np.arange(lay.num_frames) / lay.fps
  bounds = [(frame_starts[0], frame_starts[1])]
  for k in range(1, lay.num_segments):
    bounds.append((frame_starts[1 + 4 * (k - 1)], (1 + 4 * k) / lay.fps))
  for j, seg in enumerate(lay.segment_of_audio):
    centre = (j + 0.5) * 320 / 16000
    holding = [n for n, (a, b) in enumerate(bounds) if a <= centre < b]
    expected = holding[0] if holding else lay.num_segments - 1
    assert seg == expected, j
  # Segment 0 holds 0.125 s of audio -> the 6 latents with centres below it.
  assert (lay.segment_of_audio == 0).sum() == 6
  assert np.all(np.diff(lay.segment_of_audio) >= 0)
  for n in range(lay.num_segments):
    assert lay.segment_bounds(n) == pytest.approx(bounds[n])


def test_token_row_and_expand(paper_layout):
  lay = paper_layout
  rows = lay.token_row
  assert rows.shape == (lay.num_tokens,)
  assert np.all(rows[:256] == 0) and np.all(rows[256:512] == 1)
  assert np.all(rows[lay.num_video_tokens:] == lay.num_segments + lay.segment_of_audio)
  values = np.arange(2 * lay.num_segments, dtype=np.float32).reshape(1, 2, lay.num_segments)
  expanded = lay.expand_to_latents(values)
  assert expanded["video"].shape == (1, 5, 1, 1, 1)
  np.testing.assert_array_equal(np.asarray(expanded["video"]).ravel(), values[0, 0])
  np.testing.assert_array_equal(np.asarray(expanded["audio"])[0, :, 0],
                                values[0, 1, lay.segment_of_audio])


def test_bad_geometry_errors():
  with pytest.raises(ValueError, match=r"num_frames=16 is not 1 \+ 4k"):
    layout_lib.ClipLayout(num_frames=16, fps=8, height=64, width=64, sample_rate=16000,
                          video_channels=768, audio_channels=320)
  with pytest.raises(ValueError, match="height=60 is not divisible"):
    layout_lib.ClipLayout(num_frames=17, fps=8, height=60, width=64, sample_rate=16000,
                          video_channels=768, audio_channels=320)


@pytest.mark.parametrize("name,video,audio", [
    ("joint", [], []),
    ("a2v", [], [0, 1, 2, 3, 4]),
    ("v2a", [0, 1, 2, 3, 4], []),
    ("av_continue", [0, 1], [0, 1]),
    ("av_continue_2s", [0], [0]),
    ("av_inpaint", [0, 4], [0, 4]),
])
def test_named_tasks(paper_layout, name, video, audio):
  task = tasks.parse_task(name, paper_layout)
  assert task.name == name
  np.testing.assert_array_equal(np.flatnonzero(task.condition_mask[0]), video)
  np.testing.assert_array_equal(np.flatnonzero(task.condition_mask[1]), audio)


def test_task_spec_syntax(paper_layout):
  task = tasks.parse_task("v:1..3;audio:-1,0", paper_layout)
  np.testing.assert_array_equal(task.condition_mask,
                                [[0, 1, 1, 1, 0], [1, 0, 0, 0, 1]])
  assert [t.name for t in tasks.parse_tasks("joint|a2v|v:*", paper_layout)] == [
      "joint", "a2v", "v:*"]


@pytest.mark.parametrize("spec,message", [
    ("dance", "unknown task"),
    ("v:5", "outside this clip's segments"),
    ("x:0", "must be '<v|a>:<segments>'"),
    ("v:3..1", "empty range"),
    ("v:a", "cannot read segment item"),
    ("v:*;a:*", "nothing is left to generate"),
])
def test_bad_task_errors(paper_layout, spec, message):
  with pytest.raises(ValueError, match=message):
    tasks.parse_task(spec, paper_layout)


def test_task_needs_enough_segments():
  lay = layout_lib.ClipLayout(num_frames=5, fps=8, height=16, width=16, sample_rate=16000,
                              video_channels=768, audio_channels=320)
  with pytest.raises(ValueError, match="needs at least 3 time-segments"):
    tasks.parse_task("av_inpaint", lay)


def test_token_seconds_share_one_time_axis(paper_layout):
  lay = paper_layout
  seconds = lay.token_seconds
  assert seconds.shape == (lay.num_tokens,)
  video, audio = seconds[:lay.num_video_tokens], seconds[lay.num_video_tokens:]
  per_segment = lay.video_tokens_per_segment
  # Segment 0 is frame 0 alone (centre 0.5 / 8 s); segment 1 is frames 1..4 (centres 1.5..4.5,
  # mean 3 / 8 s); every token of a segment carries its segment's time.
  np.testing.assert_allclose(video[:per_segment], 0.0625)
  np.testing.assert_allclose(video[per_segment:2 * per_segment], 3 / 8)
  # Audio latent j covers [320 j, 320 (j + 1)) samples at 16 kHz.
  np.testing.assert_allclose(audio[:3], [0.01, 0.03, 0.05])
  # Every audio latent lies inside the span of the segment it is assigned to.
  for j, n in enumerate(lay.segment_of_audio[:-1]):
    start, end = lay.segment_bounds(int(n))
    assert start <= audio[j] < end
