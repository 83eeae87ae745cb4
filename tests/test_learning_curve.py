"""The learning curve: metrics per checkpoint step, lined up with the baselines, plotted."""
import math

from avdit.evaluation import curve


def _suite_results(step, height_error, sync_f1):
  return {"checkpoint_step": step, "tasks": {
      "a2v": {"metrics": {"av_height_error_px": height_error, "sync_f1": sync_f1,
                          "fvd": 3.0},
              "reference": {"av_height_error_px": 0.01, "sync_f1": 1.0}},
      "v2a": {"metrics": {"av_height_error_px": height_error + 1, "sync_f1": math.nan},
              "reference": {"av_height_error_px": 0.02, "sync_f1": 1.0}}}}


def test_curve_table_orders_steps_and_attaches_baselines(tmp_path):
  results = {600: _suite_results(600, 2.0, 0.5), 200: _suite_results(200, 7.0, 0.1)}
  final = {"tasks": {"a2v": {"baselines": {"shuffled": {"av_height_error_px": 7.8},
                                           "constant": {"av_height_error_px": 10.0}}}}}
  table = curve.curve_table(results, final)
  cell = table["a2v"]["av_height_error_px"]
  assert cell["steps"] == [200, 600]
  assert cell["values"] == [7.0, 2.0]
  assert cell["reference"] == 0.01
  assert cell["shuffled"] == 7.8 and cell["constant"] == 10.0
  assert "fvd" not in table["a2v"]  # only the curve's metrics
  assert "shuffled" not in table["v2a"]["av_height_error_px"]  # no baselines for v2a given
  path = tmp_path / "eval" / "learning_curve.png"
  curve.plot_curve(table, str(path))
  assert path.stat().st_size > 10_000


def test_mean_table_averages_the_seeds_at_the_steps_they_share(tmp_path):
  final = {"tasks": {"a2v": {"baselines": {"shuffled": {"av_height_error_px": 7.8}}}}}
  seed0 = curve.curve_table({200: _suite_results(200, 7.0, 0.1),
                             600: _suite_results(600, 2.0, 0.5)}, final)
  seed1 = curve.curve_table({200: _suite_results(200, 5.0, 0.3),
                             400: _suite_results(400, 4.0, 0.2),
                             600: _suite_results(600, 1.0, 0.7)}, final)
  mean = curve.mean_table([seed0, seed1])
  cell = mean["a2v"]["av_height_error_px"]
  assert cell["steps"] == [200, 600]  # step 400 only one seed has
  assert cell["values"] == [6.0, 1.5]
  assert cell["reference"] == 0.01 and cell["shuffled"] == 7.8
  assert mean["a2v"]["sync_f1"]["values"] == [0.2, 0.6]
  path = tmp_path / "curves.png"
  curve.plot_curves({"pt": mean, "monl": seed1}, str(path))
  assert path.stat().st_size > 10_000


def test_curve_table_reads_the_heldout_error_of_the_curve_tasks_and_joint():
  results = {}
  for step, error in ((300, 0.8), (600, 0.5)):
    results[step] = dict(_suite_results(step, 2.0, 0.5), heldout_x0_error={
        "a2v": {"video": error}, "joint": {"video": error + 0.1, "audio": 2 * error},
        "av_inpaint": {"video": 0.3, "audio": 0.3}})  # not a curve task: not in the table
  table = curve.curve_table(results)
  assert table["a2v"]["heldout_x0_error_video"] == {"steps": [300, 600], "values": [0.8, 0.5]}
  assert table["joint"]["heldout_x0_error_audio"]["values"] == [1.6, 1.0]
  assert table["joint"]["heldout_x0_error_video"]["values"] == [0.9, 0.6]
  assert "av_inpaint" not in table
