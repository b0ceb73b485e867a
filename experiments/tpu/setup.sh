#!/usr/bin/env bash
# Installs the project on every host of the TPU VM and mounts the bucket there.
#   Python 3.11 (the project needs >= 3.11; Ubuntu 22.04 ships 3.10) in ~/venv, this repository
#   at REPO_REF in ~/nested_tnt_jax with `pip install -e ".[tf]"` plus `jax[tpu]` (the TPU
#   runtime images have no TensorFlow; tensorflow-cpu serves TFDS and TensorBoard), and Cloud
#   Storage FUSE mounting gs://$BUCKET at $MOUNT for the shared workdir.
# Safe to re-run: each step skips what is already there.
set -euo pipefail
source "$(dirname "$0")/config.sh"

on_workers all "set -euo pipefail
if ! command -v gcsfuse >/dev/null; then
  echo \"deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt gcsfuse-\$(lsb_release -c -s) main\" \
    | sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null
  curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg \
    | sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null
fi
sudo apt-get update -qq
sudo apt-get install -y -qq python3.11 python3.11-venv git gcsfuse
[ -d ~/nested_tnt_jax ] || git clone -q '$REPO_URL' ~/nested_tnt_jax
git -C ~/nested_tnt_jax fetch -q origin '$REPO_REF'
git -C ~/nested_tnt_jax checkout -q FETCH_HEAD
[ -x ~/venv/bin/python ] || python3.11 -m venv ~/venv
~/venv/bin/pip install -q -U pip
cd ~/nested_tnt_jax && ~/venv/bin/pip install -q -U 'jax[tpu]' -e '.[tf]'
sudo mkdir -p $MOUNT $DATA_DIR && sudo chown \$USER $MOUNT $DATA_DIR
mountpoint -q $MOUNT || gcsfuse '$BUCKET' $MOUNT
~/venv/bin/python -c 'import jax; print(jax.local_device_count(), jax.local_devices()[0].device_kind)'"
