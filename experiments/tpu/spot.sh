#!/usr/bin/env bash
# Runs to completion on a Spot TPU: whenever the TPU is missing or was preempted, deletes what
# is left of it, creates a new Spot one, installs, and launches the same command again, which
# resumes from the last checkpoint in the bucket. Stops when the run has written results.json,
# or after MAX_ATTEMPTS creates and launches together (a run or a create that keeps failing is
# a bug or a quota, not a preemption). A delete that fails is retried after POLL_S seconds.
# Arguments are passed to launch.sh.
set -euo pipefail
here="$(dirname "$0")"
source "$here/config.sh"
: "${MAX_ATTEMPTS:=20}"

attempts=0
attempt() {  # attempt WHAT: counts one more create or launch, or gives up.
  if (( attempts >= MAX_ATTEMPTS )); then
    echo "error: giving up after $MAX_ATTEMPTS creates and launches (MAX_ATTEMPTS), before" \
      "another $1; $WORKDIR has no results.json. See the messages above." >&2
    exit 1
  fi
  attempts=$((attempts + 1))
  echo "spot.sh: $1 (attempt $attempts of $MAX_ATTEMPTS)"
}

until gcloud storage ls "$WORKDIR/results.json" >/dev/null 2>&1; do
  state=$(tpu_state)
  case "$state" in
    READY)
      attempt launch
      "$here/launch.sh" "$@" || echo "spot.sh: the run stopped (preempted or failed)."
      ;;
    MISSING)
      attempt create
      if ! { "$here/create.sh" --spot && "$here/setup.sh" && "$here/data.sh"; }; then
        echo "spot.sh: create, setup or data failed; checking the TPU again in $POLL_S s."
        sleep "$POLL_S"
      fi
      ;;
    PREEMPTED)  # A Spot TPU is not restarted: delete it, then recreate.
      if ! "$here/delete.sh"; then
        echo "spot.sh: deleting $TPU_NAME failed; trying again in $POLL_S s."
        sleep "$POLL_S"
      fi
      ;;
    *)  # WAITING: being created, queued or deleted.
      sleep "$POLL_S"
      ;;
  esac
done
echo "Finished: $WORKDIR/results.json"
