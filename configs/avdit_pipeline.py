"""The whole pipeline on the synthetic world: MAGVIT-v2 (+SoundStream), latent cache, AVDiT, eval.

  python -m avdit.main --config=configs/avdit_pipeline.py --workdir=DIR --mode=pipeline

runs, each resumable in its own sub-directory of DIR:
  1. magvit2/       the video autoencoder   (config.video_autoencoder = magvit2_synthetic)
     magvit2_decoder/  with `finetune_video_decoder` (on in the default): its decoder
                   fine-tuned on noisy latents, its encoder held (config.video_decoder =
                   magvit2_synthetic:decoder); it then encodes the cache and decodes the samples
  2. soundstream/   the audio autoencoder   (config.audio_autoencoder; soundstream variants only)
  3. latent_cache/  `encode.num_clips` training clips encoded (ArrayRecord + meta.json)
  4. avdit/         AVDiT + MoNL trained on the cached latents
  5. avdit/samples  every task, decoded to mp4 with sound
  6. avdit/eval     the task suite beside its real and chance rows, and the learning curve
Variants: default (the README's main job: MAGVIT-v2 video latents of 16 channels, log-magnitude
STFT audio latents decoded by Griffin-Lim; AVDiT trains what the job's 60 minutes leave on the
machine it runs on, 12 600 steps of batch 4 on a 2-core AVX-512/AMX Xeon, 7800-10 200 on a
2-core EPYC; its samples follow the other modality, see the README) and tiny (tests);
soundstream and soundstream_tiny: the paper's pair of learned autoencoders (SoundStream's round
trip alone puts the pitch 1.5 px from the disc and the AVDiT on its latents stayed at chance,
README); folder and folder_tiny: the default's stages on your own videos, a TFDS dataset
prepared from a folder of video files at this config's clip geometry (all three models read it;
data.raw.data_dir is the one setting to give):

  python -m avdit.data.prepare --config=configs/avdit_pipeline.py:folder --manual_dir=MY_VIDEOS \
      --data_dir=TFDS_DIR
  python -m avdit.main --config=configs/avdit_pipeline.py:folder \
      --config.data.raw.data_dir=TFDS_DIR --workdir=DIR
"""
import ml_collections

from configs import avdit_synthetic
from configs import magvit2_synthetic
from configs import soundstream_synthetic


# The dataset `prepare --config=configs/avdit_pipeline.py:folder` writes (geometry from c.clip).
FOLDER_DATASET = "av_folder/avdit_pipeline"
# The main job keeps, after AVDiT's training, the time of this many training clips for its
# samples, suite and learning curve (training.budget.reserve_steps). With FVD/KVD on every task
# they took 11.0 of the 14.6 minutes that 26 000 clips were on a 2-core AVX-512 EPYC (0.135 s a
# step of 4) and 12.0 of 14.4 on an AVX-512/AMX Xeon; I3D costs ~1 s a clip there, ~1 minute a
# task with its real and chance rows, so FVD/KVD on a2v alone (eval.distribution_tasks) saves
# ~5 of them: with it the evaluation took 8.2 of the 9.5 minutes that 16 000 clips were on the
# EPYC (0.143 s a step). 18 000 leave a margin after the video's autoguidance (its second
# network cost ~10-30 s there). With DDPM 100 (below) they took 11.5 minutes, 17 800 clips' time,
# on the EPYC (0.155 s a step; with 20 000 kept, the job took 59 min 27 s): 23 000 leave ~3
# minutes of margin for a machine that slows down after the clock's last plan.
PIPELINE_RESERVE_CLIPS = 23000
VARIANTS = ("default", "tiny", "folder", "folder_tiny", "soundstream", "soundstream_tiny")


def folder_data(batch_size: int) -> ml_collections.ConfigDict:
  """A prepared av_folder TFDS dataset (avdit/data/pipeline.py, name "tfds")."""
  return ml_collections.ConfigDict(dict(
      name="tfds", tfds_name=FOLDER_DATASET,
      data_dir=ml_collections.config_dict.placeholder(str),  # --config.data.raw.data_dir=...
      train_split="train", eval_split="test",
      stride_frames=ml_collections.config_dict.placeholder(int),  # None: back to back
      split_rule="auto", test_fraction=0.1, split_seed=0, clip_fallback=True,
      seed=0, shuffle_seed=0, batch_size=batch_size, worker_count=0, prefetch_buffer=2))


def _read_folder(c: ml_collections.ConfigDict) -> None:
  """All three models on the prepared folder: the autoencoders' data refer to data.raw's
  fields (one override reaches all three), each keeping its own batch size."""
  c.data.raw = folder_data(c.data.raw.batch_size)
  for ae in (c.video_autoencoder, c.video_decoder, c.audio_autoencoder):
    batch_size = ae.data.batch_size
    ae.data = folder_data(batch_size)
    for field in ("tfds_name", "data_dir", "train_split", "eval_split", "stride_frames"):
      ae.data[field] = c.data.raw.get_ref(field)


