"""The task suite and the experiment: what is measured, tables, ranks, the tiny experiment."""
import json
import math

import jax
import ml_collections
import numpy as np
import pytest

from avdit import layout as layout_lib
from avdit import tasks as tasks_lib
from avdit.evaluation import report
from avdit.evaluation import suite


@pytest.fixture
def layout():
  # 17 frames at 8 fps -> 5 segments (frame 0, then groups of 4); 2.125 s of 16 kHz audio.
  return layout_lib.ClipLayout(num_frames=17, fps=8.0, height=32, width=32, sample_rate=16000,
                               video_channels=768, audio_channels=320)


def test_generated_parts_follow_the_task(layout):
  # av_continue gives segments 0..1 = frames 0..4 = [0, 0.625) s of both modalities.
  task = tasks_lib.parse_task("av_continue", layout)
  frames = suite.generated_frames(task, layout)
  np.testing.assert_array_equal(frames, np.arange(17) >= 5)
  samples = suite.generated_samples(task, layout)
  t = np.arange(layout.audio_samples) / 16000
  np.testing.assert_array_equal(samples, t >= 0.625)
  span_frames, span_samples = suite.generated_span(task, layout)
  np.testing.assert_array_equal(span_frames, frames)
  np.testing.assert_array_equal(span_samples, samples)
  # a2v: all video generated, no audio; the span (where anything is generated) is the clip.
  task = tasks_lib.parse_task("a2v", layout)
  assert suite.generated_frames(task, layout).all()
  assert not suite.generated_samples(task, layout).any()
  assert all(x.all() for x in suite.generated_span(task, layout))
  # av_inpaint: first and last segments given -> frames 1..12 generated.
  task = tasks_lib.parse_task("av_inpaint", layout)
  np.testing.assert_array_equal(suite.generated_frames(task, layout),
                                (np.arange(17) >= 1) & (np.arange(17) <= 12))


def _results(name, metrics_by_task, reference=None):
  tasks = {}
  for task, metrics in metrics_by_task.items():
    tasks[task] = {"spec": "", "metrics": metrics, "reference": reference or metrics,
                   "timing": {"sampling_s": 3.0, "metrics_s": 1.0, "clips_per_s": 4.0,
                              "sampling_share": 0.75}}
  return {"name": name, "checkpoint_step": 10, "num_clips": 4, "seed": 0, "tasks": tasks,
          "sampler": {"sampler": "ddim", "num_steps": 5, "method": "monl",
                      "guidance_weight": 0.0}}


def test_mean_ranks_by_hand():
  # fvd lower is better, av_align higher is better; "other" has no direction and is not ranked.
  results = {
      "a": _results("a", {"t1": {"fvd": 1.0, "av_align": 0.2, "other": 5.0},
                          "t2": {"fvd": 3.0, "av_align": 0.9, "other": 1.0}}),
      "b": _results("b", {"t1": {"fvd": 2.0, "av_align": 0.5, "other": 0.0},
                          "t2": {"fvd": 3.0, "av_align": 0.1, "other": 9.0}}),
  }
  ranks = report.mean_ranks(results)
  # cells: (t1,fvd) a=1 b=2; (t1,align) a=2 b=1; (t2,fvd) tie 1.5/1.5; (t2,align) a=1 b=2.
  assert ranks["a"] == pytest.approx((1 + 2 + 1.5 + 1) / 4)
  assert ranks["b"] == pytest.approx((2 + 1 + 1.5 + 2) / 4)
  # The two sides of sync_f1 are shown but not ranked a second time.
  for name, clicks_matched in (("a", 1.0), ("b", 0.0)):
    for task in ("t1", "t2"):
      results[name]["tasks"][task]["metrics"].update(sync_clicks_matched=clicks_matched,
                                                     sync_bounces_matched=clicks_matched)
  assert report.mean_ranks(results) == ranks
  text = report.comparison_tables(results, title="T", notes="N")
  assert "## fvd ↓" in text and "## av_align ↑" in text
  # Row of setting b in the fvd table: per task values and their average (2.5).
  assert "| b | 2.000 | 3.000 | 2.500 |" in text


def test_single_model_table_and_plot(tmp_path):
  results = _results("m", {"joint": {"fvd": 10.0}, "a2v": {"fvd": 30.0}},
                     reference={"fvd": 0.5})
  text = report.single_model_table(results)
  assert "| fvd ↓ | model | 10.000 | 30.000 | 20.000 |" in text
  assert "| fvd ↓ | real clips | 0.500 | 0.500 | 0.500 |" in text
  assert "guidance w = 0.0." in text
  results["sampler"].update(guidance_by_task={"v2a": 1.0}, autoguidance_weight=0.5,
                            autoguidance_modalities="video", autoguidance_step=-1,
                            autoguidance_workdir="", autoguidance_guide_step=3600)
  assert ("guidance w = 0.0 (v2a: 1.0); autoguidance of the video, w = 0.5, by step 3600."
          in report.single_model_table(results))
  path = report.plot_single_model(results, tmp_path / "m.png")
  assert path.stat().st_size > 1000


# --- baselines ------------------------------------------------------------------------------------
def _numbered_clips(layout, num_clips=3):
  """Clip i: every pixel i + 1 and every sample (i + 1) / 10, so any element names its clip."""
  index_b = np.arange(1, num_clips + 1)
  video = np.broadcast_to(index_b[:, None, None, None, None],
                          (num_clips, layout.num_frames, layout.height, layout.width, 3))
  audio = np.broadcast_to(index_b[:, None] / 10, (num_clips, layout.audio_samples))
  return {"video": video.astype(np.uint8), "audio": audio.astype(np.float32)}


