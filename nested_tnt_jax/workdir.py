"""A run's directory: who may write it, and whether a config continues the run it holds.

* One writer: `Lock` takes an exclusive `fcntl.flock` on `workdir/trainer.lock` for the run's
  life. The kernel releases it when the process ends, however it ends (a SIGKILL leaves
  nothing stale); the file records the holder (pid, host, start time) for the message a
  second trainer gets. With several processes, process 0 holds it (on the shared file
  system). A lock that has to be refused, or a run refused after locking, leaves the workdir
  as it found it.
* One writer on Cloud Storage: `CloudLock`, a lease, since a `gs://` workdir has no file
  locks. The lock object `workdir/trainer.lock` is created only if absent (a create-if-absent
  precondition), with the holder (pid, host, start time) and a heartbeat time that a thread
  renews every quarter of `lock_timeout_s`, each renewal conditional on the object being the
  one it wrote. A second trainer is refused while the heartbeat is fresh. A lock whose holder
  died is taken over, with a line naming the old holder: at once when the holder ran on this
  host and its process is gone (a SIGKILL, then the same command), otherwise once its
  heartbeat is older than `lock_timeout_s`. The takeover is a conditional replacement too, so
  of two trainers taking over at once one wins. A clean exit deletes the lock. What the lease
  cannot guarantee: a holder stalled (suspended, or cut off from Cloud Storage) for longer than
  the timeout may write until its next renewal fails, then it stops at once; hosts' clocks must
  agree to well within the timeout (the heartbeat is the holder's clock).
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
import threading
import time
from typing import Any

from nested_tnt_jax import paths
from nested_tnt_jax.errors import EXIT_RUN_ERROR, ConfigError
from nested_tnt_jax.metrics import CONFIG_FILE
from nested_tnt_jax.models import nesting

LOCK_FILE = "trainer.lock"
# What `pretrained` recorded in config.json about the parameters the run started from.
INIT_RECORD = "init_from_loaded"

# Config fields a resumed run may change: none of them alters the training steps.
RESUMABLE = (
    "eval_every_steps",
    "log_every_steps",
    "checkpoint_every_steps",
    "max_checkpoints_to_keep",
    "eval_batch_size",
    "dataset.data_dir",
    "input.worker_count",
    "input.prefetch",
    "mesh.model_axis",
    "lock_timeout_s",
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
    return (
        f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, since "
        f"{holder.get('started', '?')}"
    )


def lock_holder(workdir: str) -> dict[str, Any] | None:
    """The holder of `workdir`'s lock while a trainer holds it, else None; writes nothing."""
    if paths.is_cloud(workdir):
        return CloudLock(workdir).holder()
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
                    "to finish (or stop it), or pass another --workdir."
                ) from None
            # A refused trainer may have removed the file between our open and our lock.
            if os.path.exists(self.path) and os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                break
            os.close(fd)
        if not existed:
            self._created.append(self.path)
        self._fd = fd
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S"),
        }
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


def lock(workdir: str, timeout_s: float) -> "Lock | CloudLock":
    """The lock for `workdir`: a file lock on local disk, a lease on Cloud Storage."""
    return CloudLock(workdir, timeout_s) if paths.is_cloud(workdir) else Lock(workdir)


def _storage():
    """google-cloud-storage, which only `gs://` workdirs need (the `[gcs]` extra)."""
    from google.cloud import storage  # noqa: PLC0415 (an optional package)

    return storage


def _api_exceptions():
    from google.api_core import exceptions  # noqa: PLC0415 (an optional package)

    return exceptions


