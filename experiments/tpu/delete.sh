#!/usr/bin/env bash
# Deletes the TPU (every host of a slice; with PROVISIONING=queued, the queued resource and
# its node). The bucket, with the dataset, checkpoints and results, stays.
set -euo pipefail
source "$(dirname "$0")/config.sh"

if [[ "$PROVISIONING" == queued ]]; then
  gcloud compute tpus queued-resources delete "$TPU_NAME" --project="$PROJECT" --zone="$ZONE" \
    --force --quiet
else
  gcloud compute tpus tpu-vm delete "$TPU_NAME" --project="$PROJECT" --zone="$ZONE" --quiet
fi
