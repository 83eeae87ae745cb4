"""CDL and CDCD as terms of the training objective: switched by config, logged, differentiable."""
import jax
import numpy as np
import pytest
from flax import nnx

from avdit import layout as layout_lib
from avdit.diffusion import cdcd
from avdit.diffusion import cdl
from avdit.diffusion import loss as loss_lib
from avdit.diffusion import monl
from avdit.diffusion import schedule as schedule_lib
from avdit.models import latent_space as latent_lib
from avdit.training import state as state_lib


@pytest.fixture
def config(tiny_config):
  with tiny_config.unlocked():
    tiny_config.data.batch_size = 4
  return tiny_config


@pytest.mark.slow  # compiles the whole train step with the extra terms: ~50 s on 2 cores
@pytest.mark.parametrize("with_cdl", [False, True])
def test_contrastive_terms_add_to_the_loss_and_are_logged(config, with_cdl):
  with config.unlocked():
    config.diffusion.update(cdl_weight=1e-4 if with_cdl else 0.0, cdl_logsnr_samples=1,
                            cdcd_weight=0.05, cdcd_num_negatives=2, cdcd_negatives="mixed")
  layout = layout_lib.layout_from_config(config)
  latent_space = latent_lib.make_latent_space(config, layout)
  graphdef, state = state_lib.create_train_state(config, layout)
  stats = {f"{k}_{s}": np.full(n, 0.0 if s == "mean" else 1.0, np.float32)
           for k, n in (("video", layout.video_channels), ("audio", layout.audio_channels))
           for s in ("mean", "std")}
  rng = np.random.default_rng(0)
  batch = {"video": rng.integers(0, 256, (4, layout.num_frames, layout.height, layout.width, 3),
                                 dtype=np.uint8),
           "audio": rng.uniform(-0.5, 0.5, (4, layout.audio_samples)).astype(np.float32)}
  # The MoNL part alone, computed eagerly on the step's rng (step 0) and parameters.
  from flax import nnx
  latents = latent_lib.normalize(latent_space.encode(batch["video"], batch["audio"]), stats)
  monl_loss, _ = loss_lib.diffusion_loss(
      nnx.merge(graphdef, state.params), latents,
      jax.random.fold_in(jax.random.key(config.seed), 0),
      schedule=schedule_lib.from_config(config.diffusion), layout=layout,
      mixture_weights=monl.parse_mixture(config.diffusion.noise_mixture),
      prediction=config.diffusion.prediction, self_condition=config.model.self_condition,
      self_condition_rate=config.diffusion.self_condition_rate)
  step = state_lib.make_train_step(config, layout, graphdef, latent_space, stats)
  _, metrics = step(state, batch)
  metrics = jax.device_get(metrics)
  np.testing.assert_allclose(metrics["loss_monl"], monl_loss, rtol=1e-5)
  expected = metrics["loss_monl"] + 0.05 * metrics["cdcd_loss"]
  if with_cdl:
    expected += 1e-4 * metrics["cdl_loss"]
    assert metrics["cdl_extra_denoiser_evaluations"] == 2 * 1  # 2K passes over the batch
  else:
    assert "cdl_loss" not in metrics
  np.testing.assert_allclose(metrics["loss"], expected, rtol=1e-5)
  assert metrics["cdcd_extra_denoiser_evaluations"] == 2  # N passes over the batch
  assert np.isfinite(metrics["loss"]) and metrics["grad_norm"] > 0


def _model_and_latents(config):
  """(layout, the tiny AVDiT, random latents of 4 clips, rng, schedule, MoNL mixture)."""
  from flax import nnx
  layout = layout_lib.layout_from_config(config)
  graphdef, state = state_lib.create_train_state(config, layout)
  rng = jax.random.key(3)
  latents = {k: jax.random.normal(jax.random.fold_in(rng, i), s)
             for i, (k, s) in enumerate(layout.latent_shapes(4).items())}
  return (layout, nnx.merge(graphdef, state.params), latents, rng,
          schedule_lib.from_config(config.diffusion), monl.parse_mixture("monl"))


def test_contrastive_terms_function_matches_its_parts(config):
  layout, model, latents, rng, schedule, mixture = _model_and_latents(config)
  with config.unlocked():
    config.diffusion.update(cdcd_weight=2.0, cdcd_num_negatives=3, cdcd_negatives="inter",
                            cdcd_variant="sample")

  @nnx.jit  # both sides in one program: eagerly, every op of the model compiles on its own
  def both(model, latents, rng):
    total, aux = loss_lib.contrastive_terms(
        model, latents, rng, diffusion_config=config.diffusion, schedule=schedule,
        layout=layout, mixture_weights=mixture)
    _, cdcd_rng = jax.random.split(rng)
    value, _ = cdcd.cdcd_loss(model, latents, cdcd_rng, schedule=schedule, layout=layout,
                              num_negatives=3, negative_kind="inter", variant="sample",
                              mask_kinds=("a2v", "v2a", "continue"), temperature=0.1,
                              prediction=config.diffusion.prediction)
    return total, aux, value

  total, aux, value = both(model, latents, rng)
  # Off switches are honoured (no CDL metrics) and the CDCD part is the module's own loss.
  assert not any(k.startswith("cdl") for k in aux)
  np.testing.assert_allclose(total, 2.0 * value, rtol=1e-6)


@pytest.mark.slow  # eager CDL through the tiny AVDiT: ~15 s
def test_contrastive_terms_with_cdl_match_their_parts(config):
  layout, model, latents, rng, schedule, mixture = _model_and_latents(config)
  cdl_rng, cdcd_rng = jax.random.split(rng)
  with config.unlocked():
    config.diffusion.update(cdcd_weight=2.0, cdcd_num_negatives=3, cdcd_negatives="inter",
                            cdcd_variant="sample")
  value, _ = cdcd.cdcd_loss(model, latents, cdcd_rng, schedule=schedule, layout=layout,
                            num_negatives=3, negative_kind="inter", variant="sample",
                            mask_kinds=("a2v", "v2a", "continue"), temperature=0.1,
                            prediction=config.diffusion.prediction)
  # With CDL on too: the weighted sum of both modules' losses, each on its own rng.
  with config.unlocked():
    config.diffusion.update(cdl_weight=0.5, cdl_logsnr_samples=1, cdl_zeta_range=(2.0, 6.0),
                            cdl_logsnr_max=9.0)
  total, aux = loss_lib.contrastive_terms(
      model, latents, rng, diffusion_config=config.diffusion, schedule=schedule, layout=layout,
      mixture_weights=mixture)
  cdl_value, _ = cdl.avdit_cdl_loss(model, latents, cdl_rng, schedule=schedule, layout=layout,
                                    num_logsnr_samples=1, zeta_range=(2.0, 6.0), logsnr_max=9.0,
                                    mixture_weights=mixture,
                                    prediction=config.diffusion.prediction)
  np.testing.assert_allclose(total, 0.5 * cdl_value + 2.0 * value, rtol=1e-5)
  assert aux["cdl_extra_denoiser_evaluations"] == 2
