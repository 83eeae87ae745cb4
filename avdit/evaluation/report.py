"""Tables (Markdown, the shape of the paper's Table 1) and plots (matplotlib PNG) of eval results.

`single_model_table` / `plot_single_model` show one checkpoint's suite (tasks as columns, the
real clips' scores as the reference, and the baselines that place the model between them and
chance); `comparison_tables` / `plot_comparison` put several training settings side by side
(settings as rows, one table per metric, with the per-task average and each setting's mean rank
over tasks and metrics).

Uncertainty (`comparison_tables`): a setting is the suite results of one training run, or of
several training seeds evaluated on the same held-out clips. Where the results hold the model's
per-clip values (suite results' "per_clip": the oracle metrics and AV-Align), a cell shows the
mean and its 95% bootstrap interval over clips and seeds (`bootstrap_interval`), and settings
are compared by the paired bootstrap of their per-clip differences (`paired_difference`), listed
under "Significant differences"; the mean rank stays a rank of the means. FVD/KVD/FAD (set
statistics) and results without per-clip values show the mean alone.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
import pathlib
from typing import Mapping, Sequence

import numpy as np

from avdit.evaluation import cross_modal
from avdit.evaluation import oracle

# Metric directions (True = higher is better): the suite's own and the oracle metrics'.
HIGHER_IS_BETTER = {"av_align": True, "fvd": False, "kvd": False, "fad": False,
                    "cross_modal_gain_video": True, "cross_modal_gain_audio": True,
                    "heldout_x0_error_video": False, "heldout_x0_error_audio": False,
                    **oracle.HIGHER_IS_BETTER}


# Labels of the rows a task's results hold: the model, the real clips ("reference"), baselines.
REAL_LABEL = "real clips"
BASELINE_LABELS = {"autoencoder": "autoencoder round trip",
                   "shuffled": "shuffled pairs (chance)",
                   "constant": "constant (chance)"}
# Rows that do not depend on the model's latent space: shown once under a comparison's settings.
SHARED_LABELS = (REAL_LABEL, BASELINE_LABELS["shuffled"], BASELINE_LABELS["constant"])


def is_count(name: str) -> bool:
  """Counts the metrics rest on (frames, events, clips) are kept in results.json, not tables."""
  return name in oracle.COUNTS or name == "num_clips" or name.endswith("_num_clips")


def arrow(metric: str) -> str:
  if metric not in HIGHER_IS_BETTER:
    return ""
  return " ↑" if HIGHER_IS_BETTER[metric] else " ↓"


def _format(value) -> str:
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return "–"
  if abs(value) >= 100:
    return f"{value:.1f}"
  return f"{value:.3f}"


def _metric_names(results_list: Sequence[Mapping]) -> list[str]:
  names: list[str] = []
  for results in results_list:
    for task in results["tasks"].values():
      for name, value in task["metrics"].items():
        if name not in names and isinstance(value, (int, float)) and not is_count(name):
          names.append(name)
  return names


def _task_names(results_list: Sequence[Mapping]) -> list[str]:
  names: list[str] = []
  for results in results_list:
    for name in results["tasks"]:
      if name not in names:
        names.append(name)
  return names


def _value(results: Mapping, task: str, metric: str, key: str = "metrics"):
  value = results["tasks"].get(task, {}).get(key, {}).get(metric)
  return None if value is None else float(value)


def _baseline_value(results: Mapping, task: str, metric: str, baseline: str):
  value = results["tasks"].get(task, {}).get("baselines", {}).get(baseline, {}).get(metric)
  return None if value is None else float(value)


def _baseline_names(results: Mapping) -> list[str]:
  """The baselines some task holds, in `BASELINE_LABELS` order (results before them: none)."""
  present = {b for task in results["tasks"].values() for b in task.get("baselines", {})}
  return [b for b in BASELINE_LABELS if b in present] + sorted(present - set(BASELINE_LABELS))


def _rows(results: Mapping, tasks, metric: str) -> dict[str, list]:
  """{row label: value per task}: model, real clips, then every baseline."""
  rows = {"model": [_value(results, t, metric) for t in tasks],
          REAL_LABEL: [_value(results, t, metric, "reference") for t in tasks]}
  for baseline in _baseline_names(results):
    rows[BASELINE_LABELS.get(baseline, baseline)] = [
        _baseline_value(results, t, metric, baseline) for t in tasks]
  return rows


def _mean(values) -> float | None:
  values = [v for v in values if v is not None and not math.isnan(v)]
  return float(np.mean(values)) if values else None


def _guidance_text(sampler: Mapping) -> str:
  """'0.0', or '0.0 (v2a: 1.0)' when some tasks have their own weight, and the autoguidance
  when there is some ('; autoguidance of the video, w = 0.5, by step 3600')."""
  by_task = sampler.get("guidance_by_task") or {}
  extra = ", ".join(f"{name}: {weight}" for name, weight in by_task.items())
  text = f"{sampler['guidance_weight']}" + (f" ({extra})" if extra else "")
  if sampler.get("autoguidance_weight"):
    guide = (sampler.get("autoguidance_workdir") or
             f"step {sampler.get('autoguidance_guide_step', sampler.get('autoguidance_step'))}")
    text += (f"; autoguidance of the {sampler['autoguidance_modalities'].replace(',', ' and ')}, "
             f"w = {sampler['autoguidance_weight']}, by {guide}")
  return text


def single_model_table(results: Mapping) -> str:
  """Markdown: per metric the model, the real clips and the baselines as rows; tasks as columns."""
  tasks = _task_names([results])
  lines = [f"# Task suite: {results.get('name') or 'model'} at step {results['checkpoint_step']}",
           "",
           f"{results['num_clips']} held-out clips per task, seed {results['seed']}; sampler "
           f"{results['sampler']['sampler']}, {results['sampler']['num_steps']} steps, method "
           f"{results['sampler']['method']}, guidance w = {_guidance_text(results['sampler'])}."
           " Conditioning segments are excluded from every metric. *real clips*: the held-out "
           "clips' own score (the best a model can reach; FVD/KVD/FAD against as many training "
           "clips, the distance a model sampling the data still has); *autoencoder round trip*: the real "
           "clips encoded and decoded by the latent space (the best a model on these latents "
           "can reach); *shuffled pairs* (each clip's generated elements from another clip) and "
           "*constant* (a mid-screen tone, a frozen frame): chance, generators that ignore the "
           "given modality.",
           "",
           "| metric | | " + " | ".join(tasks) + " | average |",
           "|---|---|" + "---|" * (len(tasks) + 1)]
  for metric in _metric_names([results]):
    for label, values in _rows(results, tasks, metric).items():
      lines.append(f"| {metric}{arrow(metric)} | {label} | "
                   + " | ".join(_format(v) for v in values) + f" | {_format(_mean(values))} |")
  timing = [results["tasks"][t]["timing"] for t in tasks]
  lines.append("| clips/s | | " + " | ".join(f"{t['clips_per_s']:.2f}" for t in timing) + " | |")
  lines.append("| sampling share of time | | "
               + " | ".join(f"{t['sampling_share']:.0%}" for t in timing) + " | |")
  gain = results.get("cross_modal_gain")
  if gain:
    lines += ["", "Cross-modal gain (avdit/evaluation/cross_modal.py: 1 - the x̂0 error with the "
              "other modality clean / with it pure noise; 0 = the model ignores it): "
              + ", ".join(f"{k} {v:+.3f}" for k, v in gain.items()) + "."]
  errors = results.get("heldout_x0_error")
  if errors:
    lines += ["", "Held-out x̂0 error (the validation loss: E|x̂0 - x0|² on the clips' normalized "
              "latents, the task's condition clean and the rest at t = "
              + ", ".join(map(str, cross_modal.DEFAULT_NOISE_STEPS)) + "; "
              "avdit/evaluation/cross_modal.py): "
              + "; ".join(f"{task} " + ", ".join(f"{m} {v:.3f}" for m, v in by_modality.items())
                          for task, by_modality in errors.items()) + "."]
  lines += _distribution_notes(results)
  return "\n".join(lines) + "\n"


def _distribution_notes(results: Mapping) -> list[str]:
  """Which distribution metrics (FVD, KVD, FAD) were computed and which skipped, and why."""
  status = results.get("distribution_metrics")
  if not status:
    return []
  lines = ["", "Distribution metrics (avdit/evaluation/suite.py):", ""]
  lines += [f"- {metric}: {text}" for metric, text in status.items()]
  if any(text.startswith("computed") for metric, text in status.items() if metric != "fad"):
    lines.append("- FVD/KVD of these clips compare only with the same suite on the same data "
                 "(clip size, frames, clip count), not with published numbers at other "
                 "resolutions.")
  return lines


# --- intervals over clips and seeds ---------------------------------------------------------------
NUM_RESAMPLES = 2000
BOOTSTRAP_SEED = 0  # every interval draws from a fresh Generator of this seed: tables reproduce
LEVEL = 0.95


@dataclasses.dataclass(frozen=True)
class Interval:
  """A mean and its bootstrap interval [low, high]."""

  mean: float
  low: float
  high: float

  @property
  def excludes_zero(self) -> bool:
    return self.low > 0 or self.high < 0

  def format(self, signed: bool = False) -> str:
    sign = "+" if signed and self.mean >= 0 else ""
    return f"{sign}{_format(self.mean)} [{_format(self.low)}, {_format(self.high)}]"


def _clips_by_seed(values) -> np.ndarray:
  """float64 [seeds, clips] from one seed's per-clip values [clips] or [seeds][clips]."""
  try:
    x = np.array(values, dtype=np.float64)  # None (nothing scored) -> NaN
  except ValueError:
    raise ValueError("per-clip values of several seeds must cover equally many clips (the "
                     "same held-out clips)") from None
  if x.ndim == 1:
    x = x[None]
  if x.ndim != 2 or x.shape[1] < 1:
    raise ValueError(f"per-clip values must be [clips] or [seeds][clips], got shape {x.shape}")
  return x


