#!/usr/bin/env bash
# shellcheck disable=SC2016  # the remote scripts are built in single quotes on purpose
# Shows the state of a slice and the end of worker 0's avdit log.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<EOF
Usage: $PROG --name NAME --zone ZONE --project PROJECT [options]

Prints the slice state ('gcloud compute tpus tpu-vm describe'; with --queued first the queued
resource's, 'gcloud compute tpus queued-resources describe'), then, on worker 0, whether the run
started by train.sh is alive and the last --lines lines of its log (--follow: keeps following it,
Ctrl-C to stop). The log part is skipped when the slice is not reachable.

Required:
  --name NAME  --zone ZONE  --project PROJECT

Options:
  --queued               the slice was created with create_slice.sh --queued
  --follow               follow the log (tail -F)
  --lines N              how many log lines to show (default 50)
  --log-file PATH        the log given to train.sh, relative to home (default avdit-logs/train.log)
  --worker N             which worker's log (default 0)
  --dry-run              print the gcloud commands and run nothing
  -h, --help             this help
EOF
}

QUEUED=0
FOLLOW=0
LINES=50
LOG_FILE=avdit-logs/train.log
WORKER=0
while (($#)); do
  case $1 in
    --queued | --queued=*) no_flag "$1"; QUEUED=1 ;;
    --follow | --follow=*) no_flag "$1"; FOLLOW=1 ;;
    --lines | --lines=*) take_value "$@"; LINES=$VALUE ;;
    --log-file | --log-file=*) take_value "$@"; LOG_FILE=${VALUE#\~/} ;;
    --worker | --worker=*) take_value "$@"; WORKER=$VALUE ;;
    *) parse_common "$@" ;;
  esac
  shift "$NSHIFT"
done
finish_common
check_uint "$LINES" --lines
check_uint "$WORKER" --worker

if ((QUEUED)); then
  state_cmd 1 table
  run "${STATE_CMD[@]}" || warn "could not describe queued resource $NAME"
fi
state_cmd 0 table
if ! run "${STATE_CMD[@]}"; then
  fail "could not describe slice $NAME (not created yet, or deleted?)"
fi

L=$(shquote "$LOG_FILE")
TAIL=(tail -n "$LINES")
if ((FOLLOW)); then
  TAIL+=(-F)
fi
S='if [ -f '"$L"'.pid ] && kill -0 "$(cat '"$L"'.pid)" 2>/dev/null; then '
S+='echo "== $(hostname): avdit running (pid $(cat '"$L"'.pid)), log '"$L"'"; '
S+='else echo "== $(hostname): avdit not running, log '"$L"'"; fi; '
S+="$(format_cmd "${TAIL[@]}") -- $L"
tpu_ssh "$WORKER" "$S"
