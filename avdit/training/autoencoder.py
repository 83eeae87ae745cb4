"""Training the learned latent spaces: MAGVIT-v2 (video) and SoundStream (audio), SPEC §8.

One trainer for both, in the phases of `train.py`:
  1. Setup   the kind (`config.kind`: magvit2 | soundstream), writers, config.json
  2. Data    the same grain pipeline as AVDiT (clips of `config.clip`); one modality is used
  3. State   generator + discriminator + their own optimizers, generator EMA, LeCAM EMAs and the
             generator's non-parameter state (SoundStream's EMA codebooks), restored exactly
  4. Step    one jitted step: generator update, then discriminator update on the new
             reconstruction (adversarial terms only from `loss.disc_start_step`; no
             discriminator at all when `loss.adversarial_weight` is 0)
  5. Loop    the shared loop (`avdit.training.loop.run`): metrics every `log_every` steps,
             checkpoints (state + data position + the model's identity) every
             `checkpoint_every` steps, at the end and on SIGTERM/SIGINT, none of a non-finite loss
  6. Eval    its end-of-training hook: reconstructions of held-out clips with the EMA generator:
             PSNR / log-mel distance against the trivial baselines (avdit.models.reconstruction),
             written as mp4 + PNG

Losses. MAGVIT-v2: L2 reconstruction (+ optional perceptual from a weights file), LFQ
commitment and entropy when quantizing, non-saturating generator loss; discriminator hinge +
LeCAM. SoundStream: multi-scale mel reconstruction (λ_rec), hinge generator loss (λ_adv),
feature matching (λ_feat), RVQ commitment; discriminator hinge over STFT + 3 waveform scales.

Quantization (`train.quantize`). The paper configs train through the quantizer (LFQ / RVQ), as
the tokenizers were trained. AVDiT diffuses the *pre-quantization* latents and decodes what it
generates, so the small end-to-end configs train with the quantizer bypassed: the decoder then
learns exactly the continuous latents the diffusion model will produce.

Every checkpoint saves the model's kind and constructor arguments with it, so
`avdit.models.autoencoders.load_autoencoder(workdir)` rebuilds the EMA generator of a run from
the checkpoint alone, for encoding latent caches and decoding samples.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax import nnx

from avdit import layout as layout_lib
from avdit import sharding
from avdit import workdir as workdir_lib
from avdit.data import pipeline
from avdit.errors import UserError
from avdit.models import audio_losses
from avdit.models import autoencoders
from avdit.models import discriminators
from avdit.models import gan_losses
from avdit.models import layers
from avdit.models import perceptual
from avdit.models import reconstruction
from avdit.training import loop
from avdit.training import state as state_lib

KINDS = ("magvit2", "soundstream")


@flax.struct.dataclass
class AutoencoderState:
  step: jax.Array
  gen_params: Any
  gen_state: Any  # non-Param variables of the generator (SoundStream's EMA codebooks)
  ema_params: Any
  gen_opt_state: Any
  disc_params: Any  # None without a discriminator
  disc_opt_state: Any
  lecam_ema: Any  # (ema of real logits, ema of fake logits), per discriminator output


# --- the two kinds ---------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Kind:
  name: str
  modality: str  # "video" | "audio": the batch entry the autoencoder reads

  def check(self, config):
    if config.kind != self.name:
      raise ValueError(f"config.kind={config.kind!r} is not {self.name!r}")


def kind_of(config) -> Kind:
  name = config.get("kind", "avdit")
  if name not in KINDS:
    raise ValueError(f"config.kind={name!r} is not an autoencoder; choose one of {KINDS}")
  return Kind(name, "video" if name == "magvit2" else "audio")


def model_kwargs(config) -> dict:
  """Constructor arguments of the generator, JSON-able (saved with every checkpoint)."""
  kwargs = config.model.kwargs.to_dict()
  return {k: (list(v) if isinstance(v, tuple) else v) for k, v in kwargs.items()}


def build_discriminator(config, seed: int):
  if not config.loss.adversarial_weight:
    return None
  rngs = nnx.Rngs(seed + 1)
  kwargs = autoencoders.tupled(config.discriminator.kwargs.to_dict())
  if config.kind == "magvit2":
    return discriminators.Magvit2Discriminator(**kwargs, dtype=config.discriminator.dtype,
                                               rngs=rngs)
  return discriminators.SoundStreamDiscriminator(
      stft_kwargs=autoencoders.tupled(kwargs["stft"]),
      wave_kwargs=autoencoders.tupled(kwargs["wave"]), dtype=config.discriminator.dtype, rngs=rngs)


def clip_layout(config) -> layout_lib.ClipLayout:
  """The pixel/waveform geometry of the training clips (latent channels do not matter here)."""
  return layout_lib.ClipLayout(
      num_frames=config.clip.num_frames, fps=float(config.clip.fps), height=config.clip.height,
      width=config.clip.width, sample_rate=config.clip.sample_rate, video_channels=1,
      audio_channels=1)


def model_input(kind: Kind, batch) -> jax.Array:
  """Video uint8 -> float32 in [-1, 1]; audio as is."""
  if kind.modality == "video":
    return jnp.asarray(batch["video"], jnp.float32) / 127.5 - 1.0
  return jnp.asarray(batch["audio"], jnp.float32)


def reconstruct(kind: Kind, generator, x, *, train: bool, quantize: bool, rng=None,
                latent_noise: float = 0.0, train_encoder: bool = True):
  """(reconstruction with x's shape, aux of the quantizer): training's and evaluation's one path.

  MAGVIT-v2's is `generator(x)` spelt out, so that with `latent_noise` > 0 (`train.latent_noise`)
  its decoder is fed latents + σ · std_c · ε, σ ~ U(0, latent_noise) per clip and std_c each
  channel's standard deviation in the batch: the decoder learns to map a latent a little off the
  encoder's (as a diffusion model's samples are) to a clean clip. Without `train_encoder` the
  encoder gets no gradient, so the latents a cache holds stay valid. Measured
  (docs/learning_the_link.md): latents with noise of 0.3 std lose the disc in 30% of frames
  through the plain decoder, 2% after 800 steps of this.
  """
  if kind.name != "magvit2":
    return generator(x, train=train, rng=rng, quantize=quantize)
  z = generator.encode(x)
  if not train_encoder:
    z = jax.lax.stop_gradient(z)
  z, aux = generator.quantize(z, bypass=not quantize)
  if latent_noise:
    sigma_rng, noise_rng = jax.random.split(rng)
    sigma = latent_noise * jax.random.uniform(sigma_rng, (z.shape[0],) + (1,) * (z.ndim - 1))
    std_c = jax.lax.stop_gradient(jnp.std(z.reshape(-1, z.shape[-1]), axis=0))
    z = z + sigma * std_c * jax.random.normal(noise_rng, z.shape, z.dtype)
  return generator.decode(z), aux


# --- state -----------------------------------------------------------------------------------------
def _optimizer(train_config, learning_rate) -> optax.GradientTransformation:
  """Adam on AVDiT's schedule peaking at `learning_rate`, global-norm clipping."""
  schedule = state_lib.learning_rate_schedule(train_config, learning_rate)
  return optax.chain(optax.clip_by_global_norm(train_config.grad_clip_norm),
                     optax.adam(schedule, b1=train_config.b1, b2=train_config.b2))


