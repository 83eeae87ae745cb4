"""Every mode checks what its later stages need before the first step
(avdit/workflows/preflight.py)."""
import os
import subprocess
import sys

import pytest

from avdit.workflows import preflight
from avdit.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLIP = dict(num_frames=9, fps=8.0, height=32, width=32, sample_rate=16000)


@pytest.fixture(scope="module")
def train_only_data(tmp_path_factory):
  """A prepared dataset with a `train` split (4 clips) and no `test` split: (data_dir, name)."""
  import tensorflow_datasets as tfds
  import av_fixtures as fx
  from avdit.data import av_folder
  from avdit.data import prepare
  tfds.disable_progress_bar()
  videos = tmp_path_factory.mktemp("videos")
  (videos / "train").mkdir()
  for i in range(2):  # 2.5 s at 8 fps: 20 frames, two 9-frame clips each
    fx.write_av(videos / "train" / f"{i}.mp4", fps=16, width=48, height=32, seconds=2.5)
  geometry = av_folder.ClipGeometry(stride_frames=CLIP["num_frames"], **CLIP)
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  report = prepare.prepare_dataset(
      videos, data_dir, av_folder.AvFolderConfig.from_geometry(geometry, name="trainonly"))
  assert list(report["splits"]) == ["train"]
  assert report["splits"]["train"]["clips"] == 4
  return data_dir, "av_folder/trainonly"


def tfds_config(data_dir, name):
  from configs import avdit_aist
  config = avdit_aist.get_config("tiny")
  config.clip.update(CLIP)
  config.data.update(tfds_name=name, data_dir=data_dir)
  return config


def test_a_missing_held_out_split_is_found_before_training(train_only_data, tmp_path):
  config = tfds_config(*train_only_data)
  preflight.check(config, "train", str(tmp_path))  # training alone needs only `train`
  for mode in ("train_and_sample", "sample", "eval"):
    with pytest.raises(UserError, match=r"has no split 'test' \(it has \['train'\]\); "
                                        rf"--mode={mode} needs \d+ for .*avdit.data.prepare"):
      preflight.check(config, mode, str(tmp_path))
  config.data.batch_size = 8  # more than the 4 training clips
  with pytest.raises(UserError, match="has 4 clips in split 'train'; --mode=train needs 8"):
    preflight.check(config, "train", str(tmp_path))


def test_geometry_workdir_and_eval_split_problems_are_named(train_only_data, tmp_path):
  config = tfds_config(*train_only_data)
  config.clip.num_frames = 17
  with pytest.raises(UserError, match=r"num_frames 9 \(dataset\) vs 17 \(config.clip\)"):
    preflight.check(config, "train", str(tmp_path))
  config = tfds_config(*train_only_data)
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  with pytest.raises(UserError, match="is not writable"):
    preflight.check(config, "train", str(blocker / "run"))
  config.data.eval_split = "train"
  with pytest.raises(UserError, match="is the training split"):
    preflight.check(config, "sample", str(tmp_path))
  config = tfds_config(*train_only_data)
  config.data.tfds_name = "av_folder/nothing_here"
  with pytest.raises(UserError, match="not prepared|no TFDS dataset"):
    preflight.check(config, "train", str(tmp_path))


def test_every_mode_of_a_pipeline_config_looks_in_the_same_directory(tmp_path):
  from configs import avdit_pipeline
  config = avdit_pipeline.get_config("tiny")
  for mode in ("sample", "eval", "curve"):
    with pytest.raises(UserError, match=f"no checkpoint directory {tmp_path}/avdit/checkpoints"):
      preflight.check(config, mode, str(tmp_path))
  config.eval.i3d_weights = str(tmp_path / "missing_i3d.npz")
  with pytest.raises(UserError, match="eval.i3d_weights=.* is not a file"):
    preflight.check(config, "pipeline", str(tmp_path))


def test_main_reports_a_user_error_without_traceback_and_trains_nothing(train_only_data,
                                                                         tmp_path):
  data_dir, name = train_only_data
  workdir = tmp_path / "run"
  cmd = [sys.executable, "-m", "avdit.main", "--config=configs/avdit_aist.py:tiny",
         f"--workdir={workdir}", f"--config.data.tfds_name={name}",
         f"--config.data.data_dir={data_dir}",
         *(f"--config.clip.{k}={v}" for k, v in CLIP.items())]
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 1, result.stderr[-3000:]
  assert "error: TFDS dataset av_folder/trainonly" in result.stderr
  assert "has no split 'test'" in result.stderr
  assert "Traceback" not in result.stderr + result.stdout
  assert not (workdir / "checkpoints").exists()  # nothing trained


def test_a_misspelled_guidance_by_task_is_named_before_training(tmp_path):
  from configs import avdit_synthetic
  config = avdit_synthetic.get_config("tiny")
  config.sample.guidance_by_task = "vid2aud=1"
  with pytest.raises(UserError, match="vid2aud"):
    preflight.check(config, "train_and_sample", str(tmp_path))
  preflight.check(config, "train", str(tmp_path))  # training alone never reads it
  config.sample.guidance_by_task = "v2a=1"
  preflight.check(config, "train_and_sample", str(tmp_path))


def test_sampler_settings_that_cannot_run_together_are_named_before_training(tmp_path):
  from configs import avdit_synthetic
  config = avdit_synthetic.get_config("tiny")
  config.sample.update(resample=2, parallel=True)
  with pytest.raises(UserError, match="sequential"):
    preflight.check(config, "train_and_sample", str(tmp_path))
  config.sample.update(parallel=False, sampler="dpmpp_2m")
  with pytest.raises(UserError, match="dpmpp_2m"):
    preflight.check(config, "train_and_sample", str(tmp_path))
  config.sample.sampler = "ddpm"
  preflight.check(config, "train_and_sample", str(tmp_path))


def test_a_loss_weighting_the_loss_cannot_apply_is_named_before_training(tmp_path):
  from configs import avdit_synthetic
  config = avdit_synthetic.get_config("tiny")
  config.diffusion.update(prediction="x0", x0_skip=True, loss_weighting="video:snr")
  with pytest.raises(UserError, match="video:snr"):
    preflight.check(config, "train", str(tmp_path))
  config.diffusion.update(loss_weighting="uniform", loss_weight_cap=5.0)  # nothing to cap
  with pytest.raises(UserError, match="caps"):
    preflight.check(config, "train", str(tmp_path))
  config.diffusion.update(loss_weighting="video:snr_plus_one", x0_skip=False)
  with pytest.raises(UserError, match="x0_skip"):
    preflight.check(config, "train", str(tmp_path))
  config.diffusion.x0_skip = True
  preflight.check(config, "train", str(tmp_path))
  config.diffusion.update(timestep_density="logsnr_normal", timestep_uniform_fraction="audio:2")
  with pytest.raises(UserError, match="timestep_uniform_fraction"):
    preflight.check(config, "train", str(tmp_path))


def test_conditioning_weights_are_checked_before_training(tmp_path):
  from configs import avdit_synthetic
  config = avdit_synthetic.get_config("tiny")
  config.diffusion.late_condition_tasks = "inpaint"  # the tiny run's schedule is a cosine
  with pytest.raises(UserError, match="late_fraction > 0"):
    preflight.check(config, "train", str(tmp_path))
  config.train.late_fraction = 0.3
  config.diffusion.late_condition_tasks = "inpainting"
  with pytest.raises(UserError, match="unknown condition task"):
    preflight.check(config, "train", str(tmp_path))
  config.diffusion.late_condition_tasks = "inpaint"
  preflight.check(config, "train", str(tmp_path))
