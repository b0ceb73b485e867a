"""`predict` and `runs`: a run read back, top-5 per image, every Pillow mode, per-file errors,
CLI output and exit codes.

The run is faked in seconds with the trainer's own writers: the config through
`metrics.write_config_file`, a checkpoint of fresh tiny-model params through
`checkpointing.Checkpointer`. `make_run` is shared with test_visualize.py.
"""

import os
import pathlib
import re
import runpy
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest
import shared_data
import tensorflow_datasets as tfds
from PIL import Image

from nested_tnt_jax import checkpointing, errors, metrics, models, predict, runs, steps
from nested_tnt_jax.data.augment import eval_view

ROOT = pathlib.Path(__file__).resolve().parent.parent
# The data_dir the faked runs record (label names are read from it when it holds CIFAR-10).
DATA_DIR = str(shared_data.shared_tfds().resolve())
# Depth 3 with scan_blocks: the checkpoint then holds the stacked `blocks` layout.
TINY_TNT = dict(
    embed_dim=16,
    depth=3,
    inner_dim=8,
    num_heads_outer=2,
    num_heads_inner=2,
    mlp_ratio=1.0,
    scan_blocks=True,
)


def make_config(data_dir: str | None = DATA_DIR):
    config = runpy.run_path(str(ROOT / "configs" / "cifar10.py"))["get_config"](
        "model=nested_tnt,cpu"
    )
    config.model.name = "nested_tnt_cifar_patch8_32"
    config.model.overrides.update(TINY_TNT)
    config.dataset.data_dir = data_dir
    return config


def write_config(config, workdir) -> None:
    """The config as the trainer records it (config.json)."""
    metrics.write_config_file(str(workdir), config)


def random_params(model, seed: int):
    """Parameters of `model`'s shapes drawn from N(0, 0.3^2): only shapes are traced, so no
    init is compiled (seconds saved per test); the scale gives non-uniform attention."""
    shapes = jax.eval_shape(lambda: steps.init_params(model, jax.random.PRNGKey(0)))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: rng.normal(0.0, 0.3, s.shape).astype(s.dtype), shapes)


def make_run(workdir, seed: int = 0, config=None, step: int = 1):
    """A workdir as the trainer leaves it (config + one checkpoint at `step`); returns
    (config, params)."""
    config = config or make_config()
    write_config(config, workdir)
    model = models.create_model(
        config.model.name,
        num_classes=10,
        img_size=config.image_size,
        **config.model.overrides.to_dict(),
    )
    params = random_params(model, seed)
    state = steps.create_train_state(params, optax.sgd(0.1), jax.random.PRNGKey(seed))
    checkpointer = checkpointing.Checkpointer(str(workdir), max_to_keep=1)
    checkpointer.save(state, step)
    checkpointer.close()
    return config, params


def write_images(directory, data_dir) -> list[str]:
    """Two CIFAR-10 test images (32 px PNG) from `data_dir` and one random 40x50 JPEG (resized
    by predict)."""
    source = tfds.data_source("cifar10", split="test", data_dir=str(data_dir))
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
def images(shared_tfds, tmp_path_factory):
    return write_images(tmp_path_factory.mktemp("images"), shared_tfds)


@pytest.fixture(scope="module")
def corrupt(tmp_path_factory):
    path = tmp_path_factory.mktemp("bad") / "broken.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"truncated")
    return str(path)


def test_recorded_config_round_trips_with_field_types(tmp_path):
    config = make_config()
    write_config(config, tmp_path)
    flat = runs.read_config(str(tmp_path))
    assert flat["model.name"] == config.model.name
    overrides = runs.model_overrides(config.model.name, flat)
    assert overrides == config.model.overrides.to_dict()
    assert type(overrides["depth"]) is int and type(overrides["scan_blocks"]) is bool


def test_load_run_uses_the_newest_checkpoint_and_says_which(tmp_path):
    config, _ = make_run(tmp_path, seed=0, step=3)
    _, newer = make_run(tmp_path, seed=1, config=config, step=7)
    run = runs.load_run(str(tmp_path))
    assert run.step == 7 and run.model_name == config.model.name
    loaded, saved = jax.tree.leaves_with_path(run.params), jax.tree.leaves_with_path(newer)
    assert [k for k, _ in loaded] == [k for k, _ in saved]
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(loaded, saved))


