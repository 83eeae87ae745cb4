"""Adversarial, LeCAM and feature-matching losses shared by the audio and video autoencoders.

Discriminator outputs come in three accepted forms, so one function serves a single
discriminator and an ensemble (SoundStream's STFT + 3 waveform discriminators):
  * an array of logits (any shape, e.g. [B, T'] or [B, T', F']);
  * a list/tuple of logits arrays, one per discriminator;
  * a list/tuple of `(logits, [feature maps])` pairs, one per discriminator, which is what
    `avdit.models.soundstream`'s discriminators return (a bare pair is accepted too).
Every loss is the mean over discriminators of that discriminator's mean over its logits'
elements (SoundStream: 1/K Σ_k 1/T_k Σ_t ...), so discriminators with different output lengths
weigh the same. Losses are float32 scalars.

Formulas (r = real logits, f = fake logits, means over elements):
  hinge_discriminator_loss         mean relu(1 − r) + mean relu(1 + f)
  hinge_generator_loss             mean relu(1 − f)   (SoundStream's L_G^adv, which saturates
                                   once f > 1)
  linear_generator_loss            −mean f            (the BigGAN/VQGAN "hinge" generator loss)
  non_saturating_discriminator_loss mean softplus(−r) + mean softplus(f)
  non_saturating_generator_loss    mean softplus(−f) = −mean log sigmoid(f)
  lecam_regularization             mean relu(r − α_F)² + mean relu(α_R − f)²  (Tseng et al. 2021,
                                   as in their released code; the paper writes the unclipped
                                   ‖r − α_F‖² + ‖f − α_R‖²) with α_R, α_F EMAs of the mean real
                                   and fake logits, treated as constants (`update_lecam_ema`).
  feature_matching_loss            mean over discriminators and layers of
                                   mean|F_real − F_fake| / mean|F_real| (normalize=True, the
                                   EnCodec "relative" form) or of mean|F_real − F_fake|
                                   (normalize=False, the SoundStream paper's L_feat, whose weight
                                   λ_feat = 100 was tuned for that unnormalized form). Real
                                   features are targets: gradients flow into the fake side only.
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp

Array = jax.Array


def _is_pair(item: Any) -> bool:
  """A `(logits, features)` pair: 2 items, the second a list/tuple of feature arrays."""
  return (isinstance(item, (list, tuple)) and len(item) == 2 and
          isinstance(item[1], (list, tuple)) and not isinstance(item[0], (list, tuple)))


def logits_list(outputs: Any) -> list[Array]:
  """The logits of each discriminator from any accepted output form (module docstring)."""
  if _is_pair(outputs):
    return [outputs[0]]
  if isinstance(outputs, (list, tuple)):
    if not outputs:
      raise ValueError("empty list of discriminator outputs")
    return [item[0] if _is_pair(item) else item for item in outputs]
  return [outputs]


def features_list(outputs: Any) -> list[list[Array]]:
  """Per-discriminator feature lists from `(logits, features)` pairs, lists of feature lists, or a
  single discriminator's list of feature arrays."""
  if _is_pair(outputs):
    return [list(outputs[1])]
  if not isinstance(outputs, (list, tuple)) or not outputs:
    raise ValueError("features must be a non-empty list (of (logits, features) pairs, of "
                     "per-discriminator feature lists, or of one discriminator's features)")
  if all(_is_pair(item) for item in outputs):
    return [list(item[1]) for item in outputs]
  if all(isinstance(item, (list, tuple)) for item in outputs):
    return [list(item) for item in outputs]
  return [list(outputs)]


def _mean_over_discriminators(per_disc: Sequence[Array]) -> Array:
  return jnp.mean(jnp.stack([jnp.asarray(v, jnp.float32) for v in per_disc]))


def _paired(real_outputs: Any, fake_outputs: Any) -> list[tuple[Array, Array]]:
  real, fake = logits_list(real_outputs), logits_list(fake_outputs)
  if len(real) != len(fake):
    raise ValueError(f"{len(real)} real vs {len(fake)} fake discriminator outputs")
  return list(zip(real, fake))


def _f32(x: Array) -> Array:
  return jnp.asarray(x, jnp.float32)


def hinge_discriminator_loss(real_logits: Any, fake_logits: Any) -> Array:
  """mean relu(1 − r) + mean relu(1 + f), averaged over discriminators."""
  return _mean_over_discriminators([
      jnp.mean(jax.nn.relu(1.0 - _f32(r))) + jnp.mean(jax.nn.relu(1.0 + _f32(f)))
      for r, f in _paired(real_logits, fake_logits)])


def hinge_generator_loss(fake_logits: Any) -> Array:
  """SoundStream's generator loss mean relu(1 − f), averaged over discriminators."""
  return _mean_over_discriminators(
      [jnp.mean(jax.nn.relu(1.0 - _f32(f))) for f in logits_list(fake_logits)])


