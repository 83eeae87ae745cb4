#!/usr/bin/env bash
# Keeps an avdit training run going on a (Spot) slice: recreates the slice when it is preempted
# and restarts training, which resumes from the latest checkpoint in the workdir.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<EOF
Usage: $PROG --name NAME --zone ZONE --project PROJECT --repo URL_OR_PATH
          --config CFG --workdir gs://... [options] [-- extra avdit flags]

Polls the slice state every --poll-seconds (without --queued the node's state from 'gcloud compute
tpus tpu-vm describe', with --queued the queued resource's from 'gcloud compute tpus
queued-resources describe'):

  READY / ACTIVE                  healthy; if the slice was (re)created by this loop, it now runs
                                  setup_workers.sh, copy_config.sh (with --copy-config) and
                                  train.sh --restart
  CREATING, PROVISIONING, ACCEPTED, WAITING_FOR_RESOURCES, STARTING, RESTARTING, REPAIRING,
  SUSPENDING, DELETING, ... or describe failing for another reason than NOT_FOUND
                                  wait for the next poll
  PREEMPTED, SUSPENDED, TERMINATED, STOPPED, FAILED, not found, any other state
                                  preempted: delete_slice.sh --yes, create_slice.sh with the same
                                  options, and the start above once it is healthy again

Training resumes from the latest checkpoint in --workdir by itself, so --workdir must survive the
slice (gs://). A slice that does not exist yet is created, so this one command can also do the
first start; a slice that is already READY when the loop starts is assumed to be training already.
The loop runs until Ctrl-C (it does not notice the end of training), or exits 1 after
--max-restarts recreations or 3 failed starts in a row.

--dry-run prints one iteration of the preempted path - the describe command, then the commands of
delete_slice.sh, create_slice.sh, setup_workers.sh, copy_config.sh (with --copy-config) and
train.sh - and exits without polling, waiting or sleeping.

Required:
  --name NAME  --zone ZONE  --project PROJECT
  --repo URL_OR_PATH     as for setup_workers.sh
  --config CFG           as for train.sh (path on the workers, relative to the checkout[:variant])
  --workdir DIR          as for train.sh

Options:
  --poll-seconds S       seconds between state checks (default 60)
  --max-restarts K       give up after K recreations (default: no limit)
  --accelerator TYPE  --runtime VERSION  --spot  --queued          passed to create_slice.sh
                         (and --queued to delete_slice.sh)
  --ref REF  --python PYTHON  --remote-dir DIR                     passed to setup_workers.sh
  --copy-config FILE     run copy_config.sh --config FILE after each setup
  --log-file PATH  --log-dir gs://...  --log-sync-seconds S  --env KEY=VALUE (repeatable)
                         passed to train.sh, as is everything after '--'
  --dry-run              print one iteration's commands (see above) and run nothing
  -h, --help             this help
EOF
}

CONFIG=""
WORKDIR=""
REPO=""
POLL=60
MAX_RESTARTS=""
QUEUED=0
COPY_CONFIG=""
CREATE_OPTS=()
SETUP_OPTS=()
TRAIN_OPTS=()
EXTRA=()
while (($#)); do
  case $1 in
    --config | --config=*) take_value "$@"; CONFIG=$VALUE ;;
    --workdir | --workdir=*) take_value "$@"; WORKDIR=$VALUE ;;
    --repo | --repo=*) take_value "$@"; REPO=$VALUE ;;
    --poll-seconds | --poll-seconds=*) take_value "$@"; POLL=$VALUE ;;
    --max-restarts | --max-restarts=*) take_value "$@"; MAX_RESTARTS=$VALUE ;;
    --accelerator | --accelerator=* | --runtime | --runtime=*)
      take_value "$@"; CREATE_OPTS+=("${1%%=*}=$VALUE") ;;
    --spot | --spot=*) no_flag "$1"; CREATE_OPTS+=(--spot) ;;
    --queued | --queued=*) no_flag "$1"; QUEUED=1 ;;
    --ref | --ref=* | --python | --python=* | --remote-dir | --remote-dir=*)
      take_value "$@"; SETUP_OPTS+=("${1%%=*}=$VALUE") ;;
    --copy-config | --copy-config=*) take_value "$@"; COPY_CONFIG=$VALUE ;;
    --log-file | --log-file=* | --log-dir | --log-dir=* | --log-sync-seconds | --log-sync-seconds=* | \
      --env | --env=*)
      take_value "$@"; TRAIN_OPTS+=("${1%%=*}=$VALUE") ;;
    --) shift; EXTRA=("$@"); break ;;
    *) parse_common "$@" ;;
  esac
  shift "$NSHIFT"
done
finish_common
require REPO --repo
require CONFIG --config
require WORKDIR --workdir
check_uint "$POLL" --poll-seconds 1
[[ -z $MAX_RESTARTS ]] || check_uint "$MAX_RESTARTS" --max-restarts

COMMON=(--name="$NAME" --zone="$ZONE" --project="$PROJECT")
QUEUED_OPT=()
if ((QUEUED)); then
  QUEUED_OPT=(--queued)
