#!/usr/bin/env bash
# Uploads the prepared TFDS dataset to the bucket, once: $LOCAL_TFDS_DIR/$DATASET (a TFDS
# data_dir on this machine, e.g. ~/tensorflow_datasets after preparing the dataset with TFDS)
# to $TFDS_DATA_DIR/$DATASET, which every host reads directly. Does nothing when the bucket
# already holds it.
set -euo pipefail
source "$(dirname "$0")/config.sh"

if gcloud storage ls "$TFDS_DATA_DIR/$DATASET/" >/dev/null 2>&1; then
  echo "$TFDS_DATA_DIR/$DATASET is already there."
  exit 0
fi
if [[ ! -d "$LOCAL_TFDS_DIR/$DATASET" ]]; then
  echo "error: no prepared $DATASET in $LOCAL_TFDS_DIR (LOCAL_TFDS_DIR). Prepare it there" \
    "first, in a checkout with the [tf] extra installed: \`python -c 'from nested_tnt_jax" \
    "import data; data.open_source(\"$DATASET\", \"train\", \"$LOCAL_TFDS_DIR\")'\`." >&2
  exit 2
fi
gcloud storage cp -r "$LOCAL_TFDS_DIR/$DATASET" "$TFDS_DATA_DIR/"