def _logmag_audio(c: ml_collections.ConfigDict) -> None:
  """MAGVIT-v2 video with log-magnitude STFT audio (no SoundStream), trained as the fixed-latent
  config that learned v2a (configs/avdit_fixed_latents.py): x0 with the skip path, half the
  examples conditioned on top of MoNL, the time-aligned cross-modal pool, and a loss balanced
  between the modalities (the video's 80 x 8 latent elements are 2% of the audio's 107 x 320).
  Measured (README, The main job): the first model here whose a2v, v2a and joint samples follow
  the other modality (A/V height error 2.0 / 1.8 / 2.1 px at 4200 steps of batch 8; chance
  5.4-7.8)."""
  c.latent.update(audio_transform="logmag", audio_channels=c.latent.audio_hop,
                  shared_stats="audio")
  c.data.raw.disc_brighter = True
  c.model.cross_modal_pool = True
  c.diffusion.update(prediction="x0", condition_rate=0.5, x0_skip=True, modality_balance=True)
  # The levels drawn with their log-SNR ~ Normal(0, 2) (the middle levels, where the video is
  # learned), half of the audio's uniform instead (its high levels are where it reads the disc).
  # Against the video's density alone (the audio all uniform), paired at the hour's 9600 steps:
  # a2v 1.31 -> 0.84 px, a disc in 89-92% of the a2v, joint and continuation frames against
  # 67-75%, v2a 1.21 px (1.28); a fifth uniform: v2a 1.71 px; none: v2a at chance
  # (docs/learning_the_link.md, "The density of the training levels").
  c.diffusion.update(timestep_density="logsnr_normal", timestep_uniform_fraction="audio:0.5")


