"""The TPU VM launch scripts in launch/: option handling, --dry-run output, and that nothing runs.

Pure subprocess + string checks (no JAX). A fake `gcloud`/`gsutil`/`curl` is put first on PATH: it
records every call into a file, so a dry run must leave that file empty, and the real-mode tests
(delete confirmation, the preemption loop) can check which commands ran, in which order.
"""
import os
import pathlib
import shlex
import shutil
import subprocess
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch"
SCRIPTS = ["create_slice.sh", "setup_workers.sh", "copy_config.sh", "train.sh", "watch.sh",
           "resume_on_preemption.sh", "delete_slice.sh"]
NAME, ZONE, PROJECT = "avdit-train", "us-west4-a", "my-proj"
LOC = ["--name", NAME, "--zone", ZONE, "--project", PROJECT]
URL = "https://github.com/example/avdit.git"
CFG = "configs/avdit_monologues.py:default"
WORKDIR = "gs://my-bucket/avdit/run1"
CONFIG_FILE = str(ROOT / "configs" / "avdit_monologues.py")
# The options each script needs besides --name/--zone/--project.
REQUIRED = {
    "create_slice.sh": [],
    "setup_workers.sh": ["--repo", URL],
    "copy_config.sh": ["--config", CONFIG_FILE],
    "train.sh": ["--config", CFG, "--workdir", WORKDIR],
    "watch.sh": [],
    "resume_on_preemption.sh": ["--repo", URL, "--config", CFG, "--workdir", WORKDIR],
    "delete_slice.sh": [],
}

# Records its name and arguments; `... describe ...` prints the next line of $FAKE_STATES (default
# READY), and NOT_FOUND there makes it fail the way gcloud does for a missing resource.
FAKE = r"""#!/bin/sh
printf '%s\n' "$(basename "$0") $*" >> "$FAKE_CALLS"
case "$(basename "$0")" in curl) exit 7 ;; esac
case "$*" in
  *" describe "*)
    state=READY
    if [ -s "$FAKE_STATES" ]; then
      state=$(head -n 1 "$FAKE_STATES")
      tail -n +2 "$FAKE_STATES" > "$FAKE_STATES.tmp" && mv "$FAKE_STATES.tmp" "$FAKE_STATES"
    fi
    if [ "$state" = NOT_FOUND ]; then
      echo "ERROR: (gcloud) NOT_FOUND: Resource not found" >&2
      exit 1
    fi
    echo "$state" ;;
esac
exit 0
"""


@pytest.fixture
def env(tmp_path):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  for tool in ("gcloud", "gsutil", "curl"):
    (bin_dir / tool).write_text(FAKE)
    (bin_dir / tool).chmod(0o755)
  e = dict(os.environ)
  e.update(PATH=f"{bin_dir}{os.pathsep}{e.get('PATH', '')}", FAKE_CALLS=str(tmp_path / "calls"),
           FAKE_STATES=str(tmp_path / "states"), TMPDIR=str(tmp_path))
  return e


def calls(env):
  p = pathlib.Path(env["FAKE_CALLS"])
  return p.read_text().splitlines() if p.exists() else []


def run(script, *args, env, stdin=subprocess.DEVNULL, timeout=30):
  return subprocess.run([str(LAUNCH / script), *args], capture_output=True, text=True, env=env,
                        cwd=ROOT, stdin=stdin, timeout=timeout)


def dry(script, *args, env):
  """--dry-run with valid options (args may override REQUIRED ones: the last value wins): exit 0,
  gcloud never called; returns the printed commands, tokenized."""
  r = run(script, "--dry-run", *LOC, *REQUIRED[script], *args, env=env)
  assert r.returncode == 0, r.stderr
  assert calls(env) == [], "a dry run ran a command"
  cmds = [shlex.split(line) for line in r.stdout.splitlines()]
  assert cmds and all(cmds), r.stdout
  return cmds


def is_gcloud(cmd, *sub):
  return cmd[:len(sub) + 3] == ["gcloud", "compute", "tpus", *sub]


