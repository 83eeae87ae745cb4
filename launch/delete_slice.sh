#!/usr/bin/env bash
# Deletes a TPU VM slice (or its queued resource together with the slice).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<EOF
Usage: $PROG --name NAME --zone ZONE --project PROJECT [--queued] [--yes] [--dry-run]

Deletes the slice NAME ('gcloud compute tpus tpu-vm delete'), or with --queued the queued
resource NAME and its slice ('gcloud compute tpus queued-resources delete --force'). Asks for
confirmation on stdin unless --yes (no prompt in --dry-run). Checkpoints in a gs:// workdir are
not touched; anything on the workers' disks (local logs, checkout) is lost.

Required:
  --name NAME  --zone ZONE  --project PROJECT

Options:
  --queued               delete the queued resource (created with create_slice.sh --queued)
  --yes                  do not ask
  --dry-run              print the gcloud command and run nothing
  -h, --help             this help
EOF
}

QUEUED=0
YES=0
while (($#)); do
  case $1 in
    --queued | --queued=*) no_flag "$1"; QUEUED=1 ;;
    --yes | -y | --yes=*) no_flag "$1"; YES=1 ;;
    *) parse_common "$@" ;;
  esac
  shift "$NSHIFT"
done
finish_common

if ((QUEUED)); then
  cmd=(gcloud compute tpus queued-resources delete "$NAME" "${LOC[@]}" --force --quiet)
  what="queued resource $NAME and its TPU slice"
else
  cmd=(gcloud compute tpus tpu-vm delete "$NAME" "${LOC[@]}" --quiet)
  what="TPU slice $NAME"
fi

if ((!DRY_RUN && !YES)); then
  printf 'Delete %s in %s (project %s)? [y/N] ' "$what" "$ZONE" "$PROJECT" >&2
  answer=""
  read -r answer || true
  case $answer in
    y | Y | yes | YES | Yes) ;;
    *) fail "not deleted (answer 'y' or pass --yes)" ;;
  esac
fi
run "${cmd[@]}"
