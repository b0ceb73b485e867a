# Settings shared by the scripts in experiments/tpu/ (sourced, not run). Every value can be
# overridden from the environment, e.g. `ACCELERATOR_TYPE=v4-32 ./create.sh`.

: "${PROJECT:=$(gcloud config get-value project 2>/dev/null)}"
if [[ -z "$PROJECT" || "$PROJECT" == "(unset)" ]]; then
  echo "error: no Google Cloud project: run \`gcloud config set project PROJECT_ID\` or set PROJECT=PROJECT_ID." >&2
  exit 2
fi
: "${ZONE:=us-central2-b}"                   # where v4 is offered; v5e e.g. europe-west4-b
: "${TPU_NAME:=nested-tnt}"                  # also the queued resource's name
: "${ACCELERATOR_TYPE:=v4-8}"                # v4-8: one host (4 chips); v4-32: 4 hosts (16 chips)
: "${RUNTIME_VERSION:=tpu-ubuntu2204-base}"  # v4; v5e: v2-alpha-tpuv5-lite, v5p: v2-alpha-tpuv5
# How the TPU is obtained: `tpu-vm` (gcloud compute tpus tpu-vm create: now or an error) or
# `queued` (gcloud compute tpus queued-resources create: waits in Google's queue until there
# is capacity; create.sh then waits for it).
: "${PROVISIONING:=tpu-vm}"
: "${BUCKET:?set BUCKET to your Cloud Storage bucket (see experiments/tpu/README.md)}"
: "${REPO_URL:?set REPO_URL to a git URL of this repository that the TPU VMs can clone}"
: "${REPO_REF:=main}"                        # branch, tag or commit to install on the TPU VMs
: "${DATASET:=cifar10}"                      # TFDS name: cifar10, cifar100, oxford_flowers102
: "${CONFIG:=configs/cifar10.py:model=nested_tnt}"
: "${RUN:=c10_nested_tnt}"                   # run name: the workdir is $WORKDIR
: "${WORKDIR:=gs://$BUCKET/runs/$RUN}"       # checkpoints, history, results, events
: "${TFDS_DATA_DIR:=gs://$BUCKET/tfds}"      # the prepared dataset, read by every host
: "${LOCAL_TFDS_DIR:=$HOME/tensorflow_datasets}"  # where data.sh finds the prepared dataset
: "${INSTALL:=yes}"                          # setup.sh: `no` uses the hosts' ~/venv as it is
: "${POLL_S:=30}"                            # seconds between state checks (create.sh, spot.sh)

for var in WORKDIR TFDS_DATA_DIR; do  # Every host must see the same files.
  if [[ "${!var}" != gs://* ]]; then
    echo "error: $var is '${!var}'; the hosts share it only as a gs:// path (unset it for gs://$BUCKET/...)." >&2
    exit 2
  fi
done
case "$PROVISIONING" in
  tpu-vm | queued) ;;
  *) echo "error: PROVISIONING is '$PROVISIONING'; use tpu-vm or queued." >&2; exit 2 ;;
esac

# on_workers WORKER COMMAND: runs COMMAND (a bash command line) over SSH on worker WORKER (an
# index, or `all`: every host at once).
on_workers() {
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" --project="$PROJECT" --zone="$ZONE" \
    --worker="$1" --command="$2"
}

# tpu_state: READY, PREEMPTED (or another state a Spot TPU is not restarted from), WAITING
# (being created, queued or deleted), or MISSING.
tpu_state() {
  local state
  if [[ "$PROVISIONING" == queued ]]; then
    state=$(gcloud compute tpus queued-resources describe "$TPU_NAME" --project="$PROJECT" \
      --zone="$ZONE" --format='value(state.state)' 2>/dev/null) || { echo MISSING; return; }
    case "$state" in
      ACTIVE) ;;  # The node exists: its own state tells READY from PREEMPTED.
      FAILED | SUSPENDING | SUSPENDED) echo PREEMPTED; return ;;
      *) echo WAITING; return ;;  # ACCEPTED, WAITING_FOR_RESOURCES, PROVISIONING, DELETING
    esac
  fi
  state=$(gcloud compute tpus tpu-vm describe "$TPU_NAME" --project="$PROJECT" --zone="$ZONE" \
    --format='value(state)' 2>/dev/null) || { echo MISSING; return; }
  case "$state" in
    READY) echo READY ;;
    PREEMPTED | TERMINATED | STOPPED) echo PREEMPTED ;;
    *) echo WAITING ;;  # CREATING, STARTING, REPAIRING, DELETING, ...
  esac
}
