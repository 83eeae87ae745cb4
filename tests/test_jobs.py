"""Each config names its job (config.job), and main's table of (job, mode) answers for it.

avdit.main defines absl flags, which clash with the tools' in one process, so it is imported in a
subprocess of its own.
"""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")

# Every config file, at its default variant, with the job it runs and that job's default mode.
EXPECTED = {
    "avdit_synthetic": ("train_and_sample", "train_and_sample"),
    "avdit_aist": ("train_and_sample", "train_and_sample"),
    "avdit_landscape": ("train_and_sample", "train_and_sample"),
    "avdit_monologues": ("train_and_sample", "train_and_sample"),
    "avdit_pipeline": ("pipeline", "pipeline"),
    "avdit_fixed_latents": ("pipeline", "pipeline"),
    "monl_ablation": ("experiment", "experiment"),
    "contrastive_ablation": ("experiment", "experiment"),
    "magvit2_synthetic": ("autoencoder", "train"),
    "soundstream_synthetic": ("autoencoder", "train"),
}


def _python(code: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=ENV, capture_output=True,
                        text=True, timeout=120)


def test_every_config_names_a_job_with_its_default_mode():
  names = sorted(f[:-3] for f in os.listdir(os.path.join(ROOT, "configs"))
                 if f.endswith(".py") and not f.startswith("_"))
  assert names == sorted(EXPECTED), "a new config needs a row in EXPECTED"
  proc = _python(
      "import importlib, json\n"
      "from avdit import main, workdir\n"
      "out = {}\n"
      f"for name in {names!r}:\n"
      "  config = importlib.import_module('configs.' + name).get_config()\n"
      "  mode, _ = main.mode_function(config.job, None)\n"
      "  out[name] = [config.job, mode, workdir.is_pipeline(config)]\n"
      "print(json.dumps(out))\n")
  assert proc.returncode == 0, proc.stderr[-3000:]
  found = json.loads(proc.stdout.strip().splitlines()[-1])
  for name, (job, mode) in EXPECTED.items():
    assert found[name] == [job, mode, job == "pipeline"], name


def test_a_mode_outside_the_job_is_a_usage_error_listing_its_modes(tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", "avdit.main", "--config=configs/monl_ablation.py:tiny",
       "--mode=eval", f"--workdir={tmp_path}"], cwd=ROOT, env=ENV, capture_output=True,
      text=True, timeout=120)
  out = proc.stdout + proc.stderr
  assert proc.returncode != 0
  assert "--mode=eval is not a mode of job experiment; its modes are experiment, describe" in out
  assert not list(tmp_path.iterdir())  # refused before anything was written


def test_an_experiment_setting_is_one_model_job():
  proc = _python(
      "from avdit.workflows import experiment\n"
      "from configs import monl_ablation\n"
      "config = experiment.setting_config(monl_ablation.get_config('tiny'), 'pt', 'monl')\n"
      "print(config.job, 'experiment' in config)\n")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.split() == ["train_and_sample", "False"]


def _experiment_on_pipeline(tmp_path, *flags) -> subprocess.CompletedProcess:
  return subprocess.run(
      [sys.executable, "-m", "avdit.main", "--config=configs/monl_ablation.py:pipeline",
       "--mode=experiment", f"--workdir={tmp_path / 'experiment'}", *flags], cwd=ROOT, env=ENV,
      capture_output=True, text=True, timeout=120)


def test_the_ablation_on_pipeline_latents_asks_for_a_finished_pipeline_run(tmp_path):
  unset = _experiment_on_pipeline(tmp_path)
  assert unset.returncode == 1
  assert "give --config.pipeline_workdir=DIR" in unset.stderr
  unfinished = tmp_path / "pipeline"
  (unfinished / "latent_cache").mkdir(parents=True)
  (unfinished / "latent_cache" / "latents.array_record").write_bytes(b"")
  missing = _experiment_on_pipeline(tmp_path, f"--config.pipeline_workdir={unfinished}")
  assert missing.returncode == 1
  assert f"pipeline_workdir={unfinished} is not a finished pipeline run" in missing.stderr
  assert "interrupted encode" in missing.stderr
  assert f"--config=configs/avdit_pipeline.py --workdir={unfinished}" in missing.stderr
  # Refused before any setting trained.
  assert not list((tmp_path / "experiment").iterdir())


