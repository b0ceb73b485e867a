#!/usr/bin/env bash
# Installs the project on every host of the TPU: this repository at REPO_REF in
# ~/nested_tnt_jax, and (INSTALL=yes, the default) Python 3.11 in ~/venv (the project needs
# >= 3.11; Ubuntu 22.04 ships 3.10) with `pip install -e ".[gcs]"` plus `jax[tpu]`: gcsfs reads
# and writes the gs:// workdir and data; TensorFlow is not needed on the hosts.
# INSTALL=no installs nothing and uses the hosts' ~/venv as it is (a VM image that comes with
# the environment; the tests' simulated hosts, which have no network): it must import jax.
# Ends by printing each host's jax devices. Safe to re-run: each step skips what is there.
set -euo pipefail
source "$(dirname "$0")/config.sh"
case "$INSTALL" in
  yes | no) ;;
  *) echo "error: INSTALL is '$INSTALL'; use yes or no." >&2; exit 2 ;;
esac

packages="set -euo pipefail
sudo apt-get update -qq
sudo apt-get install -y -qq python3.11 python3.11-venv git"
install="[ -x ~/venv/bin/python ] || python3.11 -m venv ~/venv
~/venv/bin/pip install -q -U pip
cd ~/nested_tnt_jax && ~/venv/bin/pip install -q -U 'jax[tpu]' -e '.[gcs]'"
checked="[ -x ~/venv/bin/python ] || { echo \"error: INSTALL=no, but \$HOSTNAME has no ~/venv/bin/python.\" >&2; exit 2; }"

[[ "$INSTALL" == yes ]] && on_workers all "$packages"
on_workers all "set -euo pipefail
[ -d ~/nested_tnt_jax ] || git clone -q $(printf %q "$REPO_URL") ~/nested_tnt_jax
git -C ~/nested_tnt_jax fetch -q origin $(printf %q "$REPO_REF")
git -C ~/nested_tnt_jax checkout -q FETCH_HEAD
$([[ "$INSTALL" == yes ]] && echo "$install" || echo "$checked")
~/venv/bin/python -c 'import jax; print(jax.local_device_count(), jax.local_devices()[0].device_kind)'"
