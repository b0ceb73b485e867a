# Settings shared by the scripts in experiments/tpu/ (sourced, not run). Every value can be
# overridden from the environment, e.g. `ACCELERATOR_TYPE=v4-32 ./create.sh`.

: "${PROJECT:=$(gcloud config get-value project 2>/dev/null)}"
: "${ZONE:=us-central2-b}"                   # where v4 is offered; v5e e.g. europe-west4-b
: "${TPU_NAME:=nested-tnt}"
: "${ACCELERATOR_TYPE:=v4-8}"                # v4-8: one host (4 chips); v4-32: 4 hosts (16 chips)
: "${RUNTIME_VERSION:=tpu-ubuntu2204-base}"  # v4; v5e: v2-alpha-tpuv5-lite, v5p: v2-alpha-tpuv5
: "${BUCKET:?set BUCKET to your GCS bucket (hierarchical namespace, see experiments/tpu/README.md)}"
: "${REPO_URL:?set REPO_URL to a git URL of this repository that the TPU VMs can clone}"
: "${REPO_REF:=main}"                        # branch, tag or commit to install on the TPU VMs
: "${DATASET:=cifar10}"                      # TFDS name: cifar10, cifar100, oxford_flowers102
: "${CONFIG:=configs/cifar10.py:model=nested_tnt}"
: "${RUN:=c10_nested_tnt}"                   # run name: the workdir is gs://$BUCKET/runs/$RUN

# Paths on the TPU VMs. The bucket is mounted at the same path on every host, so all processes
# see one workdir; the dataset is copied to local disk (ArrayRecord cannot read gs:// paths).
MOUNT=/mnt/gcs
DATA_DIR=/mnt/tfds
WORKDIR="$MOUNT/runs/$RUN"

# on_workers WORKER COMMAND: runs COMMAND over SSH on worker WORKER (an index, or `all`).
on_workers() {
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" --project="$PROJECT" --zone="$ZONE" \
    --worker="$1" --command="$2"
}
