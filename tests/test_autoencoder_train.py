"""Training the autoencoders, the learned latent space, latent caches, and the whole pipeline.

One module-scoped run of each tiny autoencoder (6 steps, quantizer and GAN on from step 2) feeds
the later tests, which is what keeps this file to a few minutes of CPU.
"""
import json
import os
import shutil

import av
import jax
import numpy as np
import pytest

from avdit import layout as layout_lib
from avdit.data import latent_cache
from avdit.models import autoencoders
from avdit.models import latent_space as latent_lib
from avdit.training import autoencoder
from avdit.training import setup as setup_lib
from configs import avdit_pipeline
from configs import magvit2_synthetic
from configs import soundstream_synthetic


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("autoencoders")
  out = {}
  for name, config in (("magvit2", magvit2_synthetic.get_config("tiny")),
                       ("soundstream", soundstream_synthetic.get_config("tiny"))):
    workdir = str(root / name)
    out[name] = (config, workdir, autoencoder.train(config, workdir))
  return out


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


@pytest.mark.parametrize("name", ["magvit2", "soundstream"])
def test_tiny_run_trains_with_gan_and_quantizer(runs, name):
  config, workdir, summary = runs[name]
  assert summary["step"] == 6 and summary["stopped_by"] is None
  metrics = summary["metrics"]
  assert all(np.isfinite(v) for v in metrics.values())
  # The discriminator started at step 2 and moved; the quantizer ran (commitment > 0).
  assert metrics["discriminator_grad_norm"] > 0 and metrics["loss_commitment"] > 0
  assert "loss_adversarial" in metrics
  if name == "soundstream":
    assert "perplexity_0" in metrics and metrics["loss_feature_matching"] > 0
  else:
    assert "perplexity" in metrics and metrics["lecam"] >= 0
  assert set(summary["eval"]) >= ({"psnr_db", "baseline_mean_frame_psnr_db"}
                                  if name == "magvit2" else
                                  {"log_mel_distance", "baseline_mean_spectrum_log_mel_distance"})
  # Reconstructions a person can look at: side-by-side mp4 with sound, and a PNG.
  recon_dir = os.path.join(workdir, "reconstructions")
  mp4 = os.path.join(recon_dir, f"{name}_0_original_vs_reconstruction.mp4")
  with av.open(mp4) as container:
    assert len(container.streams.video) == 1 and len(container.streams.audio) == 1
    frames = sum(1 for _ in container.decode(video=0))
  assert frames == config.clip.num_frames
  assert os.path.getsize(os.path.join(recon_dir, f"{name}_0.png")) > 1000
  summary_json = json.loads(open(os.path.join(workdir, "train_summary.json")).read())
  assert summary_json["step"] == 6


def test_load_autoencoder_rebuilds_the_ema_generator_from_its_checkpoint(runs):
  _, workdir, summary = runs["soundstream"]
  model, identity, step = autoencoders.load_autoencoder(workdir)
  assert step == 6 and identity["kind"] == "soundstream"
  from flax import nnx
  ema = _leaves(summary["state"].ema_params)
  restored = _leaves(nnx.state(model, nnx.Param))
  assert len(restored) == len(ema) > 10
  for a, b in zip(ema, restored):
    np.testing.assert_array_equal(a, b)
  # The EMA codebooks (non-parameter state) come back too.
  from avdit.models import quantizers
  restored, trained = (_leaves(nnx.state(model, quantizers.CodebookState)),
                       _leaves(summary["state"].gen_state))
  assert len(restored) == len(trained) == 4
  for a, b in zip(restored, trained):
    np.testing.assert_array_equal(a, b)


@pytest.mark.slow  # two more trainings (~1 min); exact resume of the AVDiT loop runs by default
def test_soundstream_resume_matches_uninterrupted_run(runs, tmp_path):
  config, _, straight = runs["soundstream"]
  first = autoencoder.train(config, str(tmp_path), steps_this_run=4)
  assert first["step"] == 4 and first["stopped_by"] == "steps_this_run"
  second = autoencoder.train(config, str(tmp_path))
  assert second["step"] == 6
  for a, b in zip(_leaves(straight["state"]), _leaves(second["state"])):
    np.testing.assert_array_equal(a, b)