def check_location(cmd, name=NAME):
  if cmd[4] == "scp":  # gcloud compute tpus tpu-vm scp SRC NAME:DEST
    assert cmd[6].startswith(f"{name}:"), cmd
  else:  # gcloud compute tpus <group> <verb> NAME
    assert cmd[5] == name, cmd
  assert f"--zone={ZONE}" in cmd and f"--project={PROJECT}" in cmd, cmd


def remote(cmd):
  """The --command of a `gcloud ... ssh`, checked to be one syntactically valid line of bash."""
  assert cmd[cmd.index("--command") - 1].startswith("--worker="), cmd
  script = cmd[cmd.index("--command") + 1]
  assert "\n" not in script
  r = subprocess.run(["bash", "-n", "-c", script], capture_output=True, text=True, timeout=10)
  assert r.returncode == 0, (r.stderr, script)
  return script


def without(args, option):
  i = args.index(option)
  return args[:i] + args[i + 2:]


# --- common option handling ---------------------------------------------------------------------


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_exits_0(script, env):
  r = run(script, "--help", env=env)
  assert r.returncode == 0, r.stderr
  assert r.stdout.startswith(f"Usage: {script}")
  for option in ["--name", "--dry-run"] + REQUIRED[script][::2]:
    assert option in r.stdout
  assert calls(env) == []


@pytest.mark.parametrize("script", SCRIPTS)
def test_unknown_option_fails(script, env):
  r = run(script, *LOC, *REQUIRED[script], "--bogus", "1", "--dry-run", env=env)
  assert r.returncode != 0
  assert "unknown option: --bogus" in r.stderr
  assert r.stdout == "" and calls(env) == []


@pytest.mark.parametrize("script,option", [
    (s, o) for s in SCRIPTS for o in ["--name", "--zone", "--project"] + REQUIRED[s][::2]])
def test_missing_required_option_fails(script, option, env):
  args = without(LOC + REQUIRED[script], option)
  r = run(script, *args, "--dry-run", env=env)
  assert r.returncode != 0
  assert f"{option} is required" in r.stderr
  assert r.stdout == "" and calls(env) == []


@pytest.mark.parametrize("script", SCRIPTS)
def test_option_without_value_fails(script, env):
  r = run(script, *REQUIRED[script], "--name", NAME, "--project", PROJECT, "--zone", env=env)
  assert r.returncode != 0 and "--zone needs a value" in r.stderr
  r = run(script, *REQUIRED[script], "--name", NAME, "--project", PROJECT, "--zone=", env=env)
  assert r.returncode != 0 and "--zone needs a non-empty value" in r.stderr
  r = run(script, *REQUIRED[script], "--name", "--zone", ZONE, "--project", PROJECT, env=env)
  assert r.returncode != 0 and "--name needs a value" in r.stderr
  assert calls(env) == []


def test_bad_slice_name_and_stray_argument_fail(env):
  r = run("create_slice.sh", "--name", "Avdit_Train", "--zone", ZONE, "--project", PROJECT,
          "--dry-run", env=env)
  assert r.returncode != 0 and "--name must be lowercase" in r.stderr
  r = run("create_slice.sh", *LOC, "stray", "--dry-run", env=env)
  assert r.returncode != 0 and "unexpected argument: stray" in r.stderr
  r = run("create_slice.sh", *LOC, "--spot=yes", "--dry-run", env=env)
  assert r.returncode != 0 and "--spot takes no value" in r.stderr
  assert calls(env) == []


def test_equals_form_and_option_order_do_not_matter(env):
  a = run("create_slice.sh", *LOC, "--accelerator", "v5litepod-16", "--dry-run", env=env)
  b = run("create_slice.sh", "--dry-run", f"--project={PROJECT}", "--accelerator=v5litepod-16",
          f"--name={NAME}", f"--zone={ZONE}", env=env)
  assert a.returncode == b.returncode == 0
  assert a.stdout == b.stdout and a.stdout.count("\n") == 1
  assert calls(env) == []


# --- create_slice.sh -----------------------------------------------------------------------------


