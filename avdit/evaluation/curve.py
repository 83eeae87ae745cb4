"""Learning curve: the task suite's oracle metrics at every kept checkpoint of a run.

  python -m avdit.main --config=... --workdir=DIR --mode=curve

Training keeps every checkpoint whose step is a multiple of `train.keep_period` (beside the
newest `train.keep_checkpoints`). Each is evaluated on `eval.curve_tasks` with the suite (same
held-out clips, sampler and seed at every step, so the points differ only by the weights), and
the metrics are plotted against the step beside the real clips' scores and the chance
baselines of the final suite: DIR/eval/learning_curve.{png,json}. A step already evaluated
(its eval/curve/step_<n>/results.json) is read back, not recomputed.
"""
from __future__ import annotations

import json
import math

from absl import logging

from avdit import checkpointing
from avdit import workdir as workdir_lib
from avdit.evaluation import report
from avdit.evaluation import suite

# What the curve shows, in this order (the cross-modal metrics first: they are what is learned
# last and what the tasks exist for).
CURVE_METRICS = ("av_height_error_px", "sync_f1", "subject_disc_found_fraction",
                 "continuity_jump_px", "subject_background_color_drift",
                 "heldout_x0_error_video", "heldout_x0_error_audio",
                 "cross_modal_gain_video", "cross_modal_gain_audio")
# The suite's cross-modal gain belongs to the model, not to a task: its panels are under this.
GAIN_TASK = "model"
BASELINE_STYLE = {"reference": ("real clips", "k", "-"),
                  "shuffled": ("shuffled pairs", "grey", "--"),
                  "constant": ("constant", "grey", ":"),
                  "autoencoder": ("autoencoder round trip", "tab:green", "-.")}


def _curve_config(config, step: int):
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.sample.checkpoint_step = step
    config.sample.autoguidance_weight = 0.0  # the curve follows the model's own weights
    config.eval.tasks = config.eval.get("curve_tasks", "a2v|v2a|av_continue")
    config.eval.num_clips = config.eval.get("curve_num_clips", config.eval.num_clips)
    config.eval.num_sample_videos = 0
    config.eval.baselines = ""  # the chance rows do not depend on the step: the final suite's
    # No FVD/KVD per checkpoint: the curve plots the oracle metrics, and I3D at 224x224 costs
    # seconds per clip on a CPU (the final suite reports them).
    config.eval.i3d_weights = "none"
  return config


def evaluate_steps(config, workdir: str, steps=None, subdir: str = "curve") -> dict[int, dict]:
  """{step: suite results} on the curve tasks, for `steps` (default: every checkpoint), in
  <workdir>/eval/<subdir>/step_<n>/."""
  results = {}
  for step in checkpointing.checkpoint_steps(workdir) if steps is None else steps:
    step_subdir = f"{subdir}/step_{step}"
    path = workdir_lib.path(workdir, suite.EVAL_DIR, step_subdir, "results.json")
    if path.exists():
      results[step] = json.loads(path.read_text())
      continue
    logging.info("learning curve: evaluating step %d", step)
    results[step] = suite.evaluate(_curve_config(config, step), workdir, subdir=step_subdir)
  return results


def curve_table(results_by_step: dict[int, dict], baselines: dict | None = None) -> dict:
  """{task: {metric: {"steps": [...], "values": [...], <baseline>: value}}} (JSON-ready).

  `baselines`: a final suite's results.json, whose real-clip and chance scores are the
  horizontal lines the curve is read against.
  """
  steps = sorted(results_by_step)
  table: dict = {}
  for step in steps:
    for task, entry in results_by_step[step]["tasks"].items():
      for metric in CURVE_METRICS:
        value = entry["metrics"].get(metric)
        if value is None:
          continue
        cell = table.setdefault(task, {}).setdefault(metric, {"steps": [], "values": []})
        cell["steps"].append(step)
        cell["values"].append(float(value))
        cell["reference"] = entry["reference"].get(metric)
    # The validation loss: each curve task's held-out x̂0 error, and joint's (what vanilla is
    # trained for), per generated modality.
    errors = results_by_step[step].get("heldout_x0_error", {})
    for task in dict.fromkeys([*results_by_step[step]["tasks"], "joint"]):
      for modality, value in errors.get(task, {}).items():
        cell = table.setdefault(task, {}).setdefault(f"heldout_x0_error_{modality}",
                                                     {"steps": [], "values": []})
        cell["steps"].append(step)
        cell["values"].append(float(value))
    for modality in ("video", "audio"):
      value = results_by_step[step].get("cross_modal_gain", {}).get(modality)
      if value is not None:
        cell = table.setdefault(GAIN_TASK, {}).setdefault(
            f"cross_modal_gain_{modality}", {"steps": [], "values": [], "constant": 0.0})
        cell["steps"].append(step)
        cell["values"].append(float(value))
  for task, metrics in table.items():
    final = (baselines or {}).get("tasks", {}).get(task, {})
    for metric, cell in metrics.items():
      for name, rows in final.get("baselines", {}).items():
        cell[name] = rows.get(metric)
  return table