def _nanmean(x: np.ndarray, axis: int) -> np.ndarray:
  """Mean over the finite values along `axis` (NaN where there are none), without warnings."""
  defined = np.isfinite(x)
  counts = defined.sum(axis)
  sums = np.where(defined, x, 0.0).sum(axis)
  return np.divide(sums, counts, out=np.full(np.shape(sums), np.nan), where=counts > 0)


def bootstrap_interval(values, *, num_resamples: int = NUM_RESAMPLES,
                       seed: int = BOOTSTRAP_SEED, level: float = LEVEL) -> Interval | None:
  """The mean of per-clip values and its percentile bootstrap interval.

  Args:
    values: [clips] for one training seed, or [seeds][clips] for several seeds evaluated on the
      same held-out clips (clip i of every seed is the same clip); None or NaN where a clip has
      nothing to score.
    num_resamples, seed, level: the bootstrap (a fresh `np.random.default_rng(seed)`, so the same
      values always give the same interval).

  Returns:
    Interval(mean, low, high), or None if no value is defined. The mean is the mean over seeds
    of each seed's mean over its defined clips (for one seed: the suite's average). Each
    resample draws the seeds with replacement and the clips with replacement, one draw of clip
    indices for all seeds (the seeds share the clips, so a clip's difficulty is common to them:
    drawing clips independently per seed would count it as independent noise and narrow the
    interval), and takes the same mean; [low, high] are the (1 - level) / 2 and (1 + level) / 2
    quantiles of the resampled means. Caveats: with 16 clips the percentile interval is ~10%
    narrower than a t interval would be, and with few seeds the seed part is rough (3 seeds:
    resampling gives 2/3 of the unbiased seed variance).
  """
  x = _clips_by_seed(values)
  mean = float(_nanmean(_nanmean(x, 1), 0))
  if not math.isfinite(mean):
    return None
  num_seeds, num_clips = x.shape
  rng = np.random.default_rng(seed)
  clip_draws = rng.integers(0, num_clips, (num_resamples, num_clips))
  seed_draws = rng.integers(0, num_seeds, (num_resamples, num_seeds))
  resampled = x[seed_draws[:, :, None], clip_draws[:, None, :]]  # [R, seeds, clips]
  means = _nanmean(_nanmean(resampled, 2), 1)
  low, high = np.quantile(means[np.isfinite(means)], [(1 - level) / 2, (1 + level) / 2])
  return Interval(mean, float(low), float(high))