def test_create_direct(env):
  [cmd] = dry("create_slice.sh", env=env)
  assert is_gcloud(cmd, "tpu-vm", "create")
  check_location(cmd)
  assert "--accelerator-type=v5litepod-256" in cmd and "--version=v2-alpha-tpuv5-lite" in cmd
  assert "--spot" not in cmd and not any(t.startswith("--node-id") for t in cmd)
  [cmd] = dry("create_slice.sh", "--spot", "--accelerator", "v5litepod-16", "--runtime", "rt-x",
              env=env)
  assert is_gcloud(cmd, "tpu-vm", "create")
  assert "--spot" in cmd and "--accelerator-type=v5litepod-16" in cmd and "--version=rt-x" in cmd


def test_create_queued(env):
  [cmd] = dry("create_slice.sh", "--queued", env=env)
  assert is_gcloud(cmd, "queued-resources", "create")
  check_location(cmd)
  assert f"--node-id={NAME}" in cmd and "--accelerator-type=v5litepod-256" in cmd
  assert "--runtime-version=v2-alpha-tpuv5-lite" in cmd and "--spot" not in cmd
  [cmd] = dry("create_slice.sh", "--queued", "--spot", env=env)
  assert is_gcloud(cmd, "queued-resources", "create") and "--spot" in cmd


def test_create_runs_gcloud_without_dry_run(env):
  """The fake gcloud does record real calls, so the empty-record checks above mean something."""
  r = run("create_slice.sh", *LOC, "--spot", env=env)
  assert r.returncode == 0, r.stderr
  assert calls(env) == [f"gcloud compute tpus tpu-vm create {NAME} --zone={ZONE} "
                        f"--project={PROJECT} --accelerator-type=v5litepod-256 "
                        "--version=v2-alpha-tpuv5-lite --spot"]


# --- setup_workers.sh ----------------------------------------------------------------------------


def check_install(script):
  assert ".venv/bin/pip install -e . 'jax[tpu]'" in script
  assert "-m venv .venv" in script


def test_setup_from_git_url(env):
  [cmd] = dry("setup_workers.sh", "--ref", "v1.2", env=env)
  assert is_gcloud(cmd, "tpu-vm", "ssh")
  check_location(cmd)
  assert "--worker=all" in cmd
  script = remote(cmd)
  assert f"git clone -q {URL} avdit" in script
  assert "git fetch -q --force --tags origin v1.2" in script
  assert "git checkout -q --force --detach FETCH_HEAD" in script
  check_install(script)
  [cmd] = dry("setup_workers.sh", "--remote-dir", "src/av", "--python", "python3.11", env=env)
  script = remote(cmd)
  assert "origin HEAD" in script and "cd src/av" in script
  assert "python3.11 -m venv .venv" in script and "python3.11-venv" in script


def test_setup_from_local_dir_ships_a_tarball(env, tmp_path):
  src = tmp_path / "checkout"
  (src / "avdit").mkdir(parents=True)
  (src / "setup.py").write_text("")
  tar, scp, rm, ssh = dry("setup_workers.sh", "--repo", str(src), env=env)
  assert tar[:2] == ["tar", "-czf"] and tar[-3:] == ["-C", str(src), "."]
  tarball = tar[2]
  assert "--exclude=.git" in tar and "--exclude=.venv" in tar
  assert is_gcloud(scp, "tpu-vm", "scp")
  assert scp[5:7] == [tarball, f"{NAME}:avdit-src.tar.gz"] and "--worker=all" in scp
  assert f"--zone={ZONE}" in scp and f"--project={PROJECT}" in scp
  assert rm == ["rm", "-f", tarball]
  assert is_gcloud(ssh, "tpu-vm", "ssh") and "--worker=all" in ssh
  script = remote(ssh)
  assert "tar -xzf avdit-src.tar.gz -C avdit" in script
  check_install(script)
  assert not pathlib.Path(tarball).exists()


@pytest.mark.skipif(not shutil.which("git"), reason="needs git")
def test_setup_from_local_git_checkout_uses_git_archive(env, tmp_path):
  src = tmp_path / "checkout"
  src.mkdir()
  (src / "setup.py").write_text("")
  git = ["git", "-C", str(src), "-c", "user.name=t", "-c", "user.email=t@t"]
  for args in (["init", "-q"], ["add", "setup.py"], ["commit", "-qm", "x"]):
    subprocess.run(git + args, check=True, capture_output=True, env=env, timeout=30)
  archive, scp, _, ssh = dry("setup_workers.sh", "--repo", str(src), "--ref", "v1.2", env=env)
  assert archive[:4] == ["git", "-C", str(src), "archive"]
  assert archive[-1] == "v1.2"
  tarball = next(t for t in archive if t.startswith("--output=")).split("=", 1)[1]
  assert scp[5] == tarball and "--worker=all" in scp and "--worker=all" in ssh


