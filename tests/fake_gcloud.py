"""A stand-in for the `gcloud` CLI: experiments/tpu/ on a simulated pod, for tests/tpu_cases.py.

It implements the calls those scripts make, as Google's gcloud reference describes them, and
refuses any other command or flag (a script that starts using a new one fails its test until
the stand-in learns it):

  gcloud config get-value project
  gcloud compute tpus tpu-vm create|describe|delete|ssh
  gcloud compute tpus queued-resources create|describe|delete
  gcloud storage ls URL;  gcloud storage cp -r LOCAL_DIR gs://BUCKET/PREFIX/

Its state (project, TPUs, queued resources) is a JSON file. A TPU's hosts are local
directories, each the home of one worker. `ssh --worker=all|N --command=C` runs `bash -c C`
in each selected home at once, each as a process group of its own, with the environment a TPU
VM host gives a login shell (HOME, USER, PATH with this gcloud) plus, in place of what a real
host learns from its metadata server and service account:

- where jax finds the job: JAX_COORDINATOR_ADDRESS (127.0.0.1 and a port per TPU),
  JAX_NUM_PROCESSES (the hosts) and JAX_PROCESS_ID (the worker), which jax and the trainer's
  flags read from the environment; on a real host, `jax.distributed.initialize()` reads the
  same three values from the metadata server;
- the devices: one CPU device per TPU chip of the host (XLA_FLAGS);
- the state's `host_env`: the Cloud Storage emulator's endpoints and the test's settings.

A created host's home starts with ~/venv, a virtual environment that sees this interpreter's
packages (not the project's checkout), as a VM image with the environment installed would:
the hosts have no network, so setup.sh runs there with INSTALL=no. `storage` commands reach
the emulator through gcsfs. `preempt()` is what a Spot preemption does to a TPU.
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig

# Flags each command accepts: name -> takes a value (`--name=value`) or is a switch.
_TPU = {"project": True, "zone": True}
COMMANDS = {
    ("compute", "tpus", "tpu-vm", "create"): {
        **_TPU,
        "accelerator-type": True,
        "version": True,
        "scopes": True,
        "spot": False,
    },
    ("compute", "tpus", "tpu-vm", "describe"): {**_TPU, "format": True},
    ("compute", "tpus", "tpu-vm", "delete"): {**_TPU, "quiet": False},
    ("compute", "tpus", "tpu-vm", "ssh"): {**_TPU, "worker": True, "command": True},
    ("compute", "tpus", "queued-resources", "create"): {
        **_TPU,
        "node-id": True,
        "accelerator-type": True,
        "runtime-version": True,
        "scopes": True,
        "spot": False,
    },
    ("compute", "tpus", "queued-resources", "describe"): {**_TPU, "format": True},
    ("compute", "tpus", "queued-resources", "delete"): {**_TPU, "force": False, "quiet": False},
    ("config", "get-value"): {},
    ("storage", "ls"): {},
    ("storage", "cp"): {"r": False},
}


class Refused(Exception):
    """A call the real gcloud would refuse or fail: its message, exit code 1."""


def install(root: pathlib.Path, project: str | None, host_env: dict[str, str]) -> dict:
    """Writes `root/bin/gcloud` (put `root/bin` first on PATH) and a fresh state; returns the
    environment additions that make the scripts find it."""
    bin_dir = root / "bin"
    bin_dir.mkdir(parents=True)
    state = root / "gcloud_state.json"
    state.write_text(
        json.dumps(
            {
                "project": project,
                "root": str(root),
                "bin": str(bin_dir),
                "host_env": host_env,
                "fail": {},
                "tpus": {},
                "queued": {},
                "serial": 0,
                "calls": [],
            }
        )
    )
    wrapper = bin_dir / "gcloud"
    wrapper.write_text(
        f"#!/bin/sh\nFAKE_GCLOUD_STATE='{state}' exec '{sys.executable}' "
        f"'{pathlib.Path(__file__).resolve()}' \"$@\"\n"
    )
    wrapper.chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_GCLOUD_STATE": str(state)}


@contextlib.contextmanager
def state(path: str | os.PathLike):
    """The state, read and written back (also after a refused call: a failure injected with
    `fail` is used up) under an exclusive lock."""
    with open(f"{path}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = json.loads(pathlib.Path(path).read_text())
        try:
            yield data
        finally:
            pathlib.Path(path).write_text(json.dumps(data, indent=1))


def read(path: str | os.PathLike) -> dict:
    with state(path) as data:
        return data


def preempt(path: str | os.PathLike, name: str) -> None:
    """A Spot preemption: every process on the TPU's hosts is killed; the TPU is PREEMPTED
    (and its queued resource, if any, SUSPENDED) until deleted."""
    with state(path) as data:
        tpu = data["tpus"][name]
        _kill(tpu)
        tpu["state"] = "PREEMPTED"
        if tpu.get("queued"):
            data["queued"][tpu["queued"]]["state"] = "SUSPENDED"


def _kill(tpu: dict) -> None:
    for pgid in tpu.pop("pgids", []):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
    tpu["pgids"] = []


def _parse(argv: list[str]) -> tuple[tuple[str, ...], list[str], dict[str, str | bool]]:
    command = next((c for c in COMMANDS if tuple(argv[: len(c)]) == c), None)
    if command is None:
        raise Refused(f"the stand-in has no command `gcloud {' '.join(argv[:4])}`")
    allowed = COMMANDS[command]
    positional, flags = [], {}
    for arg in argv[len(command) :]:
        if arg == "-r" and "r" in allowed:
            flags["r"] = True
        elif arg.startswith("--"):
            name, has_value, value = arg[2:].partition("=")
            if name not in allowed or allowed[name] != bool(has_value):
                raise Refused(f"unrecognized or malformed flag for {' '.join(command)}: {arg}")
            flags[name] = value if has_value else True
        else:
            positional.append(arg)
    return command, positional, flags


def _topology(accelerator_type: str) -> tuple[int, int]:
    """(hosts, chips per host) of a v4 or v5e accelerator type."""
    family, _, size = accelerator_type.rpartition("-")
    if not size.isdigit() or family not in ("v4", "v5litepod"):
        raise Refused(
            f"INVALID_ARGUMENT: the stand-in knows v4-N and v5litepod-N, not {accelerator_type!r}"
        )
    chips = int(size) // 2 if family == "v4" else int(size)  # v4 counts TensorCores
    per_host = min(chips, 4 if family == "v4" or chips > 8 else 8)
    return max(1, chips // per_host), per_host


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _image_venv(home: pathlib.Path) -> None:
    """~/venv as the image's: this interpreter's packages on its path, not the project."""
    venv = home / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next((venv / "lib").glob("python*/site-packages"))
    (site / "image_packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")


def _create_tpu(
    data: dict, name: str, accelerator_type: str, spot: bool, queued: str | None = None
) -> None:
    hosts, chips = _topology(accelerator_type)
    data["serial"] += 1
    homes = pathlib.Path(data["root"]) / "hosts" / f"{name}-{data['serial']}"
    for i in range(hosts):
        (homes / f"worker-{i}").mkdir(parents=True)
        _image_venv(homes / f"worker-{i}")
    data["tpus"][name] = {
        "state": "READY",
        "hosts": hosts,
        "chips_per_host": chips,
        "homes": str(homes),
        "port": _free_port(),
        "spot": spot,
        "queued": queued,
        "pgids": [],
    }


def _delete_tpu(data: dict, name: str) -> None:
    tpu = data["tpus"].pop(name)
    _kill(tpu)
    shutil.rmtree(tpu["homes"], ignore_errors=True)


def _check(data: dict, command: tuple[str, ...], flags: dict) -> None:
    if flags.get("project") != data["project"] or not data["project"]:
        raise Refused(f"PERMISSION_DENIED: project {flags.get('project')!r}")
    if not flags.get("zone"):
        raise Refused("argument --zone: expected one argument")
    verb = command[-1]
    if data["fail"].get(verb, 0) > 0:
        data["fail"][verb] -= 1
        raise Refused(
            f"({'.'.join(command)}) RESOURCE_EXHAUSTED: the stand-in was told to fail this {verb}"
        )


def _tpu_vm(data: dict, verb: str, name: str, flags: dict) -> str:
    tpu = data["tpus"].get(name)
    if verb == "create":
        if name in data["tpus"]:
            raise Refused(f"ALREADY_EXISTS: node {name}")
        _create_tpu(data, name, flags["accelerator-type"], bool(flags.get("spot")))
        return ""
    if tpu is None:
        raise Refused(f"NOT_FOUND: node {name}")
    if verb == "describe":
        if flags.get("format") != "value(state)":
            raise Refused(
                f"the stand-in prints --format=value(state) only, not {flags.get('format')!r}"
            )
        return tpu["state"] + "\n"
    if verb == "delete":
        _delete_tpu(data, name)
        return ""
    raise AssertionError(verb)


def _queued(data: dict, verb: str, name: str, flags: dict) -> str:
    resource = data["queued"].get(name)
    if verb == "create":
        if resource is not None:
            raise Refused(f"ALREADY_EXISTS: queued resource {name}")
        node = flags["node-id"]
        if node in data["tpus"]:
            raise Refused(f"ALREADY_EXISTS: node {node}")
        if not flags.get("runtime-version"):
            raise Refused("argument --runtime-version: expected one argument")
        # Granted at the first describe after one in the queue.
        data["queued"][name] = {
            "state": "WAITING_FOR_RESOURCES",
            "node": node,
            "accelerator_type": flags["accelerator-type"],
            "spot": bool(flags.get("spot")),
        }
        return ""
    if resource is None:
        raise Refused(f"NOT_FOUND: queued resource {name}")
    if verb == "describe":
        if flags.get("format") != "value(state.state)":
            raise Refused(
                f"the stand-in prints --format=value(state.state) only, not {flags.get('format')!r}"
            )
        shown = resource["state"]
        if shown == "WAITING_FOR_RESOURCES":
            resource["state"] = "ACTIVE"
            _create_tpu(
                data, resource["node"], resource["accelerator_type"], resource["spot"], queued=name
            )
        return shown + "\n"
    if verb == "delete":
        if resource["node"] in data["tpus"]:
            if not flags.get("force"):
                raise Refused(f"FAILED_PRECONDITION: queued resource {name} has a node")
            _delete_tpu(data, resource["node"])
        del data["queued"][name]
        return ""
    raise AssertionError(verb)


def _ssh(path: str, name: str, flags: dict) -> int:
    with state(path) as data:
        tpu = data["tpus"].get(name)
        if tpu is None or tpu["state"] != "READY":
            raise Refused(f"node {name} is {tpu and tpu['state'] or 'NOT_FOUND'}: no SSH")
        worker = flags.get("worker", "0")
        workers = range(tpu["hosts"]) if worker == "all" else [int(worker)]
        if workers[-1] >= tpu["hosts"]:
            raise Refused(f"worker {worker} out of range: {tpu['hosts']} hosts")
        procs = []
        for i in workers:
            home = pathlib.Path(tpu["homes"]) / f"worker-{i}"
            env = {
                "HOME": str(home),
                "USER": getpass.getuser(),
                "LANG": "C.UTF-8",
                "PATH": f"{data['bin']}:/usr/local/bin:/usr/bin:/bin",
                "HOSTNAME": f"{name}-w-{i}",
                **data["host_env"],
                "JAX_PLATFORMS": "cpu",
                "XLA_FLAGS": f"--xla_force_host_platform_device_count={tpu['chips_per_host']}",
                "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{tpu['port']}",
                "JAX_NUM_PROCESSES": str(tpu["hosts"]),
                "JAX_PROCESS_ID": str(i),
            }
            procs.append(
                subprocess.Popen(
                    ["bash", "-c", flags["command"]], cwd=home, env=env, start_new_session=True
                )
            )
        tpu["pgids"] += [p.pid for p in procs]
    codes = [p.wait() for p in procs]
    with state(path) as data:
        tpu = data["tpus"].get(name)
        if tpu is not None:
            tpu["pgids"] = [g for g in tpu["pgids"] if g not in {p.pid for p in procs}]
        lost = tpu is None or tpu["state"] != "READY"
    if lost or any(c < 0 for c in codes):
        print(f"Connection to {name} closed by remote host.", file=sys.stderr)
        return 255
    return next((c for c in codes if c), 0)


def _storage(command: tuple[str, ...], positional: list[str], flags: dict) -> str:
    import gcsfs

    fs = gcsfs.GCSFileSystem()
    if command[1] == "ls":
        (url,) = positional
        path = url.removeprefix("gs://")
        if fs.isfile(path):
            return url + "\n"
        if fs.isdir(path):
            return "".join(f"gs://{p}\n" for p in fs.ls(path))
        raise Refused("One or more URLs matched no objects.")
    source, target = positional
    if not (
        flags.get("r")
        and os.path.isdir(source)
        and target.startswith("gs://")
        and target.endswith("/")
    ):
        raise Refused("the stand-in copies a local directory into gs://.../ with -r only")
    name = os.path.basename(source.rstrip("/"))
    fs.put(source.rstrip("/") + "/", target.removeprefix("gs://") + name, recursive=True)
    return ""


def main(argv: list[str]) -> int:
    path = os.environ["FAKE_GCLOUD_STATE"]
    with state(path) as data:
        data["calls"].append(argv)
    try:
        command, positional, flags = _parse(argv)
        if command[0] == "config":
            if positional != ["project"]:
                raise Refused(f"the stand-in gets the project only, not {positional}")
            project = read(path)["project"]
            if not project:
                print("(unset)", file=sys.stderr)
            print(project or "")
            return 0
        if command[0] == "storage":
            print(_storage(command, positional, flags), end="")
            return 0
        (name,) = positional
        if command[-1] == "ssh":
            with state(path) as data:
                _check(data, command, flags)
            return _ssh(path, name, flags)
        with state(path) as data:
            _check(data, command, flags)
            handler = _queued if command[2] == "queued-resources" else _tpu_vm
            print(handler(data, command[-1], name, flags), end="")
        return 0
    except Refused as e:
        print(f"ERROR: (gcloud.{'.'.join(argv[:4])}) {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
