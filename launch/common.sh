# shellcheck shell=bash
# Shared helpers for the avdit TPU VM launch scripts. Sourced by them, never executed.
#
# Every script accepts --name/--zone/--project (the slice and where it lives), --dry-run (print
# the commands, one per line, copy-pasteable, and run none of them) and -h/--help. Options take
# their value either as the next argument or after '=' (--zone us-west4-a or --zone=us-west4-a).

# shellcheck disable=SC2034  # used by resume_on_preemption.sh
LAUNCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PROG=$(basename "$0")

NAME=""
ZONE=""
PROJECT=""
DRY_RUN=0
VALUE=""   # set by take_value
NSHIFT=0   # how many arguments the last parsed option consumed
LOC=()     # --zone=... --project=..., set by finish_common

die() {  # usage / validation error
  printf '%s: error: %s\n' "$PROG" "$*" >&2
  exit 2
}

fail() {  # runtime error
  printf '%s: error: %s\n' "$PROG" "$*" >&2
  exit 1
}

warn() {
  printf '%s: warning: %s\n' "$PROG" "$*" >&2
}

log() {
  printf '[%s] %s: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$PROG" "$*" >&2
}

# shquote ARG: ARG as one shell word; bare when that is safe, else in single quotes.
shquote() {
  local s=$1 q="'\\''" r
  if [[ -n $s && $s != *[!A-Za-z0-9_./:=@%+,^-]* ]]; then
    printf '%s' "$s"
    return
  fi
  r=${s//\'/$q}
  printf "'%s'" "$r"
}

# format_cmd ARGS...: the command as one copy-pasteable line.
format_cmd() {
  local out="" a
  for a in "$@"; do
    out+="${out:+ }$(shquote "$a")"
  done
  printf '%s' "$out"
}

# run CMD ARGS...: in --dry-run print the command line on stdout; else echo it to stderr and run it.
run() {
  if ((DRY_RUN)); then
    printf '%s\n' "$(format_cmd "$@")"
    return 0
  fi
  log "+ $(format_cmd "$@")"
  "$@"
}

# take_value "$@": the value of the option in $1 (--opt=value or --opt value) into VALUE, and how
# many arguments that used into NSHIFT.
take_value() {
  local opt=$1
  if [[ $opt == --*=* ]]; then
    VALUE=${opt#*=}
    NSHIFT=1
    opt=${opt%%=*}
  else
    if (($# < 2)) || [[ $2 == --* ]]; then
      die "option $opt needs a value"
    fi
    VALUE=$2
    NSHIFT=2
  fi
  [[ -n $VALUE ]] || die "option $opt needs a non-empty value"
}

# parse_common "$@": the options every script has; anything else is an error.
parse_common() {
  case $1 in
    --name | --name=*) take_value "$@"; NAME=$VALUE ;;
    --zone | --zone=*) take_value "$@"; ZONE=$VALUE ;;
    --project | --project=*) take_value "$@"; PROJECT=$VALUE ;;
    --dry-run) DRY_RUN=1; NSHIFT=1 ;;
    -h | --help) usage; exit 0 ;;
    -*) die "unknown option: $1 (see $PROG --help)" ;;
    *) die "unexpected argument: $1 (see $PROG --help)" ;;
  esac
}

# no_flag "$@": for boolean flags; rejects --flag=value.
no_flag() {
  [[ $1 != *=* ]] || die "option ${1%%=*} takes no value"
  # shellcheck disable=SC2034  # read by the caller
  NSHIFT=1
}

# require VAR --option: dies unless VAR is set.
require() {
  [[ -n ${!1} ]] || die "$2 is required (see $PROG --help)"
}

# check_uint VALUE --option [MIN]: a decimal integer >= MIN (default 0).
check_uint() {
  [[ $1 =~ ^[0-9]+$ ]] || die "$2 must be a non-negative integer, got '$1'"
  (( 10#$1 >= ${3:-0} )) || die "$2 must be at least ${3:-0}, got '$1'"
}

# check_remote_dir DIR: a path relative to the workers' home directory, no '..'.
check_remote_dir() {
  [[ $1 =~ ^[A-Za-z0-9_][A-Za-z0-9_./-]*$ && $1 != *..* ]] ||
    die "--remote-dir must be a path relative to the home directory (letters, digits, _ . / -), got '$1'"
}

# finish_common: validates --name/--zone/--project and sets LOC.
finish_common() {
  require NAME --name
  require ZONE --zone
  require PROJECT --project
  [[ $NAME =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] ||
    die "--name must be lowercase letters, digits and hyphens, starting with a letter, got '$NAME'"
  LOC=(--zone="$ZONE" --project="$PROJECT")
}

# tpu_ssh WORKER COMMAND: runs COMMAND (one line of bash) on WORKER (a number or 'all').
tpu_ssh() {
  run gcloud compute tpus tpu-vm ssh "$NAME" "${LOC[@]}" --worker="$1" --command "$2"
}

# tpu_scp LOCAL_FILE REMOTE_PATH: copies a file to REMOTE_PATH (relative to home) on every worker.
tpu_scp() {
  run gcloud compute tpus tpu-vm scp "$1" "$NAME:$2" "${LOC[@]}" --worker=all
}

# state_cmd QUEUED FORMAT_KIND: the gcloud describe command (into STATE_CMD) that prints the state
# of the node (QUEUED=0) or of the queued resource (QUEUED=1); FORMAT_KIND 'value' prints only the
# state word, 'table' a readable summary.
STATE_CMD=()
state_cmd() {
  if (($1)); then
    STATE_CMD=(gcloud compute tpus queued-resources describe "$NAME" "${LOC[@]}")
    if [[ $2 == value ]]; then
      STATE_CMD+=(--format='value(state.state)')
    else
      STATE_CMD+=(--format='table(name.basename(),state.state)')
    fi
  else
    STATE_CMD=(gcloud compute tpus tpu-vm describe "$NAME" "${LOC[@]}")
    if [[ $2 == value ]]; then
      STATE_CMD+=(--format='value(state)')
    else
      STATE_CMD+=(--format='table(name.basename(),acceleratorType,runtimeVersion,state,health)')
    fi
  fi
}
