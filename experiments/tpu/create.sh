#!/usr/bin/env bash
# Creates the TPU VM: one host (v4-8, v5litepod-8) or a pod slice (v4-32), as ACCELERATOR_TYPE
# says. Extra arguments go to `gcloud compute tpus tpu-vm create`, e.g. `./create.sh --spot`.
set -euo pipefail
source "$(dirname "$0")/config.sh"

gcloud compute tpus tpu-vm create "$TPU_NAME" --project="$PROJECT" --zone="$ZONE" \
  --accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION" \
  --scopes=https://www.googleapis.com/auth/cloud-platform "$@"
