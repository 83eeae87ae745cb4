"""CDCD on continuous latents: InfoNCE, negatives and the full loss against numpy (SPEC §7)."""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from avdit import layout as layout_lib
from avdit.diffusion import cdcd
from avdit.diffusion import schedule as schedule_lib

# 5 segments (audio segment lengths 6, 25, 25, 25, 26) with 1x1 video latents: paper timing.
LAYOUT5 = layout_lib.ClipLayout(num_frames=17, fps=8.0, height=8, width=8, sample_rate=16000,
                                video_channels=2, audio_channels=2)
# 3 segments (6, 25, 26 audio latents), 2x2 video latents.
LAYOUT3 = layout_lib.ClipLayout(num_frames=9, fps=8.0, height=16, width=16, sample_rate=16000,
                                video_channels=2, audio_channels=2)
SCHEDULE = schedule_lib.LinearSchedule()
# One batch/negatives geometry for the full-loss tests, so eager ops compile once for all of them.
BATCH, NUM_NEG = 6, 4


def _key(seed):
  # rbg keys: the same API as threefry keys but several times cheaper to compile on CPU.
  return jax.random.key(seed, impl="rbg")


def _latents(layout, batch, seed):
  rng = np.random.default_rng(seed)
  return {k: rng.normal(size=s).astype(np.float32) for k, s in layout.latent_shapes(batch).items()}


# --- InfoNCE ------------------------------------------------------------------------------------
def _numpy_info_nce(errors, positive, temperature):
  logits = -np.asarray(errors, np.float64) / temperature
  top = logits.max(axis=1, keepdims=True)
  log_sum_exp = top[:, 0] + np.log(np.sum(np.exp(logits - top), axis=1))
  return float(np.mean(log_sum_exp - logits[:, positive]))


@pytest.mark.parametrize("positive,temperature", [(0, 0.1), (3, 1.0), (1, 0.02)])
def test_info_nce_matches_numpy(positive, temperature):
  errors = np.random.default_rng(positive).uniform(0.2, 1.5, (7, 5)).astype(np.float32)
  got = float(cdcd.info_nce_from_errors(jnp.asarray(errors), positive, temperature))
  assert got == pytest.approx(_numpy_info_nce(errors, positive, temperature), rel=1e-5)
  # Equal errors: chance level log K; a much smaller positive error: ≈ 0.
  assert float(cdcd.info_nce_from_errors(np.ones((3, 5)), positive, temperature)) == (
      pytest.approx(math.log(5), rel=1e-6))
  separated = np.ones((3, 5))
  separated[:, positive] = 0.0
  assert float(cdcd.info_nce_from_errors(separated, positive, 0.01)) < 1e-6 * 5


@pytest.mark.parametrize("errors,positive,temperature", [
    (np.ones((4,)), 0, 1.0), (np.ones((4, 1)), 0, 1.0), (np.ones((4, 3)), 3, 1.0),
    (np.ones((4, 3)), 0, 0.0)])
def test_info_nce_bad_input(errors, positive, temperature):
  with pytest.raises(ValueError):
    cdcd.info_nce_from_errors(errors, positive, temperature)


# --- condition masks ----------------------------------------------------------------------------
def test_condition_masks_follow_the_documented_draw():
  n = LAYOUT5.num_segments
  masks = np.asarray(cdcd.sample_condition_masks(_key(0), 3000, LAYOUT5,
                                                 ("a2v", "v2a", "continue"), 2))
  a2v = np.all(masks[:, 1], axis=1) & ~np.any(masks[:, 0], axis=1)
  v2a = np.all(masks[:, 0], axis=1) & ~np.any(masks[:, 1], axis=1)
  k = masks[:, 0].sum(axis=1)
  prefix = (masks[:, 0] == masks[:, 1]).all(axis=1) & (
      masks[:, 0] == (np.arange(n)[None] < k[:, None])).all(axis=1)
  cont = prefix & (k >= 2) & (k <= n - 1)
  assert np.all(a2v | v2a | cont)  # nothing else is drawn
  for fraction in (a2v.mean(), v2a.mean(), cont.mean()):  # kinds uniform; 5-sigma bounds
    assert abs(fraction - 1 / 3) < 5 * math.sqrt(2 / 9 / 3000)
  for kk in (2, 3, 4):  # k uniform on 2..N-1 within "continue"
    assert abs(np.mean(cont & (k == kk)) - 1 / 9) < 5 * math.sqrt(8 / 81 / 3000)
  with pytest.raises(ValueError, match="continue"):
    cdcd.condition_mask_table(layout_lib.ClipLayout(
        num_frames=5, fps=8.0, height=8, width=8, sample_rate=16000, video_channels=2,
        audio_channels=2), ("continue",), 2)  # N = 2: no k in 2..1
  with pytest.raises(ValueError, match="mask_kinds"):
    cdcd.condition_mask_table(LAYOUT5, ("a2v", "t2v"))


