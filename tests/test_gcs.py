"""The `gs://` cases (`tests/gcs_cases.py`) inside a network namespace that has only loopback.

`unshare -n` gives the test process a network of its own with nothing but 127.0.0.1, where the
Cloud Storage emulator runs; a client that missed its emulator setting then fails instead of
reaching any other address. Needs root (CI runs as root) and the emulator package (the `[test]`
extra); without either the test skips, saying which.
"""

import gcs_emulator


def test_gcs_cases_in_a_loopback_only_network(shared_tfds):
    proc = gcs_emulator.run_cases_offline("tests/gcs_cases.py", timeout=1500)
    assert proc.returncode == 0, proc.stdout[-8000:] + proc.stderr[-3000:]
