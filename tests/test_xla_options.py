"""The XLA options of the training and evaluation steps: what they change, and when they step
aside."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nested_tnt_jax import xla_options


@pytest.fixture(autouse=True)
def fresh_cache():
    xla_options.step_compiler_options.cache_clear()
    yield
    xla_options.step_compiler_options.cache_clear()


def _layer_norm_grad(x):
    norm = nn.LayerNorm(epsilon=1e-5)
    params = norm.init(jax.random.key(0), x)
    return jax.grad(lambda x: jnp.sum(norm.apply(params, x) * jnp.cos(x)))


def test_cpu_steps_keep_reductions_out_of_ynnpack():
    options = xla_options.step_compiler_options()
    assert options == xla_options.CPU_OPTIONS  # this project's jaxlib takes the option
    x = jax.random.normal(jax.random.key(1), (512, 16, 16))
    grad = _layer_norm_grad(x)
    default = jax.jit(grad).lower(x).compile()
    ours = jax.jit(grad, compiler_options=options).lower(x).compile()
    # The LayerNorm's reductions (forward statistics, backward sums) leave YNNPACK's fusions.
    assert ours.as_text().count("__ynn_fusion") < default.as_text().count("__ynn_fusion")
    np.testing.assert_allclose(ours(x), default(x), rtol=1e-5, atol=1e-6)


def test_options_step_aside_when_xla_flags_set_them(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", f"--{xla_options.YNN_FUSION_TYPES}=-reduce")
    assert xla_options.step_compiler_options() == {}


def test_an_option_this_jaxlib_rejects_is_dropped_not_fatal(monkeypatch):
    monkeypatch.setattr(xla_options, "CPU_OPTIONS", {xla_options.YNN_FUSION_TYPES: "NO_SUCH_TYPE"})
    assert xla_options.step_compiler_options() == {}
