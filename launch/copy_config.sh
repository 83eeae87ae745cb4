#!/usr/bin/env bash
# Copies a config file into configs/ of the avdit checkout on every worker.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<EOF
Usage: $PROG --name NAME --zone ZONE --project PROJECT --config FILE [options]

Copies FILE to ~/REMOTE_DIR/configs/ on every worker ('gcloud compute tpus tpu-vm scp
--worker=all'), so that train.sh --config=configs/\$(basename FILE)[:variant] finds it. Run it
after setup_workers.sh (which replaces the checkout).

Required:
  --name NAME  --zone ZONE  --project PROJECT
  --config FILE          a local config file (e.g. a copy of configs/avdit_monologues.py)

Options:
  --remote-dir DIR       checkout directory on the workers, relative to home (default avdit)
  --dry-run              print the gcloud command and run nothing
  -h, --help             this help
EOF
}

CONFIG=""
REMOTE_DIR=avdit
while (($#)); do
  case $1 in
    --config | --config=*) take_value "$@"; CONFIG=$VALUE ;;
    --remote-dir | --remote-dir=*) take_value "$@"; REMOTE_DIR=${VALUE%/} ;;
    *) parse_common "$@" ;;
  esac
  shift "$NSHIFT"
done
finish_common
require CONFIG --config
check_remote_dir "$REMOTE_DIR"
if [[ ! -f $CONFIG && $CONFIG == *:* && -f ${CONFIG%:*} ]]; then
  CONFIG=${CONFIG%:*}  # FILE:variant -> FILE
fi
[[ -f $CONFIG ]] || die "--config: no such file: $CONFIG"
BASE=$(basename "$CONFIG")
[[ $BASE =~ ^[A-Za-z0-9_.-]+$ ]] || die "--config file name must be letters, digits, _ . -, got '$BASE'"

tpu_scp "$CONFIG" "$REMOTE_DIR/configs/$BASE"
