"""Test session set-up: 8 simulated CPU devices, so sharded code runs as on an 8-chip host;
the test tiers; the shared CIFAR-10.

XLA reads the flag once, when the backend starts, so it is set here, before any test module
imports jax.

Tiers: the modules in INTEGRATION_MODULES train end to end (through the CLI, in subprocesses,
in a notebook, on several processes) or read the real CIFAR-10; every other test is marked
`unit`, the fast tier (`pytest -m unit`). `slow` marks the long real-data runs, left out unless
asked for (`pytest -m slow`).
"""

import os
import pathlib

import pytest
import shared_data

os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""), "--xla_force_host_platform_device_count=8"]
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# TensorFlow (pulled in by TFDS and clu) must not grab threads or print banners during tests.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# Triton (loaded by torch when timm is imported) segfaults if it loads after TensorFlow (pulled
# in by TFDS and clu) in the same process, as it does when xdist collects every test module in
# one worker. Loaded first, both work.
try:
    import triton  # noqa: F401
except ImportError:
    pass


# Test modules (file stems) left out of the `unit` tier.
INTEGRATION_MODULES = frozenset(
    {
        "test_cifar10_cpu_run",  # the README's quick start through the CLI, real data
        "test_cpu_variants",  # trains each `cpu` config end to end
        "test_data_cifar10",  # the real CIFAR-10 test split on 8 devices
        "test_extras",  # the CLI in subprocesses without optional packages
        "test_faults",  # kills and broken files through the CLI in subprocesses
        "test_gcs",  # gs:// runs against the Cloud Storage emulator, network namespace
        "test_multiprocess",  # 2 processes x 4 devices
        "test_notebook",  # the quick-start notebook, headless
        "test_real_data",  # a short training run on the real CIFAR-10
        "test_rehearse_device_check",  # the whole device check, offline
        "test_run_guards",  # workdir guards through the CLI in subprocesses
        "test_tpu_scripts",  # experiments/tpu/ on a simulated pod, Cloud Storage emulator
        "test_train",  # end-to-end training of every config on mock data
    }
)


def pytest_collection_modifyitems(config, items):
    """Marks every test outside INTEGRATION_MODULES `unit`."""
    for item in items:
        if pathlib.Path(str(item.fspath)).stem not in INTEGRATION_MODULES:
            item.add_marker(pytest.mark.unit)


@pytest.fixture(scope="session")
def shared_tfds() -> pathlib.Path:
    """The shared, read-only CIFAR-10 TFDS data_dir (tests/shared_data.py); the test is
    skipped when it is absent."""
    path = shared_data.shared_tfds()
    if not (path / "cifar10").is_dir():
        pytest.skip(
            f"needs the shared CIFAR-10 as a TFDS data_dir at {path} "
            f"(../shared/tfds beside the repository, or ${shared_data.ENV})"
        )
    return path


# The CLI tests' shared pieces (tests/cli_runs.py): imported when first used, after the
# environment above is set.
@pytest.fixture(scope="module")
def reference(shared_tfds, tmp_path_factory):
    """The uninterrupted run of the CLI test config, made once per session."""
    import cli_runs

    return cli_runs.reference_run(tmp_path_factory)


@pytest.fixture(scope="module")
def env(shared_tfds, tmp_path_factory):
    """The CLI subprocesses' environment; the runs read the shared CIFAR-10."""
    import cli_runs

    return cli_runs.environment(tmp_path_factory)