def test_top5_sorted_probabilities_matching_the_model(run_dir, images):
    workdir, config, params = run_dir
    results = predict.predict(str(workdir), images)
    names = runs.label_names("cifar10", DATA_DIR, 10)
    assert names != [str(i) for i in range(10)]  # the prepared dataset's names were found
    assert [r.path for r in results] == images
    run = runs.load_run(str(workdir))
    views = np.stack([run.view(p) for p in images])
    expected = predict.probabilities(run.model, params, run.inputs(views))
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


def test_cli_results_on_stdout_errors_on_stderr(run_dir, images, corrupt, capsys):
    workdir, _, _ = run_dir
    assert predict.main([f"--workdir={workdir}", *images]) == 0
    out, err = capsys.readouterr()
    assert out.startswith(f"{workdir}: nested_tnt_cifar_patch8_32, checkpoint at step 1\n")
    assert all(p in out for p in images) and out.count(" 1. ") == len(images) and not err
    assert predict.main([f"--workdir={workdir}", *images, corrupt]) == 1
    out, err = capsys.readouterr()
    assert corrupt not in out and out.count(" 5. ") == len(images)
    assert err.startswith(f"error: cannot read {corrupt!r} as an image") and err.count("\n") == 1


def test_workdir_without_checkpoint_is_one_clear_error(tmp_path, images):
    write_config(make_config(), tmp_path)  # a run that has started but not saved yet
    proc = subprocess.run(
        [sys.executable, "-m", "nested_tnt_jax.predict", f"--workdir={tmp_path}", images[0]],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and not proc.stdout and "Traceback" not in proc.stderr
    # One paragraph (one line) with the error; whatever libraries log on import aside.
    (error,) = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert "has no complete checkpoint" in error
    with pytest.raises(errors.ConfigError, match="not a training run's workdir"):
        runs.load_run(str(tmp_path / "empty"))


def _image_files(directory) -> list[tuple[str, np.ndarray, int]]:
    """One file per mode and bit depth Pillow opens, each with the 8-bit RGB picture it holds
    and the largest per-pixel difference its encoding allows (lossy or rounding ones)."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (24, 20, 3), np.uint8)
    grey = np.asarray(Image.fromarray(rgb).convert("L"))
    grey_rgb = np.repeat(grey[..., None], 3, -1)
    palette = rng.integers(0, 256, (16, 3), np.uint8)
    index = rng.integers(0, 16, (24, 20)).astype(np.uint8)
    alpha = np.where(np.arange(20) < 10, 255, 0).astype(np.uint8)[None].repeat(24, 0)
    alpha[:4] = 128  # partly transparent rows
    bilevel = np.where(grey > 127, 255, 0).astype(np.uint8)
    transparent = np.where((index == 3)[..., None], 255, palette[index]).astype(np.uint8)

    def over_white(picture, a):
        a = a[..., None].astype(np.float64) / 255.0
        return np.round(picture * a + 255.0 * (1.0 - a)).astype(np.uint8)

    paletted = Image.fromarray(index, "P")
    paletted.putpalette(palette.ravel().tolist())
    cases = {  # file: (image, format, save options, the RGB picture it holds, tolerance)
        "rgb.png": (Image.fromarray(rgb), "PNG", {}, rgb, 0),
        "l.png": (Image.fromarray(grey), "PNG", {}, grey_rgb, 0),
        "i16.png": (Image.fromarray(grey.astype(np.uint16) * 257), "PNG", {}, grey_rgb, 0),
        "i16b.tif": (
            Image.frombytes("I;16B", grey.shape[::-1], (grey.astype(">u2") * 257).tobytes()),
            "TIFF",
            {},
            grey_rgb,
            0,
        ),
        "i16.pgm": (Image.fromarray(grey.astype(np.uint16) * 257), "PPM", {}, grey_rgb, 0),
        "i32.tif": (Image.fromarray(grey.astype(np.int32) * 257), "TIFF", {}, grey_rgb, 0),
        "f.tif": (Image.fromarray(grey.astype(np.float32) / 255), "TIFF", {}, grey_rgb, 0),
        "1.png": (
            Image.fromarray(bilevel).convert("1"),
            "PNG",
            {},
            np.repeat(bilevel[..., None], 3, -1),
            0,
        ),
        "p.png": (paletted, "PNG", {}, palette[index], 0),
        "p_transparent.png": (paletted, "PNG", {"transparency": 3}, transparent, 0),
        "p_transparent.gif": (paletted, "GIF", {"transparency": 3}, transparent, 0),
        "la.png": (
            Image.fromarray(np.stack([grey, alpha], -1), "LA"),
            "PNG",
            {},
            over_white(grey_rgb, alpha),
            1,
        ),
        "rgba.png": (
            Image.fromarray(np.concatenate([rgb, alpha[..., None]], -1), "RGBA"),
            "PNG",
            {},
            over_white(rgb, alpha),
            1,
        ),
        "cmyk.tif": (Image.fromarray(rgb).convert("CMYK"), "TIFF", {}, rgb, 0),
        "ycbcr.tif": (Image.fromarray(rgb).convert("YCbCr"), "TIFF", {}, rgb, 4),
        "rgb.jpg": (Image.fromarray(rgb), "JPEG", {"quality": 100, "subsampling": 0}, rgb, 8),
    }
    files = []
    for name, (image, fmt, options, expected, tolerance) in cases.items():
        path = os.path.join(directory, name)
        image.save(path, fmt, **options)
        files.append((path, expected, tolerance))
    # A photo stored sideways with an EXIF orientation tag (6: rotate 90 degrees clockwise).
    exif = Image.Exif()
    exif[0x0112] = 6
    path = os.path.join(directory, "rotated.png")
    Image.fromarray(rgb).transpose(Image.Transpose.ROTATE_90).save(path, exif=exif)
    files.append((path, rgb, 0))
    return files


def test_every_pillow_mode_and_bit_depth_becomes_the_same_model_input(run_dir, tmp_path):
    workdir, _, _ = run_dir
    run = runs.load_run(str(workdir))
    files = _image_files(tmp_path)
    modes = set()
    for path, expected, tolerance in files:
        with Image.open(path) as image:
            modes.add(image.mode)
        picture = runs.read_rgb(path)
        assert picture.dtype == np.uint8 and picture.shape == expected.shape, path
        diff = np.abs(picture.astype(int) - expected.astype(int))
        assert diff.max() <= tolerance, (path, diff.max())
    assert {"1", "L", "P", "LA", "RGB", "RGBA", "CMYK", "YCbCr", "I;16", "I;16B", "I", "F"} <= modes
    exact = [(p, e) for p, e, t in files if t == 0]
    views = np.stack([run.view(p) for p, _ in exact])
    originals = np.stack([eval_view(e, crop=run.crop, size=run.host_size) for _, e in exact])
    np.testing.assert_array_equal(run.inputs(views), run.inputs(originals))


def run_cli(module: str, *args: str, verbosity: str | None = None) -> subprocess.CompletedProcess:
    """`python -m nested_tnt_jax.<module> ARGS` as a user's shell runs it (no TensorFlow log
    level set)."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            f"nested_tnt_jax.{module}",
            *args,
            *([f"--verbosity={verbosity}"] if verbosity else []),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )


