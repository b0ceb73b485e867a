"""The benchmark scripts run and check their own variants against each other."""

import importlib.util
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_mixer_benchmark_times_both_paths_and_says_which_one_blocks(capsys):
    mixer = _load("mixer")
    rows = mixer.main(["--case", "big:2:8:70000", "--case", "small:4:16:1000",
                       "--iters", "1", "--rounds", "1"])
    assert [(r["case"], r["blocked_path"]) for r in rows] == [("big", True), ("small", False)]
    assert all(r["unblocked"] > 0 and r["blocked"] > 0 for r in rows)
    table = capsys.readouterr().out
    assert "| big | 2 -> 8 | 70,000 |" in table and "small (too small: runs unblocked)" in table
