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
