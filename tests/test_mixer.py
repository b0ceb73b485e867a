"""The head mixer: its parameters, and each form against autodiff of the reference formula."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nested_tnt_jax import ops
from nested_tnt_jax.models.attention import LogitMixer
from nested_tnt_jax.ops import mixer
from nested_tnt_jax.ops.mixer import mix_heads


def _layers(heads: int, hidden: int, dtype=jnp.float32):
    keys = jax.random.split(jax.random.key(5), 6)
    widths = (heads, hidden, hidden, heads)
    return tuple(
        (
            jax.random.normal(keys[2 * i], (a, b)).astype(dtype) / np.sqrt(a),
            jax.random.normal(keys[2 * i + 1], (b,)).astype(dtype),
        )
        for i, (a, b) in enumerate(zip(widths, widths[1:]))
    )


def _value_and_grads(fn, layers, z, cotangent):
    out, vjp = jax.vjp(fn, layers, z)
    return out, vjp(cotangent)


def _assert_close(got, want, rtol, atol_of_max):
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        assert g.shape == w.shape
        np.testing.assert_allclose(
            np.asarray(g, np.float32),
            np.asarray(w, np.float32),
            rtol=rtol,
            atol=atol_of_max * float(jnp.abs(w.astype(jnp.float32)).max()),
        )


def test_mixer_is_an_mlp_over_heads_with_xavier_init():
    heads, ratio = 6, 4
    module = LogitMixer(heads, ratio)
    z = jax.random.normal(jax.random.key(0), (heads, 2, 7, 7))
    params = module.init(jax.random.key(1), z)["params"]
    shapes = {k: (v["kernel"].shape, v["bias"].shape) for k, v in params.items()}
    h = heads * ratio
    assert shapes == {
        "fc1": ((heads, h), (h,)),
        "fc2": ((h, h), (h,)),
        "fc3": ((h, heads), (heads,)),
    }
    for layer in params.values():
        fan_in, fan_out = layer["kernel"].shape
        bound = np.sqrt(6.0 / (fan_in + fan_out)) / np.sqrt(2.0)
        assert float(jnp.abs(layer["kernel"]).max()) <= bound
        assert float(jnp.abs(layer["kernel"]).max()) > 0.8 * bound
        assert not np.any(layer["bias"])
    # Position-wise over (query, key): permuting keys permutes the output the same way.
    perm = np.array([3, 1, 0, 6, 2, 5, 4])
    out = module.apply({"params": params}, z)
    np.testing.assert_allclose(
        module.apply({"params": params}, z[..., perm]), out[..., perm], atol=1e-5
    )


def test_the_form_is_chosen_per_backend():
    assert ops.mixer_form(16, "cpu") == ("blocked", ops.CPU_BLOCK_ELEMENTS // 16)
    assert ops.mixer_form(16, "gpu") == ops.mixer_form(16, "tpu") == ("fused", 0)
    assert ops.mixer_form(24) == ops.mixer_form(24, "cpu")  # these tests run on CPU
    with pytest.raises(ValueError, match="Unknown mixer form 'pallas'"):
        mix_heads(_layers(2, 8), jnp.zeros((2, 4)), "pallas")


@pytest.mark.parametrize(
    "heads, hidden, n", [(3, 12, 1001), (5, 15, 37), (4, 16, 4096), (6, 24, 1)]
)
def test_fused_form_matches_autodiff_of_the_reference_in_float32(heads, hidden, n):
    """Values, the input gradient and every parameter gradient, at odd head counts, hidden
    widths and column counts."""
    layers = _layers(heads, hidden)
    z = jax.random.normal(jax.random.key(6), (heads, n)) * 3.0  # both LeakyReLU branches
    cotangent = jax.random.normal(jax.random.key(7), (heads, n))
    want = jax.jit(lambda *a: _value_and_grads(mixer.reference, *a))(layers, z, cotangent)
    got = jax.jit(lambda *a: _value_and_grads(mixer.fused, *a))(layers, z, cotangent)
    _assert_close(got, want, rtol=1e-5, atol_of_max=1e-5)


def test_fused_form_runs_elementwise_with_products_only_over_the_columns():
    """The forward and the input gradient have no matrix products (the contraction over heads
    is unrolled); the backward's only products are the parameter gradients, contracted over
    the n columns."""
    heads, hidden, n = 3, 12, 250
    layers = _layers(heads, hidden)
    z, cotangent = jnp.ones((heads, n)), jnp.ones((heads, n))

    def products(jaxpr):
        return [e for e in jaxpr.eqns if e.primitive.name == "dot_general"]

    assert not products(jax.make_jaxpr(mixer.fused)(layers, z).jaxpr)
    backward = jax.make_jaxpr(lambda *a: _value_and_grads(mixer.fused, *a)[1])(layers, z, cotangent)
    dots = products(backward.jaxpr)
    assert len(dots) == len(layers)
    for eqn in dots:
        (lhs_contract, rhs_contract), _ = eqn.params["dimension_numbers"]
        assert [eqn.invars[0].aval.shape[i] for i in lhs_contract] == [n]
        assert [eqn.invars[1].aval.shape[i] for i in rhs_contract] == [n]


def test_fused_form_in_bfloat16_tracks_float32_autodiff():
    heads, hidden, n = 4, 16, 3001
    layers32 = _layers(heads, hidden)
    layers16 = jax.tree.map(lambda p: p.astype(jnp.bfloat16), layers32)
    z = jax.random.normal(jax.random.key(6), (heads, n)) * 3.0
    cotangent = jax.random.normal(jax.random.key(7), (heads, n))
    got = jax.jit(lambda *a: _value_and_grads(mixer.fused, *a))(
        layers16, z.astype(jnp.bfloat16), cotangent.astype(jnp.bfloat16)
    )
    assert all(leaf.dtype == jnp.bfloat16 for leaf in jax.tree.leaves(got))
    # The reference on the same bfloat16-rounded parameters and inputs, in float32.
    rounded = jax.tree.map(lambda p: p.astype(jnp.float32), layers16)
    want = jax.jit(lambda *a: _value_and_grads(mixer.reference, *a))(
        rounded,
        z.astype(jnp.bfloat16).astype(jnp.float32),
        cotangent.astype(jnp.bfloat16).astype(jnp.float32),
    )
    _assert_close(got, want, rtol=0.02, atol_of_max=0.01)


def test_logit_mixer_forms_share_parameters_and_values():
    heads, ratio = 3, 3
    z = jax.random.normal(jax.random.key(0), (heads, 2, 5, 7)) * 3.0
    params = LogitMixer(heads, ratio).init(jax.random.key(1), z)["params"]
    cotangent = jax.random.normal(jax.random.key(2), z.shape)

    def value_and_grads(form):
        module = LogitMixer(heads, ratio, form=form)
        out, vjp = jax.vjp(lambda p, z: module.apply({"params": p}, z), params, z)
        return out, vjp(cotangent)

    want = value_and_grads("reference")
    for form in ("fused", "blocked", "auto"):
        _assert_close(value_and_grads(form), want, rtol=1e-5, atol_of_max=1e-5)


@pytest.mark.parametrize("n, block", [(1200, 300), (1001, 250), (1000, 600)])
def test_blocked_form_matches_the_reference_values_and_gradients(n, block):
    """The CPU form (column blocks, hand-written backward) against plain autodiff, including
    a width that needs zero padding (1001) and one too small to block (1000 < 2 * 600)."""
    heads, hidden = 3, 12
    layers = _layers(heads, hidden)
    z = jax.random.normal(jax.random.key(6), (heads, n)) * 3.0  # both LeakyReLU branches
    cotangent = jax.random.normal(jax.random.key(7), (heads, n))
    want = _value_and_grads(mixer.reference, layers, z, cotangent)
    got = jax.jit(
        lambda *a: _value_and_grads(lambda logits, z: mixer.blocked(logits, z, block), *a)
    )(layers, z, cotangent)
    _assert_close(got, want, rtol=1e-4, atol_of_max=1e-4)
    uses_scan = "scan" in str(jax.make_jaxpr(lambda z: mixer.blocked(layers, z, block))(z))
    assert uses_scan == (n >= 2 * block)


def test_logit_mixer_blocks_large_logits_on_cpu_with_unchanged_values():
    heads, ratio = 2, 4
    columns = 2 * ops.CPU_BLOCK_ELEMENTS // (heads * ratio)  # the smallest size that is blocked
    z = jax.random.normal(jax.random.key(0), (heads, 4, 16, columns // 64)) * 3.0
    module = LogitMixer(heads, ratio)
    params = module.init(jax.random.key(1), z[:, :1])["params"]
    assert "scan" in str(jax.make_jaxpr(lambda z: module.apply({"params": params}, z))(z))
    layers = tuple((params[f"fc{i}"]["kernel"], params[f"fc{i}"]["bias"]) for i in (1, 2, 3))
    np.testing.assert_allclose(
        module.apply({"params": params}, z),
        mixer.reference(layers, z.reshape(heads, -1)).reshape(z.shape),
        rtol=1e-5,
        atol=1e-5,
    )


def test_blocked_form_keeps_bfloat16_and_its_gradients_track_float32():
    heads, hidden, n = 2, 8, 4096
    layers32 = _layers(heads, hidden)
    layers16 = jax.tree.map(lambda p: p.astype(jnp.bfloat16), layers32)
    z = jax.random.normal(jax.random.key(6), (heads, n))

    def loss(layers, form):
        return jnp.sum(
            mix_heads(layers, z.astype(layers[0][0].dtype), form, 512).astype(jnp.float32)
        )

    grads16 = jax.grad(loss)(layers16, "blocked")
    assert all(g.dtype == jnp.bfloat16 for g in jax.tree.leaves(grads16))
    grads32 = jax.grad(loss)(layers32, "reference")
    _assert_close(grads16, grads32, rtol=0.05, atol_of_max=0.02)