fi
REMOTE_OPT=()
for o in ${SETUP_OPTS[@]+"${SETUP_OPTS[@]}"}; do
  if [[ $o == --remote-dir=* ]]; then
    REMOTE_OPT=("$o")
  fi
done

# sub SCRIPT ARGS...: runs another launch script with the common options (and --dry-run).
sub() {
  local script=$1
  shift
  local dry=()
  if ((DRY_RUN || ${FORCE_DRY_RUN:-0})); then
    dry=(--dry-run)
  fi
  "$BASH" "$LAUNCH_DIR/$script" "${COMMON[@]}" ${dry[@]+"${dry[@]}"} "$@"
}

delete_slice() { sub delete_slice.sh ${QUEUED_OPT[@]+"${QUEUED_OPT[@]}"} --yes; }
create_slice() {
  sub create_slice.sh ${CREATE_OPTS[@]+"${CREATE_OPTS[@]}"} ${QUEUED_OPT[@]+"${QUEUED_OPT[@]}"}
}
setup_workers() { sub setup_workers.sh --repo="$REPO" ${SETUP_OPTS[@]+"${SETUP_OPTS[@]}"}; }
copy_config() {
  if [[ -n $COPY_CONFIG ]]; then
    sub copy_config.sh --config="$COPY_CONFIG" ${REMOTE_OPT[@]+"${REMOTE_OPT[@]}"}
  fi
}
train() {
  sub train.sh --config="$CONFIG" --workdir="$WORKDIR" --mode=train --restart \
    ${REMOTE_OPT[@]+"${REMOTE_OPT[@]}"} ${TRAIN_OPTS[@]+"${TRAIN_OPTS[@]}"} \
    -- ${EXTRA[@]+"${EXTRA[@]}"}
}
start_training() { setup_workers && copy_config && train; }

# Check every forwarded option now rather than after the first preemption.
all_steps() { delete_slice && create_slice && setup_workers && copy_config && train; }
if ! check_err=$(FORCE_DRY_RUN=1 all_steps 2>&1 >/dev/null); then
  printf '%s\n' "$check_err" >&2
  die "invalid options (see the error above)"
fi
if ((!DRY_RUN)) && [[ -n $check_err ]]; then
  printf '%s\n' "$check_err" >&2  # warnings
fi

state_cmd "$QUEUED" value

if ((DRY_RUN)); then
  run "${STATE_CMD[@]}"
  delete_slice
  create_slice
  start_training
  exit 0
fi

ERRF=$(mktemp)
trap 'rm -f "$ERRF"' EXIT

STATE=""
get_state() {
  local out
  if out=$("${STATE_CMD[@]}" 2>"$ERRF"); then
    out=${out//[[:space:]]/}
    STATE=${out:-UNKNOWN}
  elif grep -qiE 'NOT_FOUND|not found' "$ERRF"; then
    STATE=NOT_FOUND
  else
    STATE=UNKNOWN
    log "describe failed: $(tail -n 1 "$ERRF")"
  fi
}

restarts=0
pending=0      # 1: the slice was (re)created here and training is not started on it yet
failed_starts=0
last=""
first=1
log "watching $NAME in $ZONE every ${POLL}s (max restarts: ${MAX_RESTARTS:-unlimited}); Ctrl-C to stop"
while :; do
  get_state
  if [[ $STATE != "$last" ]]; then
    log "state: $STATE"
    last=$STATE
  fi
  case $STATE in
    READY | ACTIVE)
      if ((first)); then
        log "$NAME is already $STATE: assuming training runs on it (else start it with train.sh)"
      fi
      if ((pending)); then
        log "starting training on $NAME (resumes from the latest checkpoint in $WORKDIR)"
        if start_training; then
          pending=0
          failed_starts=0
          log "training started"
        else
          failed_starts=$((failed_starts + 1))
          log "starting training failed ($failed_starts in a row)"
          ((failed_starts < 3)) || fail "starting training failed 3 times in a row; giving up"
        fi
      fi
      ;;
    CREATING | STARTING | RESTARTING | REPAIRING | REIMAGING | UPDATING | STOPPING | HIDING | \
      UNHIDING | DELETING | ACCEPTED | PROVISIONING | WAITING_FOR_RESOURCES | SUSPENDING | UNKNOWN) ;;
    *)
      if [[ -n $MAX_RESTARTS ]] && ((restarts >= MAX_RESTARTS)); then
        fail "$NAME is $STATE and --max-restarts $MAX_RESTARTS recreations are used up"
      fi
      restarts=$((restarts + 1))
      log "$NAME is $STATE: recreating it (recreation $restarts of ${MAX_RESTARTS:-unlimited})"
      if [[ $STATE != NOT_FOUND ]]; then
        delete_slice || log "delete failed; trying to create anyway"
      fi
      if create_slice; then
        pending=1
        first=0
        continue  # poll again at once: a direct create returns when the slice is READY
      else
        log "create failed; retrying after the next poll"
      fi
      last=""
      ;;
  esac
  first=0
  sleep "$POLL"
done
