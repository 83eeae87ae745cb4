"""Forward noising against closed forms; the MoNL loss with an oracle denoiser."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from avdit import layout as layout_lib
from avdit.diffusion import loss as loss_lib
from avdit.diffusion import monl
from avdit.diffusion import schedule as schedule_lib

LAYOUT = layout_lib.ClipLayout(num_frames=9, fps=8.0, height=16, width=16, sample_rate=16000,
                               video_channels=3, audio_channels=2)


def test_alpha_bar_table_against_loop():
  sched = schedule_lib.LinearSchedule()
  expected, running = [1.0], 1.0
  for i in range(1, 1001):
    running *= 1.0 - (1e-4 + (0.02 - 1e-4) * (i - 1) / 999)
    expected.append(running)
  np.testing.assert_allclose(sched.alpha_bar_table, expected, rtol=1e-12)
  assert sched.alpha_bar_table[1000] == pytest.approx(4.04e-5, rel=0.01)  # DDPM's ᾱ_T


def test_per_element_noising_moments():
  """x_t | x0 ~ N(sqrt(ᾱ) x0, 1 - ᾱ) with each element's own ᾱ (audio via segment_of_audio)."""
  sched = schedule_lib.LinearSchedule()
  n = LAYOUT.num_segments
  t = np.array([[[10, 500, 990], [990, 200, 1]]], np.int32)  # [1, M, N]
  batch = 20000
  x0 = {"video": jnp.full((batch, n, 2, 2, 3), 1.5), "audio": jnp.full((batch, 57, 2), -0.7)}
  noisy, _, _ = loss_lib.noise_latents(x0, jnp.broadcast_to(t, (batch, 2, n)),
                                       jax.random.key(0), schedule=sched, layout=LAYOUT)
  table = sched.alpha_bar_table
  for seg in range(n):
    ab = table[t[0, 0, seg]]
    vals = np.asarray(noisy["video"][:, seg]).ravel()
    assert abs(vals.mean() - np.sqrt(ab) * 1.5) < 5 * np.sqrt((1 - ab) / vals.size) + 1e-6
    assert vals.var() == pytest.approx(1 - ab, rel=0.03, abs=1e-6)
  for j in (0, 5, 6, 30, 56):
    ab = table[t[0, 1, LAYOUT.segment_of_audio[j]]]
    vals = np.asarray(noisy["audio"][:, j]).ravel()
    assert abs(vals.mean() - np.sqrt(ab) * -0.7) < 5 * np.sqrt((1 - ab) / vals.size) + 1e-6
    assert vals.var() == pytest.approx(1 - ab, rel=0.03, abs=1e-6)


