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
  pipeline the main job's model, latents and training recipe (configs/avdit_pipeline.py: MAGVIT-v2
           video and log-magnitude audio latents, read from a finished pipeline run's
           latent_cache/ and magvit2_decoder/, `pipeline_workdir`), each mixture alone
           (no clean-conditioned examples: the paper's Table 1), `PIPELINE_STEPS` steps:
             python -m avdit.main --config=configs/monl_ablation.py:pipeline \
                 --config.pipeline_workdir=PIPELINE_DIR --workdir=DIR --mode=experiment
  pipeline_budget
           item 4 of the Table 1 issue, the budget: `pipeline`'s settings (one training seed)
           for twice its steps, a checkpoint every eighth of them on the learning curve with
           its validation loss (each task's held-out x̂0 error), to see where the single
           strategies stop improving on the tasks they are trained for:
             python -m avdit.main --config=configs/monl_ablation.py:pipeline_budget \
                 --config.pipeline_workdir=PIPELINE_DIR --workdir=DIR --mode=experiment
  tiny     tests: one setting, a few steps, one task.
"""
import ml_collections

from configs import avdit_pipeline
from configs import avdit_synthetic

COMMAND = ("python -m avdit.main --config=configs/monl_ablation.py --workdir=/tmp/monl_ablation "
           "--mode=experiment")
VARIANTS = ("default", "pipeline", "pipeline_budget", "tiny")
# What the continuation and inpainting of the suite measure where the past (and future) is given.
GIVEN_PAST = dict(tasks="av_continue|av_inpaint", metrics=(
    "continuity_jump_px,subject_background_color_error,subject_disc_color_error"))
ACROSS = "a2v|v2a|av_continue|av_inpaint"
MAIN_METRICS = ("av_height_error_px,sync_f1,continuity_jump_px,subject_disc_found_fraction,"
                "subject_background_color_error,subject_disc_color_error")
# The paper's Table 1 claims, in its order, each judged by paired comparisons of two rows.
CLAIMS = (
    dict(text="MoNL is best on average (vs vanilla)", better="monl",
         worse="vanilla+replacement", tasks=ACROSS, metrics=MAIN_METRICS),
    dict(text="MoNL is best on average (vs pm)", better="monl", worse="pm", tasks=ACROSS,
         metrics=MAIN_METRICS),
    dict(text="MoNL is best on average (vs pt)", better="monl", worse="pt", tasks=ACROSS,
         metrics=MAIN_METRICS),
    dict(text="vanilla fails at continuation and inpainting", better="monl",
         worse="vanilla+replacement", **GIVEN_PAST),
    dict(text="per-modality levels help a2v and v2a", better="pm", worse="vanilla+replacement",
         tasks="a2v|v2a", metrics="av_height_error_px,sync_f1"),
    dict(text="per-time-segment levels help continuation", better="pt",
         worse="vanilla+replacement", **GIVEN_PAST),
)
# 4200 steps of batch 4 (the decay over the last 840), ~11 minutes a setting and 1.5 for its
# suite on a 2-core AVX-512 EPYC (Zen 4): four settings take ~50 minutes a training seed. The
# main job's model follows the other modality from ~5000 of its steps at the peak learning rate
# (README); at this budget vanilla's a2v already does (2.35 px against 6.7 by chance).
PIPELINE_STEPS = 4200


def _pipeline_experiment(experiment: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The main job's AVDiT on a finished pipeline run's latents, one noise mixture per setting."""
  c = avdit_pipeline.get_config("default")
  c.variant = "pipeline"
  c.job = "experiment"
  # The pipeline run whose latent cache and (fine-tuned) video decoder every setting uses.
  c.pipeline_workdir = ml_collections.config_dict.placeholder(str)
  c.experiment = experiment
  c.experiment.command = (
      "python -m avdit.main --config=configs/monl_ablation.py:pipeline "
      "--config.pipeline_workdir=PIPELINE_DIR --workdir=/tmp/monl_pipeline --mode=experiment")
  # The mixtures alone: the job's clean-conditioned examples (a2v, v2a, continuations at t = 0)
  # would give every setting, vanilla included, the per-element levels of the tasks.
  c.diffusion.condition_rate = 0.0
  # ... and no late phase of inpaintings (the job's, which came later; contrastive_ablation's
  # fine-tuning brings the job's condition_rate back with its first conditioning).
  c.diffusion.late_condition_tasks = ""
  c.train.late_fraction = 0.0
  # The levels' uniform density, as the README's ablation results were measured (the job's
  # log-SNR-normal density, half of the audio's uniform, came later).
  c.diffusion.timestep_density = "uniform"
  # A fixed number of steps, not the job's clock; the decay over the last 20% as in the job.
  c.job_minutes = 0.0
  c.train.update(num_steps=PIPELINE_STEPS, checkpoint_every=PIPELINE_STEPS // 2,
                 keep_period=PIPELINE_STEPS // 2)
  # One plain sampler for every row (vanilla samples by replacement): DDIM 50 (the job's sampler
  # when the README's rows were measured; it samples with DDPM 100 since), no guidance, no
  # autoguidance; FVD off (I3D costs ~1 minute a task here).
  c.sample.update(sampler="ddim", num_steps=50, guidance_by_task="", autoguidance_weight=0.0)
  c.eval.update(tasks="a2v|v2a|av_continue|av_inpaint", i3d_weights="none")
  c.experiment.settings = "vanilla|pm|pt|monl"
  c.experiment.methods = dict(vanilla="replacement")
  c.experiment.curve_tasks = "a2v|v2a"  # at each kept checkpoint, 8 clips (the job's curve)
  return c


def _pipeline_budget(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`pipeline`'s settings, one seed, twice the steps, eight points on the curve."""
  c.variant = "pipeline_budget"
  c.experiment.update(
      seeds="0",
      # What each is trained for: pm the a2v and v2a levels, pt the continuation's, vanilla
      # the joint levels (the curve adds every run's joint validation loss).
      curve_tasks="a2v|v2a|av_continue",
      command=c.experiment.command.replace(":pipeline ", ":pipeline_budget ").replace(
          "/tmp/monl_pipeline", "/tmp/monl_budget"))
  # ~20 minutes a setting's training and 5 its eight curve points on a 2-core AVX-512 EPYC
  # (Zen 4): ~1 h 45 min in all, a seed (README, "Twice the budget, one seed").
  steps = 2 * PIPELINE_STEPS
  c.train.update(num_steps=steps, checkpoint_every=steps // 8, keep_period=steps // 8)
  return c


def get_config(variant: str = "default") -> ml_collections.ConfigDict:
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r} of monl_ablation: one of {VARIANTS}")
  experiment = ml_collections.ConfigDict(dict(
      # Noise mixtures (avdit.diffusion.monl.parse_mixture), in the paper's Table 1 order.
      settings="vanilla|pm|pt|ptm|pt,pm,ptm|monl",
      # Sampling methods per setting (default monl). A vanilla model knows one scalar timestep:
      # conditional tasks by replacement, and again with reconstruction guidance.
      methods=dict(vanilla="replacement|reconstruction"),
      # Training seeds (config.seed = data.shuffle_seed = k), each setting trained once per
      # seed in DIR/<setting>/ (seed 0) or DIR/<setting>_seed<k>/; all evaluated on the same
      # held-out clips and sampler seed. "0,1,2" gives intervals over seeds as well as clips.
      seeds="0",
      # Tasks of a learning curve per run (its kept checkpoints, eval.curve_num_clips clips):
      # DIR/learning_curves.png, the settings against the step. Empty: none.
      curve_tasks="",
      # The paper's claims comparison.md judges (() for settings without these rows).
      claims=CLAIMS,
      title="MoNL vs its ablations on the synthetic world (Table 1 at small scale)",
      command=COMMAND,
  ))
  if variant.startswith("pipeline"):
    c = _pipeline_experiment(experiment)
    return _pipeline_budget(c) if variant == "pipeline_budget" else c
  c = avdit_synthetic.get_config("tiny" if variant == "tiny" else "default")
  c.variant = variant
  c.job = "experiment"
  c.experiment = experiment
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
    c.experiment.claims = ()
    c.train.update(num_steps=3, checkpoint_every=3)
    c.eval.tasks = "av_continue"
  return c