@pytest.mark.parametrize("name", ["a2v", "v2a", "av_continue", "av_inpaint", "joint"])
def test_shuffled_baseline_takes_generated_elements_from_the_next_clip(layout, name):
  task = tasks_lib.parse_task(name, layout)
  real = _numbered_clips(layout)
  shuffled = suite.baseline_clips("shuffled", real, task, layout)
  assert shuffled["video"].dtype == np.uint8 and shuffled["audio"].dtype == np.float32
  frames, samples = suite.generated_frames(task, layout), suite.generated_latent_samples(
      task, layout)
  if name == "joint":  # a real video with the next clip's audio: a mismatched pair
    frames = np.zeros_like(frames)
  for i in range(3):
    source = (i + 1) % 3 + 1
    np.testing.assert_array_equal(shuffled["video"][i, frames], source)
    np.testing.assert_array_equal(shuffled["video"][i, ~frames], i + 1)
    np.testing.assert_allclose(shuffled["audio"][i, samples], source / 10)
    np.testing.assert_allclose(shuffled["audio"][i, ~samples], (i + 1) / 10)


def test_constant_baseline_is_a_mid_screen_tone_and_a_frozen_frame(layout):
  from avdit.data import synthetic
  from avdit.evaluation import oracle
  real = _numbered_clips(layout)
  real["video"] = real["video"] + np.arange(layout.num_frames, dtype=np.uint8)[
      None, :, None, None, None] * 10  # frames differ: the frozen one is recognisable
  constant = suite.baseline_clips("constant", real, tasks_lib.parse_task("v2a", layout), layout)
  np.testing.assert_array_equal(constant["video"], real["video"])  # v2a gives all video
  tone = constant["audio"][0]
  mid_hz = synthetic.pitch_of_height((layout.height - 1) / 2, layout.height)
  pitch = oracle.estimate_pitch(tone, layout.sample_rate, np.arange(1, 16) / layout.fps)
  np.testing.assert_allclose(pitch, mid_hz, rtol=0.01)
  assert len(oracle.detect_clicks(tone, layout.sample_rate)) == 0
  # av_continue: frames 0..4 given, every generated frame is frame 4.
  task = tasks_lib.parse_task("av_continue", layout)
  constant = suite.baseline_clips("constant", real, task, layout)
  np.testing.assert_array_equal(constant["video"][:, :5], real["video"][:, :5])
  np.testing.assert_array_equal(constant["video"][:, 5:],
                                np.repeat(real["video"][:, 4:5], 12, axis=1))
  # a2v (no video given): the still first frame of the next clip.
  constant = suite.baseline_clips("constant", real, tasks_lib.parse_task("a2v", layout), layout)
  np.testing.assert_array_equal(constant["video"][0], np.repeat(real["video"][1, :1], 17, 0))
  np.testing.assert_array_equal(constant["audio"], real["audio"])


def test_a_task_draws_the_same_sampler_noise_in_any_task_list(layout):
  rng = jax.random.key(7)
  default = tasks_lib.parse_tasks("joint|a2v|v2a|av_continue|av_continue_2s|av_inpaint", layout)
  keys = {task.spec: jax.random.key_data(suite.task_rng(rng, task)) for task in default}
  # The default suite keeps the noise its task positions gave it.
  for index, task in enumerate(default):
    np.testing.assert_array_equal(keys[task.spec],
                                  jax.random.key_data(jax.random.fold_in(rng, index)))
  # Alone, in another order, or spelled as a spec: the same task, the same noise.
  for specs in ("v2a", "av_inpaint|v2a", "v:*", "none"):
    for task in tasks_lib.parse_tasks(specs, layout):
      np.testing.assert_array_equal(jax.random.key_data(suite.task_rng(rng, task)),
                                    keys[task.spec])
  # Other masks get streams of their own.
  custom = [suite.task_rng(rng, t) for t in tasks_lib.parse_tasks("v:0;a:0..1|v:0..2", layout)]
  streams = [tuple(np.asarray(jax.random.key_data(k)).ravel()) for k in custom]
  assert len(set(streams) | {tuple(np.asarray(k).ravel()) for k in keys.values()}) == 8


def test_baseline_names_from_config():
  import ml_collections
  assert suite.baseline_names(ml_collections.ConfigDict({})) == [
      "autoencoder", "shuffled", "constant"]
  assert suite.baseline_names(ml_collections.ConfigDict({"baselines": ""})) == []
  assert suite.baseline_names(ml_collections.ConfigDict({"baselines": " shuffled"})) == [
      "shuffled"]
  with pytest.raises(ValueError, match="unknown"):
    suite.baseline_names(ml_collections.ConfigDict({"baselines": "random"}))


@pytest.fixture(scope="module")
def world_clips():
  """8 real clips of the synthetic world at the `layout` fixture's geometry."""
  from avdit.data import synthetic
  world = synthetic.SyntheticWorld(num_frames=17, fps=8.0, height=32, width=32,
                                   sample_rate=16000, num_clips=8, seed=5)
  clips = [world[i] for i in range(8)]
  return {k: np.stack([c[k] for c in clips]) for k in ("video", "audio")}


def test_chance_baselines_score_far_from_the_real_clips(layout, world_clips):
  real = world_clips
  scores = {}
  for name in ("a2v", "v2a"):
    task = tasks_lib.parse_task(name, layout)
    scores[name] = {"real": suite.measure_task(real, real, task, layout),
                    **suite.measure_baselines(real, None, ["shuffled", "constant"], task, layout)}
    print(name, {row: {m: round(v[m], 3) for m in ("av_height_error_px", "sync_f1")}
                 for row, v in scores[name].items()})
  for name in ("a2v", "v2a"):
    assert scores[name]["real"]["av_height_error_px"] < 0.5
    assert scores[name]["shuffled"]["av_height_error_px"] > 3
    assert scores[name]["constant"]["av_height_error_px"] > 3
  assert scores["a2v"]["real"]["sync_f1"] > 0.9
  assert scores["v2a"]["constant"]["sync_f1"] < 0.5  # no clicks at all


