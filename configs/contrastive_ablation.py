"""MoNL vs MoNL + CDL vs MoNL + CDCD on the synthetic world (SPEC §7), same budget and seed.

  python -m avdit.main --config=configs/contrastive_ablation.py --workdir=DIR --mode=experiment

The model, data, sampler and task suite of configs/monl_ablation.py, trained with MoNL alone
and with each contrastive term (DIR/<setting>/), compared in DIR/comparison.md.

Weights. Our MoNL loss is a mean over latent elements; CDL's log-likelihood ratio is a sum over
a clip's d latent elements (d = 95 680 here), so its weight is ~1/d (the cdl module docstring);
CDCD's InfoNCE is O(log(N + 1)) per example, against a MoNL loss of ~0.1, so the paper's
λ = 5e-5 (for their summed loss) would make it vanish: 0.02 puts it at ~20% of the objective.
Neither was tuned beyond keeping CDL's integral inside the schedule's trained log-SNR range.
Cost: CDL with K = 1 adds 2 denoiser passes per step, CDCD with N = 4 negatives (2 intra,
2 inter) adds 4; the experiment uses a shorter budget than the MoNL ablation to fit on 2 cores.

Variants:
  default   the synthetic world at monl_ablation's default geometry, 500 steps from scratch.
  pipeline  CDL's protocol (papers/cdl.txt: pre-trained models fine-tuned with the term) on the
            main job's model: every setting fine-tunes a finished pipeline run's AVDiT (which
            has learned the link, README) for `FINE_TUNE_STEPS` with the job's objective (MoNL
            with its clean-conditioned examples), alone or with one contrastive term:
              python -m avdit.main --config=configs/contrastive_ablation.py:pipeline \
                  --config.pipeline_workdir=PIPELINE_DIR --workdir=DIR --mode=experiment
  pipeline_equal_minutes
            the same, one seed, with MoNL alone for CDCD's minutes (monl_6x, 6x the steps).
  tiny      tests.
"""
import ml_collections

from configs import avdit_pipeline
from configs import monl_ablation

COMMAND = ("python -m avdit.main --config=configs/contrastive_ablation.py "
           "--workdir=/tmp/contrastive_ablation --mode=experiment")


VARIANTS = ("default", "pipeline", "pipeline_equal_minutes", "tiny")


def get_config(variant: str = "default") -> ml_collections.ConfigDict:
  # Its own list: monl_ablation's other variants (pipeline_budget) are not contrastive ones.
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r} of contrastive_ablation: one of {VARIANTS}")
  equal_minutes = variant == "pipeline_equal_minutes"
  c = monl_ablation.get_config("pipeline" if equal_minutes else variant)
  c.experiment.update(
      settings="monl|monl_cdl|monl_cdcd",
      methods={},
      title="MoNL vs MoNL + CDL vs MoNL + CDCD on the synthetic world",
      command=COMMAND)
  # The paper's claim for its contrastive terms: better audiovisual alignment (a2v and v2a).
  c.experiment.claims = tuple(
      dict(text=f"{term.upper()} helps a2v and v2a", better=f"monl_{term}", worse="monl",
           tasks="a2v|v2a", metrics="av_height_error_px,sync_f1,av_align")
      for term in ("cdl", "cdcd"))
  c.experiment.overrides = ml_collections.ConfigDict(dict(
      # The log-SNR integral is kept inside the trained range (λ(1) = 9.2 of the linear-β
      # schedule) and ζ scaled to it: with the paper's ζ ~ U[6, 15] and the integral up to 25,
      # the untrained high-SNR x0-predictions blew the log-likelihood ratios up to ~1e10.
      monl_cdl=dict(diffusion=dict(noise_mixture="monl", cdl_weight=1e-5,
                                   cdl_logsnr_samples=1, cdl_zeta_range=(2.0, 6.0),
                                   cdl_logsnr_max=9.2)),
      monl_cdcd=dict(diffusion=dict(noise_mixture="monl", cdcd_weight=0.02,
                                    cdcd_num_negatives=4, cdcd_negatives="mixed")),
  ))
  if variant == "default":
    c.train.update(num_steps=500, checkpoint_every=250)
  elif variant == "pipeline" or equal_minutes:
    _fine_tune_pipeline_model(c, equal_minutes)
  else:
    c.experiment.settings = "monl|monl_cdcd"
    c.experiment.claims = c.experiment.claims[1:]  # CDCD's
    c.experiment.overrides.monl_cdcd.diffusion.update(cdcd_num_negatives=1,
                                                       cdcd_negatives="inter")
  return c


# Fine-tuning steps of batch 4 per setting; the decay over the last 20% as in the job.
FINE_TUNE_STEPS = 1050


def _fine_tune_pipeline_model(c: ml_collections.ConfigDict, equal_minutes: bool) -> None:
  """monl_ablation's pipeline variant turned into fine-tuning of the pipeline run's AVDiT;
  `equal_minutes` adds the equal-cost control (monl_6x) and trains one seed."""
  c.experiment.title = ("MoNL vs MoNL + CDL vs MoNL + CDCD, each fine-tuning the main job's "
                        "AVDiT on its latents")
  variant = "pipeline_equal_minutes" if equal_minutes else "pipeline"
  c.experiment.command = (
      f"python -m avdit.main --config=configs/contrastive_ablation.py:{variant} "
      "--config.pipeline_workdir=PIPELINE_DIR --workdir=/tmp/contrastive_pipeline "
      "--mode=experiment")
  # The job's AVDiT (<pipeline_workdir>/avdit, its latest checkpoint), resolved with the
  # directory the user gives.
  c.train.init_from = c.get_ref("pipeline_workdir") + "/avdit"
  # The job's objective, clean-conditioned a2v / v2a / continuations included: what the model
  # was trained with, and the conditions CDCD contrasts.
  c.diffusion.condition_rate = avdit_pipeline.get_config("default").diffusion.condition_rate
  c.train.update(num_steps=FINE_TUNE_STEPS, checkpoint_every=FINE_TUNE_STEPS,
                 keep_period=FINE_TUNE_STEPS)
  c.experiment.curve_tasks = ""  # one kept checkpoint: nothing to draw
  # CDL's weight ~1/d (the cdl module docstring) for the d = 35 520 latent elements of a clip
  # here (5 x 4 x 4 x 16 video + 107 x 320 audio).
  c.experiment.overrides.monl_cdl.diffusion.cdl_weight = 3e-5
  if equal_minutes:
    # MoNL alone given CDCD's minutes (a CDCD step costs ~6 of MoNL's here).
    steps = 6 * FINE_TUNE_STEPS
    c.experiment.overrides.monl_6x = dict(diffusion=dict(noise_mixture="monl"), train=dict(
        num_steps=steps, checkpoint_every=steps, keep_period=steps))
    c.experiment.settings += "|monl_6x"