def _num_disc_outputs(kind: Kind) -> int:
  return 1 if kind.name == "magvit2" else 4


def create_state(config):
  """(generator graphdef, discriminator graphdef | None, fresh AutoencoderState)."""
  kind = kind_of(config)
  gen = autoencoders.build_generator(kind.name, model_kwargs(config), config.model.dtype,
                                     config.seed)
  gen_graphdef, gen_params, gen_state = nnx.split(gen, nnx.Param, ...)
  disc = build_discriminator(config, config.seed)
  disc_graphdef, disc_params, disc_opt = None, None, None
  if disc is not None:
    disc_graphdef, disc_params, rest = nnx.split(disc, nnx.Param, ...)
    if jax.tree.leaves(rest):
      raise ValueError("the discriminator has non-parameter state the trainer would drop")
    disc_opt = _optimizer(config.train, config.train.disc_learning_rate).init(disc_params)
  k = _num_disc_outputs(kind)
  state = AutoencoderState(
      step=jnp.zeros((), jnp.int32), gen_params=gen_params, gen_state=gen_state,
      ema_params=jax.tree.map(jnp.copy, gen_params),
      gen_opt_state=_optimizer(config.train, config.train.learning_rate).init(gen_params),
      disc_params=disc_params, disc_opt_state=disc_opt,
      lecam_ema=(jnp.zeros((k,), jnp.float32), jnp.zeros((k,), jnp.float32)))
  # Modules may alias one array in two variables (SoundStream's embed_sum starts as its
  # codebook); the step donates the state, and a buffer cannot be donated twice.
  return gen_graphdef, disc_graphdef, jax.tree.map(jnp.copy, state)