def get_config(variant: str = "default") -> ml_collections.ConfigDict:
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r} of avdit_pipeline: one of {VARIANTS}")
  on_folder = variant.startswith("folder")
  soundstream = variant.startswith("soundstream")
  variant = "tiny" if variant.endswith("tiny") else "default"
  c = avdit_synthetic.get_config(variant)
  c.job = "pipeline"
  c.job_minutes = 0.0  # > 0: the job's wall-clock budget, AVDiT trains what fits (default variant)
  c.video_autoencoder = magvit2_synthetic.get_config(variant)
  # Stage 1b, off by default: MAGVIT-v2's decoder fine-tuned on noisy latents (its init_from, the
  # magvit2/ run, and latent.video_autoencoder_workdir, magvit2_decoder/, filled in by the
  # pipeline). A decoder that tolerates AVDiT's errors draws more of its discs (README).
  c.finetune_video_decoder = False
  c.video_decoder = magvit2_synthetic.get_config("decoder_tiny" if variant == "tiny" else "decoder")
  # One network on one clip geometry: an override of either reaches both.
  c.video_decoder.model, c.video_decoder.clip = c.video_autoencoder.model, c.video_autoencoder.clip
  c.audio_autoencoder = soundstream_synthetic.get_config(variant)
  c.clip = c.video_autoencoder.clip  # all three models see the same clips (32x32 by default)
  video_ae, audio_ae = c.video_autoencoder.model.kwargs, c.audio_autoencoder.model.kwargs
  # Workdirs are filled in by the pipeline (DIR/magvit2 or DIR/magvit2_decoder, DIR/soundstream)
  # unless given.
  c.latent = ml_collections.ConfigDict(dict(
      name="learned", video_autoencoder_workdir="", audio_autoencoder_workdir="",
      spatial_factor=8, temporal_factor=4, audio_hop=320,
      video_channels=video_ae["latent_dim"], audio_channels=audio_ae["latent_dim"],
      audio_transform="soundstream",  # or a fixed transform (latent_space.AUDIO_TRANSFORMS)
      stats_clips=64))
  raw = c.data
  c.data = ml_collections.ConfigDict(dict(
      name="latent_cache", cache_dir="", raw=raw, seed=raw.seed, batch_size=raw.batch_size,
      shuffle_seed=raw.shuffle_seed, worker_count=0, prefetch_buffer=raw.prefetch_buffer))
  # SoundStream's latents (16 video / 16 audio channels) are narrower than the model, so ε or v can
  # be predicted; v keeps the samples at the data's scale (under ε an error at high noise is
  # amplified ~150x in x̂0: an under-trained ε model sampled latents ~11x the data's std). The
  # default's 320-channel log-magnitude audio is wider: x0 with the skip path (_logmag_audio).
  c.diffusion.prediction = "v"
  c.encode = ml_collections.ConfigDict(dict(num_clips=4096, batch_size=32))
  # Time RoPE: audio latents (50/s) and video segments (one per 0.5 s) share one time axis.
  c.model.update(width=192, num_heads=4, time_rope=True, self_condition=False)
  c.data.batch_size = 16
  c.train.update(num_steps=1500, learning_rate=1e-3, warmup_steps=100, checkpoint_every=300,
                 keep_period=300)
  # 6. The task suite with its real and chance rows, then the learning curve over the kept
  # checkpoints (avdit/evaluation/{suite,curve}.py).
  c.pipeline_eval = True
  c.eval.update(num_sample_videos=2, curve_tasks="a2v|v2a", curve_num_clips=8)
  if variant == "tiny":
    c.encode.update(num_clips=16, batch_size=8)
    c.model.update(width=64)
    c.data.batch_size = 2
    c.train.update(num_steps=4, warmup_steps=1, checkpoint_every=2, keep_period=2)
    c.eval.update(tasks="a2v", num_clips=2, batch_size=2, num_sample_videos=1,
                  curve_tasks="a2v", curve_num_clips=2)
  if soundstream:
    c.variant = "soundstream_tiny" if variant == "tiny" else "soundstream"
  else:
    _logmag_audio(c)
    if variant != "tiny":
      # Batch 4 for twice the steps of batch 8 (the same clips, ~8% more minutes here), as batch
      # 8 was for batch 16: v2a 1.65 / 1.79 px against 2.08 / 2.06 in two seeds, a2v 1.94 / 2.46
      # against 1.94 / 2.15, joint within noise (docs/learning_the_link.md).
      c.data.batch_size = 4
      # The whole job in 60 minutes on the machine it runs on: AVDiT takes the steps that fit
      # what its earlier stages leave, less RESERVE_CLIPS training clips' time for the samples,
      # the suite and the curve (training.budget). More steps keep buying quality (README):
      # 12 600 of batch 4 on a 2-core AVX-512/AMX Xeon. The learning rate holds its peak and
      # decays over the last 20% of the steps, started by the clock (budget.ClockPlan), so a
      # machine whose speed drifts still ends on time. --config.train.num_steps=N trains
      # exactly N steps instead.
      c.job_minutes = 60.0
      c.train.update(num_steps=0, budget_reserve_clips=PIPELINE_RESERVE_CLIPS,
                     budget_kept_checkpoints=7, keep_period=600, decay_fraction=0.2)
      # Guidance pulls v2a's tone onto the disc (-0.17 [-0.32, +0.02] px on the suite's clips,
      # -0.37 [-0.59, -0.19] on 16 others) but costs a2v 21 points of its disc count: v2a only.
      c.sample.guidance_by_task = "v2a=1"
      # The decoder fine-tuned on noisy latents (stage 1b, ~7 min) draws the disc in 15-20 more
      # points of the generated frames, heights unchanged, where the same minutes of AVDiT steps
      # buy ~0.3 px of height (docs/learning_the_link.md): the minutes come from FVD/KVD, now
      # on a2v alone (the README's row), and the reserve above.
      c.finetune_video_decoder = True
      c.eval.distribution_tasks = "a2v"
      # The video guided by the run's own model at a third of its steps (autoguidance, w = 0.5):
      # on two models the disc's colour 4-8 levels closer in continuations and inpainting,
      # joint's height -0.24 px on the second, nothing significantly worse; guiding the audio
      # too adds clicks (docs/learning_the_link.md, "Autoguidance").
      c.sample.update(autoguidance_weight=0.5, autoguidance_modalities="video",
                      autoguidance_fraction=1 / 3)
      # The conditioned examples are a2v, v2a and continuations until the last 46% of the
      # steps (started by the clock), then inpaintings with a quarter v2a: the av_inpaint jump
      # 2.34 -> 1.47 and 1.80 -> 1.42 px in two training seeds (paired at 9600 steps; 2.33 ->
      # 1.58 in the job's own hour), v2a +0.13 / +0.03 px (+0.15 in the job), the rest within
      # noise but the continuation's disc colour (+2.6 / +0.7).
      # More inpaintings from the start, or in the decay alone, did not move the jump; all of
      # them inpaintings in the late phase cost v2a +0.2-0.4 px (docs/learning_the_link.md).
      c.train.late_fraction = 0.46
      c.diffusion.late_condition_tasks = "v2a:1,inpaint:3"
      # DDPM's ancestral steps, 100 of them, not DDIM 50: on the 16-channel job's model, paired
      # over 32 held-out clips and the same noise, a disc in +9 [+3, +16] points of joint's
      # frames (89% -> 98%), +4 [+1, +8] of the continuation's (91% -> 96%), a2v -0.17 px, the
      # rest within noise; ~3 minutes more of the job's sampling (docs/learning_the_link.md,
      # "Ancestral sampling on the 16-channel model"). On the weaker 8-channel models it cost
      # 6-7 points of the disc count instead.
      c.sample.update(sampler="ddpm", num_steps=100)
  if on_folder:
    _read_folder(c)
    c.variant = "folder_tiny" if variant == "tiny" else "folder"
  return c