def test_autoencoder_baseline_round_trips_the_clips_in_padded_batches(layout, world_clips):
  # space_to_depth is lossless: its round trip is the real clips (8 clips in batches of 3).
  import ml_collections
  from avdit.models import latent_space as latent_lib
  from avdit import sharding
  from configs import avdit_synthetic
  space = latent_lib.SpaceToDepth(layout)
  stats = {f"{k}_{s}": np.full(c, v, np.float32) for k, c in (("video", 768), ("audio", 320))
           for s, v in (("mean", 0.0), ("std", 1.0))}
  config = ml_collections.ConfigDict({"eval": {"batch_size": 3}})
  mesh = sharding.make_mesh(avdit_synthetic.get_config("tiny").mesh)
  loaded = (layout, space, None, None, stats, 0)
  autoencoded = suite.autoencode_clips(config, loaded, world_clips, mesh)
  np.testing.assert_array_equal(autoencoded["video"], world_clips["video"])
  np.testing.assert_allclose(autoencoded["audio"], world_clips["audio"], atol=1e-6)


def test_single_model_table_shows_the_baselines():
  results = _results("m", {"a2v": {"av_height_error_px": 3.0}},
                     reference={"av_height_error_px": 0.1})
  results["tasks"]["a2v"]["baselines"] = {
      "autoencoder": {"av_height_error_px": 0.5}, "shuffled": {"av_height_error_px": 8.0},
      "constant": {"av_height_error_px": 6.0}}
  text = report.single_model_table(results)
  for row in ("model | 3.000", "real clips | 0.100", "autoencoder round trip | 0.500",
              "shuffled pairs (chance) | 8.000", "constant (chance) | 6.000"):
    assert f"| av_height_error_px ↓ | {row} |" in text
  line = suite.baseline_summary("a2v", results["tasks"]["a2v"])
  assert line == ("eval a2v: av_height_error_px model 3 | real 0.1 | autoencoder 0.5 | "
                  "shuffled 8 | constant 6")
  results["cross_modal_gain"] = {"video": 0.25, "audio": -0.01}
  assert "video +0.250, audio -0.010" in report.single_model_table(results)
  comparison = report.comparison_tables({"m": results})
  assert "| *shuffled pairs (chance)* | 8.000 | 8.000 |" in comparison
  assert "autoencoder" not in comparison


@pytest.mark.slow  # trains and evaluates a tiny AVDiT end to end (and twice more): ~50 s on 2 cores
def test_tiny_experiment_trains_evaluates_compares_and_resumes(tmp_path, monkeypatch):
  from avdit.evaluation import i3d
  from avdit.workflows import experiment
  from configs import monl_ablation
  config = monl_ablation.get_config("tiny")
  net = _MeanColourNet()  # a stand-in I3D that records what it embeds
  monkeypatch.setattr(i3d, "load_packaged", lambda: net)
  config.eval.i3d_weights = "packaged"
  results = experiment.run(config, str(tmp_path))
  assert list(results) == ["monl"]
  for label, setting, method in experiment.runs(config):
    run_dir = tmp_path / setting
    assert json.loads((run_dir / "train_summary.json").read_text())["step"] == 3
    out = run_dir / "eval" / method
    saved = json.loads((out / "results.json").read_text())
    assert saved["sampler"]["method"] == method and saved["checkpoint_step"] == 3
    assert set(saved["tasks"]) == {"av_continue"}
    for task in saved["tasks"].values():
      # Real clips score perfectly on the oracle metrics (the reference row).
      assert task["reference"]["subject_disc_color_error"] < 1.0
      assert task["reference"]["continuity_jump_px"] < 0.5
      assert set(task["baselines"]) == {"autoencoder", "shuffled", "constant"}
      assert 0 <= task["timing"]["sampling_share"] <= 1
      assert len(task["per_clip"]["sync_f1"]) == saved["num_clips"]
    assert "| shuffled pairs (chance) |" in (out / "table.md").read_text()
    assert (out / "table.md").exists() and (out / "metrics.png").stat().st_size > 1000
    assert (out / "samples" / "av_continue_0.mp4").stat().st_size > 0
    assert (out / "samples" / "av_continue_0_compare.mp4").stat().st_size > 0
  table = (tmp_path / "comparison.md").read_text()
  assert "| monl |" in table
  assert (tmp_path / "comparison.png").stat().st_size > 1000
  # A rerun reuses the trained checkpoints and the finished evaluations, and keeps the summary
  # of the training run.
  eval_file = tmp_path / "monl" / "eval" / "monl" / "results.json"
  before = eval_file.stat().st_mtime_ns
  summary = (tmp_path / "monl" / "train_summary.json").read_text()
  assert json.loads(summary)["metrics"]
  again = experiment.run(config, str(tmp_path))
  assert eval_file.stat().st_mtime_ns == before
  assert (tmp_path / "monl" / "train_summary.json").read_text() == summary
  # (as JSON text: NaN metrics, e.g. a task without events, are not == to themselves)
  assert json.dumps(again["monl"]["tasks"]) == json.dumps(results["monl"]["tasks"])
  # The suite embeds through the networks it is given: another sampler on the same clips
  # embeds only its new samples' generated span; the real, reference and chance rows' spans
  # come from the cache the first evaluation filled.
  assert results["monl"]["tasks"]["av_continue"]["metrics"]["fvd"] > 0
  networks = suite.FeatureNetworks(video=_MeanColourNet())
  run_config = experiment.setting_config(config, "monl", "monl")
  suite.evaluate(run_config, str(tmp_path / "monl"), subdir="first", networks=networks)
  first_calls = len(networks.video.seen)
  assert first_calls >= 4  # held-out, reference, model, round trip (constant: more)
  run_config.sample.num_steps += 1
  suite.evaluate(run_config, str(tmp_path / "monl"), subdir="second", networks=networks)
  assert len(networks.video.seen) == first_calls + 1
  # eval.distribution_tasks: FVD/KVD on the tasks named, in the model's, real and chance rows;
  # none on the others, and nothing embedded for them.
  run_config.eval.update(tasks="av_continue|a2v", distribution_tasks="av_continue")
  seen_before = len(networks.video.seen)
  only = suite.evaluate(run_config, str(tmp_path / "monl"), subdir="third", networks=networks)
  # av_continue's rows are all in the cache already (the same samples as "second"), and a2v's
  # real, model and chance spans would be new: nothing is embedded.
  assert len(networks.video.seen) == seen_before
  continued, a2v = only["tasks"]["av_continue"], only["tasks"]["a2v"]
  assert "fvd" in continued["metrics"] and "fvd" in continued["reference"]
  assert all("fvd" in row for row in continued["baselines"].values())
  assert "fvd" not in a2v["metrics"] and "fvd" not in a2v["reference"]
  assert not any("fvd" in row for row in a2v["baselines"].values())
  assert a2v["metrics"]["subject_disc_found_fraction"] >= 0  # the oracle still scores it