def sharded_state(config, mesh):
  """(gen graphdef, disc graphdef, state created in its shardings, state shardings).

  The autoencoders' parameters carry logical axis names (conv_*, dense_*, norm, codebook axes)
  mapped by `config.mesh.logical_axis_rules` like AVDiT's: data parallel by default, FSDP over
  output channels with a `conv_out`/`dense_out` -> fsdp rule.
  """
  rules = sharding.logical_axis_rules(config.mesh)
  graphdefs = []

  def init():
    gen_graphdef, disc_graphdef, state = create_state(config)
    graphdefs.append((gen_graphdef, disc_graphdef))
    return state

  with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
    abstract = jax.eval_shape(init)
    shardings = sharding.state_shardings(abstract, mesh, rules)
    state = sharding.create_in_shardings(init, shardings)
  return (*graphdefs[0], state, shardings)


def perceptual_loss(config):
  """The perceptual loss network of `loss.perceptual_weights_file`, or None when it is off."""
  if not config.loss.get("perceptual_weight", 0.0):
    return None
  return perceptual.PerceptualLoss.from_file(config.loss.perceptual_weights_file)


def make_train_step(config, gen_graphdef, disc_graphdef, *, state_shardings=None,
                    batch_sharding=None) -> Callable:
  """The jitted `step(state, batch) -> (state, metrics)`, state donated; with shardings, one
  jit over the mesh with explicit in/out shardings (metrics replicated)."""
  kind = kind_of(config)
  loss_cfg, train_cfg = config.loss, config.train
  gen_opt = _optimizer(train_cfg, train_cfg.learning_rate)
  disc_opt = (_optimizer(train_cfg, train_cfg.disc_learning_rate)
              if disc_graphdef is not None else None)
  perceptual = perceptual_loss(config)
  quantize = bool(train_cfg.quantize)
  sample_rate = config.clip.sample_rate
  latent_noise = float(train_cfg.get("latent_noise", 0.0))
  train_encoder = bool(train_cfg.get("train_encoder", True))
  if (latent_noise or not train_encoder) and kind.name != "magvit2":
    raise ValueError("train.latent_noise / train.train_encoder=False are MAGVIT-v2's (its decoder "
                     f"decodes AVDiT's samples); config.kind is {kind.name!r}")

  def adversarial_weight(step):
    return jnp.where(step >= loss_cfg.disc_start_step, loss_cfg.adversarial_weight, 0.0)

  def generator_loss(gen_params, state, x, rng):
    # Fresh Variables for the non-parameter state at this trace level: the quantizer updates its
    # EMA codebooks in place, which Flax allows only on Variables made in the current trace.
    gen = nnx.merge(gen_graphdef, gen_params, jax.tree.map(lambda x: x, state.gen_state))
    recon, aux = reconstruct(kind, gen, x, train=True, quantize=quantize, rng=rng,
                             latent_noise=latent_noise, train_encoder=train_encoder)
    new_gen_state = nnx.split(gen, nnx.Param, ...)[2]
    terms = {}
    if kind.name == "magvit2":
      terms["reconstruction"] = jnp.mean(jnp.square(recon - x))
      if perceptual is not None:
        terms["perceptual"] = loss_cfg.perceptual_weight * perceptual(recon, x)
      terms["commitment"] = loss_cfg.commitment_weight * aux["losses"]["commitment"]
      terms["entropy"] = loss_cfg.entropy_weight * aux["losses"]["entropy"]
    else:
      terms["reconstruction"] = loss_cfg.reconstruction_weight * audio_losses.multiscale_mel_loss(
          recon, x, sample_rate=sample_rate)
      terms["commitment"] = loss_cfg.commitment_weight * aux["losses"]["commitment"]
    fake_out = None
    if disc_graphdef is not None:
      disc = nnx.merge(disc_graphdef, state.disc_params)
      fake_out = disc(recon)
      weight = adversarial_weight(state.step)
      if kind.name == "magvit2":
        terms["adversarial"] = weight * gan_losses.non_saturating_generator_loss(fake_out)
      else:
        real_out = disc(x)
        terms["adversarial"] = weight * gan_losses.hinge_generator_loss(fake_out)
        terms["feature_matching"] = (jnp.where(weight > 0, loss_cfg.feature_weight, 0.0)
                                     * gan_losses.feature_matching_loss(real_out, fake_out))
    total = sum(terms.values())
    return total, (recon, new_gen_state, terms, aux.get("metrics", {}))

  def discriminator_loss(disc_params, lecam_ema, x, recon, step):
    disc = nnx.merge(disc_graphdef, disc_params)
    real_out, fake_out = disc(x), disc(jax.lax.stop_gradient(recon))
    loss = gan_losses.hinge_discriminator_loss(real_out, fake_out)
    lecam = jnp.zeros((), jnp.float32)
    if loss_cfg.get("lecam_weight", 0.0):
      lecam = loss_cfg.lecam_weight * gan_losses.lecam_regularization(
          real_out, fake_out, lecam_ema[0], lecam_ema[1])
    on = (step >= loss_cfg.disc_start_step).astype(jnp.float32)
    return on * (loss + lecam), (real_out, fake_out, loss, lecam)

  def step_fn(state: AutoencoderState, batch):
    rng = jax.random.fold_in(jax.random.key(config.seed), state.step)
    x = model_input(kind, batch)
    (g_total, (recon, gen_state, terms, q_metrics)), g_grads = jax.value_and_grad(
        generator_loss, has_aux=True)(state.gen_params, state, x, rng)
    updates, gen_opt_state = gen_opt.update(g_grads, state.gen_opt_state, state.gen_params)
    gen_params = optax.apply_updates(state.gen_params, updates)
    ema = state_lib.ema_update(state.ema_params, gen_params, state.step, train_cfg.ema_decay)
    metrics = {f"loss_{k}": v for k, v in terms.items()}
    metrics.update(loss=g_total, generator_grad_norm=optax.tree.norm(g_grads),
                   loss_is_finite=jnp.isfinite(g_total).astype(jnp.float32))
    metrics.update({k: jnp.mean(v) for k, v in q_metrics.items()})
    if kind.name == "magvit2":
      mse = jnp.mean(jnp.square((recon - x) * 127.5), axis=tuple(range(1, x.ndim)))
      metrics["psnr_db"] = jnp.mean(10.0 * jnp.log10(255.0**2 / jnp.maximum(mse, 1e-10)))
    disc_params, disc_opt_state, lecam_ema = (state.disc_params, state.disc_opt_state,
                                              state.lecam_ema)
    if disc_graphdef is not None:
      (_, (real_out, fake_out, d_loss, lecam)), d_grads = jax.value_and_grad(
          discriminator_loss, has_aux=True)(state.disc_params, state.lecam_ema, x, recon,
                                            state.step)
      updates, disc_opt_state = disc_opt.update(d_grads, state.disc_opt_state, disc_params)
      disc_params = optax.apply_updates(disc_params, updates)
      lecam_ema = gan_losses.update_lecam_ema(*state.lecam_ema, real_out, fake_out,
                                              decay=loss_cfg.get("lecam_decay", 0.99))
      metrics.update(discriminator_loss=d_loss, lecam=lecam,
                     discriminator_grad_norm=optax.tree.norm(d_grads),
                     real_logit=jnp.mean(jnp.stack([jnp.mean(l) for l in
                                                    gan_losses.logits_list(real_out)])),
                     fake_logit=jnp.mean(jnp.stack([jnp.mean(l) for l in
                                                    gan_losses.logits_list(fake_out)])))
    new_state = AutoencoderState(
        step=state.step + 1, gen_params=gen_params, gen_state=gen_state, ema_params=ema,
        gen_opt_state=gen_opt_state, disc_params=disc_params, disc_opt_state=disc_opt_state,
        lecam_ema=lecam_ema)
    return new_state, metrics

  return sharding.jit_step(step_fn, state_shardings, batch_sharding)