def paired_difference(values_a, values_b, **bootstrap) -> Interval | None:
  """The mean per-clip difference a - b of two settings and its bootstrap interval.

  `values_a`, `values_b` are per-clip values as in `bootstrap_interval`, of the same held-out
  clips and training seeds in the same order: the difference is taken clip by clip and seed by
  seed (where both are defined), so what the clips share (one clip is hard for every setting)
  cancels, and `bootstrap_interval` of the differences says whether a - b is distinguishable
  from 0 (`Interval.excludes_zero`: a two-sided test at 1 - level).
  """
  a, b = _clips_by_seed(values_a), _clips_by_seed(values_b)
  if a.shape != b.shape:
    raise ValueError(f"a paired comparison needs the same seeds and clips, got [seeds, clips] "
                     f"{list(a.shape)} and {list(b.shape)}")
  return bootstrap_interval(a - b, **bootstrap)


def _seed_runs(entry) -> list[Mapping]:
  """A setting's suite results per training seed (one results mapping, or a list of them)."""
  return [entry] if isinstance(entry, Mapping) else list(entry)


def _per_clip(runs: Sequence[Mapping], task: str, metric: str) -> list | None:
  """The model's per-clip values of a cell, [seeds][clips]; None unless every seed has them
  for equally many clips."""
  lists = [r["tasks"].get(task, {}).get("per_clip", {}).get(metric) for r in runs]
  if not lists or any(v is None for v in lists) or len({len(v) for v in lists}) != 1:
    return None
  return lists


