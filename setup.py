"""Packaging for nested_tnt_jax.

TensorFlow is an extra rather than a hard dependency: Colab and TPU VM images ship their own
`tensorflow`, and pulling `tensorflow-cpu` beside it breaks them. clu's TensorBoard writer and
TFDS dataset preparation need one of the two; `[tf]` installs the CPU build for a bare machine.
"""

from setuptools import find_packages, setup

TF = ["tensorflow-cpu>=2.16", "tensorboard>=2.16"]

setup(
    name="nested_tnt_jax",
    version="0.1.0",
    description="JAX/Flax Nested-TNT: TNT with nested multi-head attention (arXiv 2404.13434).",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
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
        "test": TF + [
            "pytest>=8",
            "pytest-xdist>=3",
            "torch==2.14.1",
            "torchvision==0.29.1",
            "timm>=1.0.15",
            "safetensors>=0.4",
            "nbclient>=0.10",
            "ipykernel>=6",
            "nbformat>=5",
        ],
    },
)
