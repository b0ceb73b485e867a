"""Per-example host augmentation in numpy (crop, flip, resize to the host size).

These run in grain workers on uint8 images. Their only randomness is the
`np.random.Generator` grain derives from the seed and the record's position, so the same
seed gives the same crops in every run and after a resume. Batch-level work (normalise,
resize to the model resolution, mixup/cutmix) happens on device in `preprocess.py`.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from nested_tnt_jax.errors import ConfigError, check_range

# Inception-style random resized crop: area fraction and aspect-ratio range.
RRC_SCALE = (0.08, 1.0)
RRC_RATIO = (3.0 / 4.0, 4.0 / 3.0)
# Eval for varying-size images: resize the shorter side to size / 0.875, then centre crop.
EVAL_CROP_FRACTION = 0.875


def resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bicubic resize of a uint8 HWC image; returns the input when the size already matches."""
    if image.shape[0] == height and image.shape[1] == width:
        return image
    return np.asarray(
        Image.fromarray(image).resize((width, height), resample=Image.Resampling.BICUBIC)
    )


def shrink(image: np.ndarray, short_side: int) -> np.ndarray:
    """Bicubic downscale of a uint8 HWC image so that its shorter side is at most `short_side`
    (aspect ratio kept); a smaller image is returned as it is."""
    height, width = image.shape[:2]
    if min(height, width) <= short_side:
        return image
    scale = short_side / min(height, width)
    return resize(image, max(1, round(height * scale)), max(1, round(width * scale)))


def pad_and_crop(image: np.ndarray, rng: np.random.Generator, pad: int) -> np.ndarray:
    """Zero-pads by `pad` pixels per side and takes a random crop of the original size."""
    if pad <= 0:
        return image
    height, width = image.shape[:2]
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))
    top, left = rng.integers(0, 2 * pad + 1, size=2)
    return padded[top : top + height, left : left + width]


def random_resized_crop(image: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    """Crops a random area (8-100 %) and aspect ratio (3/4-4/3) and resizes it to `size`.

    Ten tries for a box that fits, as in Inception; then the largest centred box with an
    aspect ratio in range.
    """
    height, width = image.shape[:2]
    area = height * width
    log_ratio = (math.log(RRC_RATIO[0]), math.log(RRC_RATIO[1]))
    for _ in range(10):
        target_area = area * rng.uniform(*RRC_SCALE)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return resize(image[top : top + h, left : left + w], size, size)
    aspect = width / height
    if aspect < RRC_RATIO[0]:
        w, h = width, int(round(width / RRC_RATIO[0]))
    elif aspect > RRC_RATIO[1]:
        w, h = int(round(height * RRC_RATIO[1])), height
    else:
        w, h = width, height
    top, left = (height - h) // 2, (width - w) // 2
    return resize(image[top : top + h, left : left + w], size, size)


def resize_and_center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """Eval view of a varying-size image: shorter side to size / 0.875, centre `size` crop."""
    height, width = image.shape[:2]
    short = int(round(size / EVAL_CROP_FRACTION))
    scale = short / min(height, width)
    new_h = max(size, int(round(height * scale)))
    new_w = max(size, int(round(width * scale)))
    image = resize(image, new_h, new_w)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return image[top : top + size, left : left + size]


CROP_MODES = ("pad", "random_resized")


def check_config(augment) -> None:
    """Raises ConfigError (naming the field) for an `augment` config block out of range: the
    host crop and padding here, and the on-device mixup / cutmix / label smoothing."""

    if augment.crop not in CROP_MODES:
        raise ConfigError(
            f"config.augment.crop is {augment.crop!r}; use 'pad' (CIFAR pad-and-crop) or "
            "'random_resized' (random resized crop)."
        )
    check_range("augment.pad", augment.pad, low=0, integer=True, hint="pixels per side")
    check_range("augment.mixup_alpha", augment.mixup_alpha, low=0, hint="0 for no mixup")
    check_range("augment.cutmix_alpha", augment.cutmix_alpha, low=0, hint="0 for no cutmix")
    check_range(
        "augment.label_smoothing",
        augment.label_smoothing,
        low=0,
        high=1,
        high_open=True,
        hint="0 for none",
    )


def check_crop(crop: str) -> None:
    """Rejects an unknown crop mode when the pipeline is built, not inside a worker."""
    if crop not in CROP_MODES:
        raise ValueError(
            f"Unknown crop mode {crop!r}: set augment.crop to 'pad' (CIFAR pad-and-crop) or "
            "'random_resized' (random resized crop, for images of varying size)."
        )


def train_view(
    image: np.ndarray,
    rng: np.random.Generator,
    *,
    crop: str,
    pad: int,
    flip: bool,
    size: int,
) -> np.ndarray:
    """The training view of one image at the host size `size`.

    crop="pad": pad-and-crop at native resolution, then resize to `size` (no-op for CIFAR at
    32); crop="random_resized": random resized crop straight to `size`.
    """
    if crop == "pad":
        image = resize(pad_and_crop(image, rng, pad), size, size)
    else:
        image = random_resized_crop(image, rng, size)
    if flip and rng.random() < 0.5:
        image = image[:, ::-1]
    return np.ascontiguousarray(image)


def eval_view(image: np.ndarray, *, crop: str, size: int) -> np.ndarray:
    """The eval view: plain resize for fixed-size data ("pad"), else resize + centre crop."""
    if crop == "pad":
        return resize(image, size, size)
    return np.ascontiguousarray(resize_and_center_crop(image, size))