def linear_generator_loss(fake_logits: Any) -> Array:
  """−mean f (the generator side of the BigGAN/VQGAN hinge GAN), averaged over discriminators."""
  return _mean_over_discriminators([-jnp.mean(_f32(f)) for f in logits_list(fake_logits)])


def non_saturating_discriminator_loss(real_logits: Any, fake_logits: Any) -> Array:
  """Binary cross-entropy with logits: mean softplus(−r) + mean softplus(f)."""
  return _mean_over_discriminators([
      jnp.mean(jax.nn.softplus(-_f32(r))) + jnp.mean(jax.nn.softplus(_f32(f)))
      for r, f in _paired(real_logits, fake_logits)])


def non_saturating_generator_loss(fake_logits: Any) -> Array:
  """mean softplus(−f) = −mean log sigmoid(f), averaged over discriminators."""
  return _mean_over_discriminators(
      [jnp.mean(jax.nn.softplus(-_f32(f))) for f in logits_list(fake_logits)])


def _per_disc_ema(ema: Array, k: int, name: str) -> list[Array]:
  """A scalar EMA shared by all k discriminators, or one EMA per discriminator ([k])."""
  ema = jax.lax.stop_gradient(_f32(ema))
  if ema.ndim == 0:
    return [ema] * k
  if ema.shape != (k,):
    raise ValueError(f"{name} must be a scalar or have shape [{k}], got {tuple(ema.shape)}")
  return [ema[i] for i in range(k)]


def lecam_regularization(real_logits: Any, fake_logits: Any, ema_real: Array,
                         ema_fake: Array) -> Array:
  """LeCAM: mean relu(r − ema_fake)² + mean relu(ema_real − f)², averaged over discriminators.

  A discriminator-side regularizer (added with a weight, ~0.001–0.3, to the discriminator loss);
  the EMAs are constants here. They are scalars, or arrays [K] with one per discriminator.
  """
  pairs = _paired(real_logits, fake_logits)
  alpha_real = _per_disc_ema(ema_real, len(pairs), "ema_real")
  alpha_fake = _per_disc_ema(ema_fake, len(pairs), "ema_fake")
  return _mean_over_discriminators([
      jnp.mean(jnp.square(jax.nn.relu(_f32(r) - a_f))) +
      jnp.mean(jnp.square(jax.nn.relu(a_r - _f32(f))))
      for (r, f), a_r, a_f in zip(pairs, alpha_real, alpha_fake)])


def update_lecam_ema(ema_real: Array, ema_fake: Array, real_logits: Any, fake_logits: Any,
                     decay: float = 0.99) -> tuple[Array, Array]:
  """New (ema_real, ema_fake) = decay·ema + (1 − decay)·mean logits (no gradient).

  Scalar EMAs track the mean over discriminators of each one's mean logit; EMAs of shape [K]
  track each discriminator separately. Carry them in the train state (not the optimizer).
  """
  pairs = _paired(real_logits, fake_logits)
  real_means = jnp.stack([jnp.mean(_f32(r)) for r, _ in pairs])
  fake_means = jnp.stack([jnp.mean(_f32(f)) for _, f in pairs])
  ema_real, ema_fake = _f32(ema_real), _f32(ema_fake)
  if ema_real.ndim == 0:
    real_means, fake_means = jnp.mean(real_means), jnp.mean(fake_means)
  new_real = decay * ema_real + (1.0 - decay) * real_means
  new_fake = decay * ema_fake + (1.0 - decay) * fake_means
  return jax.lax.stop_gradient(new_real), jax.lax.stop_gradient(new_fake)


def feature_matching_loss(real_features: Any, fake_features: Any, *, normalize: bool = True,
                          eps: float = 1e-8) -> Array:
  """Mean over discriminators of the mean over layers of the (relative) L1 feature distance.

  Per layer: mean|F_real − F_fake| / (mean|F_real| + eps) with `normalize` (EnCodec's form), else
  mean|F_real − F_fake| (SoundStream paper). Real features get a stop-gradient. Accepts lists of
  (logits, features) pairs, lists of per-discriminator feature lists, or one feature list.
  """
  real, fake = features_list(real_features), features_list(fake_features)
  if len(real) != len(fake) or any(len(r) != len(f) for r, f in zip(real, fake)):
    raise ValueError("real and fake features differ in structure: "
                     f"{[len(r) for r in real]} vs {[len(f) for f in fake]} layers")
  per_disc = []
  for layers_real, layers_fake in zip(real, fake):
    per_layer = []
    for feat_real, feat_fake in zip(layers_real, layers_fake):
      if feat_real.shape != feat_fake.shape:
        raise ValueError(f"feature shapes differ: {feat_real.shape} vs {feat_fake.shape}")
      target = jax.lax.stop_gradient(_f32(feat_real))
      distance = jnp.mean(jnp.abs(target - _f32(feat_fake)))
      if normalize:
        distance = distance / (jnp.mean(jnp.abs(target)) + eps)
      per_layer.append(distance)
    per_disc.append(jnp.mean(jnp.stack(per_layer)))
  return _mean_over_discriminators(per_disc)