class _MeanColourNet:
  """A stand-in I3D: per-clip mean RGB of each frame half, 6 numbers (deterministic features)."""

  num_classes = 6

  def __init__(self):
    self.seen = []

  def features(self, video_bfhwc):
    self.seen.append(video_bfhwc.shape)
    v = np.asarray(video_bfhwc, np.float64)
    half = v.shape[1] // 2
    return np.concatenate([v[:, :half].mean(axis=(1, 2, 3)), v[:, half:].mean(axis=(1, 2, 3))],
                          axis=1)


def test_measure_task_feature_metrics_on_the_generated_span(layout):
  from avdit.data import synthetic
  from avdit.evaluation import distribution
  world = synthetic.SyntheticWorld.from_layout(layout, num_clips=8, seed=3)
  clips = [world[i] for i in range(8)]
  real = {k: np.stack([c[k] for c in clips]) for k in ("video", "audio")}
  # Inverted colours: another distribution of mean colours.
  generated = {"video": 255 - real["video"], "audio": real["audio"]}
  task = tasks_lib.parse_task("av_continue", layout)
  net = _MeanColourNet()
  metrics = suite.measure_task(real, generated, task, layout,
                               suite.FeatureNetworks(video=net), oracle_metrics=False)
  # Only the 12 generated frames (segments 2..4) are embedded, real and generated alike.
  assert net.seen == [(8, 12, 32, 32, 3)] * 2
  span = np.arange(17) >= 5
  expected = distribution.frechet_distance_of_features(
      _MeanColourNet().features(real["video"][:, span]),
      _MeanColourNet().features(generated["video"][:, span]))
  assert metrics["fvd"] == pytest.approx(expected)
  assert metrics["fvd"] > 0 and np.isfinite(metrics["kvd"])
  assert "fad" not in metrics  # no VGGish configured
  # The real clips against themselves: zero distance (up to round-off relative to the spread).
  same = suite.measure_task(real, real, task, layout, suite.FeatureNetworks(video=net),
                            oracle_metrics=False)
  spread = np.trace(np.cov(_MeanColourNet().features(real["video"][:, span]).T))
  assert abs(same["fvd"]) < 1e-6 * spread < 1e-3 * metrics["fvd"]


def test_each_clip_is_embedded_once_per_content(layout):
  from avdit.data import synthetic
  world = synthetic.SyntheticWorld.from_layout(layout, num_clips=4, seed=3)
  real = {k: np.stack([world[i][k] for i in range(4)]) for k in ("video", "audio")}
  net = _MeanColourNet()
  networks = suite.FeatureNetworks(video=net)
  task = tasks_lib.parse_task("av_continue", layout)
  first = suite.measure_task(real, real, task, layout, networks, oracle_metrics=False)
  assert [shape[0] for shape in net.seen] == [4]  # the real spans, once although used twice
  # Another clip's video: the same clips reordered, nothing new to embed; features in row order.
  shuffled = suite.baseline_clips("shuffled", real, task, layout)
  shuffled_metrics = suite.measure_task(real, shuffled, task, layout, networks,
                                        oracle_metrics=False)
  assert len(net.seen) == 1
  span, _ = suite.generated_span(task, layout)
  np.testing.assert_allclose(suite._video_features(networks, shuffled["video"][:, span]),
                             _MeanColourNet().features(shuffled["video"][:, span]))
  # FVD is a statistic of the set: the reordered real clips are as far as the real ones (0).
  spread = np.trace(np.cov(_MeanColourNet().features(real["video"][:, span]).T))
  assert abs(shuffled_metrics["fvd"]) < 1e-5 * spread and abs(first["fvd"]) < 1e-5 * spread
  # A frozen frame is new: one call for its clips; the real span is never embedded again.
  suite.measure_task(real, suite.baseline_clips("constant", real, task, layout), task, layout,
                     networks, oracle_metrics=False)
  assert [shape[0] for shape in net.seen] == [4, 4]
  again = suite.measure_task(real, real, task, layout, networks, oracle_metrics=False)
  assert len(net.seen) == 2 and again["fvd"] == first["fvd"]


def test_feature_metrics_say_what_was_computed_and_skipped(monkeypatch):
  import ml_collections
  from avdit.evaluation import i3d
  monkeypatch.setattr(i3d, "load_packaged", lambda: _MeanColourNet())
  default = suite.FeatureNetworks.from_config(
      ml_collections.ConfigDict({"i3d_weights": "packaged", "vggish_weights": ""}))
  assert isinstance(default.video, _MeanColourNet) and default.audio is None
  assert default.status["fvd"].startswith("computed: I3D Kinetics-400, the weights packaged")
  assert "first 16 frames" in default.status["kvd"] and "224x224" in default.status["kvd"]
  assert default.status["fad"].startswith("skipped: no VGGish weights")
  off = suite.FeatureNetworks.from_config(ml_collections.ConfigDict({"i3d_weights": "none"}))
  assert off.video is None and off.status["fvd"].startswith("skipped: no I3D")
  results = _results("m", {"joint": {"fvd": 10.0}})
  results["distribution_metrics"] = default.status
  text = report.single_model_table(results)
  assert "- fad: skipped: no VGGish weights" in text and "- fvd: computed: I3D" in text
  assert "not with published numbers" in text
  results["distribution_metrics"] = off.status
  assert "published" not in report.single_model_table(results)