def warning_lines(stderr: str) -> list[str]:
    return [
        line
        for line in stderr.splitlines()
        if "warning" in line.lower() or re.match(r"W\d{4} ", line)
    ]


def test_cli_notes_a_far_smaller_image_and_shows_library_warnings_only_when_verbose(
    run_dir, images, tmp_path
):
    workdir, _, _ = run_dir
    tiny = tmp_path / "tiny.png"
    Image.new("RGB", (1, 1), (200, 30, 30)).save(tiny)
    small = tmp_path / "small.png"  # 20 px: above half the 32 px view, no note
    Image.new("RGB", (20, 24), (30, 200, 30)).save(small)
    quiet = run_cli("predict", f"--workdir={workdir}", str(tiny), images[0], str(small))
    assert quiet.returncode == 0, quiet.stderr
    assert not warning_lines(quiet.stderr), quiet.stderr
    blocks = dict(block.split("\n", 1) for block in quiet.stdout.strip().split("\n\n")[1:])
    assert blocks[str(tiny)].startswith(
        "  (note: the image is 1x1 px, far smaller than the 32x32 px the model sees; it was "
        "upscaled 32x"
    )
    assert "note:" not in blocks[images[0]] and "note:" not in blocks[str(small)]
    verbose = run_cli("predict", f"--workdir={workdir}", images[0], verbosity="1")
    assert verbose.returncode == 0
    shown = warning_lines(verbose.stderr)
    assert any("read only" in line or "read_only" in line for line in shown)
