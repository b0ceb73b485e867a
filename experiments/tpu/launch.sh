#!/usr/bin/env bash
# Starts the run on every host at once (`--worker=all`); run again, it resumes from the
# checkpoint in the workdir. Extra arguments are config overrides, passed on to the trainer
# word for word (each one quoted for the hosts' shell), e.g.
#   ./launch.sh --config.num_train_steps=1000 "--config.init_from=gs://b/runs/my run"
# `--distributed=on`: each host's process calls jax.distributed.initialize(), which finds the
# other hosts of the slice by itself (on a single host it is a one-process job).
set -euo pipefail
source "$(dirname "$0")/config.sh"

extra=""
(( $# )) && printf -v extra ' %q' "$@"
on_workers all "cd ~/nested_tnt_jax && exec ~/venv/bin/python -m nested_tnt_jax.main \
--config=$(printf %q "$CONFIG") --config.dataset.data_dir=$(printf %q "$TFDS_DATA_DIR") \
--workdir=$(printf %q "$WORKDIR") --distributed=on$extra"