def cell_interval(runs, task: str, metric: str) -> Interval | None:
  """`bootstrap_interval` of a setting's (task, metric) cell over its clips and seeds; None
  without per-clip values (FVD/KVD/FAD, results written before they were stored)."""
  values = _per_clip(_seed_runs(runs), task, metric)
  return None if values is None else bootstrap_interval(values)


def _setting_value(runs, task: str, metric: str, key: str = "metrics"):
  """A setting's mean of a cell: the mean over seeds of the stored means (None if absent)."""
  values = [_value(r, task, metric, key) for r in _seed_runs(runs)]
  values = [v for v in values if v is not None]
  if not values:
    return None
  finite = [v for v in values if not math.isnan(v)]
  return float(np.mean(finite)) if finite else float("nan")


def _directed_metrics(all_results) -> list[str]:
  return [m for m in _metric_names(all_results) if m in HIGHER_IS_BETTER]


def significant_differences(results_by_setting: Mapping[str, object]
                            ) -> tuple[list[tuple[str, str, str, str, Interval]], int]:
  """Pairs of settings whose paired difference in a (task, metric) cell excludes 0.

  Every two settings are compared (`paired_difference`) in every cell of a metric with a known
  direction where both have per-clip values of the same clips and seeds. This is one 95% test
  per pair and cell, without a correction for their number: where settings do not differ at
  all, about 1 in 20 tested pairs is listed anyway, so a pattern across tasks says more than
  one entry.

  Returns:
    ([(task, metric, better, worse, Interval of better - worse in the metric's units)], the
    number of (pair, cell) comparisons made).
  """
  by_setting = {s: _seed_runs(r) for s, r in results_by_setting.items()}
  all_results = [r for runs in by_setting.values() for r in runs]
  found, tested = [], 0
  for task in _task_names(all_results):
    for metric in _directed_metrics(all_results):
      values = {s: _per_clip(runs, task, metric) for s, runs in by_setting.items()}
      for a, b in itertools.combinations(by_setting, 2):
        if values[a] is None or values[b] is None or (
            _clips_by_seed(values[a]).shape != _clips_by_seed(values[b]).shape):
          continue
        difference = paired_difference(values[a], values[b])
        if difference is None:
          continue
        tested += 1
        if not difference.excludes_zero:
          continue
        a_better = (difference.low > 0) == HIGHER_IS_BETTER[metric]
        if not a_better:
          a, b = b, a
          difference = Interval(-difference.mean, -difference.high, -difference.low)
        found.append((task, metric, a, b, difference))
  return found, tested


INTERVAL_NOTES = (
    "Intervals: `mean [low, high]` is the mean over held-out clips (and over training seeds, "
    "where several were trained) with its 95% percentile bootstrap interval: clips resampled "
    "with replacement (one draw shared by all seeds, which see the same clips), seeds resampled "
    f"with replacement, {NUM_RESAMPLES} resamples from a fixed generator seed. A mean alone "
    "has no per-clip values (FVD/KVD/FAD are statistics of the set; older results did not keep "
    "them); the average column is the mean of the task means. Two settings' intervals may "
    "overlap although one is better on nearly every clip: the comparison that counts is the "
    "paired one (*Significant differences*: the bootstrap of the per-clip difference, paired by "
    "clip and seed, listed where its 95% interval excludes 0). The mean rank ranks the means "
    "whether or not they differ significantly.")


