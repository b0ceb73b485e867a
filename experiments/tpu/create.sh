#!/usr/bin/env bash
# Creates the TPU: one host (v4-8, v5litepod-8) or a pod slice (v4-32), as ACCELERATOR_TYPE
# says, and returns once it is READY. PROVISIONING=tpu-vm asks for it now (`gcloud compute tpus
# tpu-vm create`); PROVISIONING=queued queues the request (`gcloud compute tpus queued-resources
# create`) and waits until it is granted. Extra arguments go to the create command, e.g.
# `./create.sh --spot`.
set -euo pipefail
source "$(dirname "$0")/config.sh"

if [[ "$PROVISIONING" == queued ]]; then
  gcloud compute tpus queued-resources create "$TPU_NAME" --node-id="$TPU_NAME" \
    --project="$PROJECT" --zone="$ZONE" --accelerator-type="$ACCELERATOR_TYPE" \
    --runtime-version="$RUNTIME_VERSION" \
    --scopes=https://www.googleapis.com/auth/cloud-platform "$@"
else
  gcloud compute tpus tpu-vm create "$TPU_NAME" --project="$PROJECT" --zone="$ZONE" \
    --accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION" \
    --scopes=https://www.googleapis.com/auth/cloud-platform "$@"
fi
while state=$(tpu_state) && [[ "$state" != READY ]]; do
  if [[ "$state" != WAITING ]]; then
    echo "error: $TPU_NAME is $state after its creation; see \`gcloud compute tpus" \
      "$([[ "$PROVISIONING" == queued ]] && echo queued-resources || echo tpu-vm) describe" \
      "$TPU_NAME --zone=$ZONE\`." >&2
    exit 1
  fi
  echo "Waiting for $TPU_NAME to be READY..."
  sleep "$POLL_S"
done