def test_experiment_settings_and_overrides():
  from avdit.workflows import experiment
  from configs import contrastive_ablation
  from configs import monl_ablation
  config = monl_ablation.get_config("default")
  rows = experiment.runs(config)
  assert [r[0] for r in rows] == ["vanilla+replacement", "vanilla+reconstruction", "pm", "pt",
                                  "ptm", "pt-pm-ptm", "monl"]
  run_config = experiment.setting_config(config, "pt,pm,ptm", "monl")
  assert run_config.diffusion.noise_mixture == "pt,pm,ptm" and "experiment" not in run_config
  assert experiment.setting_config(config, "vanilla", "reconstruction").sample.method == (
      "reconstruction")
  config = contrastive_ablation.get_config("default")
  cdcd_config = experiment.setting_config(config, "monl_cdcd", "monl")
  assert cdcd_config.diffusion.cdcd_weight > 0 and cdcd_config.diffusion.cdl_weight == 0
  cdl_config = experiment.setting_config(config, "monl_cdl", "monl")
  assert cdl_config.diffusion.cdl_weight > 0 and cdl_config.diffusion.cdcd_weight == 0
  plain = experiment.setting_config(config, "monl", "monl").diffusion
  assert plain.cdl_weight == plain.cdcd_weight == 0 and plain.noise_mixture == "monl"


def test_distribution_tasks_are_parsed_as_tasks_and_a_misspelt_one_is_refused(layout):
  config = ml_collections.ConfigDict(dict(distribution_tasks=""))
  assert suite.distribution_task_names(config, layout) == []  # "": every task
  config.distribution_tasks = "a2v|joint"
  assert suite.distribution_task_names(config, layout) == ["a2v", "joint"]
  config.distribution_tasks = "a2v|jiont"
  with pytest.raises(ValueError, match="jiont"):
    suite.distribution_task_names(config, layout)


def test_reference_clips_for_the_real_row_are_training_clips_not_the_held_out_ones():
  """The real clips' FVD row compares the held-out clips with other real clips: the first
  training clips (data.raw for a pipeline config), none of them a held-out clip; the distance
  between the two real sets is > 0 where a set against itself is 0."""
  from avdit.data import pipeline
  from configs import avdit_pipeline
  from configs import avdit_synthetic
  for config in (avdit_pipeline.get_config("tiny"), avdit_synthetic.get_config("tiny")):
    config.eval.num_clips = 6
    layout = layout_lib.layout_from_config(config)
    other = suite.reference_clips(config, layout, 6)
    training = pipeline.make_source(pipeline.clip_data_config(config), layout)
    np.testing.assert_array_equal(other["video"][3], training[3]["video"])
    real = suite.eval_clips(config, layout)
    for video in real["video"]:
      assert not any(np.array_equal(video, mine) for mine in other["video"])
  task = tasks_lib.parse_task("a2v", layout)
  networks = suite.FeatureNetworks(video=_MeanColourNet())
  between = suite.measure_distribution(real, other, task, layout, networks)
  itself = suite.measure_distribution(real, real, task, layout, networks)
  assert between["fvd"] > 1e3 * abs(itself["fvd"])


# --- per-clip values, intervals over clips and seeds, paired comparisons -----------------------
def test_evaluate_batch_is_the_mean_of_the_per_clip_values(layout, world_clips):
  """evaluate_clips tabulates evaluate_clip per clip (NaN where nothing is scored); the batch
  averages are the means over the defined clips of that table, and the suite's per-clip values
  are the same table as JSON (None for NaN), with av_align's per-clip values too."""
  from avdit.evaluation import oracle
  real = {k: v[:4] for k, v in world_clips.items()}
  generated = {k: v.copy() for k, v in real.items()}
  generated["video"][0] = real["video"][0, 0, 0, 0]  # clip 0: one flat colour, no disc
  task = tasks_lib.parse_task("a2v", layout)
  table = oracle.evaluate_clips(real, generated, task.condition_mask, layout)
  assert set(table) == set(oracle.METRICS) | set(oracle.COUNTS)
  assert all(v.shape == (4,) for v in table.values())
  one = oracle.evaluate_clip({k: v[2] for k, v in real.items()},
                             {k: v[2] for k, v in generated.items()}, task.condition_mask, layout)
  assert {name: table[name][2] for name in one} == pytest.approx(one, nan_ok=True)
  jumps = table["continuity_jump_px"]
  assert np.isnan(jumps[0]) and np.isfinite(jumps[1:]).all()
  averaged = oracle.evaluate_batch(real, generated, task.condition_mask, layout)
  for name in oracle.METRICS:
    defined = np.isfinite(table[name])
    assert averaged[f"{name}_num_clips"] == defined.sum()
    if defined.any():
      assert averaged[name] == pytest.approx(table[name][defined].mean(), rel=1e-12), name
  assert averaged["continuity_jump_px_num_clips"] == 3
  assert averaged["subject_disc_found_fraction"] == pytest.approx(0.75)
  metrics, per_clip = suite.measure_task_per_clip(real, generated, task, layout)
  assert set(per_clip) == set(oracle.METRICS) | {"av_align"}
  assert per_clip["continuity_jump_px"][0] is None
  assert per_clip["continuity_jump_px"][1:] == pytest.approx(list(jumps[1:]))
  assert metrics["av_align"] == pytest.approx(np.mean(per_clip["av_align"]))
  assert json.loads(json.dumps(per_clip)) == per_clip  # plain JSON, no NaN
  assert metrics == pytest.approx(suite.measure_task(real, generated, task, layout), nan_ok=True)


