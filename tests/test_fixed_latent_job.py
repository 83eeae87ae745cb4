"""The fixed-latent job (configs/avdit_fixed_latents.py) at tiny size: one resumable command
trains, samples, evaluates and draws the learning curve in DIR/avdit, no autoencoder stage."""
import json
import time

import av
import jax
import jax.numpy as jnp
import numpy as np

from avdit.workflows import end_to_end
from avdit.diffusion import monl
from configs import avdit_fixed_latents


def test_fixed_latent_job_runs_every_stage(tmp_path):
  config = avdit_fixed_latents.get_config("tiny")
  with config.unlocked():  # guided by its own checkpoint at step 2 (half of 4)
    config.sample.update(autoguidance_weight=0.5, autoguidance_fraction=0.5)
  results = end_to_end.run(config, str(tmp_path))
  assert results["avdit"]["step"] == 4
  assert sorted(p.name for p in tmp_path.iterdir()) == ["avdit"]  # no autoencoders, no cache
  model_dir = tmp_path / "avdit"
  samples = model_dir / "samples"
  assert (samples / "index.html").exists()
  mp4s = sorted(samples.glob("*.mp4"))
  assert mp4s and {"a2v_0_compare.mp4", "joint_0.mp4"} <= {p.name for p in mp4s}
  with av.open(str(samples / "a2v_0_compare.mp4")) as container:  # plays, with sound
    assert sorted(s.type for s in container.streams) == ["audio", "video"]
    assert sum(1 for _ in container.decode(video=0)) == config.clip.num_frames
    assert container.streams.audio[0].sample_rate == config.clip.sample_rate
  evaluated = json.loads((model_dir / "eval" / "results.json").read_text())
  # The samples and the scores say which model guided them.
  summary = json.loads((samples / "summary.json").read_text())
  assert summary["denoiser"]["autoguidance_guide_step"] == 2
  assert evaluated["sampler"]["autoguidance_guide_step"] == 2
  gain = evaluated["cross_modal_gain"]
  assert set(gain) >= {"video", "audio", "video_t500", "audio_t800"}
  # The validation loss of every named task the layout has, per generated modality.
  errors = evaluated["heldout_x0_error"]
  assert set(errors["a2v"]) == {"video"} and set(errors["joint"]) == {"video", "audio"}
  assert all(0 < v < 100 for by_modality in errors.values() for v in by_modality.values())
  a2v = evaluated["tasks"]["a2v"]
  # Space-to-depth video is exact: its round trip scores as the real clips do.
  assert (a2v["baselines"]["autoencoder"]["subject_disc_found_fraction"]
          == a2v["reference"]["subject_disc_found_fraction"] == 1.0)
  curve = json.loads((model_dir / "eval" / "learning_curve.json").read_text())
  assert curve["model"]["cross_modal_gain_audio"]["steps"] == [2, 4]
  assert curve["joint"]["heldout_x0_error_audio"]["steps"] == [2, 4]
  assert curve["a2v"]["av_height_error_px"]["steps"] == [2, 4]
  # Rerunning finds every stage done.
  again = end_to_end.run(config, str(tmp_path))
  assert again["avdit"]["step"] == 4


def test_crossmodal_variant_conditions_every_example_on_a2v_or_v2a():
  config = avdit_fixed_latents.get_config("crossmodal")
  diffusion = config.diffusion
  weights = monl.parse_condition_tasks(diffusion.condition_tasks)
  t = jnp.asarray(np.random.default_rng(0).integers(1, 1001, (4000, 2, 5)), jnp.int32)
  new_t, given = monl.apply_conditioning(jax.random.key(0), t, diffusion.condition_rate,
                                         diffusion.condition_shared_level, 1000, weights)
  given, new_t = np.asarray(given), np.asarray(new_t)
  one_modality_given = given.all(axis=2).sum(axis=1) == 1
  assert np.all(one_modality_given & (given.any(axis=2).sum(axis=1) == 1))
  generated = np.where(given, new_t.max(axis=(1, 2), keepdims=True), new_t)
  assert np.all(generated == new_t.max(axis=(1, 2), keepdims=True))  # one level per example


def test_main_job_gives_avdit_the_minutes_its_earlier_stages_left():
  from configs import avdit_pipeline  # pylint: disable=g-import-not-at-top
  config = avdit_pipeline.get_config()
  assert config.job_minutes == 60.0 and config.train.num_steps == 0
  ten_minutes_ago = time.monotonic() - 600.0
  budget = end_to_end._with_job_budget(config, ten_minutes_ago).train.budget_minutes
  assert 49.9 < budget <= 50.0
  with config.unlocked():  # an explicit step count is trained as given
    config.train.num_steps = 4200
  assert end_to_end._with_job_budget(config, ten_minutes_ago).train.budget_minutes == 0.0