def mean_ranks(results_by_setting: Mapping[str, object]) -> dict[str, float]:
  """Each setting's rank (1 = best) per (task, metric) with a known direction, averaged
  (`oracle.UNRANKED`, the parts of another metric, are not ranked).

  A setting is one suite results mapping or a list of them (training seeds; ranked by the mean
  over seeds). Ties share the mean of their ranks. (task, metric) cells some setting lacks are
  skipped. The ranks are of the means, significant or not: `significant_differences` says
  which differences the clips and seeds support.
  """
  by_setting = {s: _seed_runs(r) for s, r in results_by_setting.items()}
  settings = list(by_setting)
  ranks = {s: [] for s in settings}
  all_results = [r for runs in by_setting.values() for r in runs]
  ranked = [m for m in _directed_metrics(all_results) if m not in oracle.UNRANKED]
  for task in _task_names(all_results):
    for metric in ranked:
      values = [_setting_value(by_setting[s], task, metric) for s in settings]
      if any(v is None or math.isnan(v) for v in values):
        continue
      signed = np.array(values) * (-1.0 if HIGHER_IS_BETTER[metric] else 1.0)
      order = signed.argsort(kind="stable")
      cell = np.empty(len(settings))
      cell[order] = np.arange(1, len(settings) + 1)
      for value in np.unique(signed):  # ties: mean rank
        tied = signed == value
        cell[tied] = cell[tied].mean()
      for s, rank in zip(settings, cell):
        ranks[s].append(float(rank))
  return {s: (float(np.mean(r)) if r else float("nan")) for s, r in ranks.items()}


def _significance_lines(results_by_setting, settings) -> list[str]:
  """The "Significant differences" section (nothing if no pair could be compared)."""
  found, tested = significant_differences(results_by_setting)
  if not tested:
    return []
  wins = {s: sum(better == s for _, _, better, _, _ in found) for s in settings}
  losses = {s: sum(worse == s for _, _, _, worse, _ in found) for s in settings}
  lines = ["## Significant differences (paired bootstrap over clips and seeds, 95%)", "",
           f"{len(found)} of {tested} comparisons (two settings in one task and metric) have a "
           "paired 95% interval that excludes 0 (no correction for the number of comparisons: "
           "with no true difference about 1 in 20 would be listed). Wins: comparisons in which "
           "the setting is significantly better than the other setting; losses: worse. Each entry "
           "gives the paired mean difference better − worse and its 95% interval (negative for "
           "metrics where lower is better).", "",
           "| setting | wins | losses |", "|---|---|---|"]
  lines += [f"| {s} | {wins[s]} | {losses[s]} |"
            for s in sorted(settings, key=lambda s: losses[s] - wins[s])]
  lines.append("")
  for (task, metric), group in itertools.groupby(found, key=lambda f: f[:2]):
    lines.append(f"- {task}, {metric}{arrow(metric)}: " + "; ".join(
        f"{better} better than {worse}: {better} − {worse} = {difference.format(signed=True)}"
        for _, _, better, worse, difference in group))
  lines.append("")
  return lines


@dataclasses.dataclass(frozen=True)
class Claim:
  """A claim of the paper as paired comparisons: row `better` beats row `worse` (comparison row
  labels) in every (task, metric) cell of `tasks` x `metrics` that has values."""

  text: str
  better: str
  worse: str
  tasks: tuple[str, ...]
  metrics: tuple[str, ...]

  @classmethod
  def from_config(cls, entry) -> Claim:
    """From {text, better, worse, tasks: "a2v|v2a", metrics: "m1,m2"}; metrics need a
    direction (`HIGHER_IS_BETTER`)."""
    claim = cls(entry["text"], entry["better"], entry["worse"],
                tuple(filter(None, entry["tasks"].split("|"))),
                tuple(filter(None, entry["metrics"].split(","))))
    unknown = [m for m in claim.metrics if m not in HIGHER_IS_BETTER]
    if unknown or not claim.tasks or not claim.metrics:
      raise ValueError(f"claim {claim.text!r} needs tasks and metrics with a direction "
                       f"(unknown: {unknown}; known: {sorted(HIGHER_IS_BETTER)})")
    return claim


CLAIM_VERDICTS = ("confirms", "refutes", "cannot tell")
CLAIM_RESAMPLES = 20000  # the corrected level's tails hold ~10 resamples each at 24 cells


