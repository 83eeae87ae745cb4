"""The MoNL ablation (the paper's Table 1 at small scale): one config, every training setting.

  python -m avdit.main --config=configs/monl_ablation.py --workdir=DIR --mode=experiment

For each setting in `experiment.settings` (by default a noise mixture of avdit.diffusion.monl:
vanilla, pm, pt, ptm, "pt,pm,ptm", monl; or any config overrides, `experiment.overrides`) an
AVDiT is trained in DIR/<setting>/ with the same budget,
data and seed, then evaluated by the task suite (avdit.evaluation.suite) with a fixed eval seed.
Models trained with one scalar timestep (`vanilla`) cannot take a clean condition at t = 0, so
they sample conditional tasks with the replacement method, and once more with reconstruction
guidance (`experiment.methods`). Every run is resumable: a finished training is
recognised by its checkpoint, a finished evaluation by its results.json.

Writes DIR/comparison.md (one table per metric, settings as rows, tasks as columns, mean
ranks), DIR/comparison.png and DIR/comparison.json.
"""
from __future__ import annotations

import json

from absl import logging

from avdit import workdir as workdir_lib
from avdit.evaluation import report
from avdit.evaluation import suite

EVALUATION_FILE = "results.json"


def setting_name(setting: str) -> str:
  """A directory-safe name of a setting ("pt,pm,ptm" -> "pt-pm-ptm")."""
  return setting.replace(",", "-").replace("/", "-").replace(":", "")


def setting_config(config, setting: str, method: str):
  """The AVDiT config of one setting and sampling method.

  `experiment.overrides[<setting name>]` (nested dicts) is applied when present; a setting
  without overrides is a noise mixture (diffusion.noise_mixture = setting).
  """
  name = setting_name(setting)
  overrides = config.experiment.get("overrides", {})
  config = config.copy_and_resolve_references()
  with config.unlocked():
    if name in overrides:
      config.update(overrides[name].to_dict())
    else:
      config.diffusion.noise_mixture = setting
    config.sample.method = method
    del config["experiment"]
    config.job = "train_and_sample"  # one setting is one AVDiT
  return config


def runs(config) -> list[tuple[str, str, str]]:
  """(row label, setting, sampling method) of every row of the comparison.

  Settings listed in `experiment.methods` (name -> "m1|m2") are evaluated with each method
  (vanilla: replacement and reconstruction guidance); the others with `monl`.
  """
  rows = []
  methods_of = config.experiment.get("methods", {})
  for setting in (s.strip() for s in config.experiment.settings.split("|") if s.strip()):
    name = setting_name(setting)
    for method in methods_of.get(name, "monl").split("|"):
      rows.append((name if method == "monl" else f"{name}+{method}", setting, method))
  return rows


def _finished_eval(eval_path, step: int) -> dict | None:
  if not eval_path.exists():
    return None
  results = json.loads(eval_path.read_text())
  return results if results.get("checkpoint_step") == step else None


def run(config, workdir: str) -> dict:
  """Trains and evaluates every setting; returns {row label: suite results}."""
  from avdit.training import train  # pylint: disable=g-import-not-at-top
  results_by_row = {}
  trained = {}
  for label, setting, method in runs(config):
    run_config = setting_config(config, setting, method)
    run_dir = str(workdir_lib.path(workdir, setting_name(setting)))
    if setting not in trained:
      logging.info("experiment: training %s in %s", setting, run_dir)
      summary = train.train(run_config, run_dir)
      train.write_summary(run_dir, summary)
      if summary["stopped_by"]:
        return {"stopped_by": summary["stopped_by"], "setting": setting}
      trained[setting] = summary["step"]
    eval_path = workdir_lib.path(run_dir, suite.EVAL_DIR, method, EVALUATION_FILE)
    results = _finished_eval(eval_path, trained[setting])
    if results is None:
      logging.info("experiment: evaluating %s (%s sampling)", setting, method)
      results = suite.evaluate(run_config, run_dir, name=label, subdir=method)
    results_by_row[label] = results
  notes = (f"{len(config.experiment.settings.split('|'))} settings trained for "
           f"{config.train.num_steps} steps each (batch {config.data.batch_size}, seed "
           f"{config.seed}); the suite samples {config.eval.num_clips} held-out clips per task "
           f"with {config.sample.sampler}, {config.sample.num_steps} steps. Regenerate: "
           f"`{config.experiment.command}`.")
  with workdir_lib.local_staging(workdir_lib.path(workdir)) as out:
    (out / "comparison.md").write_text(report.comparison_tables(
        results_by_row, title=config.experiment.title, notes=notes))
    report.plot_comparison(results_by_row, out / "comparison.png")
    (out / "comparison.json").write_text(json.dumps(results_by_row, indent=2))
  return results_by_row
