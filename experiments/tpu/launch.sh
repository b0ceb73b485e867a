#!/usr/bin/env bash
# Starts the run on every host at once (`--worker=all`); run again, it resumes from the
# checkpoint in the workdir. Extra arguments are config overrides, e.g.
#   ./launch.sh --config.num_train_steps=1000 --config.model.overrides.dtype=bfloat16
# `--distributed=on`: each host's process calls jax.distributed.initialize(), which finds the
# other hosts of the slice by itself (on a single host it is a one-process job).
set -euo pipefail
source "$(dirname "$0")/config.sh"

on_workers all "cd ~/nested_tnt_jax && ~/venv/bin/python -m nested_tnt_jax.main \
  --config='$CONFIG' --config.dataset.data_dir=$DATA_DIR --workdir=$WORKDIR --distributed=on $*"
