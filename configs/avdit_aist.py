r"""AVDiT on AIST++ street dance, as MM-Diffusion lays the data out (SPEC §2).

64x64 frames at 10 fps, 16 kHz mono audio; clips of 17 frames (1.7 s: MM-Diffusion's 16 frames
plus the frame the causal video autoencoder encodes alone, 27 200 audio samples), cut back to
back from each video. The data is the TFDS dataset `av_folder/aist`, prepared once from
MM-Diffusion's folder of mp4s (its `train/` and `test/` sub-folders are the splits):

  python -m avdit.data.prepare --dataset=aist --manual_dir=/data/AIST++_crop \
      --data_dir=/data/tensorflow_datasets
  python -m avdit.main --config=configs/avdit_aist.py \
      --config.data.data_dir=/data/tensorflow_datasets --workdir=/tmp/avdit_aist

`DATA_DIR` below is a placeholder: pass the real TFDS data_dir with --config.data.data_dir=...
(`--config=configs/avdit_aist.py` on the prepare command line reads the geometry, the dataset name
and data.data_dir from here instead of --dataset).

Variants: `default` (the synthetic config's model, space-to-depth latents, batch 8) and `tiny`
(the same data geometry with a 2-layer d=64 model and batch 2, for checks on a CPU).
"""
import ml_collections

from configs import avdit_synthetic

DATA_DIR = "/path/to/tensorflow_datasets"  # placeholder: --config.data.data_dir=...
# MM-Diffusion's AIST++ / Landscape geometry with a 1 + 4k clip length (av_folder.PRESETS).
CLIP = dict(num_frames=17, fps=10.0, height=64, width=64, sample_rate=16000)


def tfds_config(variant: str, dataset: str) -> ml_collections.ConfigDict:
  """The synthetic config's structure on the prepared TFDS dataset `av_folder/<dataset>`."""
  if variant not in ("default", "tiny"):
    raise ValueError(f"unknown variant {variant!r} of avdit_{dataset}: default or tiny")
  c = avdit_synthetic.get_config("default")
  c.variant = variant
  c.clip.update(CLIP)
  c.data = ml_collections.ConfigDict(dict(
      name="tfds", tfds_name=f"av_folder/{dataset}", data_dir=DATA_DIR,
      train_split="train", eval_split="test",
      # How `python -m avdit.data.prepare --config=...` cuts and splits the files (the preset's
      # values; changing them needs another tfds_name).
      stride_frames=ml_collections.config_dict.placeholder(int),  # None: back to back (F)
      split_rule="folders", test_fraction=0.1, split_seed=0,
      clip_fallback=True,  # rule ratio, no file in test: hold out the last clips of each file
      seed=0,  # unused by TFDS data (the eval split holds clips out), kept for the shared code
      shuffle_seed=0, batch_size=8, worker_count=0, prefetch_buffer=2,
  ))
  if variant == "tiny":
    c.latent.stats_clips = 8
    c.data.batch_size = 2
    c.model.update(width=64, depth=2, num_heads=4, timestep_embed_dim=64, adaln_lora_rank=4)
    c.train.update(num_steps=6, warmup_steps=2, log_every=2, checkpoint_every=3,
                   async_checkpointing=False)
    c.sample.update(num_steps=4, num_clips=1, tasks="joint|a2v|av_inpaint")
    c.eval.i3d_weights = "none"  # as every tiny variant: a check of the machinery, not FVD
  return c


def get_config(variant: str = "default") -> ml_collections.ConfigDict:
  return tfds_config(variant, "aist")