class OracleModel:
  """Knows x0, so it can return the exact ε (or v) from x_t and the timestep vector it is given.

  If the loss noised with other timesteps than it passes to the model, this oracle would be wrong.
  """

  def __init__(self, x0, prediction):
    self.x0, self.prediction, self.calls = x0, prediction, []

  def __call__(self, noisy, t_bmn, self_cond):
    self.calls.append(self_cond)
    ab = LAYOUT.expand_to_latents(schedule_lib.LinearSchedule().alpha_bar(t_bmn.astype(jnp.int32)))
    out = {}
    for k, x_t in noisy.items():
      eps = (x_t - jnp.sqrt(ab[k]) * self.x0[k]) / jnp.sqrt(1 - ab[k])
      out[k] = {"eps": eps, "x0": self.x0[k],
                "v": jnp.sqrt(ab[k]) * eps - jnp.sqrt(1 - ab[k]) * self.x0[k]}[self.prediction]
    return out


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_oracle_has_zero_loss_and_zero_model_has_unit_loss(prediction):
  rng = np.random.default_rng(0)
  x0 = {"video": jnp.asarray(rng.normal(size=(8, 3, 2, 2, 3)), jnp.float32),
        "audio": jnp.asarray(rng.normal(size=(8, 57, 2)), jnp.float32)}
  kwargs = dict(schedule=schedule_lib.LinearSchedule(), layout=LAYOUT,
                mixture_weights=monl.parse_mixture("monl"), prediction=prediction,
                self_condition=False, self_condition_rate=0.9)
  loss, aux = loss_lib.diffusion_loss(OracleModel(x0, prediction), x0, jax.random.key(1), **kwargs)
  assert float(loss) < 1e-6
  zero = lambda noisy, t, sc: jax.tree_util.tree_map(jnp.zeros_like, noisy)
  big = {k: jnp.tile(v, (64,) + (1,) * (v.ndim - 1)) for k, v in x0.items()}
  loss0, _ = loss_lib.diffusion_loss(zero, big, jax.random.key(2), **kwargs)
  if prediction == "eps":  # E[ε²] = 1
    assert float(loss0) == pytest.approx(1.0, abs=0.02)
  elif prediction == "x0":  # E[x0²]
    expected = sum(float(jnp.sum(v**2)) for v in big.values()) / sum(v.size for v in big.values())
    assert float(loss0) == pytest.approx(expected, rel=1e-4)
  else:  # E[v²] = ᾱ + (1-ᾱ) E[x0²] with E[x0²] ≈ 1
    assert float(loss0) == pytest.approx(1.0, abs=0.1)
  assert set(aux) >= {"loss_video", "loss_audio", "strategy_fraction_pt"}


@pytest.mark.parametrize("rate", [0.0, 1.0])
def test_self_conditioning_feeds_previous_estimate(rate):
  rng = np.random.default_rng(0)
  x0 = {"video": jnp.asarray(rng.normal(size=(4, 3, 2, 2, 3)), jnp.float32),
        "audio": jnp.asarray(rng.normal(size=(4, 57, 2)), jnp.float32)}
  model = OracleModel(x0, "eps")
  loss_lib.diffusion_loss(model, x0, jax.random.key(3), schedule=schedule_lib.LinearSchedule(),
                          layout=LAYOUT, mixture_weights=monl.parse_mixture("monl"),
                          prediction="eps", self_condition=True, self_condition_rate=rate)
  assert model.calls[0] is None and len(model.calls) == 2
  for k in x0:
    expected = x0[k] if rate == 1.0 else jnp.zeros_like(x0[k])  # the oracle's x̂0 is x0
    np.testing.assert_allclose(np.asarray(model.calls[1][k]), np.asarray(expected), atol=2e-2)


@pytest.mark.parametrize("parameterization", ["eps", "v", "x0"])
def test_prediction_conversions_recover_x0_and_eps(parameterization):
  """Each parameterization's exact target converts back to the (x0, ε) that made x_t."""
  rng = np.random.default_rng(4)
  x0 = rng.normal(size=(5, 7))
  eps = rng.normal(size=(5, 7))
  alpha_bar = np.array([1.0, 0.999, 0.5, 1e-3, 4e-5])[:, None]
  x_t = np.sqrt(alpha_bar) * x0 + np.sqrt(1 - alpha_bar) * eps
  target = {"eps": eps, "x0": x0,
            "v": np.sqrt(alpha_bar) * eps - np.sqrt(1 - alpha_bar) * x0}[parameterization]
  x0_hat, eps_hat = schedule_lib.prediction_to_x0_eps(
      jnp.asarray(target, jnp.float32), jnp.asarray(x_t, jnp.float32),
      jnp.asarray(alpha_bar, jnp.float32), parameterization)
  # At ᾱ = 1 (the clean condition) x_t = x0 and no parameterization can recover ε; x0 is exact.
  np.testing.assert_allclose(x0_hat[0], x0[0], atol=1e-6)
  tol = {"eps": 5e-2, "v": 1e-4, "x0": 1e-4}[parameterization]  # eps: /sqrt(ᾱ_T) amplifies
  np.testing.assert_allclose(x0_hat[1:], x0[1:], atol=tol, rtol=1e-3)
  np.testing.assert_allclose(eps_hat[1:], eps[1:], atol=2e-3 if parameterization == "x0" else 1e-4)
  if parameterization == "x0":
    assert np.all(np.asarray(eps_hat[0]) == 0.0)
  with pytest.raises(ValueError, match="unknown prediction"):
    schedule_lib.prediction_to_x0_eps(target, x_t, alpha_bar, "score")


