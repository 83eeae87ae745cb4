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

Training seeds (`experiment.seeds`, e.g. "0,1,2"; default "0"): every setting is trained once
per seed k (config.seed = data.shuffle_seed = k: another initialisation, noise draws and batch
order of the same world), in DIR/<setting>/ for seed 0 (the directory of a single-seed run, which
therefore resumes) and DIR/<setting>_seed<k>/ for the others; every run is evaluated on the same
held-out clips with the same sampler seed (data.seed and eval.seed are not changed), so settings
are compared clip by clip and seed by seed (avdit.evaluation.report: intervals over clips and
seeds, paired differences).

With `experiment.curve_tasks` (e.g. "a2v|v2a"), every run is also evaluated at each of its kept
checkpoints on those tasks (avdit.evaluation.curve, `eval.curve_num_clips` clips), and
DIR/learning_curves.{png,json} show the settings' oracle metrics against the step, the mean over
seeds, beside the real clips' and chance scores.

Writes DIR/comparison.md (one table per metric, settings as rows, tasks as columns, means with
95% bootstrap intervals, mean ranks, significant differences, and the verdicts on the paper's
claims of `experiment.claims`), DIR/comparison.png and
DIR/comparison.json ({row: suite results}, or {row: [suite results per seed]} with several
seeds).
"""
from __future__ import annotations

import json
from typing import NamedTuple

from absl import logging

from avdit import workdir as workdir_lib
from avdit.evaluation import curve
from avdit.evaluation import report
from avdit.evaluation import suite

EVALUATION_FILE = "results.json"


def setting_name(setting: str) -> str:
  """A directory-safe name of a setting ("pt,pm,ptm" -> "pt-pm-ptm")."""
  return setting.replace(",", "-").replace("/", "-").replace(":", "")


def seeds(config) -> list[int]:
  """The training seeds of `experiment.seeds` ("0,1,2"; absent or "0": one seed, 0)."""
  text = str(config.experiment.get("seeds", "0"))
  try:
    values = [int(part) for part in text.split(",") if part.strip()]
  except ValueError:
    raise ValueError(f"experiment.seeds must be comma-separated integers, got {text!r}") from None
  if not values or len(set(values)) != len(values) or min(values) < 0:
    raise ValueError(f"experiment.seeds must be distinct integers >= 0, got {text!r}")
  return values


def run_name(setting: str, seed: int) -> str:
  """The run directory of a setting's training seed: <setting> for seed 0, else
  <setting>_seed<k> (so the directories of a single-seed experiment keep their names)."""
  name = setting_name(setting)
  return name if seed == 0 else f"{name}_seed{seed}"


def setting_config(config, setting: str, method: str, seed: int = 0):
  """The AVDiT config of one setting, sampling method and training seed.

  `experiment.overrides[<setting name>]` (nested dicts) is applied when present; a setting
  without overrides is a noise mixture (diffusion.noise_mixture = setting). The training seed
  sets config.seed and data.shuffle_seed (after the overrides); data.seed (the world and its
  held-out clips) and eval.seed (the sampler's noise) stay those of `config`.
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
    config.seed = int(seed)
    config.data.shuffle_seed = int(seed)
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


class SeededRun(NamedTuple):
  """One evaluation of the experiment: a comparison row's setting and method at one seed."""

  label: str  # the comparison row (`runs`)
  setting: str
  method: str
  seed: int
  directory: str  # under the experiment's workdir (`run_name`)


def seeded_runs(config) -> list[SeededRun]:
  """Every (row, training seed) of the experiment, seed by seed: all rows of the first seed
  (those of a single-seed experiment) before any of the next."""
  return [SeededRun(label, setting, method, seed, run_name(setting, seed))
          for seed in seeds(config) for label, setting, method in runs(config)]


def claims(config) -> list[report.Claim]:
  """The paper's claims `experiment.claims` ({text, better, worse, tasks, metrics} each)
  judges, each between two rows of this experiment (ValueError naming a row it lacks)."""
  labels = [label for label, _, _ in runs(config)]
  parsed = [report.Claim.from_config(entry) for entry in config.experiment.get("claims", ())]
  for claim in parsed:
    missing = [row for row in (claim.better, claim.worse) if row not in labels]
    if missing:
      raise ValueError(f"claim {claim.text!r} compares rows {missing} this experiment does not "
                       f"have (its rows: {labels}); set experiment.claims for its settings")
  return parsed


def _finished_eval(eval_path, step: int) -> dict | None:
  if not eval_path.exists():
    return None
  results = json.loads(eval_path.read_text())
  return results if results.get("checkpoint_step") == step else None


def run(config, workdir: str) -> dict:
  """Trains and evaluates every setting at every seed.

  Returns {row label: suite results} with one seed, {row label: [suite results per seed, in
  `seeds` order]} with several (what avdit.evaluation.report compares).
  """
  from avdit.training import train  # pylint: disable=g-import-not-at-top
  claim_list = claims(config)  # before any training: a claim must name rows that will exist
  by_row: dict[str, list] = {label: [] for label, _, _ in runs(config)}
  trained = {}
  # One set of embedders for every run: the same held-out clips, reference clips and chance
  # rows are then embedded by I3D once, not once per setting (most of FVD's time on a CPU).
  networks = None
  for label, setting, method, seed, directory in seeded_runs(config):
    run_config = setting_config(config, setting, method, seed)
    run_dir = str(workdir_lib.path(workdir, directory))
    if directory not in trained:
      logging.info("experiment: training %s (seed %d) in %s", setting, seed, run_dir)
      summary = train.train(run_config, run_dir)
      train.write_summary(run_dir, summary)
      if summary["stopped_by"]:
        return {"stopped_by": summary["stopped_by"], "setting": setting, "seed": seed}
      trained[directory] = summary["step"]
    eval_path = workdir_lib.path(run_dir, suite.EVAL_DIR, method, EVALUATION_FILE)
    results = _finished_eval(eval_path, trained[directory])
    if results is None:
      logging.info("experiment: evaluating %s seed %d (%s sampling)", setting, seed, method)
      if networks is None:
        networks = suite.FeatureNetworks.from_config(run_config.eval)
      results = suite.evaluate(run_config, run_dir, name=label, subdir=method,
                               networks=networks)
    by_row[label].append(results)
  results_by_row = {label: rows[0] if len(rows) == 1 else rows for label, rows in by_row.items()}
  seed_list = seeds(config)
  notes = (f"{_steps_text(config, trained, seed_list[0])} (batch {config.data.batch_size}), "
           + (f"training seed {seed_list[0]}" if len(seed_list) == 1 else
              f"once per training seed {', '.join(map(str, seed_list))} (config.seed and "
              f"data.shuffle_seed)")
           + f"; the suite samples the same {config.eval.num_clips} held-out clips per task for "
           f"every run, with {config.sample.sampler}, {config.sample.num_steps} steps and eval "
           f"seed {config.eval.seed}. Regenerate: `{config.experiment.command}"
           + (f" --config.experiment.seeds={','.join(map(str, seed_list))}"
              if seed_list != [0] else "") + "`.")
  with workdir_lib.local_staging(workdir_lib.path(workdir)) as out:
    (out / "comparison.md").write_text(report.comparison_tables(
        results_by_row, title=config.experiment.title, notes=notes, claims=claim_list))
    report.plot_comparison(results_by_row, out / "comparison.png")
    (out / "comparison.json").write_text(json.dumps(results_by_row, indent=2))
  if config.experiment.get("curve_tasks", ""):  # after the comparison, which needs none of it
    learning_curves(config, workdir, by_row)
  return results_by_row


def _steps_text(config, trained: dict[str, int], seed: int) -> str:
  """How long the settings trained, from their runs at `seed` (a setting's overrides may
  change its steps): "4 settings trained for 4200 steps each", or the steps of each group."""
  names = [s.strip() for s in config.experiment.settings.split("|") if s.strip()]
  by_steps: dict[int, list[str]] = {}
  for setting in names:
    by_steps.setdefault(trained[run_name(setting, seed)], []).append(setting_name(setting))
  if len(by_steps) == 1:
    return (f"{len(names)} setting{'s' if len(names) > 1 else ''} trained for "
            f"{next(iter(by_steps))} steps{' each' if len(names) > 1 else ''}")
  return "settings trained for " + ", ".join(
      f"{steps} steps ({', '.join(group)})" for steps, group in by_steps.items())


def learning_curves(config, workdir: str, by_row: dict[str, list]) -> dict:
  """Evaluates every run at its kept checkpoints on `experiment.curve_tasks`; writes
  DIR/learning_curves.{json,png}, one line per comparison row (the mean over seeds) beside the
  real clips' and chance scores of its final suite (`by_row`: {row label: results per seed});
  returns {row label: curve table}."""
  tables: dict[str, list[dict]] = {}
  for label, setting, method, seed, directory in seeded_runs(config):
    run_config = setting_config(config, setting, method, seed)
    with run_config.unlocked():
      run_config.eval.curve_tasks = config.experiment.curve_tasks
    logging.info("experiment: learning curve of %s seed %d", label, seed)
    results = curve.evaluate_steps(run_config, str(workdir_lib.path(workdir, directory)),
                                   subdir=f"curve/{method}")
    final = by_row[label][seeds(config).index(seed)]
    tables.setdefault(label, []).append(curve.curve_table(results, final))
  mean_tables = {label: curve.mean_table(seed_tables) for label, seed_tables in tables.items()}
  workdir_lib.write_text(workdir, "learning_curves.json", json.dumps(mean_tables, indent=2))
  curve.plot_curves(mean_tables, workdir_lib.path(workdir, "learning_curves.png"))
  return mean_tables