def claim_cells(results_by_setting: Mapping[str, object], claim: Claim
                ) -> list[tuple[str, str, Interval, str]]:
  """(task, metric, paired difference better − worse, verdict) of each cell of `claim` both rows
  have per-clip values in. The claim is tested at 95% as a whole: each of its n cells at
  1 − 0.05 / n (Bonferroni), so a claim of many cells is not confirmed by the one cell in 20
  that differs by chance. "confirms" where that interval excludes 0 in the claimed direction,
  "refutes" where it excludes 0 the other way, else "cannot tell"."""
  better, worse = _seed_runs(results_by_setting[claim.better]), _seed_runs(
      results_by_setting[claim.worse])
  pairs = {}
  for task in claim.tasks:
    for metric in claim.metrics:
      a, b = _per_clip(better, task, metric), _per_clip(worse, task, metric)
      if a is not None and b is not None and np.isfinite(
          _clips_by_seed(a) - _clips_by_seed(b)).any():
        pairs[task, metric] = (a, b)
  level = 1 - (1 - LEVEL) / max(len(pairs), 1)
  cells = []
  for (task, metric), (a, b) in pairs.items():
    difference = paired_difference(a, b, level=level, num_resamples=CLAIM_RESAMPLES)
    if not difference.excludes_zero:
      verdict = "cannot tell"
    else:
      verdict = "confirms" if (difference.low > 0) == HIGHER_IS_BETTER[metric] else "refutes"
    cells.append((task, metric, difference, verdict))
  return cells


def claim_verdict(verdicts: Sequence[str]) -> str:
  """A claim's verdict from its cells': confirmed (some cells confirm it, none refutes),
  refuted (the reverse), mixed (both), cannot tell (neither)."""
  confirms, refutes = "confirms" in verdicts, "refutes" in verdicts
  if confirms and refutes:
    return "mixed"
  return "confirmed" if confirms else "refuted" if refutes else "cannot tell"


def _claim_lines(results_by_setting, claims: Sequence[Claim]) -> list[str]:
  """The "Claims" section: per claim its cells' verdicts, counted, and the cells that decide."""
  lines = ["## The paper's claims (paired bootstrap over clips and seeds, 95%)", "",
           "Each claim is the paired comparison of two rows in the cells listed (those both have "
           "values in), tested at 95% as a whole: each of its n cells at 1 − 0.05 / n "
           "(Bonferroni). A cell confirms the claim where that interval of better − worse "
           "excludes 0 in the claimed direction, refutes it where it excludes 0 the other way. "
           "Verdict: confirmed (some cells confirm, none refutes), refuted, mixed or cannot "
           "tell. The cells that decide are listed with their corrected intervals.", "",
           "| claim | rows | cells | confirm | refute | cannot tell | verdict |",
           "|---|---|---|---|---|---|---|"]
  details = []
  for claim in claims:
    cells = claim_cells(results_by_setting, claim)
    verdicts = [verdict for _, _, _, verdict in cells]
    counts = " | ".join(str(verdicts.count(v)) for v in CLAIM_VERDICTS)
    lines.append(f"| {claim.text} | {claim.better} vs {claim.worse} | {len(cells)} | {counts} | "
                 f"{claim_verdict(verdicts)} |")
    decided = [f"{task} {metric}{arrow(metric)} {difference.format(signed=True)} ({verdict})"
               for task, metric, difference, verdict in cells if verdict != "cannot tell"]
    if decided:
      details.append(f"- {claim.text} ({claim.better} − {claim.worse}): " + "; ".join(decided))
  return lines + [""] + details + ([""] if details else [])