def test_conditioning_sets_a_task_pattern_clean_in_the_drawn_fraction():
  t = jnp.full((20000, 2, 5), 500, jnp.int32)
  new_t, given = monl.apply_conditioning(jax.random.key(0), t, 0.3)
  given, new_t = np.asarray(given), np.asarray(new_t)
  np.testing.assert_array_equal(new_t, np.where(given, 0, 500))
  used = given.any(axis=(1, 2))
  assert used.mean() == pytest.approx(0.3, abs=0.015)
  a2v = given[used][:, 1].all(1) & ~given[used][:, 0].any(1)
  v2a = given[used][:, 0].all(1) & ~given[used][:, 1].any(1)
  # Continuation: a prefix of k = 1..4 segments, the same for both modalities.
  first_free = np.argmin(given[used][:, 0], axis=1)
  prefix = np.arange(5)[None] < first_free[:, None]
  cont = ((given[used][:, 0] == prefix) & (given[used][:, 1] == prefix)).all(1) & ~a2v & ~v2a
  assert np.all(a2v | v2a | cont)
  for kind in (a2v, v2a, cont):
    assert kind.mean() == pytest.approx(1 / 3, abs=0.03)


def test_shared_level_gives_the_generated_elements_of_a_conditioned_example_one_level():
  rng = np.random.default_rng(2)
  t = jnp.asarray(rng.integers(1, 1001, (20000, 2, 5)), jnp.int32)  # MoNL-like mixed levels
  new_t, given = monl.apply_conditioning(jax.random.key(1), t, 0.4, shared_level=True,
                                         num_timesteps=1000)
  t, new_t, given = np.asarray(t), np.asarray(new_t), np.asarray(given)
  used = given.any(axis=(1, 2))
  assert used.mean() == pytest.approx(0.4, abs=0.015)
  np.testing.assert_array_equal(new_t[given], 0)
  np.testing.assert_array_equal(new_t[~used], t[~used])  # unconditioned: MoNL levels kept
  generated = np.where(given[used], -1, new_t[used])  # -1 marks the given elements
  level = generated.max(axis=(1, 2))
  assert np.all((generated == -1) | (generated == level[:, None, None]))
  # One uniform level per example over 1..T: the moments of the discrete uniform.
  assert level.min() >= 1 and level.max() <= 1000
  assert level.mean() == pytest.approx(500.5, rel=0.02)
  assert level.std() == pytest.approx(np.sqrt((1000**2 - 1) / 12), rel=0.03)


def test_condition_tasks_weight_the_patterns():
  t = jnp.full((30000, 2, 5), 500, jnp.int32)
  weights = monl.parse_condition_tasks("v2a:3,continue")
  np.testing.assert_allclose(weights, [0.0, 0.75, 0.25, 0.0])
  _, given = monl.apply_conditioning(jax.random.key(3), t, 1.0, task_weights=weights)
  given = np.asarray(given)
  video_only = given[:, 0].all(1) & ~given[:, 1].any(1)
  audio_only = given[:, 1].all(1) & ~given[:, 0].any(1)
  assert video_only.mean() == pytest.approx(0.75, abs=0.01)
  assert not audio_only.any()  # a2v has weight 0
  # Continuation (the rest) spreads its weight evenly over the prefixes k = 1..4.
  prefix_length = given[~video_only, 0].sum(1)
  np.testing.assert_allclose(np.bincount(prefix_length, minlength=5)[1:] / len(given),
                             0.25 / 4, atol=0.006)
  with pytest.raises(ValueError, match="unknown condition task"):
    monl.parse_condition_tasks("t2v")