def test_bootstrap_interval_of_normal_clips_approaches_the_normal_interval():
  """For many clips of a normal distribution the 95% bootstrap interval of the mean approaches
  mean ± 1.96 sd / sqrt(n); a constant column has a zero-width interval; undefined clips (None)
  are left out; the same values always give the same interval (a fixed generator seed)."""
  x = np.random.default_rng(4).normal(3.0, 2.0, 400)
  interval = report.bootstrap_interval(x)
  half = 1.96 * x.std(ddof=1) / np.sqrt(400)
  assert interval.mean == pytest.approx(x.mean())
  assert interval.low == pytest.approx(x.mean() - half, abs=0.1 * half)
  assert interval.high == pytest.approx(x.mean() + half, abs=0.1 * half)
  assert report.bootstrap_interval(x) == interval
  assert report.bootstrap_interval([0.25] * 16) == report.Interval(0.25, 0.25, 0.25)
  with_gaps = report.bootstrap_interval([1.0, None, 3.0, float("nan")])
  assert with_gaps.mean == 2.0 and 1.0 <= with_gaps.low < with_gaps.high <= 3.0
  assert report.bootstrap_interval([None, None]) is None


def test_bootstrap_interval_over_seeds_resamples_seeds_and_shares_the_clips():
  """Several seeds: the mean is the mean of the seeds' means; seeds are resampled (two seeds of
  constant values 0 and 1 give exactly [0, 1]); clips are drawn once for all seeds, which see
  the same clips (two identical seeds give the one seed's interval, not a narrower one)."""
  assert report.bootstrap_interval([[0.0] * 8, [1.0] * 8]) == report.Interval(0.5, 0.0, 1.0)
  x = list(np.random.default_rng(2).normal(0.0, 1.0, 16))
  assert report.bootstrap_interval([x, x]) == pytest.approx(report.bootstrap_interval(x))
  # Seed means 1 (one clip defined) and 3.
  assert report.bootstrap_interval([[1.0, None], [2.0, 4.0]]).mean == 2.0
  with pytest.raises(ValueError, match="equally many clips"):
    report.bootstrap_interval([[1.0, 2.0], [3.0]])


def test_paired_difference_detects_a_shift_the_separate_intervals_do_not():
  """Per-clip values with a large clip-to-clip variation shared by two settings and a small
  constant shift: their separate intervals overlap, the paired difference's interval is near
  the shift and excludes 0; identical settings give a difference of exactly 0."""
  clip = np.random.default_rng(0).normal(0.0, 10.0, 32)
  noise = np.random.default_rng(1).normal(0.0, 0.05, 32)
  a, b = clip + 0.5 + noise, clip
  separate_a, separate_b = report.bootstrap_interval(a), report.bootstrap_interval(b)
  assert separate_a.low < separate_b.high and separate_b.low < separate_a.high  # overlap
  difference = report.paired_difference(a, b)
  assert difference.excludes_zero and 0.45 < difference.low < difference.high < 0.55
  assert difference.mean == pytest.approx(np.mean(a - b))
  assert report.paired_difference(b, a).high < 0
  assert not report.paired_difference(b, b).excludes_zero
  with pytest.raises(ValueError, match="same seeds and clips"):
    report.paired_difference([a, a], [b])


def _seed_results(name, per_clip_by_seed, fvd_by_seed):
  """Suite results per seed: task "t", av_height_error_px with per-clip values, fvd without."""
  runs = []
  for values, fvd in zip(per_clip_by_seed, fvd_by_seed):
    results = _results(name, {"t": {"av_height_error_px": float(np.mean(values)), "fvd": fvd}})
    results["tasks"]["t"]["per_clip"] = {"av_height_error_px": [float(v) for v in values]}
    runs.append(results)
  return runs


def test_comparison_tables_show_intervals_and_list_significant_pairs():
  """Two seeds per setting on the same 16 clips: cells with per-clip values show mean [low,
  high] (the bootstrap over clips and seeds), fvd (no per-clip values) the mean over seeds; the
  significance section lists b (better by 1 on every clip, under a clip variation of sd 5) as
  better than a and than c, and not a vs c (per-clip differences of ±0.1, mean 0.0125); the
  mean ranks are of the means; results without per-clip values get neither intervals nor
  that section."""
  clip = np.random.default_rng(3).normal(10.0, 5.0, 16)
  signs = np.where(np.arange(16) < 9, 0.1, -0.1)
  by_setting = {
      "a": _seed_results("a", [clip, clip + 0.3], [1.0, 3.0]),
      "b": _seed_results("b", [clip - 1.0, clip - 0.7], [2.0, 2.0]),
      "c": _seed_results("c", [clip + signs, clip + 0.3 + signs], [4.0, 4.0]),
  }
  found, tested = report.significant_differences(by_setting)
  assert tested == 3  # the three pairs in the one cell with per-clip values
  assert [(better, worse) for _, _, better, worse, _ in found] == [("b", "a"), ("b", "c")]
  # Intervals of better - worse (lower is better here): -1 on every clip, -1 - signs for c.
  assert [d.mean for *_, d in found] == pytest.approx([-1.0, -1.0125])
  assert all(d.high < 0 for *_, d in found)
  text = report.comparison_tables(by_setting, title="T", notes="N")
  interval = report.cell_interval(by_setting["a"], "t", "av_height_error_px")
  assert interval.mean == pytest.approx(clip.mean() + 0.15)
  assert interval.low < interval.mean < interval.high
  assert f"| a | {interval.format()} | {interval.mean:.3f} |" in text
  assert "| a | 2.000 | 2.000 |" in text  # fvd: the mean over the two seeds
  assert "| b | 2 | 0 |" in text and "| c | 0 | 1 |" in text  # wins, losses
  assert "- t, av_height_error_px ↓: b better than a: b − a = -1.000 [" in text
  assert "Intervals: `mean [low, high]`" in text
  assert "## Significant differences" in text
  # fvd: a and b tie (1.5), c 3rd; av_height_error_px: b, a, c.
  assert report.mean_ranks(by_setting) == pytest.approx({"a": 1.75, "b": 1.25, "c": 3.0})
  plain = {s: runs[0] for s, runs in by_setting.items()}
  for results in plain.values():
    del results["tasks"]["t"]["per_clip"]
  plain_text = report.comparison_tables(plain)
  assert "Significant differences" not in plain_text and "Intervals:" not in plain_text
  assert " [" not in plain_text


