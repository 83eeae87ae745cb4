"""SoundStream audio autoencoder on the synthetic world (SPEC §8), trained by `avdit.main`.

  python -m avdit.main --config=configs/soundstream_synthetic.py:VARIANT --workdir=DIR --mode=train

Variants:
  tiny     tests: the tiny clip's audio (1.125 s), TINY_CONFIG, a few steps, GAN on.
  default  the end-to-end pipeline's audio latent space: 2.125 s -> 107 x 16 latents, 1500
           steps of 0.47 s on 2 cores (~12 min; clicks are learned first, the tone's pitch
           last), multi-scale mel loss only; quantizer bypassed (AVDiT diffuses continuous
           latents). Learning rate 4e-3: 0.42x the mean-spectrum baseline's log-mel distance
           on 8 held-out clips, where 2e-3 reached 0.53x in the same steps.
  paper    SEANet C=32..512, d = 1024, 8 x 1024 RVQ with dropout, STFT + 3 waveform
           discriminators, λ_adv = 1, λ_feat = 100, λ_rec = 1.
"""
import ml_collections

from avdit.models import soundstream
from configs import avdit_synthetic


def get_config(variant: str = "default") -> ml_collections.ConfigDict:
  if variant not in ("tiny", "default", "paper"):
    raise ValueError(f"unknown variant {variant!r} of soundstream_synthetic: tiny, default or "
                     "paper")
  base = avdit_synthetic.get_config("tiny" if variant == "tiny" else "default")
  c = ml_collections.ConfigDict()
  c.job = "autoencoder"
  c.kind = "soundstream"
  c.variant = variant
  c.seed = 0
  c.clip = base.clip
  c.data = base.data
  c.mesh = base.mesh  # data parallel; the rules name the autoencoders' axes too
  c.clip.update(height=32, width=32)  # the pipeline's clips (only the audio is used)
  c.data.batch_size = 4
  c.model = ml_collections.ConfigDict(dict(
      kwargs=dict(soundstream.TINY_CONFIG, base_channels=8), dtype="float32"))
  c.discriminator = ml_collections.ConfigDict(dict(
      kwargs=dict(stft=soundstream.TINY_STFT_DISCRIMINATOR,
                  wave=soundstream.TINY_WAVE_DISCRIMINATOR), dtype="float32"))
  c.loss = ml_collections.ConfigDict(dict(
      reconstruction_weight=1.0, adversarial_weight=0.0, feature_weight=100.0,
      commitment_weight=1.0, disc_start_step=0,
  ))
  c.train = ml_collections.ConfigDict(dict(
      num_steps=1500, learning_rate=4e-3, disc_learning_rate=1e-4, warmup_steps=20,
      end_learning_rate_factor=0.1, b1=0.9, b2=0.99, grad_clip_norm=1.0, ema_decay=0.99,
      quantize=False, log_every=50, checkpoint_every=500, keep_checkpoints=2,
      async_checkpointing=True,
  ))
  c.eval = ml_collections.ConfigDict(dict(num_clips=8, seed=2))
  if variant == "tiny":
    c.data.batch_size = 2
    c.model.kwargs = soundstream.TINY_CONFIG
    c.loss.update(adversarial_weight=1.0, disc_start_step=2)
    c.train.update(num_steps=6, warmup_steps=1, log_every=2, checkpoint_every=3,
                   async_checkpointing=False, quantize=True)
    c.eval.num_clips = 2
  elif variant == "paper":
    c.model.kwargs = soundstream.PAPER_CONFIG
    c.discriminator.kwargs = dict(stft=soundstream.PAPER_STFT_DISCRIMINATOR,
                                  wave=soundstream.PAPER_WAVE_DISCRIMINATOR)
    c.loss.update(adversarial_weight=1.0, disc_start_step=20_000)
    c.data.batch_size = 128
    c.train.update(num_steps=1_000_000, learning_rate=1e-4, disc_learning_rate=1e-4,
                   warmup_steps=5_000, b1=0.5, b2=0.9, ema_decay=0.999, quantize=True,
                   log_every=100, checkpoint_every=5_000)
  return c
