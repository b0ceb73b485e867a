"""Classify image files with a trained run: `python -m nested_tnt_jax.predict --workdir=DIR IMG...`.

A run's workdir holds everything needed: the orbax checkpoints (`checkpointing`) and the config
it ran with, `config.json` (`metrics.write_config_file`; runs from before it have only the
TensorBoard hparams of `metrics.Reporter.write_config`, which are read instead). The config
gives the model (name and overrides), its resolution and the dataset (class count, mean/std,
host crop), so an image is seen exactly as the run's eval pipeline sees it: host `eval_view`,
then on-device `data.preprocess(train=False)`.

Every file is tried on its own: an unreadable or non-image file yields an error for that file
and the others are still classified; the CLI exits non-zero when any file failed.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import glob
import json
import os
import struct
import sys
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from PIL import Image

from nested_tnt_jax import checkpointing, data, metrics, models
from nested_tnt_jax.data.augment import eval_view

TOP_K = 5
_HPARAMS_PLUGIN = "hparams"


class RunError(Exception):
    """A workdir that cannot be used for inference; the message says what to change."""


def _tfrecords(path: str):
    """The records of a TFRecord file (TensorBoard's event format), without TensorFlow.

    Layout per record: uint64 length, uint32 masked CRC, payload, uint32 masked CRC. The CRCs
    are not checked: a torn last record (a run killed mid-write) is simply skipped.
    """
    with open(path, "rb") as f:
        while True:
            header = f.read(12)
            if len(header) < 12:
                return
            (length,) = struct.unpack("<Q", header[:8])
            payload = f.read(length)
            if len(payload) < length or len(f.read(4)) < 4:
                return
            yield payload


def read_run_config(workdir: str) -> dict[str, Any]:
    """The flat config (`"model.name"`, `"model.overrides.depth"`, ...) a run recorded.

    From `config.json` when the run wrote one, else from the TensorBoard hparams of older
    runs. Empty when the workdir holds no recorded config.
    """
    path = os.path.join(workdir, metrics.CONFIG_FILE)
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            return _flatten(json.load(f))
    return _read_hparams(workdir)


def _flatten(nested: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"model": {"name": x}} -> {"model.name": x}."""
    flat = {}
    for key, value in nested.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _read_hparams(workdir: str) -> dict[str, Any]:
    """The flat config of `metrics.Reporter.write_config`'s TensorBoard hparams in the
    workdir's event files; numbers come back as floats and None as the string "None"."""
    from tensorboard.compat.proto import event_pb2  # noqa: PLC0415 (protobuf only, no TF)
    from tensorboard.plugins.hparams import plugin_data_pb2  # noqa: PLC0415

    config: dict[str, Any] = {}
    for path in sorted(glob.glob(os.path.join(workdir, "events.out.tfevents.*"))):
        for record in _tfrecords(path):
            event = event_pb2.Event.FromString(record)
            for value in event.summary.value:
                plugin = value.metadata.plugin_data
                if plugin.plugin_name != _HPARAMS_PLUGIN:
                    continue
                content = plugin_data_pb2.HParamsPluginData.FromString(plugin.content)
                if content.HasField("session_start_info"):
                    for key, v in content.session_start_info.hparams.items():
                        config[key] = getattr(v, v.WhichOneof("kind"))
    return config


def model_overrides(name: str, flat: dict[str, Any]) -> dict[str, Any]:
    """`model.overrides.*` of a recorded config, each cast back to its module field's type."""
    cls, _ = models.model_config(name)
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    prefix = "model.overrides."
    overrides = {}
    for key, value in flat.items():
        if not key.startswith(prefix):
            continue
        field = key[len(prefix):]
        default = defaults.get(field)
        if isinstance(default, (bool, int, float)) and isinstance(value, (int, float)):
            value = type(default)(value)
        overrides[field] = value
    return overrides


def label_names(dataset: str, data_dir: str | None, num_classes: int) -> list[str]:
    """The dataset's class names from its TFDS metadata, else "0", "1", ... (never downloads).

    `tfds.builder` reads the prepared dataset's info from `data_dir`, or the builder code's
    own class list; any failure (unknown builder, broken files) falls back to indices.
    """
    try:
        import tensorflow_datasets as tfds  # noqa: PLC0415 (slow import, only needed here)

        builder = tfds.builder(dataset, data_dir=data.resolve_data_dir(data_dir))
        names = list(builder.info.features["label"].names)
    except Exception:  # noqa: BLE001 (metadata is a nicety; indices always work)
        names = []
    return names if len(names) == num_classes else [str(i) for i in range(num_classes)]


@dataclasses.dataclass(frozen=True)
class Run:
    """A trained run ready for inference: its model, params and how it sees an image."""

    model: nn.Module
    params: Any
    info: data.DatasetInfo
    labels: list[str]
    image_size: int  # model resolution
    host_size: int  # size of the host eval view (upsampled on device to image_size)
    crop: str  # the run's augment.crop; selects the eval view


def load_run(workdir: str) -> Run:
    """Model, latest-checkpoint params and preprocessing of the run in `workdir`.

    Raises RunError (one paragraph) when the workdir has no recorded config or no checkpoint.
    """
    flat = read_run_config(workdir) if os.path.isdir(workdir) else {}
    if "model.name" not in flat:
        raise RunError(
            f"{workdir!r} is not a training run's workdir: it holds no recorded config "
            f"({metrics.CONFIG_FILE}, or TensorBoard events with the run's hparams). Pass "
            "--workdir=DIR with the directory given to `python -m nested_tnt_jax.main "
            "--workdir=DIR` for a run that has started.")
    try:
        params = checkpointing.load_run_params(workdir)
    except FileNotFoundError:
        raise RunError(
            f"The run in {workdir!r} has no complete checkpoint yet (nothing under "
            f"{os.path.join(workdir, checkpointing.CHECKPOINT_DIR)}). Wait until the run saves "
            "one (every config.checkpoint_every_steps steps, and at the end), or point "
            "--workdir at a finished run.") from None
    except checkpointing.CheckpointError as e:
        raise RunError(str(e)) from None
    info = data.dataset_info(flat["dataset.name"])
    image_size = int(flat["image_size"])
    model = models.create_model(flat["model.name"], num_classes=info.num_classes,
                                img_size=image_size, **model_overrides(flat["model.name"], flat))
    data_dir = flat.get("dataset.data_dir")
    return Run(
        model=model, params=params, info=info,
        labels=label_names(info.name, None if data_dir in (None, "None", "") else data_dir,
                           info.num_classes),
        image_size=image_size,
        host_size=int(flat.get("input.host_image_size") or 0) or image_size,
        crop=flat.get("augment.crop", info.crop),
    )


def load_image(path: str, run: Run) -> np.ndarray:
    """The run's host eval view of the image file `path`: uint8 (host_size, host_size, 3).

    Raises ValueError naming the file when it cannot be read as an image.
    """
    try:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f"cannot read {path!r} as an image ({e})") from None
    return eval_view(pixels, crop=run.crop, size=run.host_size)


