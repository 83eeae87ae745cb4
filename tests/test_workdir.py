"""The workdir helpers: local paths resolve; a remote (bucket) workdir stages files locally."""
import pathlib

from etils import epath

from avdit import workdir as workdir_lib


def test_local_paths_are_absolute_and_written(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  target = workdir_lib.write_text("run", "config.json", "{}")
  assert pathlib.Path(str(target)) == tmp_path / "run" / "config.json"
  assert (tmp_path / "run" / "config.json").read_text() == "{}"
  assert not workdir_lib.is_remote("run") and workdir_lib.is_remote("gs://bucket/run")
  assert str(workdir_lib.path("gs://bucket/run", "checkpoints")) == "gs://bucket/run/checkpoints"


def test_remote_target_gets_the_staged_files(tmp_path, monkeypatch):
  """A bucket stand-in: `path` maps gs://bucket to a local folder; files written in the staging
  directory (not the target) arrive in the target, nested folders included, and staging is gone."""
  bucket = tmp_path / "bucket"
  real_path = workdir_lib.path
  monkeypatch.setattr(workdir_lib, "path", lambda workdir, *parts: (
      epath.Path(str(workdir).replace("gs://bucket", str(bucket))).joinpath(*parts)
      if str(workdir).startswith("gs://") else real_path(workdir, *parts)))
  with workdir_lib.local_staging("gs://bucket/run/samples") as staging:
    assert bucket not in staging.parents
    (staging / "a.mp4").write_bytes(b"mp4")
    (staging / "sub").mkdir()
    (staging / "sub" / "b.png").write_bytes(b"png")
  assert (bucket / "run" / "samples" / "a.mp4").read_bytes() == b"mp4"
  assert (bucket / "run" / "samples" / "sub" / "b.png").read_bytes() == b"png"
  assert not staging.exists()
