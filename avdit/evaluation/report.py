"""Tables (Markdown, the shape of the paper's Table 1) and plots (matplotlib PNG) of eval results.

`single_model_table` / `plot_single_model` show one checkpoint's suite (tasks as columns, the
real clips' scores as the reference, and the baselines that place the model between them and
chance); `comparison_tables` / `plot_comparison` put several training settings side by side
(settings as rows, one table per metric, with the per-task average and each setting's mean rank
over tasks and metrics).
"""
from __future__ import annotations

import math
import pathlib
from typing import Mapping, Sequence

import numpy as np

from avdit.evaluation import oracle

# Metric directions (True = higher is better): the suite's own and the oracle metrics'.
HIGHER_IS_BETTER = {"av_align": True, "fvd": False, "kvd": False, "fad": False,
                    "cross_modal_gain_video": True, "cross_modal_gain_audio": True,
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


def single_model_table(results: Mapping) -> str:
  """Markdown: per metric the model, the real clips and the baselines as rows; tasks as columns."""
  tasks = _task_names([results])
  lines = [f"# Task suite: {results.get('name') or 'model'} at step {results['checkpoint_step']}",
           "",
           f"{results['num_clips']} held-out clips per task, seed {results['seed']}; sampler "
           f"{results['sampler']['sampler']}, {results['sampler']['num_steps']} steps, method "
           f"{results['sampler']['method']}, guidance w = {results['sampler']['guidance_weight']}."
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


def mean_ranks(results_by_setting: Mapping[str, Mapping]) -> dict[str, float]:
  """Each setting's rank (1 = best) per (task, metric) with a known direction, averaged.

  Ties share the mean of their ranks. (task, metric) cells some setting lacks are skipped.
  """
  settings = list(results_by_setting)
  ranks = {s: [] for s in settings}
  all_results = list(results_by_setting.values())
  for task in _task_names(all_results):
    for metric in _metric_names(all_results):
      if metric not in HIGHER_IS_BETTER:
        continue
      values = [_value(results_by_setting[s], task, metric) for s in settings]
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


def comparison_tables(results_by_setting: Mapping[str, Mapping], *, title: str = "",
                      notes: str = "") -> str:
  """Markdown: per metric, settings as rows and tasks as columns (+ average); mean ranks."""
  settings = list(results_by_setting)
  all_results = list(results_by_setting.values())
  tasks = _task_names(all_results)
  lines = [f"# {title or 'Training settings compared on the task suite'}", ""]
  if notes:
    lines += [notes, ""]
  ranks = mean_ranks(results_by_setting)
  lines += ["## Mean rank over tasks and metrics (1 = best)", "",
            "| setting | mean rank |", "|---|---|"]
  lines += [f"| {s} | {ranks[s]:.2f} |" for s in sorted(settings, key=lambda s: ranks[s])]
  lines.append("")
  for metric in _metric_names(all_results):
    lines += [f"## {metric}{arrow(metric)}", "",
              "| setting | " + " | ".join(tasks) + " | average |",
              "|---|" + "---|" * (len(tasks) + 1)]
    for s in settings:
      values = [_value(results_by_setting[s], t, metric) for t in tasks]
      lines.append(f"| {s} | " + " | ".join(_format(v) for v in values)
                   + f" | {_format(_mean(values))} |")
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


def plot_comparison(results_by_setting: Mapping[str, Mapping], path) -> pathlib.Path:
  """Bar charts per metric: every setting per task."""
  all_results = list(results_by_setting.values())
  tasks = _task_names(all_results)
  series = {m: {s: [_value(r, t, m) for t in tasks] for s, r in results_by_setting.items()}
            for m in _metric_names(all_results)}
  return _plot(series, tasks, path)
