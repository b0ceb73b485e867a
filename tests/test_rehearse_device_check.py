"""The GPU device check rehearsed end to end on CPU: no network, no index, no ../shared
(benchmarks/rehearse_device_check.py). Builds its virtualenv on the first run (network)."""

import json
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _can_close_the_network() -> bool:
    if not (shutil.which("unshare") and shutil.which("ip")):
        return False
    probe = subprocess.run(
        ["unshare", "-n", "--", "ip", "link", "set", "lo", "up"], capture_output=True, check=False
    )
    return probe.returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(
    not _can_close_the_network(), reason="needs `unshare -n` (root or user namespaces) and `ip`"
)
def test_the_device_check_runs_every_stage_offline_from_what_travels(shared_tfds, tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "benchmarks/rehearse_device_check.py",
            f"--data-dir={shared_tfds}",
            f"--keep-out={tmp_path}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=3000,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-6000:]
    summary = (tmp_path / "summary.md").read_text()
    for stage in ("environment", "install", "tnt", "trainer", "mixer", "vit", "cores"):
        assert f"| {stage} | ok" in summary, stage
    environment = (tmp_path / "environment.txt").read_text()
    assert "(from .device/manifest.json)" in environment  # no .git travelled
    versions = environment.split("versions (the image's and the installed): ")[1].split("\n")[0]
    assert "tensorflow-datasets 4.9.10" in versions and "tensorflow " not in versions
    tnt = json.loads((tmp_path / "tnt.json").read_text())
    assert [row["impl"] for row in tnt["rows"]] == ["jax", "jax", "timm", "timm compiled"]
    results = json.loads((tmp_path / "trainer_results.json").read_text())
    assert results["steps"] == 3
    assert len(list(tmp_path.iterdir())) <= 8  # what the device tool brings back
    assert summary.count("PASS: ") + summary.count("FAIL: ") == 5