class CloudLock:
    """The lease on a `gs://` workdir (see the module docstring); `Lock`'s interface."""

    def __init__(self, workdir: str, timeout_s: float = 300.0):
        self.workdir = workdir
        self.timeout_s = timeout_s
        bucket, _, prefix = workdir[len(paths.CLOUD_PREFIX) :].partition("/")
        self._bucket = bucket
        self._name = f"{prefix.rstrip('/')}/{LOCK_FILE}" if prefix.strip("/") else LOCK_FILE
        self._record: dict[str, Any] = {}
        self._generation: int | None = None
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def _blob(self):
        return _storage().Client().bucket(self._bucket).blob(self._name)

    def _read(self) -> tuple[dict[str, Any], int] | None:
        """(holder, generation) of the lock object, or None when there is none."""
        exceptions = _api_exceptions()
        blob = self._blob()
        try:
            data = blob.download_as_bytes()
        except exceptions.NotFound:
            return None
        try:
            holder = json.loads(data or b"{}")
        except ValueError:
            holder = {}
        return holder, int(blob.generation)

    def _dead(self, holder: dict[str, Any]) -> str | None:
        """Why `holder` no longer holds the lock, or None while it may."""
        if holder.get("host") == socket.gethostname() and holder.get("pid"):
            try:
                os.kill(int(holder["pid"]), 0)
            except ProcessLookupError:
                return "its process is gone"
            except OSError:
                pass
        age = time.time() - float(holder.get("heartbeat", 0))
        if age > self.timeout_s:
            return f"no heartbeat for {age:.0f} s (lock_timeout_s is {self.timeout_s:g})"
        return None

    def holder(self) -> dict[str, Any] | None:
        """The holder while the lease is held, else None; writes nothing."""
        found = self._read()
        if found is None or self._dead(found[0]):
            return None
        return found[0]

    def _write(self, generation: int) -> int:
        """Writes our record if the object is still at `generation` (0: absent); returns the
        new generation. Raises google's PreconditionFailed otherwise."""
        self._record["heartbeat"] = time.time()
        blob = self._blob()
        blob.upload_from_string(
            json.dumps(self._record),
            content_type="application/json",
            if_generation_match=generation,
        )
        return int(blob.generation)

    def acquire(self) -> "CloudLock":
        exceptions = _api_exceptions()
        self._record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S"),
        }
        try:
            while self._generation is None:
                found = self._read()
                try:
                    if found is None:
                        self._generation = self._write(0)
                        break
                    holder, generation = found
                    why = self._dead(holder)
                    if why is None:
                        raise ConfigError(
                            f"The workdir {self.workdir!r} is in use by another trainer "
                            f"({describe_holder(holder)}); only one may write a workdir. Wait "
                            "for it to finish (or stop it), or pass another --workdir. A "
                            f"holder that died is taken over after lock_timeout_s "
                            f"({self.timeout_s:g} s) without a heartbeat."
                        )
                    self._generation = self._write(generation)
                    logging.warning(
                        "Took over the lock of %s from %s: %s.",
                        self.workdir,
                        describe_holder(holder),
                        why,
                    )
                except exceptions.PreconditionFailed:
                    continue  # Another trainer wrote the lock meanwhile: look again.
        except exceptions.NotFound:
            raise ConfigError(
                f"The bucket of the workdir {self.workdir!r} does not exist (or this account "
                f"cannot see it). Create it (gcloud storage buckets create gs://{self._bucket})"
                " or pass another --workdir."
            ) from None
        except exceptions.GoogleAPICallError as e:
            raise ConfigError(
                f"The lock of the workdir {self.workdir!r} cannot be written ({e.message}). "
                "Check the account's access to the bucket, or pass another --workdir."
            ) from None
        self._stop.clear()
        self._beat = threading.Thread(target=self._renew, name="workdir-lock", daemon=True)
        self._beat.start()
        return self

    def _renew(self) -> None:
        exceptions = _api_exceptions()
        while not self._stop.wait(max(1.0, self.timeout_s / 4)):
            try:
                self._generation = self._write(self._generation)
            except exceptions.PreconditionFailed:
                found = self._read()
                logging.error(
                    "The lock of %s was taken over by %s while this trainer held it (no "
                    "heartbeat reached Cloud Storage for lock_timeout_s); this trainer stops now, "
                    "writing nothing more.",
                    self.workdir,
                    describe_holder(found[0]) if found else "another trainer",
                )
                os._exit(EXIT_RUN_ERROR)
            except Exception as e:  # noqa: BLE001 (a failed renewal is retried at the next beat)
                logging.warning("Could not renew the lock of %s (%s); retrying.", self.workdir, e)

    def undo(self) -> None:
        """Stops the heartbeat and deletes the lock object (what `acquire` created)."""
        self.release()

    def keep(self) -> None:
        """Nothing to keep: a bucket has no directories to leave behind."""

    def release(self) -> None:
        """Stops the heartbeat and deletes the lock object, if it is still ours."""
        exceptions = _api_exceptions()
        if self._beat is not None:
            self._stop.set()
            self._beat.join()
            self._beat = None
        if self._generation is not None:
            try:
                self._blob().delete(if_generation_match=self._generation)
            except exceptions.GoogleAPICallError as e:
                logging.warning("Could not delete the lock of %s (%s).", self.workdir, e)
            self._generation = None


def read_config(workdir: str) -> dict[str, Any] | None:
    """The config.json the workdir's run recorded (nested dicts), or None."""
    path = paths.resolve(workdir) / CONFIG_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


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
        "num_train_steps"
    ):
        old.pop("num_epochs", None)  # Ignored when the steps are set.
        new.pop("num_epochs", None)
    accepted, refused = [], []
    for field in sorted(set(old) | set(new)):
        if field not in old:
            logging.info(
                "config.%s is not in %s's config.json (recorded by an older version); using %r.",
                field,
                workdir,
                new[field],
            )
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
            f"--config.init_from={workdir}."
            if length
            else ""
        )
        raise ConfigError(
            f"The workdir {workdir!r} holds a run with another config, which this command "
            f"would change: {'; '.join(refused)}.{longer} Resume with the run's own config "
            f"({os.path.join(workdir, CONFIG_FILE)}), or pass another --workdir for a new run. "
            f"Only {', '.join(RESUMABLE)} may change on resume."
        )
    for change in accepted:
        logging.info("Resuming with config.%s", change)
    return accepted