def test_inpainting_gives_both_ends_of_both_modalities():
  t = jnp.full((30000, 2, 5), 500, jnp.int32)
  weights = monl.parse_condition_tasks("a2v:2,v2a:2,continue:1,inpaint:1")
  np.testing.assert_allclose(weights, [1 / 3, 1 / 3, 1 / 6, 1 / 6])
  _, given = monl.apply_conditioning(jax.random.key(4), t, 1.0, task_weights=weights)
  given = np.asarray(given)
  same = (given[:, 0] == given[:, 1]).all(1)  # not a2v or v2a
  assert same.mean() == pytest.approx(1 / 3, abs=0.01)
  video = given[same, 0]
  # A continuation is one given run at the start, an inpainting one at the start and one at the
  # end: the rises from generated to given and the ends tell them apart.
  ends = video[:, -1]
  rises = (np.diff(video.astype(int), axis=1) == 1).sum(1)
  assert video[:, 0].all()  # both give the first segment
  inpaint = ends & (rises == 1) & ~video.all(1)
  continuation = ~ends & (rises == 0)
  assert np.all(inpaint | continuation)
  assert inpaint.mean() == pytest.approx(1 / 2, abs=0.02)
  # The six (k, j) patterns with k + j <= 4 share inpainting's weight evenly.
  patterns, counts = np.unique(video[inpaint], axis=0, return_counts=True)
  assert len(patterns) == 6
  np.testing.assert_allclose(counts / len(given), 1 / 36, atol=0.004)
  with pytest.raises(ValueError, match="needs >= 3 segments"):
    monl.check_condition_weights(2, weights)


def test_task_weights_may_be_traced_and_draw_as_given():
  t = jnp.full((20000, 2, 5), 500, jnp.int32)
  before, after = monl.parse_condition_tasks("a2v"), monl.parse_condition_tasks("inpaint")

  @jax.jit
  def draw(step):  # the train step's pattern: the weights change at step 10
    weights = jnp.where(step >= 10, after, before)
    return monl.apply_conditioning(jax.random.key(5), t, 1.0, task_weights=weights)[1]

  early, late = np.asarray(draw(9)), np.asarray(draw(10))
  # a2v: the audio alone given, every example.
  assert np.all(early[:, 1].all(1) & ~early[:, 0].any(1))
  # Inpainting: both modalities, the first segment and the last given, the middle generated.
  assert np.all((late[:, 0] == late[:, 1]).all(1))
  assert np.all(late[:, 0, 0] & late[:, 0, -1] & ~late[:, 0, 1:-1].all(1))
  # The concrete weights draw exactly what the traced ones do.
  np.testing.assert_array_equal(
      late, monl.apply_conditioning(jax.random.key(5), t, 1.0, task_weights=after)[1])


def test_loss_covers_the_generated_elements_only():
  rng = np.random.default_rng(5)
  x0 = {"video": jnp.asarray(rng.normal(size=(16, 3, 2, 2, 3)), jnp.float32),
        "audio": jnp.asarray(rng.normal(size=(16, 57, 2)), jnp.float32)}
  kwargs = dict(schedule=schedule_lib.LinearSchedule(), layout=LAYOUT,
                mixture_weights=monl.parse_mixture("monl"), prediction="x0",
                self_condition=False, self_condition_rate=0.9, condition_rate=1.0)

  def off_by_one_where_generated(noisy, t_bmn, _):
    # x0 exactly on given elements (t = 0) would be free; +100 there must not count either.
    is_given = LAYOUT.expand_to_latents(t_bmn == 0)
    return {k: x0[k] + jnp.where(is_given[k], 100.0, 1.0) for k in noisy}

  loss, aux = loss_lib.diffusion_loss(off_by_one_where_generated, x0, jax.random.key(4), **kwargs)
  assert float(aux["condition_fraction"]) == 1.0
  assert float(loss) == pytest.approx(1.0, abs=1e-6)  # the mean over generated elements
  assert float(aux["loss_video"]) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("weighting,cap", [("snr_plus_one", 0.0), ("snr_plus_one", 5.0),
                                           ("video:snr_plus_one", 0.0)])