def comparison_tables(results_by_setting: Mapping[str, object], *, title: str = "",
                      notes: str = "", claims: Sequence[Claim] = ()) -> str:
  """Markdown: per metric, settings as rows and tasks as columns (+ average); mean ranks.

  `results_by_setting`: {setting: suite results, or a list of them, one per training seed, the
  seeds in the same order for every setting and evaluated on the same held-out clips}. A cell
  with per-clip values shows `mean [low, high]` (`cell_interval`: 95% bootstrap over clips and
  seeds), else the mean alone. The mean rank ranks the means; a "Significant differences"
  section lists, per (task, metric), the pairs of settings whose paired per-clip difference
  has a 95% interval excluding 0 (`significant_differences`), with each setting's count of
  such wins and losses; with `claims` (`Claim`), a section judging the paper's claims by the
  same paired comparisons. A separate section rather than a rank over significant cells only:
  it keeps the rank comparable with tables without per-clip values and shows which pairs
  differ, not just which setting leads.
  """
  by_setting = {s: _seed_runs(r) for s, r in results_by_setting.items()}
  settings = list(by_setting)
  all_results = [r for runs in by_setting.values() for r in runs]
  tasks = _task_names(all_results)
  metrics = _metric_names(all_results)
  intervals = {(s, t, m): cell_interval(by_setting[s], t, m)
               for s in settings for t in tasks for m in metrics}
  lines = [f"# {title or 'Training settings compared on the task suite'}", ""]
  if notes:
    lines += [notes, ""]
  if any(v is not None for v in intervals.values()):
    lines += [INTERVAL_NOTES, ""]
  ranks = mean_ranks(by_setting)
  lines += ["## Mean rank over tasks and metrics (1 = best; ranks of the means)", "",
            "| setting | mean rank |", "|---|---|"]
  lines += [f"| {s} | {ranks[s]:.2f} |" for s in sorted(settings, key=lambda s: ranks[s])]
  lines.append("")
  if claims:
    lines += _claim_lines(by_setting, claims)
  lines += _significance_lines(by_setting, settings)
  for metric in metrics:
    lines += [f"## {metric}{arrow(metric)}", "",
              "| setting | " + " | ".join(tasks) + " | average |",
              "|---|" + "---|" * (len(tasks) + 1)]
    for s in settings:
      values = [_setting_value(by_setting[s], t, metric) for t in tasks]
      cells = [intervals[s, t, metric].format() if intervals[s, t, metric] else _format(v)
               for t, v in zip(tasks, values)]
      lines.append(f"| {s} | " + " | ".join(cells) + f" | {_format(_mean(values))} |")
    # The real clips and the chance rows (the same clips for every setting: the first's).
    for label, values in _rows(all_results[0], tasks, metric).items():
      if label in SHARED_LABELS:
        lines.append(f"| *{label}* | " + " | ".join(_format(v) for v in values)
                     + f" | {_format(_mean(values))} |")
    lines.append("")
  return "\n".join(lines)


def _bar_axes(ax, tasks, series: Mapping[str, Sequence], metric: str):
  width = 0.8 / max(len(series), 1)
  x = np.arange(len(tasks))
  for i, (label, values) in enumerate(series.items()):
    heights = [np.nan if v is None else v for v in values]
    ax.bar(x + (i - (len(series) - 1) / 2) * width, heights, width, label=label)
  ax.set_xticks(x, tasks, rotation=30, ha="right", fontsize=7)
  ax.set_title(metric + arrow(metric), fontsize=8)
  ax.tick_params(axis="y", labelsize=7)


def _plot(series_by_metric, tasks, path) -> pathlib.Path:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  metrics = list(series_by_metric)
  cols = min(3, max(len(metrics), 1))
  rows = max(1, math.ceil(len(metrics) / cols))
  fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
  for ax, metric in zip(axes.flat, metrics):
    _bar_axes(ax, tasks, series_by_metric[metric], metric)
  for ax in list(axes.flat)[len(metrics):]:
    ax.axis("off")
  handles, labels = axes.flat[0].get_legend_handles_labels()
  fig.legend(handles, labels, loc="upper center", ncol=min(len(labels), 8), fontsize=7)
  fig.tight_layout(rect=(0, 0, 1, 0.93))
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def plot_single_model(results: Mapping, path) -> pathlib.Path:
  """Bar charts per metric: the model, the real clips and the baselines, per task."""
  tasks = _task_names([results])
  series = {m: _rows(results, tasks, m) for m in _metric_names([results])}
  return _plot(series, tasks, path)


def plot_comparison(results_by_setting: Mapping[str, object], path) -> pathlib.Path:
  """Bar charts per metric: every setting per task (the mean over its seeds)."""
  by_setting = {s: _seed_runs(r) for s, r in results_by_setting.items()}
  all_results = [r for runs in by_setting.values() for r in runs]
  tasks = _task_names(all_results)
  series = {m: {s: [_setting_value(runs, t, m) for t in tasks] for s, runs in by_setting.items()}
            for m in _metric_names(all_results)}
  return _plot(series, tasks, path)
