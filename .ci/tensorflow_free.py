"""CI's check of the TensorFlow-free install: TensorFlow is absent, and a short CLI training
and a predict on the shared CIFAR-10 succeed.

  .ci-venv-notf/bin/python .ci/tensorflow_free.py --data-dir=../shared/tfds
"""

import argparse
import importlib.util
import json
import pathlib
import subprocess
import sys
import tempfile

STEPS = 20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, help="TFDS data_dir holding cifar10")
    args = parser.parse_args()
    if importlib.util.find_spec("tensorflow") is not None:
        sys.exit(
            "error: tensorflow is installed in this environment; `pip install -e .` must "
            "not bring it."
        )
    with tempfile.TemporaryDirectory() as tmp:
        workdir = pathlib.Path(tmp) / "run"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "nested_tnt_jax.main",
                f"--config=configs/cifar10.py:model=nested_tnt,cpu,steps={STEPS}",
                f"--config.dataset.data_dir={args.data_dir}",
                "--config.eval_every_steps=10",
                "--config.dataset.test_split=test[:500]",
                f"--workdir={workdir}",
            ],
            check=True,
        )
        results = json.loads((workdir / "results.json").read_text())
        assert results["steps"] == STEPS and results["test_examples"] == 500, results
        assert list(workdir.glob("events.out.tfevents.*")), "no TensorBoard events"
        import tensorflow_datasets as tfds  # noqa: PLC0415 (after the check that TensorFlow is absent)
        from PIL import Image  # noqa: PLC0415 (after the check that TensorFlow is absent)

        record = tfds.data_source("cifar10", split="test[:1]", data_dir=args.data_dir)[0]
        image = pathlib.Path(tmp) / "test0.png"
        Image.fromarray(record["image"]).save(image)
        predicted = subprocess.run(
            [sys.executable, "-m", "nested_tnt_jax.predict", f"--workdir={workdir}", str(image)],
            check=True,
            capture_output=True,
            text=True,
        )
        assert "test0.png" in predicted.stdout, predicted.stdout
        print(predicted.stdout)
    assert importlib.util.find_spec("tensorflow") is None
    print(
        f"TensorFlow-free: trained {STEPS} steps (test top-1 {results['test_top1']:.3f} on "
        "500 images) and predicted, without tensorflow installed."
    )


if __name__ == "__main__":
    main()
