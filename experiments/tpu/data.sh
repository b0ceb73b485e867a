#!/usr/bin/env bash
# Puts the prepared TFDS dataset on every host's local disk at $DATA_DIR.
# The bucket keeps the one prepared copy (gs://$BUCKET/tfds/$DATASET): the first time, worker 0
# downloads and prepares it with TFDS and uploads it. Every host then copies it to local disk,
# because the ArrayRecord reader behind tfds.data_source opens local files only.
set -euo pipefail
source "$(dirname "$0")/config.sh"

on_workers 0 "set -euo pipefail
if ! gcloud storage ls gs://$BUCKET/tfds/$DATASET/ >/dev/null 2>&1; then
  cd ~/nested_tnt_jax
  ~/venv/bin/python -c 'from nested_tnt_jax import data; data.open_source(\"$DATASET\", \"train\", \"$DATA_DIR\")'
  gcloud storage cp -r $DATA_DIR/$DATASET gs://$BUCKET/tfds/
fi"
on_workers all "mkdir -p $DATA_DIR/$DATASET && gcloud storage rsync -r gs://$BUCKET/tfds/$DATASET $DATA_DIR/$DATASET"