def test_setup_from_local_tarball(env, tmp_path):
  tarball = tmp_path / "avdit.tar.gz"
  tarball.write_bytes(b"")
  scp, ssh = dry("setup_workers.sh", "--repo", str(tarball), env=env)
  assert is_gcloud(scp, "tpu-vm", "scp") and scp[5] == str(tarball) and "--worker=all" in scp
  assert is_gcloud(ssh, "tpu-vm", "ssh")
  assert tarball.exists()  # the user's own tarball is not removed


@pytest.mark.parametrize("args,message", [
    (["--repo", "no/such/dir"], "neither an existing local path nor a git URL"),
    (["--repo", "."], "has no setup.py"),
    (["--repo", URL, "--remote-dir", "../x"], "--remote-dir must be"),
    (["--repo", URL, "--remote-dir", "."], "--remote-dir must be"),
    (["--repo", URL, "--ref", "a b"], "--ref has unexpected characters"),
])
def test_setup_rejects_bad_options(args, message, env, tmp_path):
  r = subprocess.run([str(LAUNCH / "setup_workers.sh"), *LOC, *args, "--dry-run"],
                     capture_output=True, text=True, env=env, cwd=tmp_path, timeout=30)
  assert r.returncode != 0 and message in r.stderr
  assert calls(env) == []


# --- copy_config.sh ------------------------------------------------------------------------------


def test_copy_config(env):
  [cmd] = dry("copy_config.sh", env=env)
  assert is_gcloud(cmd, "tpu-vm", "scp")
  assert cmd[5:7] == [CONFIG_FILE, f"{NAME}:avdit/configs/avdit_monologues.py"]
  assert "--worker=all" in cmd and f"--zone={ZONE}" in cmd and f"--project={PROJECT}" in cmd
  # FILE:variant is accepted (the variant is train.sh's business); --remote-dir moves the target.
  r = run("copy_config.sh", *LOC, "--config", CONFIG_FILE + ":tiny", "--remote-dir", "av",
          "--dry-run", env=env)
  assert r.returncode == 0, r.stderr
  assert shlex.split(r.stdout)[5:7] == [CONFIG_FILE, f"{NAME}:av/configs/avdit_monologues.py"]


def test_copy_config_missing_file_fails(env):
  r = run("copy_config.sh", *LOC, "--config", "configs/nope.py", "--dry-run", env=env)
  assert r.returncode != 0 and "--config: no such file" in r.stderr
  assert calls(env) == []


# --- train.sh ------------------------------------------------------------------------------------


AVDIT = (f".venv/bin/python -m avdit.main --config={CFG} --workdir={WORKDIR} --mode=train")


def test_train_starts_avdit_on_all_workers(env):
  [cmd] = dry("train.sh", "--", "--config.train.num_steps=10", env=env)
  assert is_gcloud(cmd, "tpu-vm", "ssh")
  check_location(cmd)
  assert "--worker=all" in cmd
  script = remote(cmd)
  assert f"setsid nohup {AVDIT} --config.train.num_steps=10 >> \"$log\" 2>&1 < /dev/null & " in script
  assert "cd avdit;" in script and "realpath -m -- avdit-logs/train.log" in script
  assert "storage cp" not in script and "gsutil" not in script
  assert "kill -TERM" not in script  # no --restart: a live run is refused, not stopped