def test_the_ablation_on_pipeline_latents_trains_each_mixture_alone_on_its_stages():
  proc = _python(
      "import json\n"
      "from avdit import workdir\n"
      "from avdit.workflows import experiment\n"
      "from configs import monl_ablation\n"
      "config = monl_ablation.get_config('pipeline')\n"
      "config.pipeline_workdir = '/runs/job'\n"
      "config = workdir.with_stage_dirs(config, config.pipeline_workdir)\n"
      "pm = experiment.setting_config(config, 'pm', 'monl')\n"
      "print(json.dumps([pm.diffusion.noise_mixture, pm.diffusion.condition_rate,\n"
      "                  pm.data.cache_dir, pm.latent.video_autoencoder_workdir,\n"
      "                  pm.job_minutes, [r[0] for r in experiment.runs(config)]]))\n")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert json.loads(proc.stdout.splitlines()[-1]) == [
      "pm", 0.0, "/runs/job/latent_cache", "/runs/job/magvit2_decoder", 0.0,
      ["vanilla+replacement", "pm", "pt", "monl"]]


def test_the_budget_variant_trains_the_settings_longer_with_eight_curve_points():
  proc = _python(
      "import json\n"
      "from avdit.workflows import experiment\n"
      "from configs import monl_ablation\n"
      "base, config = (monl_ablation.get_config(v) for v in ('pipeline', 'pipeline_budget'))\n"
      "train = config.train\n"
      "print(json.dumps([[r[0] for r in experiment.runs(config)], experiment.seeds(config),\n"
      "                  train.num_steps == 2 * base.train.num_steps,\n"
      "                  train.num_steps // train.keep_period,\n"
      "                  len(experiment.claims(config)) == len(monl_ablation.CLAIMS)]))\n")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert json.loads(proc.stdout.splitlines()[-1]) == [
      ["vanilla+replacement", "pm", "pt", "monl"], [0], True, 8, True]


def test_the_contrastive_ablation_on_pipeline_fine_tunes_the_runs_avdit_with_its_objective():
  proc = _python(
      "import json\n"
      "from avdit import workdir\n"
      "from avdit.workflows import experiment\n"
      "from configs import avdit_pipeline, contrastive_ablation\n"
      "config = contrastive_ablation.get_config('pipeline_equal_minutes')\n"
      "config.pipeline_workdir = '/runs/job'\n"
      "config = workdir.with_stage_dirs(config, config.pipeline_workdir)\n"
      "job = avdit_pipeline.get_config()\n"
      "out = {}\n"
      "for name, _, _ in experiment.runs(config):\n"
      "  c = experiment.setting_config(config, name, 'monl')\n"
      "  out[name] = [c.train.init_from, c.diffusion.noise_mixture,\n"
      "               c.diffusion.condition_rate == job.diffusion.condition_rate > 0,\n"
      "               c.diffusion.cdl_weight > 0, c.diffusion.cdcd_weight > 0, c.train.num_steps,\n"
      "               c.diffusion.late_condition_tasks]\n"
      "print(json.dumps(out))\n")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert json.loads(proc.stdout.splitlines()[-1]) == {
      "monl": ["/runs/job/avdit", "monl", True, False, False, 1050, ""],
      "monl_cdl": ["/runs/job/avdit", "monl", True, True, False, 1050, ""],
      "monl_cdcd": ["/runs/job/avdit", "monl", True, False, True, 1050, ""],
      "monl_6x": ["/runs/job/avdit", "monl", True, False, False, 6300, ""]}
