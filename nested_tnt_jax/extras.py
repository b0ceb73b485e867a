"""Optional packages: whether one is installed, and the refusal that names what to install.

`pip install -e .` trains, evaluates and reads runs without TensorFlow or torch. A few paths
need more, and each is checked with the config, before anything is read or written (see
`train.check_packages`), rather than failing with an import error midway:
  * TensorFlow, to prepare a TFDS dataset that is not prepared yet (TFDS's
    `download_and_prepare`): the `[tf]` extra, or the `tensorflow` Colab and TPU VM images
    ship;
  * torch (PyTorch files) or safetensors, to fine-tune from a timm checkpoint file;
  * gcsfs (which brings google-cloud-storage), for a `gs://` workdir, data_dir or init_from:
    the `[gcs]` extra.
"""

from __future__ import annotations

import importlib.util

from nested_tnt_jax.errors import ConfigError

# What brings each optional module: the pip argument a user runs.
INSTALL = {
    "tensorflow": "pip install -e '.[tf]' (or use an image that ships tensorflow, as Colab and "
    "TPU VMs do)",
    "torch": "pip install torch",
    "safetensors": "pip install safetensors",
    "gcsfs": "pip install -e '.[gcs]'",
}


def installed(module: str) -> bool:
    """Whether `module` can be imported, without importing it (TensorFlow takes seconds)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # A parent package missing, or a module set to None.
        return False


def require(module: str, needed_for: str, otherwise: str = "") -> None:
    """Raises ConfigError (one paragraph, exit code 2) when `module` is not installed:
    `needed_for` says what needs it, `otherwise` a way to do without it."""
    if not installed(module):
        raise ConfigError(
            f"{needed_for} needs {module}, which is not installed. Install it with "
            f"{INSTALL[module]}"
            + (f"; or {otherwise}." if otherwise else ".")
            + " Nothing was written."
        )