# --- checkpoints -----------------------------------------------------------------------------------
PAYLOADS = autoencoders.PAYLOADS  # saved beside the state: the identity, which loading reads


def _identity(config) -> dict:
  """What a checkpoint's generator is: enough to rebuild it and to recognise its latents."""
  kind = kind_of(config)
  return {"kind": kind.name, "modality": kind.modality, "model_kwargs": model_kwargs(config),
          "dtype": config.model.dtype, "quantize_in_training": bool(config.train.quantize),
          "clip": config.clip.to_dict()}


# --- training --------------------------------------------------------------------------------------
def train(config, workdir: str, steps_this_run: int | None = None) -> dict:
  """Trains (or resumes) the autoencoder of `config.kind` in `workdir`; returns a summary."""
  # 1. Setup.
  kind = kind_of(config)
  is_chief = jax.process_index() == 0
  layout = clip_layout(config)
  writer = loop.open_workdir(config, workdir)

  # 2. Data.
  train_iter = pipeline.make_train_iterator(config.data, layout)

  # 3. State, created directly in its shardings over config.mesh, or restored exactly.
  mesh = sharding.training_mesh(config)
  gen_graphdef, disc_graphdef, state, state_shardings = sharded_state(config, mesh)
  identity = _identity(config)
  manager = loop.open_checkpoints(workdir, config.train, PAYLOADS)
  state, restored = loop.restore_latest(manager, state, train_iter, PAYLOADS)
  if restored is not None:
    saved = restored["model"]
    if saved["kind"] != kind.name or saved["model_kwargs"] != identity["model_kwargs"]:
      raise ValueError(f"the checkpoint in {workdir} is a {saved['kind']} with "
                       f"{saved['model_kwargs']}; the config describes another model")
  elif config.train.get("init_from", ""):
    state = init_from_run(config, state)
  elif not config.train.get("train_encoder", True):
    raise UserError("train.train_encoder=False holds the encoder: give the trained run it comes "
                    "from, --config.train.init_from=RUN")
  num_params = layers.count_params(state.gen_params)
  logging.info("%s: %d generator parameters, %d discriminator parameters", kind.name,
               num_params, layers.count_params(state.disc_params))

  # 4. Step.
  batch_sharding = sharding.batch_sharding(mesh)
  train_step = make_train_step(config, gen_graphdef, disc_graphdef,
                               state_shardings=state_shardings, batch_sharding=batch_sharding)

  # 5. Loop (avdit.training.loop.run), then 6. the eval hook on held-out clips with the EMA
  # generator, with files a person can look at.
  def evaluate_ema(final_state) -> dict[str, float]:
    ema_params, gen_state = sharding.fetch((final_state.ema_params, final_state.gen_state))
    gen = nnx.merge(gen_graphdef, ema_params, gen_state)
    return evaluate(config, gen, workdir if is_chief else None)

  result = loop.run(
      train_step, state, train_iter, to_device=loop.device_inputs((kind.modality,), mesh),
      manager=manager, writer=writer, payloads={"model": identity},
      num_steps=config.train.num_steps, log_every=config.train.log_every,
      checkpoint_every=config.train.checkpoint_every, steps_this_run=steps_this_run,
      evaluate=evaluate_ema if config.eval.num_clips > 0 else None)
  summary = {"kind": kind.name, "step": result.step, "metrics": result.metrics,
             "eval": result.evaluation, "stopped_by": result.stopped_by,
             "num_params": int(num_params)}
  if is_chief:
    workdir_lib.write_text(workdir, "train_summary.json", json.dumps(summary, indent=2))
  return dict(summary, state=result.state)


