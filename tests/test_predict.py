"""`predict`: top-5 per image from a run's workdir, per-file errors, CLI exit codes.

The run is faked in seconds with the trainer's own writers: the config through
`metrics.write_config_file` (and the TensorBoard hparams that older runs have instead), a
checkpoint of fresh tiny-model params through `checkpointing.Checkpointer`. `make_run` is
shared with test_visualize.py.
"""

import os
import pathlib
import runpy
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from nested_tnt_jax import checkpointing, metrics, models, predict, steps

ROOT = pathlib.Path(__file__).resolve().parent.parent
DATA_DIR = str((ROOT / ".." / "shared" / "tfds").resolve())
# Depth 3 with scan_blocks: the checkpoint then holds the stacked `blocks` layout.
TINY_TNT = dict(embed_dim=16, depth=3, inner_dim=8, num_heads_outer=2, num_heads_inner=2,
                mlp_ratio=1.0, scan_blocks=True)


def make_config(data_dir: str | None = DATA_DIR):
    config = runpy.run_path(str(ROOT / "configs" / "cifar10.py"))["get_config"](
        "model=nested_tnt,cpu")
    config.model.name = "nested_tnt_cifar_patch8_32"
    config.model.overrides.update(TINY_TNT)
    config.dataset.data_dir = data_dir
    return config


def write_config(config, workdir, legacy: bool = False) -> None:
    """The config as the trainer records it: config.json and TensorBoard hparams; `legacy`:
    the hparams alone, as runs from before config.json have."""
    reporter = metrics.Reporter(str(workdir), 1, 1)
    reporter.write_config(config)
    reporter.close()
    if not legacy:
        metrics.write_config_file(str(workdir), config)


def random_params(model, seed: int):
    """Parameters of `model`'s shapes drawn from N(0, 0.3^2): only shapes are traced, so no
    init is compiled (seconds saved per test); the scale gives non-uniform attention."""
    shapes = jax.eval_shape(lambda: steps.init_params(model, jax.random.PRNGKey(0)))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: rng.normal(0.0, 0.3, s.shape).astype(s.dtype), shapes)


def make_run(workdir, seed: int = 0):
    """A workdir as the trainer leaves it (config + one checkpoint); returns (config, params)."""
    config = make_config()
    write_config(config, workdir)
    model = models.create_model(config.model.name, num_classes=10, img_size=config.image_size,
                                **config.model.overrides.to_dict())
    params = random_params(model, seed)
    state = steps.create_train_state(params, optax.sgd(0.1), jax.random.PRNGKey(seed))
    checkpointer = checkpointing.Checkpointer(str(workdir), max_to_keep=1)
    checkpointer.save(state, 1)
    checkpointer.close()
    return config, params


def write_images(directory) -> list[str]:
    """Two CIFAR-10 test images (32 px PNG) and one random 40x50 JPEG (resized by predict)."""
    source = tfds.data_source("cifar10", split="test", data_dir=DATA_DIR)
    paths = []
    for i in range(2):
        path = os.path.join(directory, f"cifar_{i}.png")
        Image.fromarray(source[i]["image"]).save(path)
        paths.append(path)
    path = os.path.join(directory, "random.jpg")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), np.uint8)).save(path)
    return paths + [path]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run")
    config, params = make_run(workdir)
    return workdir, config, params


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return write_images(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="module")
def corrupt(tmp_path_factory):
    path = tmp_path_factory.mktemp("bad") / "broken.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"truncated")
    return str(path)


@pytest.mark.parametrize("legacy", [False, True])
def test_recorded_config_round_trips_with_field_types(tmp_path, legacy):
    config = make_config()
    write_config(config, tmp_path, legacy=legacy)
    assert (tmp_path / metrics.CONFIG_FILE).exists() != legacy
    flat = predict.read_run_config(str(tmp_path))
    assert flat["model.name"] == config.model.name
    overrides = predict.model_overrides(config.model.name, flat)
    assert overrides == config.model.overrides.to_dict()
    assert type(overrides["depth"]) is int and type(overrides["scan_blocks"]) is bool


def test_top5_sorted_probabilities_matching_the_model(run_dir, images):
    workdir, config, params = run_dir
    results = predict.predict(str(workdir), images)
    names = predict.label_names("cifar10", DATA_DIR, 10)
    assert names != [str(i) for i in range(10)]  # the prepared dataset's names were found
    assert [r.path for r in results] == images
    run = predict.load_run(str(workdir))
    views = np.stack([predict.load_image(p, run) for p in images])
    expected = predict.probabilities(run.model, params, predict.model_inputs(views, run))
    for result, probs in zip(results, expected):
        assert result.error is None
        labels, p = zip(*result.top)
        assert len(labels) == 5 and set(labels) <= set(names)
        assert list(p) == sorted(p, reverse=True) and sum(p) <= 1.0 + 1e-6
        np.testing.assert_allclose(p, np.sort(probs)[::-1][:5], rtol=1e-5)
        assert labels[0] == names[int(np.argmax(probs))]


def test_corrupt_and_missing_files_fail_alone(run_dir, images, corrupt):
    workdir, _, _ = run_dir
    missing = str(pathlib.Path(corrupt).with_name("missing.png"))
    results = predict.predict(str(workdir), [images[0], corrupt, missing, *images[1:]])
    assert [r.error is None for r in results] == [True, False, False, True, True]
    assert corrupt in results[1].error and missing in results[2].error
    assert not results[1].top and not results[2].top
    alone = predict.predict(str(workdir), images)  # the same batch without the bad files
    assert [r.top for r in results if r.error is None] == [r.top for r in alone]


def test_cli_exit_codes_and_output(run_dir, images, corrupt, capsys):
    workdir, _, _ = run_dir
    assert predict.main([f"--workdir={workdir}", *images]) == 0
    out = capsys.readouterr().out
    assert all(p in out for p in images) and out.count(" 1. ") == len(images)
    assert predict.main([f"--workdir={workdir}", *images, corrupt]) == 1
    out = capsys.readouterr().out
    assert f"{corrupt}\n  error: cannot read" in out and " 5. " in out


def test_workdir_without_checkpoint_is_one_clear_error(tmp_path, images):
    write_config(make_config(), tmp_path)  # a run that has started but not saved yet
    proc = subprocess.run(
        [sys.executable, "-m", "nested_tnt_jax.predict", f"--workdir={tmp_path}", images[0]],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "has no complete checkpoint" in proc.stderr and "Traceback" not in proc.stderr
    with pytest.raises(predict.RunError, match="not a training run's workdir"):
        predict.load_run(str(tmp_path / "empty"))
