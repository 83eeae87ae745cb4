"""GAN loss formulas against numpy, for single arrays and lists of (logits, features) pairs."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from avdit.models import gan_losses

RNG = np.random.default_rng(0)
# Two discriminators with different output shapes, as the STFT and waveform discriminators have.
REAL = [RNG.normal(size=(2, 5)).astype(np.float32), RNG.normal(size=(2, 3, 4)).astype(np.float32)]
FAKE = [RNG.normal(size=(2, 5)).astype(np.float32), RNG.normal(size=(2, 3, 4)).astype(np.float32)]
FEATS_REAL = [[RNG.normal(size=(2, 7, 3)).astype(np.float32),
               RNG.normal(size=(2, 4, 5)).astype(np.float32)],
              [RNG.normal(size=(2, 6, 2)).astype(np.float32)]]
FEATS_FAKE = [[RNG.normal(size=f.shape).astype(np.float32) for f in layers]
              for layers in FEATS_REAL]


def _outputs(logits, feats):
  return [(jnp.asarray(l), [jnp.asarray(f) for f in fs]) for l, fs in zip(logits, feats)]


def _relu(x):
  return np.maximum(x, 0.0)


def _softplus(x):
  return np.log1p(np.exp(-np.abs(x))) + np.maximum(x, 0)


def test_hinge_losses_match_numpy_over_discriminators():
  expected_d = np.mean([_relu(1 - r).mean() + _relu(1 + f).mean() for r, f in zip(REAL, FAKE)])
  expected_g = np.mean([_relu(1 - f).mean() for f in FAKE])
  real_out, fake_out = _outputs(REAL, FEATS_REAL), _outputs(FAKE, FEATS_FAKE)
  for real, fake in ((real_out, fake_out), ([jnp.asarray(r) for r in REAL], FAKE)):
    np.testing.assert_allclose(gan_losses.hinge_discriminator_loss(real, fake), expected_d,
                               rtol=1e-6)
    np.testing.assert_allclose(gan_losses.hinge_generator_loss(fake), expected_g, rtol=1e-6)
  np.testing.assert_allclose(gan_losses.linear_generator_loss(fake_out),
                             np.mean([-f.mean() for f in FAKE]), rtol=1e-6)
  # A single array is one discriminator.
  np.testing.assert_allclose(gan_losses.hinge_discriminator_loss(REAL[0], FAKE[0]),
                             _relu(1 - REAL[0]).mean() + _relu(1 + FAKE[0]).mean(), rtol=1e-6)
  # A bare (logits, features) pair too.
  np.testing.assert_allclose(gan_losses.hinge_generator_loss(fake_out[1]),
                             _relu(1 - FAKE[1]).mean(), rtol=1e-6)
  with pytest.raises(ValueError, match="real vs"):
    gan_losses.hinge_discriminator_loss(real_out, fake_out[:1])


def test_non_saturating_losses_match_numpy():
  fake_out = _outputs(FAKE, FEATS_FAKE)
  np.testing.assert_allclose(gan_losses.non_saturating_generator_loss(fake_out),
                             np.mean([-np.log(1 / (1 + np.exp(-f))).mean() for f in FAKE]),
                             rtol=1e-5)
  np.testing.assert_allclose(
      gan_losses.non_saturating_discriminator_loss(REAL, FAKE),
      np.mean([_softplus(-r).mean() + _softplus(f).mean() for r, f in zip(REAL, FAKE)]),
      rtol=1e-5)


def test_lecam_regularization_and_ema_update():
  ema_real, ema_fake = 0.3, -0.2
  expected = np.mean([(_relu(r - ema_fake) ** 2).mean() + (_relu(ema_real - f) ** 2).mean()
                      for r, f in zip(REAL, FAKE)])
  real_out, fake_out = _outputs(REAL, FEATS_REAL), _outputs(FAKE, FEATS_FAKE)
  np.testing.assert_allclose(
      gan_losses.lecam_regularization(real_out, fake_out, ema_real, ema_fake), expected,
      rtol=1e-6)
  # Per-discriminator EMAs.
  per_real, per_fake = np.array([0.3, 1.0]), np.array([-0.2, 0.5])
  expected_per = np.mean([(_relu(r - af) ** 2).mean() + (_relu(ar - f) ** 2).mean()
                          for r, f, ar, af in zip(REAL, FAKE, per_real, per_fake)])
  np.testing.assert_allclose(
      gan_losses.lecam_regularization(real_out, fake_out, per_real, per_fake), expected_per,
      rtol=1e-6)
  # EMA update: decay·ema + (1 − decay)·mean logits (mean over discriminators when scalar).
  new_real, new_fake = gan_losses.update_lecam_ema(ema_real, ema_fake, real_out, fake_out,
                                                   decay=0.9)
  np.testing.assert_allclose(new_real, 0.9 * 0.3 + 0.1 * np.mean([r.mean() for r in REAL]),
                             rtol=1e-6)
  np.testing.assert_allclose(new_fake, 0.9 * -0.2 + 0.1 * np.mean([f.mean() for f in FAKE]),
                             rtol=1e-6)
  new_per_real, _ = gan_losses.update_lecam_ema(per_real, per_fake, real_out, fake_out, decay=0.9)
  np.testing.assert_allclose(new_per_real, 0.9 * per_real + 0.1 * np.array(
      [r.mean() for r in REAL]), rtol=1e-6)
  # The EMAs are constants: no gradient flows into them.
  g = jax.grad(lambda e: gan_losses.lecam_regularization(REAL, FAKE, e, ema_fake))(0.3)
  assert float(g) == 0.0


def test_feature_matching_matches_numpy():
  real_out, fake_out = _outputs(REAL, FEATS_REAL), _outputs(FAKE, FEATS_FAKE)
  relative = np.mean([np.mean([np.abs(r - f).mean() / np.abs(r).mean()
                               for r, f in zip(lr, lf)])
                      for lr, lf in zip(FEATS_REAL, FEATS_FAKE)])
  plain = np.mean([np.mean([np.abs(r - f).mean() for r, f in zip(lr, lf)])
                   for lr, lf in zip(FEATS_REAL, FEATS_FAKE)])
  np.testing.assert_allclose(gan_losses.feature_matching_loss(real_out, fake_out), relative,
                             rtol=1e-5)
  np.testing.assert_allclose(
      gan_losses.feature_matching_loss(real_out, fake_out, normalize=False), plain, rtol=1e-5)
  # Lists of per-discriminator feature lists, and a single discriminator's feature list.
  np.testing.assert_allclose(
      gan_losses.feature_matching_loss(FEATS_REAL, FEATS_FAKE, normalize=False), plain, rtol=1e-5)
  single = np.mean([np.abs(r - f).mean() for r, f in zip(FEATS_REAL[0], FEATS_FAKE[0])])
  np.testing.assert_allclose(
      gan_losses.feature_matching_loss(FEATS_REAL[0], FEATS_FAKE[0], normalize=False), single,
      rtol=1e-5)
  with pytest.raises(ValueError, match="structure"):
    gan_losses.feature_matching_loss(FEATS_REAL, FEATS_FAKE[:1])


def test_feature_matching_gradient_reaches_fake_features_only():
  real, fake = jnp.asarray(FEATS_REAL[1][0]), jnp.asarray(FEATS_FAKE[1][0])
  g_real, g_fake = jax.grad(lambda r, f: gan_losses.feature_matching_loss([r], [f]),
                            argnums=(0, 1))(real, fake)
  assert float(jnp.abs(g_real).sum()) == 0.0
  expected = -np.sign(FEATS_REAL[1][0] - FEATS_FAKE[1][0]) / (
      real.size * np.abs(FEATS_REAL[1][0]).mean())
  np.testing.assert_allclose(g_fake, expected, rtol=1e-5)
