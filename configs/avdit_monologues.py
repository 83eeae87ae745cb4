"""AVDiT at the paper's Monologues sizes (papers/avdit_monl.txt §4, Appendix B; SPEC §2).

17 frames at 8 fps, 128x128, 16 kHz; MAGVIT-v2 latents 5x16x16x8 and SoundStream latents 107x1024
(1387 tokens); 24 layers, 16 heads, d = 1024; AdamW 5e-4, 5k warm-up, cosine, EMA, batch 256,
400k steps; DDIM 250 steps at inference.

Parameter count (`python -m avdit.main --config=configs/avdit_monologues.py --mode=describe`):
460M with adaLN-Zero per block ("full", used here), 318M with AdaLN-LoRA; the paper reports
≈420M without giving its modulation details.

The learned autoencoders and the Monologues data are not in avdit yet (other issues): training
with this config stops with a clear error naming what is missing. `describe` works now.
Variant `tiny` keeps the latent geometry and shrinks the model, for checks on a CPU.
"""
import ml_collections

from configs import avdit_synthetic


def get_config(variant: str = "default") -> ml_collections.ConfigDict:
  if variant not in ("default", "tiny"):
    raise ValueError(f"unknown variant {variant!r} of avdit_monologues: default or tiny")
  c = avdit_synthetic.get_config("default")  # shared structure; every paper number is set below
  c.variant = variant
  c.clip.update(num_frames=17, fps=8.0, height=128, width=128, sample_rate=16000)
  c.latent.update(name="magvit2_soundstream", spatial_factor=8, temporal_factor=4,
                  audio_hop=320, video_channels=8, audio_channels=1024, stats_clips=1024)
  c.data.update(name="monologues", batch_size=256, worker_count=16)
  # 16x16 v5e: FSDP over 16 chips, data parallel over the rest (batch 256 = 1 example per chip).
  c.mesh.ici_parallelism = dict(data=-1, fsdp=16, tensor=1)
  c.model.update(width=1024, depth=24, num_heads=16, mlp_ratio=4.0, patch_size=1,
                 timestep_embed_dim=256, adaln="full", qk_norm=True, self_condition=True,
                 dtype="bfloat16", remat="dots_saveable", attention="splash", scan_layers=True)
  c.diffusion.update(num_timesteps=1000, beta_start=1e-4, beta_end=0.02, prediction="eps",
                     noise_mixture="monl", self_condition_rate=0.9)
  c.train.update(num_steps=400_000, learning_rate=5e-4, warmup_steps=5_000,
                 end_learning_rate_factor=0.0, weight_decay=0.01, b1=0.9, b2=0.99,
                 grad_clip_norm=1.0, ema_decay=0.9999, log_every=100, checkpoint_every=2_000,
                 keep_checkpoints=3, async_checkpointing=True)
  c.sample.update(sampler="ddim", num_steps=250, eta=0.0, num_clips=16)
  if variant == "tiny":
    c.data.batch_size = 2
    c.model.update(width=64, depth=2, num_heads=4, dtype="float32", remat="none")
    c.eval.i3d_weights = "none"  # as every tiny variant: a check of the machinery, not FVD
  return c
