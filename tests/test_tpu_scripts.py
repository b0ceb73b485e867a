"""experiments/tpu/ on a simulated pod (`tests/tpu_cases.py`), inside a network namespace that
has only loopback.

The scripts call the stand-in gcloud (`tests/fake_gcloud.py`), whose hosts reach the Cloud
Storage emulator only; a client that missed its emulator setting fails instead of reaching any
other address. Needs root (`unshare -n`), the emulator package (the `[test]` extra) and the
shared CIFAR-10; without one of them the test skips, saying which.
"""

import gcs_emulator


def test_tpu_scripts_on_a_simulated_pod(shared_tfds):
    proc = gcs_emulator.run_cases_offline("tests/tpu_cases.py", timeout=1200)
    assert proc.returncode == 0, proc.stdout[-8000:] + proc.stderr[-3000:]
