"""space_to_depth: exact inverse, MAGVIT-v2's segment layout, normalization, clear errors."""
import jax.numpy as jnp
import numpy as np
import pytest

from avdit import layout as layout_lib
from avdit.models import latent_space


@pytest.fixture
def lay():
  return layout_lib.ClipLayout(num_frames=9, fps=8.0, height=32, width=16, sample_rate=16000,
                               video_channels=768, audio_channels=320)


def _clip(lay, batch=2, seed=0):
  rng = np.random.default_rng(seed)
  video = rng.integers(0, 256, (batch, lay.num_frames, lay.height, lay.width, 3), dtype=np.uint8)
  audio = rng.uniform(-1, 1, (batch, lay.audio_samples)).astype(np.float32)
  return video, audio


def test_roundtrip_is_exact(lay):
  space = latent_space.SpaceToDepth(lay)
  video, audio = _clip(lay)
  latents = space.encode(video, audio)
  assert latents["video"].shape == (2, 3, 4, 2, 768)
  assert latents["audio"].shape == (2, lay.audio_latents, 320)
  video_back, audio_back = space.decode(latents)
  np.testing.assert_array_equal(np.asarray(video_back), video)
  np.testing.assert_array_equal(np.asarray(audio_back), audio)


def test_segment_structure_matches_frames(lay):
  """Latent frame n holds exactly the pixels of segment n (numpy reference by loops)."""
  space = latent_space.SpaceToDepth(lay)
  video, audio = _clip(lay, batch=1)
  latents = np.asarray(space.encode(video, audio)["video"])[0]
  pixels = video[0].astype(np.float32) / 127.5 - 1
  for frame in range(lay.num_frames):
    seg = lay.segment_of_frame[frame]
    slot = 3 if frame == 0 else (frame - 1) % 4  # frame 0 fills its group (copies), last slot
    for y in range(0, lay.height, 7):
      for x in range(0, lay.width, 5):
        channel = ((slot * 8 + y % 8) * 8 + x % 8) * 3
        np.testing.assert_allclose(latents[seg, y // 8, x // 8, channel:channel + 3],
                                   pixels[frame, y, x], rtol=0, atol=1e-6)
  # Audio latent j holds samples [320 j, 320 (j+1)), zero padded at the end.
  audio_latents = np.asarray(space.encode(video, audio)["audio"])[0]
  np.testing.assert_array_equal(audio_latents[3], audio[0, 960:1280])
  tail = lay.audio_samples - 320 * (lay.audio_latents - 1)
  np.testing.assert_array_equal(audio_latents[-1, tail:], 0)


def test_changing_a_frame_changes_only_its_segment(lay):
  space = latent_space.SpaceToDepth(lay)
  video, audio = _clip(lay, batch=1)
  base = np.asarray(space.encode(video, audio)["video"])
  changed = video.copy()
  changed[0, 6] = 255 - changed[0, 6]
  diff = np.abs(np.asarray(space.encode(changed, audio)["video"]) - base).max(axis=(0, 2, 3, 4))
  assert np.flatnonzero(diff) == [lay.segment_of_frame[6]]


def test_normalization_roundtrip_and_stats(lay):
  space = latent_space.SpaceToDepth(lay)
  video, audio = _clip(lay, batch=4)
  latents = space.encode(video, audio)
  stats = latent_space.estimate_stats(latents)
  normalized = latent_space.normalize(latents, stats)
  flat = np.asarray(normalized["audio"]).reshape(-1, 320)
  np.testing.assert_allclose(flat.mean(0), 0, atol=1e-5)
  np.testing.assert_allclose(flat.std(0), 1, atol=1e-4)
  back = latent_space.denormalize(normalized, latent_space.stats_from_json(
      latent_space.stats_to_json(stats)))
  np.testing.assert_allclose(np.asarray(back["video"]), np.asarray(latents["video"]), atol=1e-5)

def test_shared_stats_pool_all_channels_of_a_modality():
  rng = np.random.default_rng(3)
  audio = rng.normal(size=(4, 5, 6)) * np.arange(1, 7)  # channels of different scales
  video = rng.normal(size=(4, 2, 3, 3, 8))
  stats = latent_space.estimate_stats({"audio": audio, "video": video}, shared=("audio",))
  np.testing.assert_allclose(stats["audio_mean"], np.full(6, audio.mean()), rtol=1e-5)
  np.testing.assert_allclose(stats["audio_std"], np.full(6, audio.std()), rtol=1e-5)
  np.testing.assert_allclose(stats["video_std"], video.reshape(-1, 8).std(0), rtol=1e-5)
  # Normalized audio keeps its channels' relative scales (the loss weights them as the data does).
  normalized = np.asarray(latent_space.normalize({"audio": audio}, stats)["audio"])
  np.testing.assert_allclose(normalized.std(axis=(0, 1)), audio.std(axis=(0, 1)) / audio.std(),
                             rtol=1e-5)



def test_whitening_equalizes_the_strongest_directions_and_inverts_exactly():
  rng = np.random.default_rng(5)
  scales = np.array([30.0, 10.0, 3.0, 1.0, 0.3, 0.1])  # independent sources, rotated together
  rotation = np.linalg.qr(rng.normal(size=(6, 6)))[0]
  video = (rng.normal(size=(4000, 6)) * scales) @ rotation + 5.0
  latents = {"video": video.reshape(100, 2, 4, 5, 6), "audio": rng.normal(size=(10, 3, 4))}
  stats = latent_space.estimate_stats(latents, whiten=("video",), whiten_rank=3)
  assert "audio_directions" not in stats and stats["video_directions"].shape == (6, 6)
  # Reference by SVD of the per-channel standardized data (not the eigh the code uses).
  standardized = (video - video.mean(0)) / video.std(0)
  singular = np.linalg.svd(standardized - standardized.mean(0), compute_uv=False)
  eigenvalues = singular ** 2 / (len(video) - 1)
  expected = np.sort(eigenvalues / (eigenvalues + eigenvalues[2]))[::-1]
  normalized = np.asarray(latent_space.normalize(latents, stats)["video"]).reshape(-1, 6)
  covariance = np.cov(normalized, rowvar=False)
  np.testing.assert_allclose(np.sort(np.linalg.eigvalsh(covariance))[::-1], expected, rtol=1e-3)
  np.testing.assert_allclose(covariance, np.diag(np.diag(covariance)), atol=1e-4)  # decorrelated
  np.testing.assert_allclose(np.sort(np.diag(covariance))[::-1], expected, rtol=1e-3)
  np.testing.assert_allclose(normalized.mean(0), 0, atol=1e-4)
  # The per-channel variance the skip path uses (diffusion/skip.py): the same eigenvalue ratios,
  # strongest first; 1 on the per-channel normalized audio.
  np.testing.assert_allclose(stats["video_normalized_var"], expected, rtol=1e-3)
  np.testing.assert_allclose(stats["audio_normalized_var"], 1.0, rtol=1e-6)
  back = latent_space.denormalize(
      latent_space.normalize(latents, stats),
      latent_space.stats_from_json(latent_space.stats_to_json(stats)))
  np.testing.assert_allclose(np.asarray(back["video"]), latents["video"], rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(np.asarray(back["audio"]), latents["audio"], rtol=1e-4, atol=1e-4)


def test_kept_directions_project_onto_the_strongest_principal_subspace():
  """keep={"video": 2}: two channels out, and the round trip is the orthogonal projection of the
  standardized data onto its top-2 principal subspace (reference: numpy SVD)."""
  rng = np.random.default_rng(6)
  scales = np.array([30.0, 10.0, 3.0, 1.0, 0.3])
  rotation = np.linalg.qr(rng.normal(size=(5, 5)))[0]
  video = (rng.normal(size=(3000, 5)) * scales) @ rotation + 2.0
  latents = {"video": video.reshape(100, 30, 5), "audio": rng.normal(size=(10, 3, 4))}
  stats = latent_space.estimate_stats(latents, whiten=("video",), whiten_rank=3,
                                      keep={"video": 2})
  normalized = np.asarray(latent_space.normalize(latents, stats)["video"])
  assert normalized.shape == (100, 30, 2) and stats["video_normalized_var"].shape == (2,)
  back = np.asarray(latent_space.denormalize({"video": normalized}, stats)["video"]).reshape(-1, 5)
  mean, std = video.mean(0), video.std(0)
  standardized = (video - mean) / std
  _, _, vt = np.linalg.svd(standardized - standardized.mean(0), full_matrices=False)
  expected = (standardized @ vt[:2].T @ vt[:2]) * std + mean
  np.testing.assert_allclose(back, expected, rtol=1e-3, atol=1e-3)
  with pytest.raises(ValueError, match="whitened"):
    latent_space.estimate_stats(latents, keep={"video": 2})


def test_shared_direction_scale_keeps_the_natural_spectrum_at_mean_unit_variance():
  """direction_scale="shared": rotated onto the top-k principal directions, not equalized: the
  variances are the k largest eigenvalues (numpy SVD) over their mean, and the round trip is the
  same orthogonal projection as with whitening."""
  rng = np.random.default_rng(7)
  scales = np.array([30.0, 10.0, 3.0, 1.0, 0.3])
  rotation = np.linalg.qr(rng.normal(size=(5, 5)))[0]
  video = (rng.normal(size=(3000, 5)) * scales) @ rotation - 1.0
  latents = {"video": video.reshape(100, 30, 5), "audio": rng.normal(size=(10, 3, 4))}
  stats = latent_space.estimate_stats(latents, whiten=("video",), keep={"video": 3},
                                      direction_scale="shared")
  standardized = (video - video.mean(0)) / video.std(0)
  singular = np.linalg.svd(standardized - standardized.mean(0), compute_uv=False)
  top = (singular ** 2 / (len(video) - 1))[:3]
  normalized = np.asarray(latent_space.normalize(latents, stats)["video"]).reshape(-1, 3)
  np.testing.assert_allclose(normalized.var(0, ddof=1), top / top.mean(), rtol=1e-3)
  np.testing.assert_allclose(stats["video_normalized_var"], top / top.mean(), rtol=1e-3)
  unit = latent_space.estimate_stats(latents, whiten=("video",), keep={"video": 3})
  for scaled in (stats, unit):
    back = latent_space.denormalize(latent_space.normalize(latents, scaled), scaled)["video"]
    np.testing.assert_allclose(np.asarray(back), np.asarray(
        latent_space.denormalize(latent_space.normalize(latents, unit), unit)["video"]),
        rtol=1e-4, atol=1e-4)
  with pytest.raises(ValueError, match="direction_scale"):
    latent_space.estimate_stats(latents, whiten=("video",), direction_scale="equal")


def test_video_rank_gives_the_model_k_channels_and_the_latent_space_its_own():
  from configs import avdit_synthetic  # pylint: disable=g-import-not-at-top
  config = avdit_synthetic.get_config("tiny")
  config.latent.update(whiten="video", video_rank=16)
  model_layout = layout_lib.layout_from_config(config)
  assert model_layout.video_channels == 16
  space = latent_space.make_latent_space(config, model_layout)
  video, audio = _clip(space.layout, batch=1)
  assert space.encode(video, audio)["video"].shape[-1] == config.latent.video_channels


def test_bad_clip_errors(lay):
  space = latent_space.SpaceToDepth(lay)
  video, audio = _clip(lay, batch=1)
  with pytest.raises(ValueError, match=r"8 frames is not 1 \+ 4k"):
    space.encode(video[:, :8], audio)
  with pytest.raises(ValueError, match=r"audio of shape \(1, 17999\) does not match.*18000"):
    space.encode(video, audio[:, :-1])
  bad = layout_lib.ClipLayout(num_frames=9, fps=8.0, height=32, width=16, sample_rate=16000,
                              video_channels=8, audio_channels=320)
  with pytest.raises(ValueError, match="space_to_depth gives"):
    latent_space.SpaceToDepth(bad)


def test_decode_projects_generated_first_segment(lay):
  """Generated latents whose 4 copies of frame 0 differ decode to their mean (a projection)."""
  space = latent_space.SpaceToDepth(lay)
  latents = {"video": jnp.zeros((1, *lay.video_latent_shape)),
             "audio": jnp.zeros((1, *lay.audio_latent_shape))}
  x = np.zeros((1, *lay.video_latent_shape), np.float32)
  x[0, 0, ..., 0] = 1.0  # slot 0 copy of frame 0, red channel of pixel (0,0) of each block
  latents["video"] = jnp.asarray(x)
  video, _ = space.decode(latents)
  assert int(np.asarray(video)[0, 0, 0, 0, 0]) == round((0.25 + 1) * 127.5)
