"""TFDS ArrayRecord sources: the per-dataset defaults table and opening a split.

Datasets are read with `tfds.data_source` (random access over ArrayRecord files), which is
what grain needs for global shuffling, sharding by process and checkpointable iterators.
Opening a dataset that is not prepared must fail within seconds on a machine without
network, with a message that says where the files belong, instead of TFDS's download
retries.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import urllib.parse
from collections.abc import Sequence

import tensorflow_datasets as tfds

from nested_tnt_jax import extras, paths

# Host name look-up plus TCP connect; a machine without network answers at once, a
# firewalled one would hang, so the probe is bounded.
_NETWORK_PROBE_TIMEOUT_S = 3.0


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """Defaults for one dataset; configs take their dataset fields from here.

    `mean` and `std` are per channel, in units of [0, 1] pixel values (uint8 / 255).
    `crop` is the host crop for training: "pad" (pad-and-crop at native size, for CIFAR) or
    "random_resized" (Inception-style random resized crop, for varying-size images).
    """

    name: str
    num_classes: int
    train_split: str
    eval_split: str
    test_split: str
    crop: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def _cifar(
    name: str, num_classes: int, mean: tuple[float, float, float], std: tuple[float, float, float]
) -> DatasetInfo:
    """A CIFAR entry: the last 2% of train (1,000 images) held out for validation, pad crop."""
    return DatasetInfo(
        name=name,
        num_classes=num_classes,
        train_split="train[:98%]",
        eval_split="train[98%:]",
        test_split="test",
        crop="pad",
        mean=mean,
        std=std,
    )


DATASETS: dict[str, DatasetInfo] = {
    "cifar10": _cifar("cifar10", 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": _cifar("cifar100", 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "oxford_flowers102": DatasetInfo(
        name="oxford_flowers102",
        num_classes=102,
        train_split="train",
        eval_split="validation",
        test_split="test",
        crop="random_resized",
        mean=_IMAGENET_MEAN,
        std=_IMAGENET_STD,
    ),
}


def dataset_info(name: str) -> DatasetInfo:
    """Returns the defaults (classes, splits, crop, mean/std) of a supported dataset."""
    if name not in DATASETS:
        raise ValueError(
            f"Unknown dataset {name!r}. The input pipeline supports {sorted(DATASETS)}; set "
            "dataset.name to one of them."
        )
    return DATASETS[name]


def resolve_data_dir(data_dir: str | None) -> str:
    """The TFDS data_dir to use: the argument, else $TFDS_DATA_DIR, else TFDS's default."""
    if data_dir:
        return os.fspath(data_dir)
    return tfds.core.constants.get_default_data_dir()  # reads $TFDS_DATA_DIR now, not at import


def _host_reachable(url: str) -> bool:
    host = urllib.parse.urlparse(url).hostname
    if not host:
        return False
    try:
        with socket.create_connection((host, 443), timeout=_NETWORK_PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


def _prepare_or_raise(name: str, data_dir: str) -> None:
    """Prepares `name` in `data_dir` when that can succeed, else raises at once.

    TFDS would otherwise retry each download for minutes before failing. Preparing is
    attempted only when the source archives already sit in TFDS's manual_dir or the download
    host answers.
    """
    builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
    if paths.is_cloud(data_dir):
        raise FileNotFoundError(
            f"Dataset {name!r} is not prepared in data_dir {data_dir!r} (looked for "
            f"{builder.data_dir}; the bucket may also be missing or unreadable). Prepare it on "
            "a machine with TensorFlow (`pip install -e '.[tf]'`, then any training command "
            f"with a local data_dir), and copy the folder {name}/ into {data_dir} "
            f"(gcloud storage cp -r LOCAL_DATA_DIR/{name} {data_dir}/); or point "
            "dataset.data_dir (or $TFDS_DATA_DIR) at a directory that already holds it."
        )
    manual_dir = os.path.join(data_dir, "downloads", "manual")
    url_infos = builder.url_infos or {}
    archives: Sequence[str] = [
        info.filename or os.path.basename(url) for url, info in url_infos.items()
    ]
    have_archives = bool(archives) and all(
        os.path.exists(os.path.join(manual_dir, f)) for f in archives
    )
    urls = list(url_infos) or [builder.info.homepage]
    if have_archives or _host_reachable(urls[0]):
        builder.download_and_prepare(
            file_format="array_record",
            # From the sources: TFDS's GCS mirror check is one more network wait.
            download_config=tfds.download.DownloadConfig(
                manual_dir=manual_dir, try_download_gcs=False
            ),
        )
        return
    raise FileNotFoundError(
        f"Dataset {name!r} is not prepared in data_dir {data_dir!r} (looked for "
        f"{builder.data_dir}) and cannot be downloaded: {urls[0]} is unreachable. Either copy "
        f"a prepared ArrayRecord copy of {name} (the folder {name}/{builder.info.version}/ "
        f"with dataset_info.json, features.json and {name}-<split>.array_record-* files) "
        f"into {data_dir}, or place the source files {', '.join(archives) or '(see TFDS docs)'} "
        f"in {manual_dir} so TFDS can prepare it offline; or point dataset.data_dir (or "
        "$TFDS_DATA_DIR) at a directory that already holds it."
    )


def check_packages(name: str, data_dir: str | None) -> None:
    """ConfigError (naming the `[tf]` extra) when `name` is not prepared in `data_dir` and
    TensorFlow, which TFDS needs to prepare it, is not installed. Reads metadata only."""
    if extras.installed("tensorflow"):
        return
    data_dir = resolve_data_dir(data_dir)
    if tfds.builder(name, data_dir=data_dir, file_format="array_record").is_prepared():
        return
    extras.require(
        "tensorflow",
        f"Dataset {name!r} is not prepared in data_dir {data_dir!r}, and preparing it (TFDS's "
        "download_and_prepare)",
        f"point config.dataset.data_dir (or $TFDS_DATA_DIR) at a directory holding a prepared "
        f"ArrayRecord copy ({name}/<version>/ with dataset_info.json, features.json and the "
        f"{name}-<split>.array_record-* files); training itself needs no TensorFlow",
    )


def open_source(name: str, split: str, data_dir: str | None = None):
    """Opens a TFDS split as a random-access source, preparing the dataset if possible.

    `split` is any TFDS split string ("train[:98%]", "test", "validation[:10]", ...).
    Records are dicts of numpy values with at least `image` (uint8 HWC) and `label`.
    """
    dataset_info(name)
    data_dir = resolve_data_dir(data_dir)

    def load():
        return tfds.data_source(
            name,
            split=split,
            data_dir=data_dir,
            download=False,
            builder_kwargs={"file_format": "array_record"},
        )

    try:
        return load()
    except Exception:  # TFDS signals "not prepared" with several exception types.
        if tfds.builder(name, data_dir=data_dir, file_format="array_record").is_prepared():
            raise  # Prepared, so the split string or the files are at fault: TFDS says which.
    _prepare_or_raise(name, data_dir)
    return load()


def split_size(name: str, split: str, data_dir: str | None = None) -> int:
    """Number of examples in a split (for steps per epoch)."""
    return len(open_source(name, split, data_dir))
