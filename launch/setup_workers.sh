#!/usr/bin/env bash
# Puts an avdit checkout and a virtual environment with jax[tpu] on every worker of a slice.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<EOF
Usage: $PROG --name NAME --zone ZONE --project PROJECT --repo URL_OR_PATH [options]

On every worker (--worker=all, in parallel): puts the avdit sources in ~/REMOTE_DIR, creates
~/REMOTE_DIR/.venv and runs 'pip install -e . jax[tpu]' in it. Safe to rerun.

  --repo a git URL   the workers clone it (once) and then fetch and check out --ref
                     (git must be able to reach it from the workers, e.g. a public repo).
  --repo a local dir a tarball is made here (git repo: 'git archive' of --ref, default HEAD, so
                     commit first - uncommitted changes are not shipped; other dirs: tar of the
                     tree without .git/.venv/__pycache__), copied to every worker with
                     'gcloud compute tpus tpu-vm scp --worker=all' and unpacked over a cleaned
                     ~/REMOTE_DIR (its .venv is kept).
  --repo a .tar.gz   copied and unpacked the same way (--ref not allowed).

Required:
  --name NAME  --zone ZONE  --project PROJECT
  --repo URL_OR_PATH     git URL, local directory or local .tar.gz/.tgz

Options:
  --ref REF              branch, tag or full commit sha (default: the remote's default branch
                         for a URL, HEAD for a local git repo)
  --remote-dir DIR       checkout directory on the workers, relative to home (default avdit)
  --python PYTHON        interpreter for the venv on the workers (default python3; the venv
                         package PYTHON-venv is apt-installed if missing)
  --dry-run              print the commands (local tar/git, gcloud scp/ssh) and run nothing
  -h, --help             this help
EOF
}

REPO=""
REF=""
REMOTE_DIR=avdit
PYTHON=python3
while (($#)); do
  case $1 in
    --repo | --repo=*) take_value "$@"; REPO=$VALUE ;;
    --ref | --ref=*) take_value "$@"; REF=$VALUE ;;
    --remote-dir | --remote-dir=*) take_value "$@"; REMOTE_DIR=${VALUE%/} ;;
    --python | --python=*) take_value "$@"; PYTHON=$VALUE ;;
    *) parse_common "$@" ;;
  esac
  shift "$NSHIFT"
done
finish_common
require REPO --repo
check_remote_dir "$REMOTE_DIR"
[[ $PYTHON =~ ^[A-Za-z0-9_./-]+$ ]] || die "--python must be an interpreter name or path, got '$PYTHON'"
[[ -z $REF || $REF =~ ^[A-Za-z0-9_./@^~+-]+$ ]] || die "--ref has unexpected characters: '$REF'"

D=$(shquote "$REMOTE_DIR")
PY=$(shquote "$PYTHON")
VENV_PKG=$(shquote "${PYTHON##*/}-venv")
# The venv and the install, run inside the checkout (one line of bash).
INSTALL="if [ ! -x .venv/bin/python ]; then $PY -m venv .venv || { rm -rf .venv;"
INSTALL+=" sudo apt-get -qq update && sudo DEBIAN_FRONTEND=noninteractive apt-get -qq install -y $VENV_PKG"
INSTALL+=" && $PY -m venv .venv; }; fi; .venv/bin/pip install -q --upgrade pip"
INSTALL+="; .venv/bin/pip install -e . 'jax[tpu]'"
INSTALL+="; .venv/bin/python -c 'import avdit, jax; print(jax.__version__)'"

if [[ -e $REPO ]]; then
  TARBALL_REMOTE=avdit-src.tar.gz
  if [[ -d $REPO ]]; then
    TARBALL=${TMPDIR:-/tmp}/avdit-src-$NAME.tar.gz
    [[ -f $REPO/setup.py || -f $REPO/pyproject.toml ]] ||
      die "--repo $REPO has no setup.py or pyproject.toml (give the top of the avdit checkout)"
    if [[ -e $REPO/.git ]]; then
      if [[ -z $REF && -n $(git -C "$REPO" status --porcelain --untracked-files=no 2>/dev/null) ]]; then
        warn "$REPO has uncommitted changes; they are not shipped (git archive HEAD)"
      fi
      run git -C "$REPO" archive --format=tar.gz --output="$TARBALL" "${REF:-HEAD}"
    else
      [[ -z $REF ]] || die "--ref needs --repo to be a git URL or a local git repository"
      run tar -czf "$TARBALL" --exclude=.git --exclude=.venv --exclude=__pycache__ \
        --exclude='*.egg-info' -C "$REPO" .
    fi
    CLEANUP=1
  elif [[ -f $REPO && ( $REPO == *.tar.gz || $REPO == *.tgz ) ]]; then
    [[ -z $REF ]] || die "--ref cannot be used with a tarball --repo"
    TARBALL=$REPO
    CLEANUP=0
  else
    die "--repo must be a git URL, a directory or a .tar.gz/.tgz file, got '$REPO'"
  fi
  tpu_scp "$TARBALL" "$TARBALL_REMOTE"
  if ((CLEANUP)); then
    run rm -f "$TARBALL"
  fi
  tpu_ssh all "set -e; mkdir -p $D; find $D -mindepth 1 -maxdepth 1 ! -name .venv -exec rm -rf {} +;\
 tar -xzf $TARBALL_REMOTE -C $D; rm -f $TARBALL_REMOTE; cd $D; $INSTALL"
else
  [[ $REPO == *://* || $REPO == *@*:* ]] ||
    die "--repo: '$REPO' is neither an existing local path nor a git URL"
  U=$(shquote "$REPO")
  R=$(shquote "${REF:-HEAD}")
  tpu_ssh all "set -e; if [ ! -d $D/.git ]; then git clone -q $U $D; fi; cd $D;\
 git remote set-url origin $U; git fetch -q --force --tags origin $R;\
 git checkout -q --force --detach FETCH_HEAD; $INSTALL"
fi