def test_snr_plus_one_weighs_each_error_by_one_over_one_minus_alpha_bar(weighting, cap):
  """An error of 1 on every generated element: the loss is the mean of 1 / (1 - ᾱ_t) over them
  (at most `cap` when it is > 0; 1 for audio under "video:..."), recomputed in numpy from the
  timesteps the model was called with (given elements excluded)."""
  rng = np.random.default_rng(6)
  x0 = {"video": jnp.asarray(rng.normal(size=(16, 3, 2, 2, 3)), jnp.float32),
        "audio": jnp.asarray(rng.normal(size=(16, 57, 2)), jnp.float32)}
  seen = []

  def off_by_one(noisy, t_bmn, _):
    seen.append(t_bmn)
    return {k: x0[k] + 1.0 for k in noisy}

  loss, _ = loss_lib.diffusion_loss(
      off_by_one, x0, jax.random.key(7), schedule=schedule_lib.LinearSchedule(), layout=LAYOUT,
      mixture_weights=monl.parse_mixture("monl"), prediction="x0", self_condition=False,
      self_condition_rate=0.9, condition_rate=0.5, loss_weighting=weighting,
      loss_weight_cap=cap)
  t_bmn = np.asarray(seen[0]).astype(np.int64)
  betas = np.concatenate([[0.0], np.linspace(1e-4, 0.02, 1000)])
  alpha_bar_table = np.cumprod(1.0 - betas)
  weights, counts = 0.0, 0
  for m, per_element in ((0, LAYOUT.video_tokens_per_segment * 3), (1, None)):
    for n in range(LAYOUT.num_segments):
      elements = per_element or int((LAYOUT.segment_of_audio == n).sum()) * 2
      t = t_bmn[:, m, n]
      generated = t > 0
      weight = 1.0 / (1.0 - alpha_bar_table[t[generated]])
      weight = np.minimum(weight, cap) if cap else weight
      if m == 1 and weighting.startswith("video:"):
        weight = np.ones_like(weight)
      weights += elements * weight.sum()
      counts += elements * generated.sum()
  assert 0 < counts < 16 * (3 * 4 * 3 + 57 * 2)  # some elements given, some generated
  assert float(loss) == pytest.approx(weights / counts, rel=1e-4)
  with pytest.raises(ValueError, match="x0 error"):
    loss_lib.loss_weight("snr_plus_one", "v", jnp.ones(()))


def test_loss_weightings_per_modality():
  assert loss_lib.loss_weightings("snr_plus_one") == {"video": "snr_plus_one",
                                                      "audio": "snr_plus_one"}
  assert loss_lib.loss_weightings("video:snr_plus_one") == {"video": "snr_plus_one",
                                                            "audio": "uniform"}
  for bad in ("snr", "image:snr_plus_one", "video:snr"):
    with pytest.raises(ValueError, match="loss_weighting"):
      loss_lib.loss_weightings(bad)