def init_from_run(config, state: AutoencoderState) -> AutoencoderState:
  """`state` with the generator (raw and EMA parameters, non-parameter state) of the run in
  `train.init_from`, from its EMA weights: a fine-tuning run (e.g. the decoder alone,
  `train.train_encoder=False`) starts where that run ended; optimizers start afresh."""
  source = config.train.init_from
  try:
    generator, saved, step = autoencoders.load_autoencoder(source)
  except FileNotFoundError as e:
    raise UserError(f"train.init_from={source}: {e}") from None
  mine = _identity(config)
  if saved["kind"] != mine["kind"] or saved["model_kwargs"] != mine["model_kwargs"]:
    raise UserError(f"train.init_from={source}: that run's {saved['kind']} has "
                    f"{saved['model_kwargs']}; the config describes {mine['kind']} with "
                    f"{mine['model_kwargs']}")
  _, params, gen_state = nnx.split(generator, nnx.Param, ...)

  def place(loaded, fresh):  # leaf by leaf (the two trees' Variable metadata differ)
    leaves = [jax.device_put(jnp.asarray(new, old.dtype), old.sharding)
              for new, old in zip(jax.tree.leaves(loaded), jax.tree.leaves(fresh), strict=True)]
    return jax.tree.unflatten(jax.tree.structure(fresh), leaves)

  params = place(params, state.gen_params)
  logging.info("initialized from %s (step %d, EMA weights)", source, step)
  return state.replace(gen_params=params, ema_params=jax.tree.map(jnp.copy, params),
                       gen_state=place(gen_state, state.gen_state))


