"""benchmarks/device_check.py end to end at tiny sizes on CPU (`--dry-run`)."""

import importlib.util
import json
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _load():
    spec = importlib.util.spec_from_file_location(
        "device_check", ROOT / "benchmarks" / "device_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dry_run_runs_every_stage_and_writes_the_summary(tmp_path, capsys):
    device_check = _load()
    assert device_check.main([f"--out={tmp_path}", "--dry-run", "--budget-s=400"]) == 0
    names = [stage.name for stage in device_check.stages(tmp_path, "data", dry_run=True)]
    for name in ("environment", "install", *names):
        assert (tmp_path / f"{name}.txt").exists(), name
    assert "commit: " in (tmp_path / "environment.txt").read_text()
    tnt = json.loads((tmp_path / "tnt.json").read_text())
    assert [row["impl"] for row in tnt["rows"]] == ["jax", "jax", "timm", "timm compiled"]
    results = json.loads((tmp_path / "trainer_run" / "results.json").read_text())
    assert results["steps"] == 3
    summary = (tmp_path / "summary.md").read_text()
    assert summary in capsys.readouterr().out  # printed too
    nested, plain = (row["train_img_s"] for row in tnt["rows"][:2])
    assert f"| Nested-TNT / TNT training | {nested / plain:.2f}x | >= 0.9 |" in summary
    trainer = results["train_img_per_sec_per_device"]
    assert f"/ benchmark, Nested-TNT | {trainer / nested:.2f}x |" in summary
    for name in ("mixer", "cores"):
        assert "| tiny" in (tmp_path / f"{name}.txt").read_text(), name
    vit = json.loads((tmp_path / "vit.json").read_text())
    assert [row["impl"] for row in vit["rows"]] == ["jax", "timm", "timm compiled"]
    assert f"| {vit['rows'][0]['model']} |" in summary and "| timm ViT compiled |" in summary


def test_a_stage_that_runs_out_of_time_is_recorded_and_passed_over(tmp_path):
    device_check = _load()
    status, _ = device_check._run(
        [device_check.PYTHON, "-c", "import time; time.sleep(30)"], 1, tmp_path / "slow.txt", {})
    assert status == "timed out after 1 s"
    assert "# timed out after 1 s" in (tmp_path / "slow.txt").read_text()
