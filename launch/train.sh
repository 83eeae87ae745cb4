#!/usr/bin/env bash
# shellcheck disable=SC2016  # the remote scripts are built in single quotes on purpose
# Starts avdit training on every worker of a slice at once, detached, logging to a file per worker.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<EOF
Usage: $PROG --name NAME --zone ZONE --project PROJECT --config CFG --workdir DIR [options]
          [-- extra avdit flags, e.g. --config.train.num_steps=1000]

On every worker at once ('gcloud compute tpus tpu-vm ssh --worker=all'), in ~/REMOTE_DIR, starts

  .venv/bin/python -m avdit.main --config=CFG --workdir=DIR --mode=MODE [extra flags]

detached from the ssh session (setsid nohup, stdin from /dev/null), appending its output to the
worker's own log file (--log-file, on the worker's disk; its pid goes to LOG.pid). Every worker
runs the same command; the program initialises multi-host JAX itself. The command returns once all
workers have started. A rerun with the same DIR resumes from the latest checkpoint in it.

Required:
  --name NAME  --zone ZONE  --project PROJECT
  --config CFG           config path on the workers, relative to the checkout, with an optional
                         :variant, e.g. configs/avdit_monologues.py:default
  --workdir DIR          checkpoints/TensorBoard dir; use gs://bucket/dir on a multi-host slice
                         (every host must see the same checkpoints)

Options:
  --mode MODE            train (default), sample, train_and_sample or describe
  --log-file PATH        log on each worker, relative to home (default avdit-logs/MODE.log)
  --log-dir gs://...     also copy each worker's log to gs://.../RUN_ID/worker-<N>.log every
                         --log-sync-seconds while it runs, and once when it exits
                         (RUN_ID = UTC start time; copies with 'gcloud storage cp')
  --log-sync-seconds S   (default 300)
  --env KEY=VALUE        environment variable for the run (repeatable), e.g. LIBTPU_INIT_ARGS=...
  --restart              if a previous run started by this script is still alive on a worker,
                         SIGTERM it (avdit saves a checkpoint), wait for it, then start; without
                         --restart such a worker refuses to start a second run
  --remote-dir DIR       checkout directory on the workers, relative to home (default avdit)
  --dry-run              print the gcloud command and run nothing
  -h, --help             this help
EOF
}

CONFIG=""
WORKDIR=""
MODE=train
LOG_FILE=""
LOG_DIR=""
LOG_SYNC=300
RESTART=0
REMOTE_DIR=avdit
ENVS=()
EXTRA=()
while (($#)); do
  case $1 in
    --config | --config=*) take_value "$@"; CONFIG=$VALUE ;;
    --workdir | --workdir=*) take_value "$@"; WORKDIR=${VALUE%/} ;;
    --mode | --mode=*) take_value "$@"; MODE=$VALUE ;;
    --log-file | --log-file=*) take_value "$@"; LOG_FILE=$VALUE ;;
    --log-dir | --log-dir=*) take_value "$@"; LOG_DIR=${VALUE%/} ;;
    --log-sync-seconds | --log-sync-seconds=*) take_value "$@"; LOG_SYNC=$VALUE ;;
    --env | --env=*) take_value "$@"; ENVS+=("$VALUE") ;;
    --restart | --restart=*) no_flag "$1"; RESTART=1 ;;
    --remote-dir | --remote-dir=*) take_value "$@"; REMOTE_DIR=${VALUE%/} ;;
    --) shift; EXTRA=("$@"); break ;;
    *) parse_common "$@" ;;
  esac
  shift "$NSHIFT"
done
finish_common
require CONFIG --config
require WORKDIR --workdir
check_remote_dir "$REMOTE_DIR"
case $MODE in
  train | sample | train_and_sample | describe) ;;
  *) die "--mode must be train, sample, train_and_sample or describe, got '$MODE'" ;;