# --- intra-negatives ----------------------------------------------------------------------------
def _masks_of_every_kind(n):
  masks = [np.zeros((2, n), bool) for _ in range(2 + n - 2)]
  masks[0][1] = True  # a2v
  masks[1][0] = True  # v2a
  for i, k in enumerate(range(2, n)):  # continuation with k given segments
    masks[2 + i][:, :k] = True
  return np.stack(masks)


def _find_block(haystack, block):
  """Start indices where `block` [L, C] occurs contiguously in `haystack` [M, C]."""
  return [i for i in range(len(haystack) - len(block) + 1)
          if np.array_equal(haystack[i:i + len(block)], block)]


REPEATS = 40  # copies of each mask kind in the intra-negative draw


@functools.lru_cache(maxsize=1)
def _intra_draw():
  """(masks [B, 2, N], x0, permutations [B, 10, 2, N], negatives) for every mask kind."""
  masks = np.repeat(_masks_of_every_kind(LAYOUT5.num_segments), REPEATS, 0)
  x0 = _latents(LAYOUT5, len(masks), 1)

  @jax.jit
  def draw(rng, masks, x0):
    perm = cdcd.sample_segment_permutations(rng, masks, 10)
    return perm, cdcd.intra_negative_latents(x0, perm, masks, LAYOUT5)

  perm, neg = jax.device_get(draw(_key(2), masks, x0))
  return masks, x0, perm, neg