def test_modality_balance_averages_the_two_modalities_mean_errors():
  """Errors of 1 on video and 3 on audio (9 squared): by element count the audio dominates; with
  modality_balance the loss is (1 + 9) / 2 whatever the counts."""
  rng = np.random.default_rng(8)
  x0 = {"video": jnp.asarray(rng.normal(size=(8, 3, 2, 2, 3)), jnp.float32),
        "audio": jnp.asarray(rng.normal(size=(8, 57, 2)), jnp.float32)}
  off = lambda noisy, t_bmn, _: {"video": x0["video"] + 1.0, "audio": x0["audio"] + 3.0}
  kwargs = dict(schedule=schedule_lib.LinearSchedule(), layout=LAYOUT,
                mixture_weights=monl.parse_mixture("vanilla"), prediction="x0",
                self_condition=False, self_condition_rate=0.9)
  pooled, _ = loss_lib.diffusion_loss(off, x0, jax.random.key(9), **kwargs)
  video_elements, audio_elements = 3 * 2 * 2 * 3, 57 * 2
  assert float(pooled) == pytest.approx(
      (video_elements * 1 + audio_elements * 9) / (video_elements + audio_elements), rel=1e-5)
  balanced, aux = loss_lib.diffusion_loss(off, x0, jax.random.key(9), modality_balance=True,
                                          **kwargs)
  assert float(balanced) == pytest.approx(5.0, rel=1e-5)
  assert float(aux["loss_video"]) == pytest.approx(1.0, rel=1e-5)
  assert float(aux["loss_audio"]) == pytest.approx(9.0, rel=1e-5)


def test_natural_loss_spectrum_measures_the_error_after_undoing_the_whitening():
  """loss_spectrum="natural" on whitened video: the loss equals the squared error mapped back
  through the whitening (denormalize's rotation and scales, a second code path) over the mean
  direction variance; "normalized" is the plain mean; unwhitened stats are refused."""
  from avdit.models import latent_space  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(3)
  mixed = rng.normal(size=(4000, 3)) * np.array([5.0, 1.0, 0.2]) @ np.linalg.qr(
      rng.normal(size=(3, 3)))[0]
  stats = latent_space.estimate_stats({"video": mixed.reshape(100, 40, 3)}, whiten=("video",),
                                      whiten_rank=2)
  x0 = {"video": jnp.asarray(rng.normal(size=(8, 3, 2, 2, 3)), jnp.float32),
        "audio": jnp.asarray(rng.normal(size=(8, 57, 2)), jnp.float32)}
  error = rng.normal(size=x0["video"].shape).astype(np.float32)
  off = lambda noisy, t_bmn, _: {"video": x0["video"] + error, "audio": x0["audio"]}
  kwargs = dict(schedule=schedule_lib.LinearSchedule(), layout=LAYOUT,
                mixture_weights=monl.parse_mixture("vanilla"), prediction="x0",
                self_condition=False, self_condition_rate=0.9)
  config = ml_collections.ConfigDict(dict(loss_spectrum="natural"))
  weights = loss_lib.loss_channel_weights(config, stats)
  _, aux = loss_lib.diffusion_loss(off, x0, jax.random.key(2), channel_weights=weights, **kwargs)
  unscaled = {"video_directions": stats["video_directions"],
              "video_direction_std": stats["video_direction_std"],
              "video_mean": np.zeros(3, np.float32), "video_std": np.ones(3, np.float32)}
  natural = np.asarray(latent_space.denormalize({"video": error}, unscaled)["video"])
  expected = np.mean(natural ** 2) / np.mean(stats["video_direction_std"] ** 2)
  assert float(aux["loss_video"]) == pytest.approx(expected, rel=1e-4)
  assert weights["video"][0] > 5 * weights["video"][2]  # the strongest direction weighs most
  config.loss_spectrum = "mixed"  # half the plain error, half the natural one
  _, mixed = loss_lib.diffusion_loss(off, x0, jax.random.key(2), **kwargs,
                                     channel_weights=loss_lib.loss_channel_weights(config, stats))
  assert float(mixed["loss_video"]) == pytest.approx((np.mean(error ** 2) + expected) / 2,
                                                      rel=1e-4)
  config.loss_spectrum = "normalized"
  assert loss_lib.loss_channel_weights(config, stats) is None
  config.loss_spectrum = "natural"
  with pytest.raises(ValueError, match="whitened"):
    loss_lib.loss_channel_weights(config, {"video_mean": np.zeros(3)})
  config.loss_spectrum = "pixels"
  with pytest.raises(ValueError, match="loss_spectrum"):
    loss_lib.loss_channel_weights(config, stats)
