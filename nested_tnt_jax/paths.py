"""Where a run's files live: local disk or Cloud Storage (`gs://`), through `etils.epath`.

Every file the trainer writes in its workdir, and every file the tools read from a run, goes
through `etils.epath` (as orbax and TFDS do), so a `gs://` path and a local one share the code.
Cloud Storage has no appends and no renames, but it replaces an object whole or not at all; so
a file that grows (history.jsonl, the TensorBoard events) is rewritten whole there, and a local
file is appended to as before. `write_atomically` gives the same promise on both: a reader, or
a run resumed after a kill, sees the old content or the new one, never a torn file.

Without TensorFlow, `etils.epath` reaches Cloud Storage through gcsfs (the `[gcs]` extra);
with TensorFlow installed it uses `tf.io.gfile` unless `EPATH_USE_TF=false`.
"""

from __future__ import annotations

import os

from etils import epath

CLOUD_PREFIX = "gs://"


def is_cloud(path: str | os.PathLike) -> bool:
    """Whether `path` is a Cloud Storage path (`gs://bucket/...`)."""
    return os.fspath(path).startswith(CLOUD_PREFIX)


def resolve(path: str | os.PathLike) -> epath.Path:
    """`path` as an `epath.Path`: a local path made absolute, a `gs://` path as it is."""
    return epath.Path(path) if is_cloud(path) else epath.Path(os.path.abspath(path))


def write_atomically(path: epath.Path, data: str | bytes) -> None:
    """Replaces `path`'s content with `data` in one step (see the module docstring)."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    if is_cloud(path):
        path.write_bytes(raw)
        return
    partial = path.with_name(path.name + ".tmp")
    partial.write_bytes(raw)
    os.replace(partial, path)


def append(path: epath.Path, data: str | bytes) -> None:
    """Adds `data` at the end of `path` (created if missing): an append on local disk, a whole
    new object on Cloud Storage (the file's one writer holds the workdir's lock)."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    if is_cloud(path):
        old = path.read_bytes() if path.exists() else b""
        path.write_bytes(old + raw)
        return
    with open(path, "ab") as f:
        f.write(raw)