def finished_summary(config, workdir: str) -> dict | None:
  """The summary of a run in `workdir` that reached `config.train.num_steps`, else None."""
  path = workdir_lib.path(workdir, "train_summary.json")
  if not path.exists():
    return None
  summary = json.loads(path.read_text())
  if summary.get("kind") != config.kind or summary.get("step") != config.train.num_steps:
    return None
  return summary


def eval_clips(config) -> dict[str, np.ndarray]:
  layout = clip_layout(config)
  return pipeline.make_eval_clips(config.data, layout, config.eval.num_clips,
                                  seed=config.data.seed + 1_000_003 + config.eval.seed)


def evaluate(config, generator, workdir: str | None) -> dict[str, float]:
  """Reconstruction metrics vs the trivial baselines on held-out clips; writes
  `<workdir>/reconstructions/` (mp4 with sound + PNG) when `workdir` is given."""
  kind = kind_of(config)
  clips = eval_clips(config)
  x = model_input(kind, clips)
  quantize = bool(config.train.quantize)
  run = nnx.jit(lambda g, x: reconstruct(kind, g, x, train=False, quantize=quantize)[0])
  recon = np.asarray(run(generator, x))
  if kind.modality == "video":
    video_u8 = np.round(np.clip((recon + 1.0) * 127.5, 0, 255)).astype(np.uint8)
    result = reconstruction.video_report(clips["video"], video_u8)
    audio = clips["audio"]
  else:
    video_u8, audio = clips["video"], np.clip(recon, -1.0, 1.0)
    result = reconstruction.audio_report(clips["audio"], audio, config.clip.sample_rate)
  if workdir is not None:
    _write_reconstructions(config, kind, clips, video_u8, audio, workdir)
  logging.info("%s reconstruction on %d held-out clips: %s", kind.name, len(x), result)
  return result


def _write_reconstructions(config, kind, clips, video_u8, audio, workdir):
  from avdit import media  # pylint: disable=g-import-not-at-top
  with workdir_lib.local_staging(workdir_lib.path(workdir, "reconstructions")) as out:
    for i in range(video_u8.shape[0]):
      # Original | reconstruction side by side; the sound is the reconstruction's for audio.
      frames = np.concatenate([clips["video"][i], video_u8[i]], axis=2)
      media.write_mp4(out / f"{kind.name}_{i}_original_vs_reconstruction.mp4", frames,
                      audio[i], config.clip.fps, config.clip.sample_rate)
      media.write_mp4(out / f"{kind.name}_{i}_original.mp4", clips["video"][i],
                      clips["audio"][i], config.clip.fps, config.clip.sample_rate)
      _write_png(out / f"{kind.name}_{i}.png", kind, clips["video"][i], video_u8[i],
                 clips["audio"][i], audio[i], config.clip.sample_rate)


def _write_png(path, kind, video, video_recon, audio, audio_recon, sample_rate):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  if kind.modality == "video":
    frames = video.shape[0]
    fig, axes = plt.subplots(2, frames, figsize=(1.2 * frames, 2.8), squeeze=False)
    for row, clip in enumerate((video, video_recon)):
      for f in range(frames):
        axes[row, f].imshow(clip[f])
        axes[row, f].axis("off")
      axes[row, 0].set_title("original" if row == 0 else "reconstruction", fontsize=7, loc="left")
  else:
    fig, axes = plt.subplots(2, 1, figsize=(8, 4), squeeze=False)
    for row, (wave, title) in enumerate(((audio, "original"), (audio_recon, "reconstruction"))):
      axes[row, 0].imshow(reconstruction.log_mel(wave[None], sample_rate)[0].T, origin="lower",
                          aspect="auto", cmap="magma")
      axes[row, 0].set_title(f"{title}: log-mel", fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)
