"""The paper's Table 1 at small scale: AVDiTs trained with each noise setting, compared.

  python -m avdit.main --config=configs/monl_ablation.py --workdir=DIR --mode=experiment

Every setting trains the same model on the same synthetic world with the same budget and seed
(DIR/<setting>/; with `experiment.seeds` = "0,1,2" also DIR/<setting>_seed1/, ..._seed2/), then
runs the task suite with the same held-out clips, sampler and seed (DIR/<setting>/eval/<method>/);
DIR/comparison.md is the table, means with 95% bootstrap intervals over clips (and seeds) and the
significant paired differences (see avdit/workflows/experiment.py, avdit/evaluation/report.py).

Variants:
  default  17 frames 32x32 at 8 fps + 2.125 s of 16 kHz audio (space-to-depth latents:
           5 x 4 x 4 video + 107 audio tokens), width 128, depth 4, batch 8; the README's
           Results table.
  tiny     tests: one setting, a few steps, one task.
"""
import ml_collections

from configs import avdit_synthetic

COMMAND = ("python -m avdit.main --config=configs/monl_ablation.py --workdir=/tmp/monl_ablation "
           "--mode=experiment")


def get_config(variant: str = "default") -> ml_collections.ConfigDict:
  if variant not in ("tiny", "default"):
    raise ValueError(f"unknown variant {variant!r} of monl_ablation: tiny or default")
  c = avdit_synthetic.get_config("tiny" if variant == "tiny" else "default")
  c.variant = variant
  c.job = "experiment"
  c.experiment = ml_collections.ConfigDict(dict(
      # Noise mixtures (avdit.diffusion.monl.parse_mixture), in the paper's Table 1 order.
      settings="vanilla|pm|pt|ptm|pt,pm,ptm|monl",
      # Sampling methods per setting (default monl). A vanilla model knows one scalar timestep:
      # conditional tasks by replacement, and again with reconstruction guidance.
      methods=dict(vanilla="replacement|reconstruction"),
      # Training seeds (config.seed = data.shuffle_seed = k), each setting trained once per
      # seed in DIR/<setting>/ (seed 0) or DIR/<setting>_seed<k>/; all evaluated on the same
      # held-out clips and sampler seed. "0,1,2" gives intervals over seeds as well as clips.
      seeds="0",
      title="MoNL vs its ablations on the synthetic world (Table 1 at small scale)",
      command=COMMAND,
  ))
  # x0-prediction (as avdit_synthetic): the space-to-depth tokens (768 video / 320 audio
  # channels) are wider than the model (128); under eps-prediction the noise the network cannot
  # represent is never removed and samples stay noise (schedule.prediction_to_x0_eps).
  c.diffusion.prediction = "x0"
  if variant == "default":
    c.clip.update(height=32, width=32)
    c.model.update(width=128, depth=4, num_heads=4, timestep_embed_dim=128, adaln_lora_rank=8)
    c.train.update(num_steps=1000, warmup_steps=100, log_every=100, checkpoint_every=500)
    c.sample.update(sampler="ddim", num_steps=25)
  else:
    c.experiment.settings = "monl"
    c.train.update(num_steps=3, checkpoint_every=3)
    c.eval.tasks = "av_continue"
  return c
