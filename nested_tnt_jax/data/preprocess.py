"""On-device batch preprocessing, called inside the jitted train / eval step.

Hosts ship uint8 at the host size; the device does the float work (bicubic resize to the
model resolution, normalisation) and the batch-level augmentation that needs the whole
batch (mixup, cutmix) plus label smoothing, so host bandwidth and CPU stay small.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp


def _mix_with_reversed(x: jax.Array, lam: jax.Array) -> jax.Array:
    """lam * x + (1 - lam) * x reversed along the batch: each example is paired with another."""
    return lam * x + (1.0 - lam) * x[::-1]


def _cutmix_mask(rng: jax.Array, lam: jax.Array, size: int) -> tuple[jax.Array, jax.Array]:
    """A random box of area about (1 - lam) of the image; returns (keep mask, exact lam).

    The box is clipped at the border, so lam is recomputed from the pixels actually kept.
    """
    cut = size * jnp.sqrt(1.0 - lam)
    centre = jax.random.uniform(rng, (2,), minval=0.0, maxval=size)
    lo = jnp.clip(jnp.round(centre - cut / 2), 0, size)
    hi = jnp.clip(jnp.round(centre + cut / 2), 0, size)
    coords = jnp.arange(size)
    inside_y = (coords >= lo[0]) & (coords < hi[0])
    inside_x = (coords >= lo[1]) & (coords < hi[1])
    box = inside_y[:, None] & inside_x[None, :]
    keep = ~box
    return keep[None, :, :, None], jnp.mean(keep.astype(jnp.float32))


def preprocess(
    batch: Mapping[str, jax.Array],
    rng: jax.Array,
    *,
    train: bool,
    image_size: int,
    num_classes: int,
    mixup_alpha: float = 0.0,
    cutmix_alpha: float = 0.0,
    label_smoothing: float = 0.0,
    mean: Sequence[float],
    std: Sequence[float],
) -> tuple[jax.Array, jax.Array]:
    """uint8 host batch -> (float32 NHWC normalised images at `image_size`, soft targets).

    `mean`/`std` are per channel in [0, 1] pixel units (as in `dataset_info`). Targets are
    one-hot, smoothed by `label_smoothing`, and (train only) mixed: with mixup, images and
    targets are blended with the batch reversed using lam ~ Beta(mixup_alpha, mixup_alpha);
    with cutmix a box from the reversed batch is pasted in; with both, each batch uses one of
    the two with probability 1/2. Targets always sum to 1. Pure function of (batch, rng).
    """
    images = batch["image"].astype(jnp.float32) / 255.0
    if images.shape[1:3] != (image_size, image_size):
        images = jax.image.resize(
            images, (images.shape[0], image_size, image_size, images.shape[3]), "bicubic"
        )
    images = (images - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)

    targets = jax.nn.one_hot(batch["label"], num_classes, dtype=jnp.float32)
    targets = targets * (1.0 - label_smoothing) + label_smoothing / num_classes

    if not train or (mixup_alpha <= 0 and cutmix_alpha <= 0):
        return images, targets

    choice_rng, mixup_rng, cutmix_rng, box_rng = jax.random.split(rng, 4)

    def mixup(_):
        lam = jax.random.beta(mixup_rng, mixup_alpha, mixup_alpha)
        return _mix_with_reversed(images, lam), lam

    def cutmix(_):
        lam = jax.random.beta(cutmix_rng, cutmix_alpha, cutmix_alpha)
        keep, lam = _cutmix_mask(box_rng, lam, image_size)
        return jnp.where(keep, images, images[::-1]), lam

    if mixup_alpha > 0 and cutmix_alpha > 0:
        use_cutmix = jax.random.bernoulli(choice_rng, 0.5)
        images, lam = jax.lax.cond(use_cutmix, cutmix, mixup, None)
    elif cutmix_alpha > 0:
        images, lam = cutmix(None)
    else:
        images, lam = mixup(None)
    return images, _mix_with_reversed(targets, lam)
