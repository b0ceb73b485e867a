"""A run's directory: who may write it, and whether a config continues the run it holds.

* One writer: `Lock` takes an exclusive `fcntl.flock` on `workdir/trainer.lock` for the run's
  life. The kernel releases it when the process ends, however it ends (a SIGKILL leaves
  nothing stale); the file records the holder (pid, host, start time) for the message a
  second trainer gets. With several processes, process 0 holds it (on the shared file
  system). A lock that has to be refused, or a run refused after locking, leaves the workdir
  as it found it.
* Same run: `check_resume` compares a config with the `config.json` the workdir's run
  recorded. Fields that do not change what is trained (`RESUMABLE`: how often to evaluate,
  log and checkpoint, where the data is, how the host reads it, the eval batch, the mesh) may
  differ, and are logged; any other difference is refused, listing each field with its old
  and new value. A run's length is one of them: the learning-rate schedule decays to zero at
  the last step, so a longer run is a new run (a new workdir, or one that continues from this
  one's weights with `init_from`). A config recorded before the nesting spec existed is read
  with its nesting switches under today's names (`models.nesting.from_legacy`).
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import logging
import os
import socket
from typing import Any

from nested_tnt_jax.errors import ConfigError
from nested_tnt_jax.metrics import CONFIG_FILE
from nested_tnt_jax.models import nesting

LOCK_FILE = "trainer.lock"
# What `pretrained` recorded in config.json about the parameters the run started from.
INIT_RECORD = "init_from_loaded"

# Config fields a resumed run may change: none of them alters the training steps.
RESUMABLE = (
    "eval_every_steps", "log_every_steps", "checkpoint_every_steps", "max_checkpoints_to_keep",
    "eval_batch_size", "dataset.data_dir", "input.worker_count", "input.prefetch",
    "mesh.model_axis",
)


def _holder_of(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            return json.loads(f.read() or "{}")
    except (OSError, ValueError):
        return {}


def describe_holder(holder: dict[str, Any]) -> str:
    """`pid 123 on host h, since 2024-01-01 12:00:00` (what is known of a lock's holder)."""
    if not holder:
        return "a trainer that is just starting"
    return (f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, since "
            f"{holder.get('started', '?')}")


def lock_holder(workdir: str) -> dict[str, Any] | None:
    """The holder of `workdir`'s lock while a trainer holds it, else None; writes nothing."""
    path = os.path.join(workdir, LOCK_FILE)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno not in (errno.EAGAIN, errno.EACCES):
            raise
        return _holder_of(path)
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


class Lock:
    """The exclusive lock on a workdir (see the module docstring)."""

    def __init__(self, workdir: str):
        self.workdir = workdir
        self.path = os.path.join(workdir, LOCK_FILE)
        self._fd: int | None = None
        self._created: list[str] = []

    def acquire(self) -> "Lock":
        """Takes the lock, creating the workdir if needed; ConfigError naming the holder if
        another trainer has it (and then nothing is left behind)."""
        parent = os.path.abspath(self.workdir)
        missing = []
        while not os.path.exists(parent):
            missing.append(parent)
            parent = os.path.dirname(parent)
        os.makedirs(self.workdir, exist_ok=True)
        self._created = list(reversed(missing))
        while True:
            existed = os.path.exists(self.path)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                holder = _holder_of(self.path)
                self.undo()
                raise ConfigError(
                    f"The workdir {self.workdir!r} is in use by another trainer "
                    f"({describe_holder(holder)}); only one may write a workdir. Wait for it "
                    "to finish (or stop it), or pass another --workdir.") from None
            # A refused trainer may have removed the file between our open and our lock.
            if os.path.exists(self.path) and os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                break
            os.close(fd)
        if not existed:
            self._created.append(self.path)
        self._fd = fd
        holder = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        return self

    def undo(self) -> None:
        """Removes what `acquire` created (the lock file, new directories), for a run refused
        before its first write, and releases the lock."""
        for path in reversed(self._created):
            try:
                os.unlink(path) if path == self.path else os.rmdir(path)
            except OSError:
                break  # Not empty or already gone: something else owns it now.
        self._created = []
        self.release()

    def keep(self) -> None:
        """The run has written into the workdir: what `acquire` created stays."""
        self._created = []

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing releases the flock
            self._fd = None


def read_config(workdir: str) -> dict[str, Any] | None:
    """The config.json the workdir's run recorded (nested dicts), or None."""
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _flat(nested: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in nested.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def check_resume(workdir: str, config) -> list[str]:
    """Refuses (ConfigError) a config that does not continue the run recorded in `workdir`.

    Returns the accepted changes (`field: old -> new`, `RESUMABLE` fields only); empty for a
    fresh workdir or an unchanged config.
    """
    recorded = read_config(workdir)
    if recorded is None:
        return []
    recorded.pop(INIT_RECORD, None)
    old = nesting.from_legacy(_flat(recorded))
    new = _flat(json.loads(config.to_json_best_effort()))
    if new.get("num_train_steps", 0) > 0 and new.get("num_train_steps") == old.get(
            "num_train_steps"):
        old.pop("num_epochs", None)  # Ignored when the steps are set.
        new.pop("num_epochs", None)
    accepted, refused = [], []
    for field in sorted(set(old) | set(new)):
        if field not in old:
            logging.info("config.%s is not in %s's config.json (recorded by an older "
                         "version); using %r.", field, workdir, new[field])
            continue
        if old[field] == new.get(field, "(absent)"):
            continue
        change = f"{field}: {old[field]!r} -> {new.get(field, '(absent)')!r}"
        (accepted if field in RESUMABLE else refused).append(change)
    if refused:
        length = {"num_train_steps", "num_epochs"} & {c.split(":")[0] for c in refused}
        longer = (
            " A run's length cannot change on resume: its learning-rate schedule decays to "
            "zero at the last step. For a longer run, train it in a new --workdir (with the "
            "new num_train_steps), or start a new --workdir from this run's weights with "
            f"--config.init_from={workdir}." if length else "")
        raise ConfigError(
            f"The workdir {workdir!r} holds a run with another config, which this command "
            f"would change: {'; '.join(refused)}.{longer} Resume with the run's own config "
            f"({os.path.join(workdir, CONFIG_FILE)}), or pass another --workdir for a new run. "
            f"Only {', '.join(RESUMABLE)} may change on resume.")
    for change in accepted:
        logging.info("Resuming with config.%s", change)
    return accepted
