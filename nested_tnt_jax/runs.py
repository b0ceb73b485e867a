"""A finished (or saved) training run read back: its config, checkpoint, labels and eval view.

A run's workdir holds what inference needs: the config it ran with (`config.json`, written by
`metrics.write_config_file`) and its orbax checkpoints (`checkpointing`). `load_run` rebuilds
the model from the config (name, overrides, resolution, dataset), restores the newest complete
checkpoint and names the classes from the dataset's TFDS metadata. `Run.view` and
`Run.inputs` show an image file to the model exactly as the run's evaluation shows a test
image: the host `eval_view`, then on-device `data.preprocess(train=False)`.

`read_rgb` turns any image Pillow opens into the 8-bit RGB picture it shows, whatever the
file's mode and bit depth (Pillow's own `convert("RGB")` clips 16-bit and float samples to
white). Used by `predict` and `visualize`. What cannot be used (a workdir without config or
checkpoint, a file that is not an image) is an `errors.ConfigError`, one paragraph saying what
to pass instead.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from PIL import Image, ImageOps

from nested_tnt_jax import checkpointing, data, metrics, models, paths
from nested_tnt_jax.data.augment import eval_view
from nested_tnt_jax.errors import ConfigError
from nested_tnt_jax.models import nesting


def read_config(workdir: str) -> dict[str, Any]:
    """The flat config (`"model.name"`, `"model.overrides.depth"`, ...) of the run in
    `workdir`, from its `config.json`, with the nesting switches of older runs under today's
    names (`nesting.from_legacy`). Raises ConfigError when there is none."""
    path = paths.resolve(workdir) / metrics.CONFIG_FILE
    try:
        return nesting.from_legacy(flatten(json.loads(path.read_text(encoding="utf-8"))))
    except (OSError, ValueError) as e:
        raise ConfigError(
            f"{workdir!r} is not a training run's workdir: {path} cannot be read ({e}). Pass "
            "--workdir=DIR with the directory given to `python -m nested_tnt_jax.main "
            "--workdir=DIR` for a run that has started."
        ) from None


def flatten(nested: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"model": {"name": x}} -> {"model.name": x}."""
    flat = {}
    for key, value in nested.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def model_overrides(name: str, flat: Mapping[str, Any]) -> dict[str, Any]:
    """`model.overrides.*` of a recorded config, each cast back to its module field's type
    (JSON keeps 0.0 as 0)."""
    cls, _ = models.model_config(name)
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    prefix = "model.overrides."
    overrides = {}
    for key, value in flat.items():
        if not key.startswith(prefix):
            continue
        field = key[len(prefix) :]
        default = defaults.get(field)
        if isinstance(default, (bool, int, float)) and isinstance(value, (int, float)):
            value = type(default)(value)
        overrides[field] = value
    return overrides


def model_nesting(flat: Mapping[str, Any]) -> dict[str, Any]:
    """`model.nesting.*` of a recorded config, each cast back to its `Nesting` field's type."""
    prefix = "model.nesting."
    kinds = {f: type(v) for f, v in models.Nesting().to_dict().items()}
    return {
        key[len(prefix) :]: kinds[key[len(prefix) :]](value)
        for key, value in flat.items()
        if key.startswith(prefix) and key[len(prefix) :] in kinds
    }


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


# Nominal full scale of the samples of Pillow's wide modes. Pillow opens 16-bit PNG and TIFF
# as "I;16*" and 16-bit PGM as "I", so "I" is read as 16-bit too; float ("F") images hold
# intensities in [0, 1], the convention of float TIFFs.
_FULL_SCALE = {
    "I;16": 65535.0,
    "I;16B": 65535.0,
    "I;16L": 65535.0,
    "I;16N": 65535.0,
    "I": 65535.0,
    "F": 1.0,
}
# What a transparent pixel shows: a white page.
_BACKGROUND = (255, 255, 255)


