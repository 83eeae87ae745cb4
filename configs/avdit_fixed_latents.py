"""AVDiT + MoNL on the synthetic world on fixed, exactly invertible latents (no autoencoders).

  python -m avdit.main --config=configs/avdit_fixed_latents.py --workdir=DIR

runs, resumable, in DIR/avdit: training, samples of every task (mp4 with sound), the task suite
beside its real and chance rows, and the learning curve (avdit/workflows/end_to_end.py; no
autoencoder stages).

Why fixed latents here (configs/avdit_pipeline.py keeps the paper's MAGVIT-v2 + SoundStream):
measured on the 2-core CPU, the learned autoencoders alone take ~44 of the 60 minutes and bound
what any AVDiT on their latents can score (SoundStream's round trip puts the pitch 1.5 px from
the disc, MAGVIT's disc colour 21 off). Space-to-depth video is exact; log-magnitude STFT audio
(Griffin-Lim decoded, 0.03 px) carries the pitch phase-free, so the mean-squared-error denoiser
is rewarded for putting the tone at the right pitch (avdit/models/spectrogram.py).

Measured (docs/learning_the_link.md): under MoNL with the skip path and the cross-modal pool (the
defaults here) its v2a samples follow the disc (3.0-3.5 px of height at 1000 steps, chance
5.4-6.7) but its a2v frames hold no disc; the main job (configs/avdit_pipeline.py) keeps this
objective on MAGVIT-v2 video latents, where the a2v frames do. Variants: default, tiny (tests)
and crossmodal: every example a2v or v2a (the given modality clean, the generated one at one
level), no MoNL: the diagnostic that shows the transformer can read the other modality when the
mixture lets it; with whitened video its v2a samples follow the disc (1.74 px of height, chance
5.4-6.7; docs/learning_the_link.md).
"""
import ml_collections

from configs import avdit_synthetic


def get_config(variant: str = "default") -> ml_collections.ConfigDict:
  if variant not in ("tiny", "default", "crossmodal"):
    raise ValueError(f"unknown variant {variant!r} of avdit_fixed_latents: tiny, default or "
                     "crossmodal")
  c = avdit_synthetic.get_config("tiny" if variant == "tiny" else "default")
  c.variant = variant
  c.job = "pipeline"  # AVDiT, samples, suite and curve in <workdir>/avdit (no autoencoders)
  c.clip.update(num_frames=17, fps=8.0, height=32, width=32, sample_rate=16000)
  # Video whitened (latent_space.estimate_stats): per channel, the flat background colour is ~95%
  # of the variance and the disc a few percent of the loss; whitened, the 128 strongest
  # directions weigh alike. Measured (docs/learning_the_link.md): v2a 1.74 px instead of 8.16 at
  # the crossmodal variant's 2000 steps. 256 clips x 80 tokens estimate the 768 x 768 covariance.
  c.latent.update(audio_transform="logmag", shared_stats="audio", whiten="video", whiten_rank=128,
                  stats_clips=256)
  c.data.update(disc_brighter=True, batch_size=16)
  c.model.update(width=192, num_heads=4, time_rope=True, self_condition=False)
  # x0-prediction: the space-to-depth tokens (768 video channels) are wider than the model.
  # Half of the examples get a task's exact condition on top of MoNL (monl.apply_conditioning).
  # The skip path (diffusion/skip.py) and the time-aligned pool of the other modality
  # (model.cross_modal_pool): under this MoNL objective, together, v2a follows the disc (3.0 and
  # 3.5 px of height at 1000 steps, two seeds; 8.2 px with the skip alone, chance 5.4-6.7;
  # docs/learning_the_link.md).
  c.model.cross_modal_pool = True
  c.diffusion.update(prediction="x0", noise_mixture="monl", condition_rate=0.5, x0_skip=True)
  c.train.update(num_steps=3600, learning_rate=1e-3, warmup_steps=100, checkpoint_every=600,
                 keep_period=600)
  c.pipeline_eval = True
  c.eval.update(num_sample_videos=2, curve_tasks="a2v|v2a", curve_num_clips=16)
  if variant == "crossmodal":
    # As measured in the README (before the skip and the pool were this config's defaults).
    c.model.cross_modal_pool = False
    c.diffusion.update(condition_rate=1.0, condition_shared_level=True, condition_tasks="a2v,v2a",
                       x0_skip=False)
    c.train.update(num_steps=2000, checkpoint_every=400, keep_period=400)
    c.eval.update(tasks="a2v|v2a")
  if variant == "tiny":
    c.clip.update(num_frames=9)
    c.latent.stats_clips = 32
    c.data.batch_size = 2
    c.model.update(width=64)
    c.train.update(num_steps=4, warmup_steps=1, checkpoint_every=2, keep_period=2)
    c.eval.update(tasks="a2v", num_clips=2, batch_size=2, num_sample_videos=1,
                  curve_tasks="a2v", curve_num_clips=2)
  return c