def model_inputs(images: np.ndarray, run: Run) -> jax.Array:
    """uint8 host views (B, h, w, 3) -> the normalised float images the model takes."""
    batch = {"image": images, "label": np.zeros(len(images), np.int32)}
    inputs, _ = data.preprocess(
        batch, jax.random.PRNGKey(0), train=False, image_size=run.image_size,
        num_classes=run.info.num_classes, mean=run.info.mean, std=run.info.std)
    return inputs


@functools.partial(jax.jit, static_argnames="model")
def probabilities(model: nn.Module, params: Any, inputs: jax.Array) -> jax.Array:
    """Eval-mode class probabilities; compiled once per (model, batch shape) per process."""
    return jax.nn.softmax(model.apply({"params": params}, inputs, train=False), axis=-1)


@dataclasses.dataclass(frozen=True)
class Prediction:
    """One file's result: `top` is (label, probability) most likely first, or `error` is set."""

    path: str
    top: list[tuple[str, float]]
    error: str | None = None


def classify(run: Run, paths: Sequence[str], top_k: int = TOP_K) -> list[Prediction]:
    """Top-`top_k` predictions for each file, in order; bad files get an error entry."""
    views, errors = {}, {}
    for i, path in enumerate(paths):
        try:
            views[i] = load_image(path, run)
        except ValueError as e:
            errors[i] = str(e)
    probs = np.zeros((0, run.info.num_classes), np.float32)
    if views:
        inputs = model_inputs(np.stack(list(views.values())), run)
        probs = np.asarray(probabilities(run.model, run.params, inputs))
    rows = dict(zip(views, probs))
    k = min(top_k, run.info.num_classes)
    results = []
    for i, path in enumerate(paths):
        if i in errors:
            results.append(Prediction(path, [], errors[i]))
            continue
        order = np.argsort(-rows[i], kind="stable")[:k]
        results.append(Prediction(path, [(run.labels[c], float(rows[i][c])) for c in order]))
    return results


def predict(workdir: str, paths: Sequence[str], top_k: int = TOP_K) -> list[Prediction]:
    """Top-`top_k` (label, probability) for each image file with the run in `workdir`."""
    return classify(load_run(workdir), paths, top_k)


def format_prediction(prediction: Prediction) -> str:
    """One block of text per file: its path, then ranked labels or an error line."""
    if prediction.error is not None:
        return f"{prediction.path}\n  error: {prediction.error}"
    width = max(len(label) for label, _ in prediction.top)
    lines = [f"  {rank}. {label:<{width}}  {p:.4f}"
             for rank, (label, p) in enumerate(prediction.top, start=1)]
    return "\n".join([prediction.path, *lines])


def main(argv: Sequence[str] | None = None) -> int:
    """CLI; returns 0 when every file was classified, 1 when any failed, 2 for a bad workdir."""
    parser = argparse.ArgumentParser(
        prog="python -m nested_tnt_jax.predict",
        description="Top-5 classes of image files with a trained run's latest checkpoint.")
    parser.add_argument("--workdir", required=True, help="the training run's workdir")
    parser.add_argument("--top_k", type=int, default=TOP_K)
    parser.add_argument("images", nargs="+", help="image files (any format PIL reads)")
    args = parser.parse_args(argv)
    try:
        run = load_run(args.workdir)
    except RunError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    results = classify(run, args.images, args.top_k)
    print("\n\n".join(format_prediction(r) for r in results))
    return 1 if any(r.error is not None for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
