"""One way to build a run (training/setup.py): an abstract run has the shapes of the real one."""
import jax
import numpy as np

from avdit.data import pipeline
from avdit.models import latent_space as latent_lib
from avdit.training import setup as setup_lib


def _shapes(tree):
  return jax.tree.map(lambda x: (tuple(x.shape), np.dtype(x.dtype)), tree)


def test_abstract_run_has_the_shapes_of_the_run_it_stands_for(tiny_config):
  config = tiny_config.copy_and_resolve_references()
  config.latent.update(whiten="video", whiten_rank=8, stats_clips=4)
  real = setup_lib.setup_train(config, None)
  abstract = setup_lib.setup_train(config, None, abstract=True)
  assert _shapes(abstract.state) == _shapes(real.state)
  assert isinstance(jax.tree.leaves(abstract.state)[0], jax.ShapeDtypeStruct)
  assert abstract.num_params == real.num_params > 0
  assert abstract.flops_per_step == real.flops_per_step > 0
  assert not real.precomputed_latents and real.state_shardings is None

  # The step's batch: what the trainer's iterator gives for its model inputs.
  batch = next(pipeline.make_train_iterator(config.data, real.layout))
  assert _shapes(real.shaped_inputs()) == _shapes(
      {k: batch[k] for k in setup_lib.MODEL_INPUTS})

  # Placeholder statistics have the estimated ones' keys and shapes (the whitening included).
  estimated = setup_lib.estimate_latent_stats(config, real.layout, real.latent_space)
  placeholder = setup_lib.placeholder_stats(config, real.layout)
  assert "video_directions" in placeholder
  assert _shapes(placeholder) == _shapes(
      {k: v for k, v in estimated.items() if not k.endswith("_normalized_var")})


def test_abstract_learned_latents_run_on_precomputed_latents(tiny_config):
  """No autoencoders to load ahead of time: the step takes their latents, as on a latent cache."""
  config = tiny_config.copy_and_resolve_references()
  config.latent.update(name="learned", video_autoencoder_workdir="/nonexistent",
                       audio_autoencoder_workdir="/nonexistent")
  abstract = setup_lib.setup_train(config, None, abstract=True)
  assert abstract.latent_space is None and abstract.precomputed_latents
  assert isinstance(abstract.step_latent_space, latent_lib.PrecomputedLatents)
  assert _shapes(abstract.shaped_inputs()) == {
      k: (tuple(v), np.dtype(np.float32))
      for k, v in abstract.layout.latent_shapes(config.data.batch_size).items()}