def mean_table(tables: list[dict]) -> dict:
  """The mean over runs (an experiment's training seeds) of `curve_table`s: per (task, metric)
  the steps every run has, each the mean of the runs' values; baselines those of the first."""
  mean: dict = {}
  for task, metrics in tables[0].items():
    for metric, first in metrics.items():
      cells = [t.get(task, {}).get(metric) for t in tables]
      if any(cell is None for cell in cells):
        continue
      by_step = [dict(zip(cell["steps"], cell["values"])) for cell in cells]
      steps = sorted(set.intersection(*(set(values) for values in by_step)))
      mean.setdefault(task, {})[metric] = dict(
          {k: v for k, v in first.items() if k not in ("steps", "values")}, steps=steps,
          values=[sum(values[step] for values in by_step) / len(by_step) for step in steps])
  return mean


def plot_curve(table: dict, path) -> None:
  """One panel per (task, metric) with values: the model against the step, baselines as lines."""
  plot_curves({"model": table}, path)


def plot_curves(tables_by_label: dict[str, dict], path) -> None:
  """`plot_curve` with one line per labelled table (an experiment's settings); the baselines
  are the first table's."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  tables = list(tables_by_label.values())
  panels = [(task, metric) for task, metrics in tables[0].items() for metric in CURVE_METRICS
            if metric in metrics and any(math.isfinite(v) for v in metrics[metric]["values"])]
  cols = min(4, max(len(panels), 1))
  rows = max(1, math.ceil(len(panels) / cols))
  fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.8 * rows), squeeze=False)
  colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  for ax, (task, metric) in zip(axes.flat, panels):
    for index, (label, table) in enumerate(tables_by_label.items()):
      cell = table.get(task, {}).get(metric)
      if cell is not None:
        ax.plot(cell["steps"], cell["values"], "o-", color=colours[index % len(colours)],
                label=label)
    for name, (label, colour, style) in BASELINE_STYLE.items():
      value = tables[0][task][metric].get(name)
      if value is not None and math.isfinite(value):
        ax.axhline(value, color=colour, linestyle=style, linewidth=1, label=label)
    ax.set_title(f"{task}: {metric}{report.arrow(metric)}", fontsize=8)
    ax.set_xlabel("training step", fontsize=7)
    ax.tick_params(labelsize=7)
  for ax in list(axes.flat)[len(panels):]:
    ax.axis("off")
  handles, labels = [], []
  for ax in axes.flat:  # the legend of the panel with the most lines
    h, l = ax.get_legend_handles_labels()
    if len(l) > len(labels):
      handles, labels = h, l
  legend_rows = math.ceil(len(labels) / 6)
  fig.legend(handles, labels, loc="upper center", ncol=min(len(labels), 6), fontsize=7)
  # The legend's rows (~0.2 in each) above the panels, whatever the figure's height.
  fig.tight_layout(rect=(0, 0, 1, 1 - (0.05 + 0.2 * legend_rows) / fig.get_figheight()))
  with workdir_lib.local_staging(workdir_lib.path(path).parent) as out:
    fig.savefig(out / workdir_lib.path(path).name, dpi=110)
  plt.close(fig)


def run(config, workdir: str) -> dict:
  """Evaluates every checkpoint, writes eval/learning_curve.{json,png}; returns the table."""
  results = evaluate_steps(config, workdir)
  final_path = workdir_lib.path(workdir, suite.EVAL_DIR, "results.json")
  final = json.loads(final_path.read_text()) if final_path.exists() else None
  table = curve_table(results, final)
  workdir_lib.write_text(workdir, f"{suite.EVAL_DIR}/learning_curve.json",
                         json.dumps(table, indent=2))
  plot_curve(table, workdir_lib.path(workdir, suite.EVAL_DIR, "learning_curve.png"))
  for task, metrics in table.items():
    for metric, cell in metrics.items():
      logging.info("curve %s %s: %s", task, metric,
                   ", ".join(f"{s}: {v:.3f}" for s, v in zip(cell["steps"], cell["values"])))
  return table