def test_train_options(env):
  [cmd] = dry("train.sh", "--log-dir", "gs://my-bucket/logs/", "--log-sync-seconds", "60",
              "--log-file", "~/logs/run.log", "--env", "LIBTPU_INIT_ARGS=--xla_foo=true",
              "--restart", "--mode", "train_and_sample", "--remote-dir", "av", "--",
              "--config.sample.tasks=a2v|v:0", env=env)
  script = remote(cmd)
  assert ("setsid nohup env LIBTPU_INIT_ARGS=--xla_foo=true .venv/bin/python -m avdit.main "
          f"--config={CFG} --workdir={WORKDIR} --mode=train_and_sample "
          "'--config.sample.tasks=a2v|v:0' >> \"$log\"") in script
  assert "realpath -m -- logs/run.log" in script and "cd av;" in script
  assert "gcloud -q storage cp" in script and "dest=gs://my-bucket/logs/" in script
  assert ' 60 "$log" "$dest"' in script
  assert "kill -TERM" in script


def test_train_sample_mode_default_log(env):
  [cmd] = dry("train.sh", "--mode", "sample", env=env)
  script = remote(cmd)
  assert "--mode=sample" in script and "avdit-logs/sample.log" in script


@pytest.mark.parametrize("args,message", [
    (["--mode", "eval"], "--mode must be"),
    (["--log-dir", "/local/logs"], "--log-dir must be a gs:// URL"),
    (["--log-sync-seconds", "0"], "--log-sync-seconds must be at least 1"),
    (["--env", "1BAD=x"], "--env must be KEY=VALUE"),
    (["--", "--config.x=1", "--dry-run"], "--dry-run after '--'"),
])
def test_train_rejects_bad_options(args, message, env):
  r = run("train.sh", *LOC, *REQUIRED["train.sh"], *args, env=env)
  assert r.returncode != 0 and message in r.stderr
  assert calls(env) == []


def test_train_warns_about_a_local_workdir(env):
  r = run("train.sh", *LOC, "--config", CFG, "--workdir", "/tmp/avdit", "--dry-run", env=env)
  assert r.returncode == 0 and "is not a gs:// URL" in r.stderr
  assert "--workdir=/tmp/avdit" in r.stdout


@pytest.mark.skipif(not (shutil.which("setsid") and shutil.which("realpath")),
                    reason="needs setsid and realpath (util-linux, coreutils)")
def test_train_worker_script_runs_avdit_with_exact_arguments(env, tmp_path):
  """Runs the generated worker command in a fake home: the avdit argv must arrive intact."""
  home = tmp_path / "home"
  venv_bin = home / "avdit" / ".venv" / "bin"
  venv_bin.mkdir(parents=True)
  argv_file = tmp_path / "argv"
  (venv_bin / "python").write_text(
      f'#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done > {argv_file}.tmp\n'
      f'printf "FOO=%s\\n" "$FOO"\nmv {argv_file}.tmp {argv_file}\n')
  (venv_bin / "python").chmod(0o755)
  extra = ["--config.train.num_steps=10", "--config.sample.tasks=v:0;a:0 b'c\"$HOME"]
  [cmd] = dry("train.sh", "--env", "FOO=bar baz", "--log-dir", "gs://b/logs",
              "--log-sync-seconds", "1", "--", *extra, env=env)
  e = dict(env, HOME=str(home))
  r = subprocess.run(["bash", "-c", remote(cmd)], capture_output=True, text=True, env=e, cwd=home,
                     stdin=subprocess.DEVNULL, timeout=30)
  assert r.returncode == 0, r.stderr
  assert "avdit pid" in r.stdout
  deadline = time.time() + 10
  log = pathlib.Path(os.path.realpath(home / "avdit-logs" / "train.log"))
  while time.time() < deadline and not (argv_file.exists() and "FOO=" in log.read_text()):
    time.sleep(0.05)
  assert argv_file.read_text().splitlines() == [
      "-m", "avdit.main", f"--config={CFG}", f"--workdir={WORKDIR}", "--mode=train", *extra]
  text = log.read_text()
  assert text.startswith("=== ") and "FOO=bar baz" in text
  assert (home / "avdit-logs" / "train.log.pid").read_text().strip().isdigit()
  while time.time() < deadline and not any("storage cp" in c for c in calls(env)):
    time.sleep(0.05)  # the log copier makes a last copy once avdit has exited
  copies = [c for c in calls(env) if "storage cp" in c]
  assert copies and copies[-1].startswith(f"gcloud -q storage cp {log} gs://b/logs/")
  assert copies[-1].endswith(".log")


# --- watch.sh ------------------------------------------------------------------------------------


