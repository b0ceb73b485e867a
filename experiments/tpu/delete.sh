#!/usr/bin/env bash
# Deletes the TPU VM (every host of a slice). The bucket, with checkpoints and results, stays.
set -euo pipefail
source "$(dirname "$0")/config.sh"

gcloud compute tpus tpu-vm delete "$TPU_NAME" --project="$PROJECT" --zone="$ZONE" --quiet
