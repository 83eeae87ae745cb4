"""MAGVIT-v2 video autoencoder on the synthetic world (SPEC §8), trained by `avdit.main`.

  python -m avdit.main --config=configs/magvit2_synthetic.py:VARIANT --workdir=DIR --mode=train

Variants:
  tiny     tests: 9 frames 32x32, the TINY_KWARGS network, a few steps.
  default  the end-to-end pipeline's video latent space: 17 frames 32x32 -> 5x4x4x16, base 8
           channels, 2500 steps of 0.3-0.4 s on 2 cores (13-16 min; the reconstruction first
           learns the background, then, after ~700 steps, the disc): 30.3 dB on 8 held-out
           clips, +9.7 dB over each clip's mean frame (8 latent channels: 27.2 dB); quantizer
           bypassed (AVDiT diffuses continuous latents).
  paper    MAGVIT-v2 at the Monologues geometry (17x128x128 -> 5x16x16x8), LFQ on, GAN + LeCAM.
  decoder  a trained default run's decoder fine-tuned on noisy latents, its encoder held (the
           latents, and a latent cache of them, stay valid), 800 steps of batch 8 (~10 min):
             python -m avdit.main --config=configs/magvit2_synthetic.py:decoder --mode=train \
                 --config.train.init_from=RUN --workdir=NEW_RUN
           then decode with it: --config.latent.video_autoencoder_workdir=NEW_RUN.
           decoder_tiny: the same for tests.
"""
import ml_collections

from avdit.models import magvit2
from configs import avdit_synthetic

VARIANTS = ("tiny", "default", "paper", "decoder", "decoder_tiny")


def get_config(variant: str = "default") -> ml_collections.ConfigDict:
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r} of magvit2_synthetic: one of {VARIANTS}")
  decoder = variant.startswith("decoder")
  variant = {"decoder": "default", "decoder_tiny": "tiny"}.get(variant, variant)
  base = avdit_synthetic.get_config("tiny" if variant == "tiny" else "default")
  c = ml_collections.ConfigDict()
  c.job = "autoencoder"
  c.kind = "magvit2"
  c.variant = variant
  c.seed = 0
  c.clip = base.clip
  c.data = base.data
  c.mesh = base.mesh  # data parallel; the rules name the autoencoders' axes too
  c.clip.update(height=32, width=32)
  c.data.batch_size = 4
  c.model = ml_collections.ConfigDict(dict(
      # Without the encoder's output norm: its per-frame statistics over a 4x4 grid would remove
      # each clip's colour (see magvit2.Magvit2). 16 channels a latent: one latent holds a
      # 4-frame 8x8 patch's background, disc positions and colour; with 8 the round trip pulls
      # the disc's colour a third of the way to grey (disc colour error 28 against 12), and the
      # AVDiT on it draws fewer discs (docs/learning_the_link.md, "The 16-channel latent as the
      # job").
      kwargs=dict(magvit2.TINY_KWARGS, base_channels=8, latent_dim=16, encoder_output_norm=False),
      dtype="float32"))
  c.discriminator = ml_collections.ConfigDict(dict(
      kwargs=dict(base_channels=16, channel_multipliers=(2, 4)), dtype="float32"))
  c.loss = ml_collections.ConfigDict(dict(
      perceptual_weight=0.0,  # > 0 needs perceptual_weights_file (VGG-style .npz, see magvit2.py)
      perceptual_weights_file="",
      commitment_weight=0.25, entropy_weight=0.1,  # LFQ terms (only with train.quantize)
      adversarial_weight=0.0,  # 0 = no discriminator at all
      lecam_weight=0.001, lecam_decay=0.99, disc_start_step=0,
  ))
  c.train = ml_collections.ConfigDict(dict(
      num_steps=2500, learning_rate=4e-3, disc_learning_rate=1e-4, warmup_steps=20,
      end_learning_rate_factor=0.1, b1=0.9, b2=0.99, grad_clip_norm=1.0, ema_decay=0.99,
      quantize=False, log_every=50, checkpoint_every=500, keep_checkpoints=2,
      async_checkpointing=True,
      # The decoder on latents + σ · std · ε, σ ~ U(0, latent_noise) per clip (0 = off), and
      # whether the encoder trains (False: the latents, and a cache of them, stay valid);
      # init_from: a MAGVIT-v2 run whose EMA weights this one starts from (the decoder variant).
      latent_noise=0.0, train_encoder=True, init_from="",
  ))
  c.eval = ml_collections.ConfigDict(dict(num_clips=8, seed=2))
  if variant == "tiny":
    c.data.batch_size = 2
    c.model.kwargs = dict(magvit2.TINY_KWARGS, base_channels=8)
    c.loss.update(adversarial_weight=0.1, disc_start_step=2)
    c.discriminator.kwargs = dict(base_channels=4, channel_multipliers=(2,))
    c.train.update(num_steps=6, warmup_steps=1, log_every=2, checkpoint_every=3,
                   async_checkpointing=False, quantize=True)
    c.eval.num_clips = 2
  elif variant == "paper":
    c.clip.update(num_frames=17, fps=8.0, height=128, width=128)
    c.model.update(kwargs=magvit2.PAPER_KWARGS, dtype="bfloat16")
    c.discriminator.update(kwargs=dict(base_channels=64, channel_multipliers=(2, 4, 4, 4, 4)),
                           dtype="bfloat16")
    c.loss.update(adversarial_weight=0.1, disc_start_step=50_000)
    c.data.batch_size = 256
    c.train.update(num_steps=1_000_000, learning_rate=1e-4, disc_learning_rate=1e-4,
                   warmup_steps=5_000, b1=0.0, b2=0.99, ema_decay=0.999, quantize=True,
                   log_every=100, checkpoint_every=5_000)
  if decoder:
    # A trained run's decoder, fine-tuned on noisy latents with its encoder held: AVDiT's
    # samples are latents a little off the encoder's, and the plain decoder loses the disc in
    # 30% of frames at 0.3 std of noise, 80% at 0.5; after these 800 steps 2% / 10%
    # (docs/learning_the_link.md). init_from is the run to fine-tune.
    c.variant = "decoder_tiny" if variant == "tiny" else "decoder"
    c.data.batch_size = 2 if variant == "tiny" else 8
    c.train.update(init_from=ml_collections.config_dict.placeholder(str), train_encoder=False,
                   latent_noise=0.5)
    if variant != "tiny":
      c.train.update(num_steps=800, learning_rate=1e-3, warmup_steps=20, checkpoint_every=200)
  return c