esac
check_uint "$LOG_SYNC" --log-sync-seconds 1
[[ -z $LOG_DIR || $LOG_DIR == gs://?* ]] || die "--log-dir must be a gs:// URL, got '$LOG_DIR'"
for kv in ${ENVS[@]+"${ENVS[@]}"}; do
  [[ $kv =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "--env must be KEY=VALUE, got '$kv'"
done
[[ $WORKDIR == gs://* ]] ||
  warn "--workdir $WORKDIR is not a gs:// URL: on a multi-host slice every host needs the same checkpoints"
for a in ${EXTRA[@]+"${EXTRA[@]}"}; do
  case $a in
    --dry-run | --help | -h) die "$a after '--' would go to avdit; put it before '--'" ;;
  esac
done
LOG_FILE=${LOG_FILE:-avdit-logs/$MODE.log}
LOG_FILE=${LOG_FILE#\~/}

# The avdit command line, as the workers run it.
PYCMD=(.venv/bin/python -m avdit.main --config="$CONFIG" --workdir="$WORKDIR" --mode="$MODE")
PYCMD+=(${EXTRA[@]+"${EXTRA[@]}"})
if ((${#ENVS[@]})); then
  PYCMD=(env "${ENVS[@]}" "${PYCMD[@]}")
fi
D=$(shquote "$REMOTE_DIR")

# One line of bash for every worker. Note: no ';' right after a '&'.
S='set -e; log=$(realpath -m -- '"$(shquote "$LOG_FILE")"'); mkdir -p "$(dirname "$log")"; pidf="$log.pid"; '
S+='if [ -f "$pidf" ] && kill -0 "$(cat "$pidf")" 2>/dev/null; then '
if ((RESTART)); then
  S+='pid=$(cat "$pidf"); echo "$(hostname): stopping avdit pid $pid (SIGTERM)"; kill -TERM "$pid"; i=0; '
  S+='while kill -0 "$pid" 2>/dev/null && [ $i -lt 900 ]; do sleep 1; i=$((i+1)); done; '
  S+='kill -KILL "$pid" 2>/dev/null || true; '
else
  S+='echo "$(hostname): avdit already running (pid $(cat "$pidf")); use --restart" >&2; exit 1; '
fi
S+='fi; cd '"$D"'; '
S+='[ -x .venv/bin/python ] || { echo "$(hostname): no '"$D"'/.venv: run setup_workers.sh first" >&2; exit 1; }; '
S+='w=$(curl -sf -m 5 -H "Metadata-Flavor: Google" '
S+='http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number || hostname); '
S+='printf "=== %s worker %s: %s\\n" "$(date -u +%FT%TZ)" "$w" '"$(shquote "$(format_cmd "${PYCMD[@]}")")"' >> "$log"; '
S+='setsid nohup '"$(format_cmd "${PYCMD[@]}")"' >> "$log" 2>&1 < /dev/null & '
S+='pid=$!; echo "$pid" > "$pidf"; '
if [[ -n $LOG_DIR ]]; then
  RUN_ID=$(date -u +%Y%m%d-%H%M%S)
  SYNC='while kill -0 "$1" 2>/dev/null; do sleep "$2"; gcloud -q storage cp "$3" "$4" >/dev/null 2>&1 || true; done; '
  SYNC+='gcloud -q storage cp "$3" "$4" >/dev/null 2>&1 || true'
  S+='dest='"$(shquote "$LOG_DIR/$RUN_ID/worker-")"'"$w.log"; '
  S+='setsid nohup bash -c '"$(shquote "$SYNC")"' log-sync "$pid" '"$LOG_SYNC"' "$log" "$dest" > /dev/null 2>&1 < /dev/null & '
  S+='echo "worker $w: avdit pid $pid, log $log, copied to $dest"'
else
  S+='echo "worker $w: avdit pid $pid, log $log"'
fi

tpu_ssh all "$S"
