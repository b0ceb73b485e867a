#!/usr/bin/env bash
# Runs to completion on a Spot TPU: whenever the TPU is missing or was preempted, deletes what
# is left of it, creates a new Spot one, installs, and launches the same command again, which
# resumes from the last checkpoint in the bucket. Stops when the run has written results.json,
# or after MAX_LAUNCHES launches (a run that keeps failing is a bug, not a preemption).
# Arguments are passed to launch.sh.
set -euo pipefail
here="$(dirname "$0")"
source "$here/config.sh"
: "${MAX_LAUNCHES:=20}"

launches=0
until gcloud storage ls "gs://$BUCKET/runs/$RUN/results.json" >/dev/null 2>&1; do
  state=$(gcloud compute tpus tpu-vm describe "$TPU_NAME" --project="$PROJECT" --zone="$ZONE" \
    --format='value(state)' 2>/dev/null || echo MISSING)
  case "$state" in
    READY)
      if (( launches++ >= MAX_LAUNCHES )); then
        echo "Giving up after $MAX_LAUNCHES launches; see the logs above." >&2
        exit 1
      fi
      "$here/launch.sh" "$@" || echo "The run stopped (preempted or failed); checking the TPU."
      ;;
    MISSING)
      "$here/create.sh" --spot && "$here/setup.sh" && "$here/data.sh" || sleep 60
      ;;
    PREEMPTED | TERMINATED | STOPPED)  # A Spot TPU is not restarted: delete it, then recreate.
      "$here/delete.sh"
      ;;
    *)  # CREATING, DELETING, REPAIRING, ...: wait for it to settle.
      sleep 60
      ;;
  esac
done
echo "Finished: gs://$BUCKET/runs/$RUN/results.json"
