"""Fine-tuning: `train.init_from=DIR[:step]` starts a new run from another run's weights."""
import jax
import numpy as np
import pytest

from avdit import checkpointing
from avdit import layout as layout_lib
from avdit.errors import UserError
from avdit.training import state as state_lib
from avdit.training import train

SOURCE_STEPS = 2


def _leaves(tree):
  return jax.tree_util.tree_leaves(jax.device_get(tree))


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
  """A tiny run trained SOURCE_STEPS steps: (its directory, its saved state)."""
  from configs import avdit_synthetic
  config = avdit_synthetic.get_config("tiny")
  config.train.update(num_steps=SOURCE_STEPS, checkpoint_every=SOURCE_STEPS)
  workdir = str(tmp_path_factory.mktemp("source"))
  train.train(config, workdir)
  layout = layout_lib.layout_from_config(config)
  abstract = state_lib.abstract_train_state(config, layout)[1]
  fields = ("step", "params", "opt_state", "ema_params")
  saved = abstract.replace(**checkpointing.restore_subtrees(
      workdir, SOURCE_STEPS, {name: getattr(abstract, name) for name in fields}))
  return workdir, saved


def test_sampling_restores_the_ema_or_the_raw_parameters_alone(source_run):
  from configs import avdit_synthetic
  from avdit.models import avdit as avdit_model
  workdir, saved = source_run
  config = avdit_synthetic.get_config("tiny")
  abstract = avdit_model.abstract_params(config.model, layout_lib.layout_from_config(config))[1]
  for ema, expected in ((True, saved.ema_params), (False, saved.params)):
    params, payload, step = checkpointing.restore_for_sampling(workdir, abstract, ema=ema)
    assert step == SOURCE_STEPS and payload["latent_space"] == config.latent.name
    for a, b in zip(_leaves(params), _leaves(expected), strict=True):
      np.testing.assert_array_equal(a, b)


def test_init_from_takes_params_and_ema_with_a_fresh_optimizer_at_step_0(source_run,
                                                                          tiny_config, tmp_path):
  source, saved = source_run
  tiny_config.train.init_from = f"{source}:{SOURCE_STEPS}"
  summary = train.train(tiny_config, str(tmp_path), steps_this_run=0)  # the initial state
  state = summary["state"]
  for ours, theirs in ((state.params, saved.params), (state.ema_params, saved.ema_params)):
    for a, b in zip(_leaves(ours), _leaves(theirs), strict=True):
      np.testing.assert_array_equal(a, b)
  # Two trained steps moved the EMA off the parameters: both were taken, not one twice.
  assert any(not np.array_equal(a, b) for a, b in zip(_leaves(saved.params),
                                                      _leaves(saved.ema_params)))
  assert int(state.step) == 0 and int(saved.step) == SOURCE_STEPS
  fresh = state_lib.make_optimizer(tiny_config.train).init(state.params)
  for a, b in zip(_leaves(state.opt_state), _leaves(fresh), strict=True):
    np.testing.assert_array_equal(a, b)  # zero moments and count
  assert any(np.any(x != 0) for x in _leaves(saved.opt_state))  # the source's were not


def test_run_spec_names_the_latest_or_a_step():
  assert checkpointing.parse_run_spec("/runs/a") == ("/runs/a", -1)
  assert checkpointing.parse_run_spec("/runs/a:1200") == ("/runs/a", 1200)
  assert checkpointing.parse_run_spec("gs://bucket/run") == ("gs://bucket/run", -1)
  assert checkpointing.parse_run_spec("gs://bucket/run:7") == ("gs://bucket/run", 7)


def test_a_model_of_another_shape_is_refused_before_training(source_run, tiny_config, tmp_path):
  source, _ = source_run
  tiny_config.train.init_from = source
  tiny_config.model.width = 32  # the source's is 64
  with pytest.raises(UserError, match=r"parameter adaln_base/bias is \(384,\) there and "
                                      r"\(192,\) here"):
    train.train(tiny_config, str(tmp_path))
  assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())
  tiny_config.train.init_from = f"{source}:99"
  with pytest.raises(UserError, match=r"init_from=.*:99: no checkpoint for step 99"):
    train.check_init_from(tiny_config, None)