def test_experiment_runs_every_setting_at_every_seed():
  """experiment.seeds trains each setting once per seed: seed 0 in <setting>/ (the single-seed
  directories), others in <setting>_seed<k>/, with config.seed and data.shuffle_seed set to
  the seed and the held-out clips (data.seed) and sampler seed (eval.seed) unchanged; the
  default is one seed 0, the runs of a single-seed experiment."""
  from avdit.workflows import experiment
  from configs import contrastive_ablation
  from configs import monl_ablation
  config = monl_ablation.get_config("default")
  assert experiment.seeds(config) == [0]
  assert [(r.label, r.directory, r.seed) for r in experiment.seeded_runs(config)][:3] == [
      ("vanilla+replacement", "vanilla", 0), ("vanilla+reconstruction", "vanilla", 0),
      ("pm", "pm", 0)]
  assert contrastive_ablation.get_config("tiny").experiment.seeds == "0"
  with pytest.raises(ValueError, match="unknown variant 'pipeline_budget' of contrastive"):
    contrastive_ablation.get_config("pipeline_budget")
  config.experiment.seeds = "0,2"
  config.experiment.settings = "vanilla|pt,pm,ptm"
  assert [(r.label, r.setting, r.method, r.seed, r.directory)
          for r in experiment.seeded_runs(config)] == [
      ("vanilla+replacement", "vanilla", "replacement", 0, "vanilla"),
      ("vanilla+reconstruction", "vanilla", "reconstruction", 0, "vanilla"),
      ("pt-pm-ptm", "pt,pm,ptm", "monl", 0, "pt-pm-ptm"),
      ("vanilla+replacement", "vanilla", "replacement", 2, "vanilla_seed2"),
      ("vanilla+reconstruction", "vanilla", "reconstruction", 2, "vanilla_seed2"),
      ("pt-pm-ptm", "pt,pm,ptm", "monl", 2, "pt-pm-ptm_seed2")]
  seeded = experiment.setting_config(config, "pt,pm,ptm", "monl", seed=2)
  assert seeded.seed == 2 and seeded.data.shuffle_seed == 2
  assert seeded.data.seed == config.data.seed and seeded.eval.seed == config.eval.seed
  assert seeded.diffusion.noise_mixture == "pt,pm,ptm"
  first = experiment.setting_config(config, "pt,pm,ptm", "monl")
  assert first.seed == 0 and first.data.shuffle_seed == 0
  for bad in ("0,0", "a", "", "-1"):
    config.experiment.seeds = bad
    with pytest.raises(ValueError, match="experiment.seeds"):
      experiment.seeds(config)


def test_experiment_run_trains_and_evaluates_each_seed_and_compares_over_seeds(tmp_path,
                                                                              monkeypatch):
  """experiment.run with two seeds (training and the suite stubbed): one training per setting
  and seed in its directory with its seed, each row's results in seed order, and a comparison
  whose cells are intervals over both seeds' clips."""
  from avdit.training import train
  from avdit.workflows import experiment
  from configs import monl_ablation
  config = monl_ablation.get_config("tiny")
  config.experiment.settings = "monl|pt"
  config.experiment.seeds = "0,1"
  trained, evaluated = [], []

  def fake_train(run_config, run_dir):
    trained.append((run_dir.rsplit("/", 1)[-1], run_config.seed, run_config.data.shuffle_seed))
    return {"stopped_by": None, "step": 6 if run_config.diffusion.noise_mixture == "pt" else 3}

  built = []

  def fake_evaluate(run_config, run_dir, name, subdir, networks):
    evaluated.append((run_dir.rsplit("/", 1)[-1], name, subdir))
    built.append(networks)
    values = [float(run_config.seed), float(run_config.seed) + 1.0]  # two clips
    results = _results(name, {"av_continue": {"sync_f1": float(np.mean(values))}})
    results["tasks"]["av_continue"]["per_clip"] = {"sync_f1": values}
    return results

  monkeypatch.setattr(train, "train", fake_train)
  monkeypatch.setattr(train, "write_summary", lambda run_dir, summary: None)
  monkeypatch.setattr(suite, "evaluate", fake_evaluate)
  monkeypatch.setattr(suite.FeatureNetworks, "from_config",
                      classmethod(lambda cls, eval_config: cls(video=_MeanColourNet())))
  results = experiment.run(config, str(tmp_path))
  # One set of embedders (one feature cache) for all four evaluations.
  assert len(built) == 4 and all(networks is built[0] for networks in built)
  assert trained == [("monl", 0, 0), ("pt", 0, 0), ("monl_seed1", 1, 1), ("pt_seed1", 1, 1)]
  assert evaluated == [("monl", "monl", "monl"), ("pt", "pt", "monl"),
                       ("monl_seed1", "monl", "monl"), ("pt_seed1", "pt", "monl")]
  assert [[r["tasks"]["av_continue"]["per_clip"]["sync_f1"] for r in results["monl"]]] == [
      [[0.0, 1.0], [1.0, 2.0]]]
  table = (tmp_path / "comparison.md").read_text()
  interval = report.bootstrap_interval([[0.0, 1.0], [1.0, 2.0]])
  assert interval.mean == 1.0 and f"| monl | {interval.format()} |" in table
  assert "once per training seed 0, 1" in table
  assert "settings trained for 3 steps (monl), 6 steps (pt) (batch" in table
  assert "--mode=experiment --config.experiment.seeds=0,1`." in table
  assert json.loads((tmp_path / "comparison.json").read_text())["pt"][1]["name"] == "pt"