def to_rgb(image: Image.Image) -> np.ndarray:
    """The picture a Pillow image shows, as uint8 (height, width, 3) RGB.

    The EXIF orientation is applied; 16-bit and float samples are scaled from their full range
    (`_FULL_SCALE`) to 8 bits; transparent pixels (an alpha channel, or a palette or colour key
    marked transparent) are composited over white; every other mode (1, L, P, CMYK, YCbCr,
    LAB, ...) is converted by Pillow.
    """
    image = ImageOps.exif_transpose(image)
    if image.mode in _FULL_SCALE:
        samples = np.asarray(image, np.float64) / _FULL_SCALE[image.mode]
        grey = np.round(np.clip(samples, 0.0, 1.0) * 255.0).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        page = Image.new("RGBA", rgba.size, _BACKGROUND + (255,))
        return np.asarray(Image.alpha_composite(page, rgba).convert("RGB"))
    return np.asarray(image.convert("RGB"))


def read_rgb(path: str) -> np.ndarray:
    """The image file `path` as uint8 (height, width, 3) RGB (`to_rgb`); its first frame if it
    has several. Raises ConfigError naming the file when Pillow cannot read it as an image."""
    try:
        with Image.open(path) as image:
            return to_rgb(image)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise ConfigError(f"cannot read {path!r} as an image ({e})") from None


@dataclasses.dataclass(frozen=True)
class Run:
    """A saved run ready for inference: its model, params and how it sees an image."""

    workdir: str
    step: int  # the checkpoint the params come from
    model_name: str  # registry name
    model: nn.Module
    params: Any
    info: data.DatasetInfo
    labels: list[str]
    image_size: int  # model resolution
    host_size: int  # size of the host eval view (upsampled on device to image_size)
    crop: str  # the run's augment.crop; selects the eval view

    def view(self, path: str) -> np.ndarray:
        """The host eval view of the image file `path`: uint8 (host_size, host_size, 3)."""
        return self.view_of(read_rgb(path))

    def view_of(self, image: np.ndarray) -> np.ndarray:
        """The host eval view of a uint8 (height, width, 3) RGB picture (`read_rgb`)."""
        return eval_view(image, crop=self.crop, size=self.host_size)

    def inputs(self, views: np.ndarray) -> jax.Array:
        """uint8 host views (B, h, w, 3) -> the normalised float images the model takes."""
        batch = {"image": views, "label": np.zeros(len(views), np.int32)}
        inputs, _ = data.preprocess(
            batch,
            jax.random.PRNGKey(0),
            train=False,
            image_size=self.image_size,
            num_classes=self.info.num_classes,
            mean=self.info.mean,
            std=self.info.std,
        )
        return inputs

    def picture(self, inputs: jax.Array) -> np.ndarray:
        """Model inputs (B, H, W, 3) back in [0, 1] RGB: what the model sees, for display."""
        rgb = np.asarray(inputs) * np.asarray(self.info.std) + np.asarray(self.info.mean)
        return np.clip(rgb, 0.0, 1.0)


def load_run(workdir: str) -> Run:
    """Model, newest-checkpoint params and eval view of the run in `workdir`.

    Raises ConfigError (one paragraph) when the workdir has no recorded config or no
    checkpoint, CheckpointError when its newest checkpoint cannot be read.
    """
    flat = read_config(workdir)
    if not checkpointing.complete_steps(workdir):
        raise ConfigError(
            f"The run in {workdir!r} has no complete checkpoint yet (nothing under "
            f"{os.path.join(workdir, checkpointing.CHECKPOINT_DIR)}). Wait until the run "
            "saves one (every config.checkpoint_every_steps steps, and at the end), or point "
            "--workdir at a finished run."
        )
    params, step = checkpointing.read_params(workdir)
    try:
        info = data.dataset_info(flat["dataset.name"])
        image_size = int(flat["image_size"])
        model = models.create_model(
            flat["model.name"],
            num_classes=info.num_classes,
            img_size=image_size,
            nesting=model_nesting(flat),
            **model_overrides(flat["model.name"], flat),
        )
    except (KeyError, ValueError, TypeError) as e:
        raise ConfigError(
            f"The config.json of {workdir!r} does not describe a model this program can build "
            f"({e}). It was written by another version of nested_tnt_jax, or edited; use a "
            "run trained with this version."
        ) from None
    data_dir = flat.get("dataset.data_dir")
    return Run(
        workdir=workdir,
        step=step,
        model_name=flat["model.name"],
        model=model,
        params=params,
        info=info,
        labels=label_names(info.name, data_dir or None, info.num_classes),
        image_size=image_size,
        host_size=int(flat.get("input.host_image_size") or 0) or image_size,
        crop=flat.get("augment.crop", info.crop),
    )
