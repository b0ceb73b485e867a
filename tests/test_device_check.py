"""The GPU device check's parts: what travels (benchmarks/prepare_device.py), the install from
it, the targets. tests/test_rehearse_device_check.py runs the whole check offline."""

import importlib.util
import json
import math
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _load(name):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


prepare_device = _load("prepare_device")
device_check = _load("device_check")


def test_the_wheel_list_names_only_what_the_image_lacks():
    assert prepare_device.check_wheel_list(prepare_device.WHEELS) == []
    problems = prepare_device.check_wheel_list(
        {"jax==0.11.2": "", "Flax==0.12.8": "", "clu": "", "grain==0.2.18": ""}
    )
    assert len(problems) == 3
    assert problems[0].startswith("jax==0.11.2: never carried")
    assert "flax==0.12.8: the image has it" in problems[1].lower()
    assert "clu: name one version" in problems[2]


def test_install_refuses_a_wheel_of_a_package_the_image_has(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "clu-0.0.12-py3-none-any.whl").write_bytes(b"")
    (wheels / "jaxlib-0.11.2-cp312-cp312-manylinux_2_27_x86_64.whl").write_bytes(b"")
    log = tmp_path / "environment.txt"
    log.write_text("")
    status = device_check.install(wheels, tmp_path / "site", {}, log)
    assert status.startswith("failed: jaxlib-0.11.2-")
    assert "must not be replaced" in log.read_text()
    assert not (tmp_path / "site").exists()
    status = device_check.install(tmp_path / "none", tmp_path / "site", {}, log)
    assert "no wheels in" in status and "prepare_device.py" in status


def test_prepare_refuses_bad_input_before_writing(tmp_path, capsys):
    out = tmp_path / "device"
    assert prepare_device.main([f"--data-dir={tmp_path / 'nothing'}", f"--out={out}"]) == 2
    assert "holds no prepared cifar10 3.0.2" in capsys.readouterr().err
    assert not out.exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    assert prepare_device.main([f"--out={tmp_path / 'mine'}"]) == 2
    assert "is not a folder this script wrote" in capsys.readouterr().err
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_the_subset_holds_the_first_records_with_their_labels(shared_tfds, tmp_path):
    import tensorflow_datasets as tfds

    written = prepare_device.write_subset(shared_tfds, tmp_path, {"train": 40, "test": 12})
    assert {s: w["records"] for s, w in written.items()} == {"train": 40, "test": 12}
    labels = prepare_device.verify_subset(tmp_path, {"train": 40, "test": 12})
    for split in ("train", "test"):
        full = tfds.data_source("cifar10", split=split, data_dir=str(shared_tfds))
        subset = tfds.data_source("cifar10", split=split, data_dir=str(tmp_path))
        assert labels[split] == [int(full[i]["label"]) for i in range(10)]
        assert (subset[11]["image"] == full[11]["image"]).all()
    info = json.loads((tmp_path / "cifar10" / "3.0.2" / "dataset_info.json").read_text())
    assert [s["shardLengths"] for s in info["splits"]] == [["40"], ["12"]]


def _row(impl, img_s, model="m"):
    return {"impl": impl, "model": model, "train_img_s": img_s}


def test_the_summary_says_pass_or_fail_for_each_target():
    reports = {
        "tnt": {
            "device": "d",
            "backend": "gpu",
            "batch": 256,
            "img_size": 224,
            "dtype": "bfloat16",
            "matmul_peak_tflops": 700.0,
            "rows": [
                _row("jax", 950.0, "nested"),
                _row("jax", 1000.0, "tnt"),
                _row("timm", 400.0),
                _row("timm compiled", 1100.0),
            ],
        }
    }
    history = [
        {"step": 50, "split": "train", "loss": 2.3},
        {"step": 100, "split": "eval"},
        {"step": 200, "split": "train", "loss": 1.9},
    ]
    text = device_check.summary(reports, 800.0, history, 256, {"tnt": "ok"})
    assert "PASS: Nested-TNT / TNT training: 0.95x (target >= 0.9)" in text
    assert "PASS: TNT / timm TNT eager: 2.50x (target >= 2)" in text
    assert "FAIL: TNT / timm TNT compiled: 0.91x (target > 1)" in text
    assert "FAIL: trainer (main.py) / benchmark, Nested-TNT: 0.84x (target >= 0.9)" in text
    assert "PASS: trainer's training loss falls: 2.300 -> 1.900 (target last < first)" in text
    rows = device_check.targets({}, None, [])
    assert [ok for *_, ok in rows] == [False] * 5 and math.isnan(float(rows[0][1][:-1]))


def test_a_stage_that_runs_out_of_time_is_recorded_and_passed_over(tmp_path):
    status, _ = device_check._run(
        [device_check.PYTHON, "-c", "import time; time.sleep(30)"], 1, tmp_path / "slow.txt", {}
    )
    assert status == "timed out after 1 s"
    assert "# timed out after 1 s" in (tmp_path / "slow.txt").read_text()