def test_decoder_finetune_holds_the_encoder_and_moves_the_decoder(runs, tmp_path):
  """magvit2_synthetic:decoder_tiny from the tiny run: its encoder (raw and EMA) is the source's
  EMA encoder bit for bit, so a cache's latents stay valid; its decoder has moved."""
  from flax import nnx
  from avdit.errors import UserError
  _, source, _ = runs["magvit2"]
  config = magvit2_synthetic.get_config("decoder_tiny")
  config.train.init_from = source
  summary = autoencoder.train(config, str(tmp_path / "decoder"))
  assert summary["step"] == 6 and np.isfinite(summary["metrics"]["loss"])
  before, _, _ = autoencoders.load_autoencoder(source)
  after, _, _ = autoencoders.load_autoencoder(str(tmp_path / "decoder"))
  raw = nnx.merge(nnx.graphdef(after), summary["state"].gen_params, summary["state"].gen_state)
  moved = {"enc": [], "dec": []}
  for model in (after, raw):
    params = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    for path, value in nnx.to_flat_state(nnx.state(before, nnx.Param)):
      part = str(path[0])[:3]
      if part in moved:
        moved[part].append(not np.array_equal(np.asarray(value[...]),
                                              np.asarray(params[path][...])))
  assert moved["enc"] and not any(moved["enc"])  # every encoder array identical
  assert any(moved["dec"])
  clip = np.random.default_rng(0).uniform(-1, 1, (1, 9, 32, 32, 3)).astype(np.float32)
  np.testing.assert_array_equal(np.asarray(before.encode(clip)), np.asarray(after.encode(clip)))
  config.model.kwargs = dict(config.model.kwargs, latent_dim=4)  # not the source's model
  with pytest.raises(UserError, match="init_from"):
    autoencoder.train(config, str(tmp_path / "other"))
  config = magvit2_synthetic.get_config("decoder_tiny")  # no run to start from
  with pytest.raises(UserError, match="init_from=RUN"):
    autoencoder.train(config, str(tmp_path / "none"))


def test_decoder_stage_trains_from_magvit2_then_encodes_with_its_encoder_decodes_with_its_own(
    runs, tmp_path):
  """avdit_pipeline with `finetune_video_decoder`: magvit2/ (finished here, so recognised) then
  magvit2_decoder/ fine-tuned from it; the latent space is the decoder run's: its latents are
  magvit2/'s encoder's, its frames its own decoder's."""
  from avdit import workdir as workdir_lib
  from avdit.data import pipeline
  from avdit.workflows import end_to_end
  shutil.copytree(runs["magvit2"][1], tmp_path / "magvit2")
  config = avdit_pipeline.get_config("tiny")
  config.finetune_video_decoder = True
  config = workdir_lib.with_stage_dirs(config, str(tmp_path))
  results = end_to_end.train_autoencoders(config)
  assert list(results) == ["video_autoencoder", "video_decoder"]
  assert config.latent.video_autoencoder_workdir == str(tmp_path / "magvit2_decoder")
  assert results["video_decoder"]["step"] == config.video_decoder.train.num_steps
  layout = layout_lib.layout_from_config(config)
  space = latent_lib.make_latent_space(config, layout)
  source, _, _ = autoencoders.load_autoencoder(str(tmp_path / "magvit2"))
  clips = pipeline.make_eval_clips(config.data.raw, layout, 2, seed=5)
  latents = jax.jit(space.encode)(clips["video"], clips["audio"])
  np.testing.assert_allclose(  # jitted here, not there: equal to float rounding
      latents["video"], source.encode(np.asarray(clips["video"], np.float32) / 127.5 - 1),
      atol=1e-5)
  config.latent.video_autoencoder_workdir = str(tmp_path / "magvit2")
  source_space = latent_lib.make_latent_space(config, layout)
  video, _ = jax.jit(space.decode)(latents)
  source_video, _ = jax.jit(source_space.decode)(latents)
  assert not np.array_equal(np.asarray(video), np.asarray(source_video))  # its own decoder


def test_noisy_latents_have_per_clip_sigma_times_each_channels_std():
  """MAGVIT-v2's reconstruction through an identity encoder/decoder: (out - z) / std_c is white
  noise of one σ_i per clip, σ_i ~ U(0, s): every σ_i ≤ s and E[σ_i²] = s² / 3 (closed form)."""
  magvit2 = autoencoder.Kind("magvit2", "video")
  rng = np.random.default_rng(1)
  std_c = np.array([4.0, 1.0, 0.25], np.float32)
  z = (rng.normal(size=(256, 2, 4, 4, 3)) * std_c).astype(np.float32)

  class Identity:
    encode = decode = staticmethod(lambda x: x)
    quantize = staticmethod(lambda x, bypass: (x, {}))

  out, _ = autoencoder.reconstruct(magvit2, Identity(), z, train=True, quantize=False,
                                   rng=jax.random.key(0), latent_noise=0.5, train_encoder=False)
  batch_std = z.reshape(-1, 3).std(0)
  unit = (np.asarray(out) - z) / batch_std
  sigma = unit.reshape(256, -1).std(1)
  assert sigma.max() <= 0.5 * 1.15
  assert np.mean(sigma**2) == pytest.approx(0.5**2 / 3, rel=0.15)
  # Within a clip the three channels share σ_i: the noise scales with each channel's std.
  per_channel = unit.reshape(256, -1, 3).std(1)
  big = sigma > 0.2
  np.testing.assert_allclose(per_channel[big] / sigma[big, None], 1.0, atol=0.35)
  out, _ = autoencoder.reconstruct(magvit2, Identity(), z, train=False, quantize=False)
  np.testing.assert_array_equal(np.asarray(out), z)