def test_watch(env):
  describe, ssh = dry("watch.sh", env=env)
  assert is_gcloud(describe, "tpu-vm", "describe")
  check_location(describe)
  assert is_gcloud(ssh, "tpu-vm", "ssh") and "--worker=0" in ssh
  script = remote(ssh)
  assert script.endswith("tail -n 50 -- avdit-logs/train.log")
  qdescribe, describe, ssh = dry("watch.sh", "--queued", "--follow", "--lines", "200",
                                 "--log-file", "logs/x.log", env=env)
  assert is_gcloud(qdescribe, "queued-resources", "describe")
  check_location(qdescribe)
  assert is_gcloud(describe, "tpu-vm", "describe")
  assert remote(ssh).endswith("tail -n 200 -F -- logs/x.log")


# --- delete_slice.sh -----------------------------------------------------------------------------


def test_delete_dry_run(env):
  [cmd] = dry("delete_slice.sh", env=env)  # no --yes, stdin closed: a dry run does not ask
  assert is_gcloud(cmd, "tpu-vm", "delete")
  check_location(cmd)
  assert "--quiet" in cmd
  [cmd] = dry("delete_slice.sh", "--queued", env=env)
  assert is_gcloud(cmd, "queued-resources", "delete")
  check_location(cmd)
  assert "--force" in cmd


def test_delete_asks_for_confirmation(env):
  r = run("delete_slice.sh", *LOC, env=env, stdin=subprocess.DEVNULL)
  assert r.returncode != 0 and "not deleted" in r.stderr and calls(env) == []
  r = subprocess.run([str(LAUNCH / "delete_slice.sh"), *LOC], input="n\n", capture_output=True,
                     text=True, env=env, timeout=30)
  assert r.returncode != 0 and "[y/N]" in r.stderr and calls(env) == []
  r = subprocess.run([str(LAUNCH / "delete_slice.sh"), *LOC, "--queued"], input="y\n",
                     capture_output=True, text=True, env=env, timeout=30)
  assert r.returncode == 0, r.stderr
  assert calls(env) == [f"gcloud compute tpus queued-resources delete {NAME} --zone={ZONE} "
                        f"--project={PROJECT} --force --quiet"]
  r = run("delete_slice.sh", *LOC, "--yes", env=env)
  assert r.returncode == 0 and len(calls(env)) == 2 and "tpu-vm delete" in calls(env)[1]


# --- resume_on_preemption.sh ---------------------------------------------------------------------


def test_resume_dry_run_prints_the_preempted_path(env):
  cmds = dry("resume_on_preemption.sh", "--spot", "--accelerator", "v5litepod-16",
             "--copy-config", CONFIG_FILE, "--poll-seconds", "3600", "--",
             "--config.train.num_steps=10", env=env)
  describe, delete, create, setup, copy, train = cmds
  assert is_gcloud(describe, "tpu-vm", "describe") and "--format=value(state)" in describe
  assert is_gcloud(delete, "tpu-vm", "delete") and "--quiet" in delete
  assert is_gcloud(create, "tpu-vm", "create")
  assert "--spot" in create and "--accelerator-type=v5litepod-16" in create
  assert is_gcloud(setup, "tpu-vm", "ssh") and f"git clone -q {URL}" in remote(setup)
  assert is_gcloud(copy, "tpu-vm", "scp") and "--worker=all" in copy
  assert is_gcloud(train, "tpu-vm", "ssh") and "--worker=all" in train
  assert f"{AVDIT} --config.train.num_steps=10 >>" in remote(train)
  assert "kill -TERM" in remote(train)  # restarts replace whatever survived
  for cmd in cmds:
    check_location(cmd)


def test_resume_dry_run_queued(env):
  describe, delete, create, setup, train = dry("resume_on_preemption.sh", "--queued", env=env)
  assert is_gcloud(describe, "queued-resources", "describe")
  assert "--format=value(state.state)" in describe
  assert is_gcloud(delete, "queued-resources", "delete") and "--force" in delete
  assert is_gcloud(create, "queued-resources", "create")
  assert f"--node-id={NAME}" in create and "--spot" not in create
  assert is_gcloud(setup, "tpu-vm", "ssh") and is_gcloud(train, "tpu-vm", "ssh")
  assert f"{AVDIT} >>" in remote(train)