def test_intra_negatives_keep_the_segments_and_change_their_order():
  masks, x0, _, neg = _intra_draw()
  assert neg["video"].shape == (len(masks), 10) + x0["video"].shape[1:]
  batch, num_neg = len(masks), 3
  sample = np.arange(0, batch, REPEATS // 2)  # two clips of each mask kind
  seg_a = LAYOUT5.segment_of_audio
  for b in sample:
    for j in range(num_neg):
      # Video: the given frames are a reordering of the given frames, never the same order.
      given_v = np.flatnonzero(masks[b, 0])
      if len(given_v):
        pos = sorted(x0["video"][b, s].tobytes() for s in given_v)
        got = sorted(neg["video"][b, j, s].tobytes() for s in given_v)
        assert pos == got
        assert not np.array_equal(neg["video"][b, j, given_v], x0["video"][b, given_v])
      np.testing.assert_array_equal(neg["video"][b, j, ~masks[b, 0]],
                                    x0["video"][b, ~masks[b, 0]])
      # Audio: every given segment (unequal lengths) appears whole, at distinct places, inside
      # the given region, which has the same length; the order changed; generated part kept.
      given_pos = masks[b, 1][seg_a]
      np.testing.assert_array_equal(neg["audio"][b, j, ~given_pos], x0["audio"][b, ~given_pos])
      if not given_pos.any():
        continue
      region = neg["audio"][b, j, given_pos]
      starts = []
      for s in np.flatnonzero(masks[b, 1]):
        found = _find_block(region, x0["audio"][b, seg_a == s])
        assert len(found) == 1, (b, j, s)
        starts.append((found[0], int(np.sum(seg_a == s))))
      starts.sort()
      assert starts[0][0] == 0 and all(a + la == c for (a, la), (c, _) in zip(starts, starts[1:]))
      assert sum(la for _, la in starts) == given_pos.sum()
      assert not np.array_equal(region, x0["audio"][b, given_pos])


def test_segment_permutations_are_never_the_identity_and_are_varied():
  n = LAYOUT5.num_segments
  masks, _, perm, _ = _intra_draw()
  reps = REPEATS
  for b in range(len(masks)):
    for m in range(2):
      given = masks[b, m]
      for j in range(perm.shape[1]):
        p = perm[b, j, m]
        assert sorted(p) == list(range(n))  # a permutation
        np.testing.assert_array_equal(p[~given], np.flatnonzero(~given))  # others fixed
        assert set(p[given]) == set(np.flatnonzero(given))
        if given.sum() >= 2:
          assert not np.array_equal(p, np.arange(n))
      if masks[b, 0].any() and masks[b, 1].any():  # continuation: one π for both modalities
        np.testing.assert_array_equal(perm[b, :, 0], perm[b, :, 1])
  # a2v over 5 segments: many distinct non-identity permutations (uniform over 5! - 1 + rotation).
  distinct = {tuple(p) for p in perm[:reps, :, 1].reshape(-1, n)}
  assert len(distinct) > 60
  # continuation k = 2: the swap is the only choice.
  k2 = perm[2 * reps:3 * reps, :, 0].reshape(-1, n)
  assert {tuple(p) for p in k2} == {(1, 0, 2, 3, 4)}


# --- inter-negatives ----------------------------------------------------------------------------
@pytest.mark.parametrize("batch", range(2, 9))
def test_inter_negatives_never_include_the_positive(batch):
  for num_neg in range(1, batch):
    for seed in range(1):
      src = np.asarray(cdcd.sample_batch_sources(_key(seed), batch, num_neg))
      assert src.shape == (batch, num_neg)
      assert np.all(src != np.arange(batch)[:, None])
      assert np.all((src >= 0) & (src < batch))
      assert all(len(set(row)) == num_neg for row in src)  # distinct negatives
      # One shift per negative for the whole batch: each column is a derangement of the batch.
      assert all(sorted(col) == list(range(batch)) for col in src.T)
  with pytest.raises(ValueError, match="batch size"):
    cdcd.sample_batch_sources(_key(0), batch, batch)
  x0 = {k: jnp.asarray(v) for k, v in _latents(LAYOUT3, batch, 0).items()}
  with pytest.raises(ValueError, match="batch size"):
    cdcd.cdcd_loss(lambda *a: a[0], x0, _key(0), schedule=SCHEDULE, layout=LAYOUT3,
                   num_negatives=batch, negative_kind="inter")
  with pytest.raises(ValueError, match="batch size"):  # mixed: the inter half must fit
    cdcd.cdcd_loss(lambda *a: a[0], x0, _key(0), schedule=SCHEDULE, layout=LAYOUT3,
                   num_negatives=2 * batch, negative_kind="mixed")


# --- the full loss against numpy ----------------------------------------------------------------
def _segment_means_np(layout, video, audio):
  onehot = np.eye(layout.num_segments)[layout.segment_of_audio]  # [L, N]
  audio_mean = np.einsum("blc,ln->bnc", audio, onehot) / onehot.sum(0)[None, :, None]
  return video.mean(axis=(2, 3)), audio_mean


def _toy_model_jax(layout):
  """A deterministic denoiser whose output depends on x_t, t and the condition (by segment)."""
  onehot = jnp.asarray(np.eye(layout.num_segments)[layout.segment_of_audio], jnp.float32)
  weights = jnp.arange(1, layout.num_segments + 1, dtype=jnp.float32) / layout.num_segments

  def model(noisy, t_bmn, self_cond):
    assert self_cond is None
    video, audio = noisy["video"], noisy["audio"]
    given = (t_bmn == 0).astype(jnp.float32)  # [B, 2, N]
    video_mean = video.mean(axis=(2, 3))
    audio_mean = jnp.einsum("blc,ln->bnc", audio, onehot) / onehot.sum(0)[None, :, None]
    summary = given[:, 0, :, None] * video_mean + given[:, 1, :, None] * audio_mean  # [B, N, C]
    context = jnp.einsum("bnc,n->bc", summary, weights)  # order sensitive
    t_scale = 1.0 + t_bmn / 1000.0
    video_out = (0.6 * video
                 + 0.5 * summary[:, :, None, None, :] * t_scale[:, 0, :, None, None, None]
                 + 0.3 * context[:, None, None, None, :])
    audio_out = (0.6 * audio + 0.5 * summary[:, layout.segment_of_audio]
                 * t_scale[:, 1, layout.segment_of_audio, None] + 0.3 * context[:, None, :])
    return {"video": video_out, "audio": audio_out}

  return model


def _toy_model_np(layout, video, audio, t_bmn):
  given = (t_bmn == 0).astype(np.float64)
  video_mean, audio_mean = _segment_means_np(layout, video, audio)
  summary = given[:, 0, :, None] * video_mean + given[:, 1, :, None] * audio_mean
  weights = np.arange(1, layout.num_segments + 1) / layout.num_segments
  context = np.einsum("bnc,n->bc", summary, weights)
  t_scale = 1.0 + t_bmn / 1000.0
  seg = layout.segment_of_audio
  video_out = (0.6 * video + 0.5 * summary[:, :, None, None, :] * t_scale[:, 0, :, None, None, None]
               + 0.3 * context[:, None, None, None, :])
  audio_out = (0.6 * audio + 0.5 * summary[:, seg] * t_scale[:, 1, seg, None]
               + 0.3 * context[:, None, :])
  return video_out, audio_out


def _numpy_cdcd(layout, x0, plan, variant, prediction, temperature):
  """Errors [B, K+1] and InfoNCE recomputed with loops from the plan's random draws."""
  mask = np.asarray(plan.condition_mask)
  t = np.asarray(plan.timestep)
  perm = np.asarray(plan.intra_permutation)
  src = np.asarray(plan.inter_source)
  noise = {k: np.asarray(v, np.float64) for k, v in plan.noise.items()}
  x0 = {k: v.astype(np.float64) for k, v in x0.items()}
  batch, n = mask.shape[0], layout.num_segments
  seg = layout.segment_of_audio
  num_cand = 1 + perm.shape[1] + src.shape[1]
  table = SCHEDULE.alpha_bar_table
  cand_v = np.zeros((num_cand,) + x0["video"].shape)
  cand_a = np.zeros((num_cand,) + x0["audio"].shape)
  t_bmn = np.zeros((batch, 2, n))
  ab_v = np.ones(x0["video"].shape)
  ab_a = np.ones(x0["audio"].shape)
  for b in range(batch):
    ab = table[t[b]]
    gen_v, gen_a = ~mask[b, 0], ~mask[b, 1][seg]
    t_bmn[b][~mask[b]] = t[b]
    ab_v[b, gen_v] = ab
    ab_a[b, gen_a] = ab
    xt_v = np.sqrt(ab) * x0["video"][b] + np.sqrt(1 - ab) * noise["video"][b]
    xt_a = np.sqrt(ab) * x0["audio"][b] + np.sqrt(1 - ab) * noise["audio"][b]
    conds = [(x0["video"][b], x0["audio"][b])]
    for j in range(perm.shape[1]):
      video = x0["video"][b].copy()
      for slot in range(n):
        video[slot] = x0["video"][b, perm[b, j, 0, slot]]
      audio = x0["audio"][b].copy()
      slots = [s for s in range(n) if mask[b, 1, s]]
      if slots:
        content = np.concatenate([x0["audio"][b][seg == perm[b, j, 1, s]] for s in slots])
        audio[~gen_a] = content
      conds.append((video, audio))
    for j in range(src.shape[1]):
      conds.append((x0["video"][src[b, j]], x0["audio"][src[b, j]]))
    for c, (video, audio) in enumerate(conds):
      cand_v[c, b] = np.where(gen_v[:, None, None, None], xt_v, video)
      cand_a[c, b] = np.where(gen_a[:, None], xt_a, audio)
  errors = np.zeros((batch, num_cand))
  for c in range(num_cand):
    out_v, out_a = _toy_model_np(layout, cand_v[c], cand_a[c], t_bmn)
    sq = []
    for out, x_t, ab, x0_k, eps in ((out_v, cand_v[c], ab_v, x0["video"], noise["video"]),
                                    (out_a, cand_a[c], ab_a, x0["audio"], noise["audio"])):
      if prediction == "eps":
        eps_hat = out
        x0_hat = (x_t - np.sqrt(1 - ab) * out) / np.sqrt(ab)
      else:
        eps_hat = np.sqrt(1 - ab) * x_t + np.sqrt(ab) * out
        x0_hat = np.sqrt(ab) * x_t - np.sqrt(1 - ab) * out
      sq.append(np.square(eps_hat - eps) if variant == "step" else np.square(x0_hat - x0_k))
    for b in range(batch):
      gen_v, gen_a = ~mask[b, 0], ~mask[b, 1][seg]
      values = np.concatenate([sq[0][b][gen_v].ravel(), sq[1][b][gen_a].ravel()])
      errors[b, c] = values.mean()
  return errors, _numpy_info_nce(errors, 0, temperature)


LOSS_CASES = [("step", "mixed", "eps", 0.1), ("sample", "mixed", "v", 1.0),
              ("step", "intra", "v", 0.5), ("step", "inter", "eps", 0.1),
              ("sample", "mixed", "eps", 50.0), ("sample", "inter", "v", 1.0)]


def _check_loss_against_numpy(variant, negative_kind, prediction, temperature, jit):
  x0 = _latents(LAYOUT5, BATCH, 4)
  x0_jax = {k: jnp.asarray(v) for k, v in x0.items()}
  rng = _key(5)
  kwargs = dict(schedule=SCHEDULE, layout=LAYOUT5, num_negatives=NUM_NEG,
                negative_kind=negative_kind, mask_kinds=("a2v", "v2a", "continue"))
  model = _toy_model_jax(LAYOUT5)

  def loss_fn(x, r):
    return cdcd.cdcd_loss(model, x, r, variant=variant, temperature=temperature,
                          prediction=prediction, **kwargs)

  loss, aux = (jax.jit(loss_fn) if jit else loss_fn)(x0_jax, rng)
  # The plan is drawn eagerly: a jitted loss must draw the same (dict order, key use).
  plan = jax.device_get(cdcd.sample_plan(rng, x0_jax, **kwargs))
  intra, inter = cdcd.negative_counts(NUM_NEG, negative_kind)
  assert plan.intra_permutation.shape == (BATCH, intra, 2, LAYOUT5.num_segments)
  assert plan.inter_source.shape == (BATCH, inter)
  errors, expected = _numpy_cdcd(LAYOUT5, x0, plan, variant, prediction, temperature)
  assert float(loss) == pytest.approx(expected, rel=2e-4, abs=1e-5)
  assert float(aux["cdcd_error_positive"]) == pytest.approx(errors[:, 0].mean(), rel=2e-4)
  assert float(aux["cdcd_error_negative"]) == pytest.approx(errors[:, 1:].mean(), rel=2e-4)
  assert float(aux["cdcd_accuracy"]) == pytest.approx(
      np.mean(np.all(errors[:, :1] < errors[:, 1:], axis=1)))
  assert int(aux["cdcd_extra_denoiser_evaluations"]) == NUM_NEG
  # The negatives changed the errors (the draws are not degenerate).
  assert np.all(np.abs(errors[:, 1:] - errors[:, :1]) > 1e-6)


@pytest.mark.parametrize("case,jit", [(LOSS_CASES[0], True), (LOSS_CASES[1], False)])
def test_cdcd_loss_matches_numpy(case, jit):
  _check_loss_against_numpy(*case, jit=jit)


@pytest.mark.slow
@pytest.mark.parametrize("case", LOSS_CASES[2:])
def test_cdcd_loss_matches_numpy_more_cases(case):
  _check_loss_against_numpy(*case, jit=False)


# --- gradients and the sanity ordering ----------------------------------------------------------
class TinyDenoiser(nnx.Module):
  """Per-channel linear maps, with each modality reading the other's per-segment means."""

  def __init__(self, layout, rngs):
    c = layout.video_channels
    self.video_self = nnx.Linear(c, c, rngs=rngs)
    self.audio_self = nnx.Linear(c, c, rngs=rngs)
    self.audio_to_video = nnx.Linear(c, c, rngs=rngs)
    self.video_to_audio = nnx.Linear(c, c, rngs=rngs)
    self.onehot = jnp.asarray(np.eye(layout.num_segments)[layout.segment_of_audio], jnp.float32)
    self.segment_of_audio = layout.segment_of_audio

  def __call__(self, noisy, t_bmn, self_cond):
    video, audio = noisy["video"], noisy["audio"]
    audio_mean = jnp.einsum("blc,ln->bnc", audio, self.onehot) / self.onehot.sum(0)[:, None]
    video_mean = video.mean(axis=(2, 3))
    return {"video": self.video_self(video) + self.audio_to_video(audio_mean)[:, :, None, None],
            "audio": self.audio_self(audio)
                     + self.video_to_audio(video_mean)[:, self.segment_of_audio]}


@pytest.mark.parametrize("variant", cdcd.VARIANTS)
def test_gradients_flow_through_a_tiny_nnx_model(variant):
  model = TinyDenoiser(LAYOUT5, nnx.Rngs(0))
  x0 = {k: jnp.asarray(v) for k, v in _latents(LAYOUT5, BATCH, 8).items()}

  def loss_fn(m):
    return cdcd.cdcd_loss(m, x0, _key(9), schedule=SCHEDULE, layout=LAYOUT5,
                          num_negatives=NUM_NEG, negative_kind="mixed", variant=variant,
                          temperature=1.0)[0]

  grads = nnx.state(nnx.grad(loss_fn)(model), nnx.Param)
  leaves = jax.tree_util.tree_leaves(grads)
  assert len(leaves) == 8 and all(np.all(np.isfinite(np.asarray(g))) for g in leaves)
  for name in ("audio_to_video", "video_to_audio"):  # the condition paths get a gradient
    assert float(jnp.linalg.norm(grads[name]["kernel"].value)) > 1e-6


def _consistent_clips(layout, batch, seed):
  """Both modalities carry the same per-segment vector, so either one determines the other."""
  s = np.random.default_rng(seed).normal(size=(batch, layout.num_segments, 2)).astype(np.float32)
  h, w = layout.latent_height, layout.latent_width
  video = np.broadcast_to(s[:, :, None, None, :], (batch, layout.num_segments, h, w, 2))
  return {"video": jnp.asarray(video), "audio": jnp.asarray(s[:, layout.segment_of_audio])}


def _condition_aware_model(layout):
  """ε from x_t and the x0 the given modality implies (exact on true a2v/v2a conditions)."""
  onehot = jnp.asarray(np.eye(layout.num_segments)[layout.segment_of_audio], jnp.float32)
  seg = layout.segment_of_audio

  def model(noisy, t_bmn, self_cond):
    video, audio = noisy["video"], noisy["audio"]
    given = t_bmn == 0
    audio_mean = jnp.einsum("blc,ln->bnc", audio, onehot) / onehot.sum(0)[None, :, None]
    s_hat = jnp.where(given[:, 0, :, None], video.mean(axis=(2, 3)), audio_mean)
    ab = layout.expand_to_latents(SCHEDULE.alpha_bar(t_bmn.astype(jnp.int32)))
    x0_hat = {"video": jnp.broadcast_to(s_hat[:, :, None, None, :], video.shape),
              "audio": s_hat[:, seg]}
    return {k: jnp.where(ab[k] < 1, (noisy[k] - jnp.sqrt(ab[k]) * x0_hat[k])
                         / jnp.sqrt(jnp.maximum(1 - ab[k], 1e-12)), 0.0) for k in noisy}

  return model


@pytest.mark.parametrize("variant", cdcd.VARIANTS)
def test_condition_aware_model_beats_condition_blind_model(variant):
  x0 = _consistent_clips(LAYOUT5, BATCH, 10)
  kwargs = dict(schedule=SCHEDULE, layout=LAYOUT5, num_negatives=NUM_NEG, negative_kind="mixed",
                variant=variant, mask_kinds=("a2v", "v2a"), temperature=0.1)
  aware, aux = cdcd.cdcd_loss(_condition_aware_model(LAYOUT5), x0, _key(11), **kwargs)
  blind, _ = cdcd.cdcd_loss(lambda noisy, t, sc: {k: 0.5 * v for k, v in noisy.items()}, x0,
                            _key(11), **kwargs)
  chance = math.log(NUM_NEG + 1)
  assert float(blind) == pytest.approx(chance, rel=1e-5)  # errors identical across conditions
  # The positive has the lowest error in every example. With "step" the loss stays well above 0
  # because at high noise a wrong condition changes the ε-error only by ᾱ/(1-ᾱ)·||Δx0||².
  assert float(aux["cdcd_accuracy"]) == 1.0
  assert float(aware) < 0.8 * chance


@pytest.mark.parametrize("kwargs,match", [
    (dict(variant="final"), "variant"), (dict(negative_kind="both"), "negative_kind"),
    (dict(mask_kinds=("a2v", "joint")), "mask_kinds"), (dict(num_negatives=0), "num_negatives"),
    (dict(prediction="score"), "prediction")])
def test_cdcd_loss_bad_arguments(kwargs, match):
  x0 = {k: jnp.asarray(v) for k, v in _latents(LAYOUT3, 4, 0).items()}
  with pytest.raises(ValueError, match=match):
    cdcd.cdcd_loss(lambda *a: a[0], x0, _key(0), schedule=SCHEDULE, layout=LAYOUT3,
                   **{"num_negatives": 2, **kwargs})
  with pytest.raises(ValueError, match="shape"):
    cdcd.cdcd_loss(lambda *a: a[0], {**x0, "audio": x0["audio"][:, :-1]}, _key(0),
                   schedule=SCHEDULE, layout=LAYOUT3, num_negatives=2)