def test_magvit2_reconstruction_without_noise_is_the_models_own_call():
  """The trainer's spelt-out encode -> quantize -> decode is MagvitV2.__call__, quantized or not
  (a second code path), and the latent noise changes it."""
  config = magvit2_synthetic.get_config("tiny")
  kind = autoencoder.kind_of(config)
  gen = autoencoders.build_generator(kind.name, autoencoder.model_kwargs(config),
                                     config.model.dtype, seed=0)
  x = jax.random.uniform(jax.random.key(1), (1, config.clip.num_frames, config.clip.height,
                                             config.clip.width, 3), minval=-1.0, maxval=1.0)
  for quantize in (True, False):
    ours, _ = autoencoder.reconstruct(kind, gen, x, train=False, quantize=quantize)
    theirs, _ = gen(x, quantize=quantize)
    np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), atol=1e-6)
  noisy, _ = autoencoder.reconstruct(kind, gen, x, train=True, quantize=False,
                                     rng=jax.random.key(2), latent_noise=0.5)
  assert not np.allclose(np.asarray(noisy), np.asarray(theirs), atol=1e-3)


def test_missing_perceptual_weights_file_is_a_clear_error(tmp_path):
  config = magvit2_synthetic.get_config("tiny")
  config.loss.perceptual_weight = 0.1
  config.loss.perceptual_weights_file = str(tmp_path / "vgg.npz")
  with pytest.raises(FileNotFoundError, match="vgg.npz"):
    autoencoder.perceptual_loss(config)
  config.loss.perceptual_weight = 0.0  # off by default: no file needed
  assert autoencoder.perceptual_loss(config) is None


def _pipeline_config(runs, cache_dir):
  config = avdit_pipeline.get_config("soundstream_tiny")
  config.latent.video_autoencoder_workdir = runs["magvit2"][1]
  config.latent.audio_autoencoder_workdir = runs["soundstream"][1]
  config.data.cache_dir = str(cache_dir)
  return config


def test_learned_latents_have_the_layout_and_decode_to_clips(runs, tmp_path):
  config = _pipeline_config(runs, tmp_path)
  layout = layout_lib.layout_from_config(config)
  space = latent_lib.make_latent_space(config, layout)
  from avdit.data import pipeline
  clips = pipeline.make_eval_clips(config.data, layout, 2, seed=123)
  latents = jax.jit(space.encode)(clips["video"], clips["audio"])
  assert latents["video"].shape == (2, *layout.video_latent_shape)  # 3 x 4 x 4 x 8
  assert latents["audio"].shape == (2, *layout.audio_latent_shape)  # 57 x 16
  video, audio = jax.jit(space.decode)(latents)
  assert video.shape == clips["video"].shape and video.dtype == np.uint8
  assert audio.shape == clips["audio"].shape


