"""Test session set-up: 8 simulated CPU devices, so sharded code runs as on an 8-chip host.

XLA reads the flag once, when the backend starts, so it is set here, before any test module
imports jax.
"""

import os

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