def test_experiment_learning_curves_average_each_row_over_its_seeds(tmp_path, monkeypatch):
  """experiment.curve_tasks: every run is evaluated at its checkpoints on those tasks, in
  eval/curve/<method>/ of its directory; learning_curves.{json,png} hold one curve per row,
  the mean over seeds, with the chance rows of the row's final suite."""
  from avdit.evaluation import curve
  from avdit.training import train
  from avdit.workflows import experiment
  from configs import monl_ablation
  config = monl_ablation.get_config("tiny")
  config.experiment.update(settings="vanilla|pt", seeds="0,1", curve_tasks="a2v",
                           methods={"vanilla": "replacement|reconstruction"})
  monkeypatch.setattr(train, "train", lambda run_config, run_dir: {"stopped_by": None,
                                                                   "step": 4})
  monkeypatch.setattr(train, "write_summary", lambda run_dir, summary: None)

  def fake_evaluate(run_config, run_dir, name, subdir, networks):
    results = _results(name, {"a2v": {"av_height_error_px": 1.0}})
    results["tasks"]["a2v"]["baselines"] = {"shuffled": {"av_height_error_px": 7.0}}
    return results

  evaluated = []

  def fake_steps(run_config, run_dir, subdir):
    evaluated.append((run_dir.rsplit("/", 1)[-1], subdir, run_config.eval.curve_tasks,
                      run_config.sample.method))
    height = {"pt": 3.0, "vanilla": 6.0}[run_config.diffusion.noise_mixture] + run_config.seed
    return {step: _results("x", {"a2v": {"av_height_error_px": height / step}})
            for step in (2, 4)}

  monkeypatch.setattr(suite, "evaluate", fake_evaluate)
  monkeypatch.setattr(suite.FeatureNetworks, "from_config",
                      classmethod(lambda cls, eval_config: cls()))
  monkeypatch.setattr(curve, "evaluate_steps", fake_steps)
  experiment.run(config, str(tmp_path))
  assert evaluated == [
      ("vanilla", "curve/replacement", "a2v", "replacement"),
      ("vanilla", "curve/reconstruction", "a2v", "reconstruction"),
      ("pt", "curve/monl", "a2v", "monl"),
      ("vanilla_seed1", "curve/replacement", "a2v", "replacement"),
      ("vanilla_seed1", "curve/reconstruction", "a2v", "reconstruction"),
      ("pt_seed1", "curve/monl", "a2v", "monl")]
  saved = json.loads((tmp_path / "learning_curves.json").read_text())
  assert list(saved) == ["vanilla+replacement", "vanilla+reconstruction", "pt"]
  pt = saved["pt"]["a2v"]["av_height_error_px"]
  # seeds 0 and 1: 3 / step and 4 / step
  assert pt["steps"] == [2, 4] and pt["values"] == [3.5 / 2, 3.5 / 4]
  assert pt["shuffled"] == 7.0
  assert saved["vanilla+replacement"]["a2v"]["av_height_error_px"]["values"] == [6.5 / 2,
                                                                                  6.5 / 4]
  assert (tmp_path / "learning_curves.png").stat().st_size > 10_000


def _per_clip_results(name, values_by_cell):
  """Suite results whose cells {(task, metric): per-clip values} hold those values and means."""
  results = _results(name, {})
  for (task, metric), values in values_by_cell.items():
    entry = results["tasks"].setdefault(task, {"metrics": {}, "per_clip": {}})
    finite = [v for v in values if not math.isnan(v)]
    entry["metrics"][metric] = float(np.mean(finite)) if finite else math.nan
    entry["per_clip"][metric] = values
  return results


def test_claims_are_judged_cell_by_cell_by_the_paired_bootstrap():
  rng = np.random.default_rng(0)
  clips = rng.normal(5.0, 2.0, 16)  # what the clips share: a hard clip is hard for both rows
  noise = rng.normal(0.0, 0.05, 16)
  better = {("t1", "av_height_error_px"): list(clips - 1.0),  # claimed and true: confirms
            ("t1", "sync_f1"): list(0.2 + noise),  # better is worse here: refutes
            ("t2", "av_height_error_px"): list(clips + noise),  # no difference: cannot tell
            ("t2", "sync_f1"): [math.nan] * 16}  # nothing scored: not a cell
  worse = {("t1", "av_height_error_px"): list(clips),
           ("t1", "sync_f1"): list(0.5 + noise[::-1]),
           ("t2", "av_height_error_px"): list(clips - noise),
           ("t2", "sync_f1"): [math.nan] * 16}
  results = {"b": _per_clip_results("b", better), "w": _per_clip_results("w", worse)}
  claim = report.Claim.from_config(dict(text="b beats w", better="b", worse="w",
                                        tasks="t1|t2|t3", metrics="av_height_error_px,sync_f1"))
  cells = report.claim_cells(results, claim)
  assert [(task, metric, verdict) for task, metric, _, verdict in cells] == [
      ("t1", "av_height_error_px", "confirms"), ("t1", "sync_f1", "refutes"),
      ("t2", "av_height_error_px", "cannot tell")]
  # The paired difference is better − worse, clip by clip.
  assert cells[0][2].mean == pytest.approx(-1.0)
  assert cells[1][2].mean == pytest.approx(np.mean(noise - noise[::-1]) - 0.3)
  # Three cells: each tested at 1 - 0.05 / 3, wider than its 95% interval.
  plain = report.paired_difference(better["t1", "sync_f1"], worse["t1", "sync_f1"])
  assert cells[1][2].low < plain.low and cells[1][2].high > plain.high
  assert report.claim_verdict([v for *_, v in cells]) == "mixed"
  assert report.claim_verdict(["confirms", "cannot tell"]) == "confirmed"
  assert report.claim_verdict(["refutes"]) == "refuted"
  assert report.claim_verdict(["cannot tell"]) == report.claim_verdict([]) == "cannot tell"
  text = report.comparison_tables(results, claims=[claim])
  assert "| b beats w | b vs w | 3 | 1 | 1 | 1 | mixed |" in text
  assert "t1 sync_f1 ↑ -0.300" in text
  with pytest.raises(ValueError, match="direction"):
    report.Claim.from_config(dict(text="x", better="b", worse="w", tasks="t1", metrics="other"))


def test_experiment_claims_must_compare_rows_the_experiment_has():
  from avdit.workflows import experiment
  from configs import monl_ablation
  config = monl_ablation.get_config("pipeline")
  assert {c.better for c in experiment.claims(config)} == {"monl", "pm", "pt"}
  config.experiment.settings = "vanilla|monl"
  with pytest.raises(ValueError, match=r"compares rows \['pm'\] this experiment does not have"):
    experiment.claims(config)