def test_logmag_audio_latents_are_magvit_video_and_the_exact_spectrogram(runs, tmp_path):
  """configs/avdit_pipeline.py:tiny: MAGVIT-v2 encodes the video, the audio is the
  log-magnitude STFT of the zero-padded waveform (no SoundStream anywhere), checked against the
  autoencoder and the transform applied on their own; the decoded tone keeps its pitch."""
  from avdit.data import pipeline
  from avdit.models import spectrogram
  config = avdit_pipeline.get_config("tiny")
  config.latent.video_autoencoder_workdir = runs["magvit2"][1]
  config.latent.audio_autoencoder_workdir = str(tmp_path / "no_soundstream_here")
  layout = layout_lib.layout_from_config(config)
  space = latent_lib.make_latent_space(config, layout)
  assert space.identity["audio"] == {"modality": "audio", "kind": "logmag", "hop": 320}
  clips = pipeline.make_eval_clips(config.data.raw, layout, 2, seed=5)
  latents = jax.jit(space.encode)(clips["video"], clips["audio"])
  video_model, _, _ = autoencoders.load_autoencoder(runs["magvit2"][1])
  np.testing.assert_allclose(
      latents["video"], video_model.encode(np.asarray(clips["video"], np.float32) / 127.5 - 1),
      atol=1e-5)
  padded = np.zeros((2, layout.audio_latents * layout.audio_hop), np.float32)
  padded[:, :layout.audio_samples] = clips["audio"]
  magnitude = np.abs(np.stack([np.fft.rfft(
      np.concatenate([p, p, p])[k * 320 - 160 + len(p):k * 320 + 480 + len(p)]
      * spectrogram.sine_window(320)) for p in padded for k in range(layout.audio_latents)]))
  expected = np.log(magnitude[:, :320] + spectrogram.MAGNITUDE_FLOOR)
  expected = expected.reshape(latents["audio"].shape)
  np.testing.assert_allclose(latents["audio"], expected, atol=2e-3)
  _, audio = jax.jit(space.decode)(latents)
  assert audio.shape == clips["audio"].shape
  peak_hz = lambda x: np.argmax(np.abs(np.fft.rfft(x))) * layout.sample_rate / len(x)
  assert abs(peak_hz(np.asarray(audio[0])) - peak_hz(clips["audio"][0])) <= 30  # Griffin-Lim
  config.latent.audio_channels = 16
  with pytest.raises(ValueError, match="logmag audio has latent.audio_hop 320 channels"):
    latent_lib.make_latent_space(config, layout_lib.layout_from_config(config))


def test_autoencoders_that_do_not_match_the_config_are_refused(runs, tmp_path):
  config = _pipeline_config(runs, tmp_path)
  config.latent.audio_channels = 32
  with pytest.raises(ValueError, match="SoundStream latent_dim 16 != latent.audio_channels 32"):
    latent_lib.make_latent_space(config, layout_lib.layout_from_config(config))
  config = _pipeline_config(runs, tmp_path)
  config.latent.video_autoencoder_workdir = runs["soundstream"][1]
  with pytest.raises(ValueError, match="is a soundstream, which encodes audio"):
    latent_lib.make_latent_space(config, layout_lib.layout_from_config(config))


