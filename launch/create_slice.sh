#!/usr/bin/env bash
# Creates a TPU VM slice for avdit (directly, or through a queued resource).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<EOF
Usage: $PROG --name NAME --zone ZONE --project PROJECT [options]

Creates the TPU VM slice NAME. Without --queued: 'gcloud compute tpus tpu-vm create' (blocks until
the slice is READY). With --queued: 'gcloud compute tpus queued-resources create' with
--node-id=NAME (returns at once; the slice comes up when capacity is granted; watch it with
watch.sh --queued).

Required:
  --name NAME            slice (and queued-resource) name: lowercase letters, digits, hyphens
  --zone ZONE            e.g. us-west4-a (v5e: see 'gcloud compute tpus locations list')
  --project PROJECT      GCP project id

Options:
  --accelerator TYPE     accelerator type (default v5litepod-256: 16x16 v5e, 64 hosts;
                         v5litepod-16 is 4x4, 4 hosts)
  --runtime VERSION      TPU VM runtime/software version (default v2-alpha-tpuv5-lite)
  --spot                 Spot (preemptible) capacity
  --queued               create through a queued resource
  --dry-run              print the gcloud command and run nothing
  -h, --help             this help
EOF
}

ACCELERATOR=v5litepod-256
RUNTIME=v2-alpha-tpuv5-lite
SPOT=0
QUEUED=0
while (($#)); do
  case $1 in
    --accelerator | --accelerator=*) take_value "$@"; ACCELERATOR=$VALUE ;;
    --runtime | --runtime=*) take_value "$@"; RUNTIME=$VALUE ;;
    --spot | --spot=*) no_flag "$1"; SPOT=1 ;;
    --queued | --queued=*) no_flag "$1"; QUEUED=1 ;;
    *) parse_common "$@" ;;
  esac
  shift "$NSHIFT"
done
finish_common

if ((QUEUED)); then
  cmd=(gcloud compute tpus queued-resources create "$NAME" --node-id="$NAME" "${LOC[@]}"
       --accelerator-type="$ACCELERATOR" --runtime-version="$RUNTIME")
else
  cmd=(gcloud compute tpus tpu-vm create "$NAME" "${LOC[@]}"
       --accelerator-type="$ACCELERATOR" --version="$RUNTIME")
fi
if ((SPOT)); then
  cmd+=(--spot)
fi
run "${cmd[@]}"