@pytest.mark.parametrize("args,message", [
    (["--poll-seconds", "0"], "--poll-seconds must be at least 1"),
    (["--poll-seconds", "soon"], "--poll-seconds must be a non-negative integer"),
    (["--max-restarts", "-1"], "--max-restarts must be a non-negative integer"),
    (["--log-dir", "/tmp/logs"], "--log-dir must be a gs:// URL"),  # checked by train.sh, up front
    (["--copy-config", "configs/nope.py"], "--config: no such file"),
])
def test_resume_rejects_bad_options(args, message, env):
  r = run("resume_on_preemption.sh", *LOC, *REQUIRED["resume_on_preemption.sh"], *args, env=env)
  assert r.returncode != 0 and message in r.stderr
  assert r.stdout == "" and calls(env) == []


def resume_loop(env, states, *args):
  pathlib.Path(env["FAKE_STATES"]).write_text("".join(s + "\n" for s in states))
  r = run("resume_on_preemption.sh", *LOC, *REQUIRED["resume_on_preemption.sh"],
          "--poll-seconds", "1", "--max-restarts", "1", *args, env=env, timeout=60)
  got = []
  for c in calls(env):
    words = c.split()
    got.append(" ".join(words[3:5]) if words[0] == "gcloud" else words[0])
  return r, got


def test_resume_loop_recreates_a_preempted_slice_and_restarts_training(env):
  r, got = resume_loop(env, ["PREEMPTED", "READY", "PREEMPTED"], "--spot")
  assert r.returncode == 1 and "--max-restarts 1 recreations are used up" in r.stderr
  assert got == ["tpu-vm describe", "tpu-vm delete", "tpu-vm create", "tpu-vm describe",
                 "tpu-vm ssh", "tpu-vm ssh", "tpu-vm describe"]
  assert "--spot" in calls(env)[2]
  assert "git clone" in calls(env)[4] and "avdit.main" in calls(env)[5]


def test_resume_loop_queued_waits_for_active(env):
  r, got = resume_loop(env, ["NOT_FOUND", "WAITING_FOR_RESOURCES", "ACTIVE", "SUSPENDED"],
                       "--queued")
  assert r.returncode == 1 and "SUSPENDED" in r.stderr
  assert got == ["queued-resources describe", "queued-resources create",  # nothing to delete
                 "queued-resources describe", "queued-resources describe", "tpu-vm ssh",
                 "tpu-vm ssh", "queued-resources describe"]


# --- the scripts themselves and the README -------------------------------------------------------


def test_scripts_are_strict_executable_bash():
  for script in SCRIPTS:
    path = LAUNCH / script
    text = path.read_text()
    assert text.startswith("#!/usr/bin/env bash\n"), script
    assert "\nset -euo pipefail\n" in text, script
    assert 'source "$(dirname "${BASH_SOURCE[0]}")/common.sh"' in text, script
    assert os.access(path, os.X_OK), f"{script} is not executable"


def test_static_check():
  """shellcheck when it is installed, else bash's own syntax check (never skipped)."""
  files = [str(LAUNCH / s) for s in ["common.sh", *SCRIPTS]]
  if shutil.which("shellcheck"):
    r = subprocess.run(["shellcheck", "-x", *files], capture_output=True, text=True, cwd=ROOT,
                       timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
  else:
    for f in files:
      r = subprocess.run(["bash", "-n", f], capture_output=True, text=True, timeout=10)
      assert r.returncode == 0, (f, r.stderr)


def test_bash_syntax():
  for f in ["common.sh", *SCRIPTS]:
    r = subprocess.run(["bash", "-n", str(LAUNCH / f)], capture_output=True, text=True, timeout=10)
    assert r.returncode == 0, (f, r.stderr)


def test_readme_covers_the_workflow():
  text = (LAUNCH / "README.md").read_text()
  for script in SCRIPTS:
    assert script in text, script
  for word in ("v5litepod-256", "16x16", "v5litepod-16", "4x4", "--dry-run", "--queued",
               "--spot", "--mode=sample"):
    assert word in text, word