def test_latent_cache_roundtrip_stats_and_refusals(runs, tmp_path):
  config = _pipeline_config(runs, tmp_path / "cache")
  from avdit.workflows import end_to_end
  meta = end_to_end.encode(config, str(tmp_path))
  layout = layout_lib.layout_from_config(config)
  space = latent_lib.make_latent_space(config, layout)
  source = latent_cache.LatentCacheSource(config.data.cache_dir, layout,
                                          latent_cache.identity_for_meta(space))
  assert len(source) == meta["num_clips"] == config.encode.num_clips
  # Each record equals a direct encoding of the same training clip (independent path).
  from avdit.data import pipeline
  raw = pipeline.make_source(config.data.raw, layout)
  record = source[5]
  direct = jax.jit(space.encode)(raw[5]["video"][None], raw[5]["audio"][None])
  np.testing.assert_allclose(record["video"], direct["video"][0], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(record["audio"], direct["audio"][0], rtol=1e-5, atol=1e-5)
  assert int(record["index"]) == int(raw[5]["index"])
  # Stats: per-channel mean/std over every cached latent, against numpy on all records.
  videos = np.stack([source[i]["video"] for i in range(len(source))]).reshape(-1, 8)
  np.testing.assert_allclose(source.stats["video_mean"], videos.mean(0), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(source.stats["video_std"], videos.std(0), rtol=1e-3, atol=1e-5)
  # A new run on the cache (trainer, benchmarks) normalizes with them, not with clips' encodings.
  run_stats = setup_lib.estimate_latent_stats(config, layout, space)
  np.testing.assert_allclose(run_stats["video_mean"], videos.mean(0), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(run_stats["video_std"], videos.std(0), rtol=1e-3, atol=1e-5)
  # A cache written by other autoencoders (another checkpoint step) is refused, clearly.
  other = latent_cache.identity_for_meta(space)
  other["audio"] = dict(other["audio"], step=99)
  with pytest.raises(ValueError, match="audio autoencoder differs \\(step\\)"):
    latent_cache.LatentCacheSource(config.data.cache_dir, layout, other)
  # Shapes of another layout are refused; an interrupted encode (no meta.json) too.
  config.latent.video_channels = 4
  with pytest.raises(ValueError, match="video latents"):
    latent_cache.LatentCacheSource(config.data.cache_dir, layout_lib.layout_from_config(config))
  os.remove(os.path.join(config.data.cache_dir, "meta.json"))
  with pytest.raises(FileNotFoundError, match="interrupted encode"):
    latent_cache.LatentCacheSource(config.data.cache_dir, layout)


@pytest.mark.slow  # ~2 min; stages 4-6 run by default in test_fixed_latent_job.py
def test_whole_pipeline_trains_avdit_on_the_cache_and_samples(runs, tmp_path):
  """The main job's path at tiny size, with the autoencoders already trained (the pipeline
  recognises finished stages): encode, AVDiT on cached latents, samples decoded to mp4."""
  from avdit.workflows import end_to_end
  config = avdit_pipeline.get_config("tiny")
  config.latent.video_autoencoder_workdir = runs["magvit2"][1]
  config.sample.tasks = "a2v"
  results = end_to_end.run(config, str(tmp_path))
  # Log-magnitude audio: no SoundStream stage (it would train in tmp_path/soundstream).
  assert "audio_autoencoder" not in results and not (tmp_path / "soundstream").exists()
  assert results["avdit"]["step"] == config.train.num_steps
  assert np.isfinite(results["avdit"]["metrics"]["loss"])
  assert os.path.exists(tmp_path / "latent_cache" / "meta.json")
  mp4 = tmp_path / "avdit" / "samples" / "a2v_0.mp4"
  with av.open(str(mp4)) as container:
    assert sum(1 for _ in container.decode(video=0)) == config.clip.num_frames
  # Stage 6: the suite with its real and chance rows, and the curve over the kept checkpoints.
  evaluated = json.loads((tmp_path / "avdit" / "eval" / "results.json").read_text())
  assert set(evaluated["tasks"]["a2v"]["baselines"]) == {"autoencoder", "shuffled", "constant"}
  assert results["eval"]["a2v"].keys() >= {"av_height_error_px", "subject_disc_found_fraction"}
  curve = json.loads((tmp_path / "avdit" / "eval" / "learning_curve.json").read_text())
  assert curve["a2v"]["subject_disc_found_fraction"]["steps"] == [2, 4]
  assert (tmp_path / "avdit" / "eval" / "learning_curve.png").exists()


DANCE_SAMPLE = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data",
                            "aist_dance_sample.mp4")


@pytest.mark.skipif(not os.path.exists(DANCE_SAMPLE), reason="needs ../shared/data")
def test_folder_pipeline_prepares_real_video_then_encodes_trains_samples_and_evaluates(
    runs, tmp_path):
  """configs/avdit_pipeline.py:folder_tiny on a folder holding the real dance clip: prepared at
  the config's own geometry (`prepare --config=`), one `data.raw.data_dir` reaches all three
  models, and the pipeline encodes the real clips, trains AVDiT, samples mp4s with sound and runs
  the suite without the synthetic world's oracle (the autoencoders come from the tiny run)."""
  from avdit.data import prepare
  from avdit.workflows import end_to_end
  config = avdit_pipeline.get_config("folder_tiny")
  videos = tmp_path / "my videos"
  videos.mkdir()
  shutil.copy(DANCE_SAMPLE, videos / "dance.mp4")
  report = prepare.prepare_dataset(str(videos), str(tmp_path / "tfds"),
                                   prepare.resolve_config(config=config))
  assert report["splits"]["train"]["clips"] > 0 and report["splits"]["test"]["clips"] > 0
  config.data.raw.data_dir = str(tmp_path / "tfds")
  assert config.video_autoencoder.data.data_dir == config.audio_autoencoder.data.data_dir == str(
      tmp_path / "tfds")
  config.latent.video_autoencoder_workdir = runs["magvit2"][1]
  config.sample.tasks = "a2v"
  config.encode.num_clips = 1000  # more than the folder holds: all of its training clips
  results = end_to_end.run(config, str(tmp_path / "run"))
  meta = json.loads((tmp_path / "run" / "latent_cache" / "meta.json").read_text())
  assert meta["num_clips"] == report["splits"]["train"]["clips"]
  from avdit import workdir as workdir_lib
  staged = workdir_lib.with_stage_dirs(config, str(tmp_path / "run"))
  assert end_to_end._cache_is_current(staged)  # pylint: disable=protected-access (a rerun keeps it)
  assert results["avdit"]["step"] == config.train.num_steps
  with av.open(str(tmp_path / "run" / "avdit" / "samples" / "a2v_0.mp4")) as container:
    assert container.streams.audio and container.streams.video
  evaluated = json.loads((tmp_path / "run" / "avdit" / "eval" / "results.json").read_text())
  assert "av_height_error_px" not in evaluated["tasks"]["a2v"]["metrics"]  # no oracle on real clips
