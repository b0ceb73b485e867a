"""Registry, shapes, Nested-TNT switches, stacking layouts, dtype and stochastic depth."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nested_tnt_jax import xla_options
from nested_tnt_jax.models import (
    Nesting,
    create_model,
    list_models,
    model_config,
    params_to_loop,
    params_to_scan,
)
from nested_tnt_jax.models import layers
from nested_tnt_jax.models.layers import drop_path_rates, gelu
from nested_tnt_jax.models.tnt import WindowConv

SMALL = "nested_tnt_cifar_patch8_32"
# rbg keys: threefry's first compile per shape costs seconds on CPU, and these tests only need
# randomness, not a particular generator.
RNGS = {"dropout": jax.random.key(11, impl="rbg"), "noise": jax.random.key(12, impl="rbg")}


def _images(size: int = 32, batch: int = 2, seed: int = 0) -> jax.Array:
    return jax.random.normal(jax.random.key(seed), (batch, size, size, 3))


def _init(model, seed: int = 0):
    return model.init(jax.random.key(seed), _images(model.img_size, 1))


@pytest.mark.parametrize("name", list_models())
def test_output_shape_of_every_registered_model(name):
    model = create_model(name, num_classes=7)
    images = jnp.zeros((2, model.img_size, model.img_size, 3))
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), images))
    for train in (False, True):
        out = jax.eval_shape(lambda v: model.apply(v, images, train=train, rngs=RNGS), variables)  # noqa: B023
        assert out.shape == (2, 7) and out.dtype == jnp.float32
    assert model.num_classes == 7 and model.img_size == images.shape[1]


def test_registry_errors_are_clear():
    with pytest.raises(ValueError, match="Unknown model 'tnt_xl'.*tnt_s_patch16_224"):
        create_model("tnt_xl")
    with pytest.raises(ValueError, match="'vit_small_patch16_224' has no inner attention chain"):
        create_model("vit_small_patch16_224", nesting={"inner": True})
    with pytest.raises(ValueError, match="Unknown nesting field.*chains"):
        create_model("tnt_s_patch16_224", nesting={"chains": 2})
    with pytest.raises(ValueError, match="not divisible by the patch size 16"):
        create_model("tnt_s_patch16_224", img_size=200)
    with pytest.raises(ValueError, match="Unknown attention_core 'flash'.*by_width"):
        create_model("vit_small_patch16_224", attention_core="flash")


def test_the_trainers_attention_core_computes_the_same_model():
    """The trainer's path (the backend's forms under its XLA options: on CPU, broadcast word
    attention and heads-first outer attention) against the einsum everywhere: one training
    loss and gradient from the same params."""
    model = create_model(SMALL, num_classes=10, depth=2)  # the second block mixes the chain
    params = jax.jit(_init, static_argnums=0)(model)["params"]
    images, labels = _images(), jnp.array([3, 7])
    options = xla_options.step_compiler_options()

    def loss_and_grads(module, compiler_options):
        def loss(p):
            logits = module.apply({"params": p}, images, train=True, rngs=RNGS)
            return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1))

        return jax.jit(jax.value_and_grad(loss), compiler_options=compiler_options)(params)

    einsum = model.clone(attention_core="einsum")
    (got_loss, got_grads), (want_loss, want_grads) = (
        loss_and_grads(model, options),
        loss_and_grads(einsum, {}),
    )
    np.testing.assert_allclose(got_loss, want_loss, rtol=1e-5)
    jax.tree.map(
        lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6), got_grads, want_grads
    )


def test_img_size_changes_the_sentence_grid():
    model = create_model("tnt_s_patch16_224", img_size=64)
    shapes = jax.eval_shape(lambda: _init(model))["params"]
    assert model.img_size == 64 and shapes["patch_pos"].shape == (1, 17, 384)
    assert shapes["pixel_pos"].shape == (1, 4, 4, 24)


def test_nesting_off_computes_tnt_from_the_same_params():
    tnt = create_model("tnt_cifar_patch8_32", num_classes=10)
    nested = create_model(SMALL, num_classes=10)
    plain = create_model(SMALL, num_classes=10, nesting={"inner": False, "outer": False})
    assert model_config(SMALL)[1] == dict(
        model_config("tnt_cifar_patch8_32")[1], nesting=Nesting(inner=True, outer=True)
    )
    # The old override names still read as the nesting fields they were.
    assert create_model(SMALL, nest_inner=False, nest_outer=False).nesting == plain.nesting
    nested_params = _init(nested)["params"]
    assert "mixer" in nested_params["blocks_1"]["attn_in"]
    assert "mixer" not in nested_params["blocks_0"]["attn_in"]
    tnt_params = _init(tnt)["params"]
    assert jax.tree.structure(tnt_params) == jax.tree.structure(_init(plain)["params"])
    x = _images()
    ref = tnt.apply({"params": tnt_params}, x)
    np.testing.assert_array_equal(plain.apply({"params": tnt_params}, x), ref)
    # Train mode without noise or dropout is also TNT; nested differs from TNT.
    np.testing.assert_array_equal(plain.apply({"params": tnt_params}, x, train=True), ref)
    assert (
        float(
            jnp.abs(
                nested.apply({"params": nested_params}, x) - tnt.apply({"params": nested_params}, x)
            ).max()
        )
        > 1e-4
    )


@pytest.mark.parametrize("chain", ["inner", "outer"])
def test_each_chain_is_a_separate_switch(chain):
    model = create_model(SMALL, num_classes=10, nesting={chain: False})
    params = _init(model)["params"]["blocks_1"]
    on = "attn_out" if chain == "inner" else "attn_in"
    off = "attn_in" if chain == "inner" else "attn_out"
    assert "mixer" in params[on] and "mixer" not in params[off]


def test_eval_is_deterministic_and_noise_only_in_training():
    model = create_model(SMALL, num_classes=10)
    variables = _init(model)
    x = _images()
    ev = model.apply(variables, x)
    np.testing.assert_array_equal(model.apply(variables, x, train=False, rngs=RNGS), ev)
    a = model.apply(variables, x, train=True, rngs=RNGS)
    b = model.apply(variables, x, train=True, rngs=RNGS)
    c = model.apply(
        variables, x, train=True, rngs={**RNGS, "noise": jax.random.key(99, impl="rbg")}
    )
    np.testing.assert_array_equal(a, b)  # same seed, same result
    assert float(jnp.abs(a - ev).max()) > 1e-4 and float(jnp.abs(c - a).max()) > 1e-4
    quiet = create_model(SMALL, num_classes=10, nesting={"logit_noise": 0.0})
    np.testing.assert_allclose(quiet.apply(variables, x, train=True), ev, atol=1e-6)


@pytest.mark.parametrize("name", ["vit_cifar_patch8_32", SMALL])
def test_scan_and_remat_match_the_loop(name):
    loop = create_model(name, num_classes=10)
    params = _init(loop)["params"]
    scanned = params_to_scan(params)
    assert (
        scanned["blocks"]["norm1" if name.startswith("vit") else "norm_in"]["scale"].shape[0]
        == loop.depth - 1
    )
    assert jax.tree.structure(params_to_loop(scanned)) == jax.tree.structure(params)
    jax.tree.map(np.testing.assert_array_equal, params_to_loop(scanned), params)
    x = _images()
    ref = loop.apply({"params": params}, x)
    scan = create_model(name, num_classes=10, scan_blocks=True, remat=True)
    assert jax.tree.structure(_init(scan)["params"]) == jax.tree.structure(scanned)
    np.testing.assert_allclose(scan.apply({"params": scanned}, x), ref, atol=1e-5)
    train = jax.eval_shape(lambda p: scan.apply({"params": p}, x, train=True, rngs=RNGS), scanned)
    assert train.shape == ref.shape


def _scan_output_bytes(fn, *args) -> int:
    """Bytes that the scans in `fn`'s jaxpr write out: for a gradient, mostly the residuals
    that the forward loop stacks for the backward loop."""
    total = 0
    for eqn in jax.make_jaxpr(fn)(*args).jaxpr.eqns:
        if eqn.primitive.name == "scan":
            total += sum(v.aval.size * v.aval.dtype.itemsize for v in eqn.outvars)
    return total


def test_scanned_blocks_give_the_loops_gradients_from_fewer_saved_values(monkeypatch):
    # Batch 20 makes the inner logits large enough for the CPU mixer's blocked custom_vjp.
    x = _images(batch=20)
    loop = create_model(SMALL, num_classes=10, depth=3)
    scan = create_model(SMALL, num_classes=10, depth=3, scan_blocks=True)
    params = _init(loop)["params"]
    scanned = params_to_scan(params)
    grad = lambda model: jax.grad(  # noqa: E731
        lambda p: model.apply({"params": p}, x).sum()
    )
    got = jax.jit(grad(scan))(scanned)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
        params_to_loop(got),
        jax.jit(grad(loop))(params),
    )
    saved = _scan_output_bytes(grad(scan), scanned)
    monkeypatch.setattr(layers, "scan_residual_policy", jax.checkpoint_policies.everything_saveable)
    # A new grad function each time: jax caches a function's trace, and this one must be traced
    # under the patched policy.
    assert saved < 0.8 * _scan_output_bytes(grad(scan), scanned)


def test_bfloat16_compute_keeps_float32_params_and_logits():
    model = create_model(SMALL, num_classes=10, dtype="bfloat16")
    assert model.dtype == jnp.bfloat16
    variables = _init(model)
    assert {p.dtype for p in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
    x = _images()
    out = model.apply(variables, x)
    assert out.dtype == jnp.float32
    ref = create_model(SMALL, num_classes=10).apply(variables, x)
    assert float(jnp.abs(out - ref).max()) < 0.05 * float(jnp.abs(ref).max()) + 0.05
    assert float(jnp.abs(out - ref).max()) > 0.0  # it did compute in bfloat16


def test_drop_path_schedule_and_effect():
    np.testing.assert_allclose(drop_path_rates(0.3, 4), [0.0, 0.1, 0.2, 0.3], atol=1e-7)
    model = create_model("tnt_cifar_patch8_32", num_classes=10, drop_path_rate=0.5)
    variables = _init(model)
    x = _images()
    ev = model.apply(variables, x)
    tr = model.apply(variables, x, train=True, rngs=RNGS)
    assert float(jnp.abs(tr - ev).max()) > 1e-4
    dropped = create_model("tnt_cifar_patch8_32", num_classes=10, drop_rate=0.5)
    assert float(jnp.abs(dropped.apply(variables, x, train=True, rngs=RNGS) - ev).max()) > 1e-4


def test_gelu_is_torchs_exact_gelu_with_jaxs_gradient():
    import torch  # a test dependency (timm parity); imported here to keep this module light

    x = jnp.linspace(-12.0, 12.0, 20001, dtype=jnp.float32)
    x64 = np.asarray(x, np.float64)
    exact = 0.5 * x64 * (1.0 + np.vectorize(math.erf)(x64 / math.sqrt(2.0)))
    ref = torch.nn.functional.gelu(torch.from_numpy(np.array(x))).numpy()
    # PyTorch's erf kernel depends on the CPU it runs on: on an AVX-512 VM it and ours were
    # 1.2e-6 apart, each within 1.1e-6 of the exact function. So ours is held to float32
    # accuracy against the exact GELU, and to twice that against PyTorch's.
    np.testing.assert_allclose(gelu(x), exact, rtol=0, atol=1.5e-6)
    np.testing.assert_allclose(gelu(x), ref, rtol=0, atol=3e-6)
    np.testing.assert_allclose(gelu(x), jax.nn.gelu(x, approximate=False), rtol=0, atol=1e-6)
    exact_grad = jax.vmap(jax.grad(lambda v: jax.nn.gelu(v, approximate=False)))(x)
    np.testing.assert_allclose(jax.vmap(jax.grad(gelu))(x), exact_grad, rtol=0, atol=2e-6)


@pytest.mark.parametrize("kernel,stride,size", [(7, 4, 16), (7, 4, 20), (3, 2, 8), (4, 4, 8)])
def test_word_conv_as_matmul_computes_the_conv(kernel, stride, size):
    """The word embedding (windows x matrix) is nn.Conv's conv, with nn.Conv's params."""
    pad = kernel // 2
    x = _images(size, batch=3)
    conv = nn.Conv(24, (kernel, kernel), strides=(stride, stride), padding=[(pad, pad)] * 2)
    params = conv.init(jax.random.key(1), x)
    params = jax.tree.map(lambda p: p + 0.1, params)  # a non-zero bias
    windowed = WindowConv(24, kernel, stride, pad)
    assert jax.tree.map(jnp.shape, windowed.init(jax.random.key(1), x)) == jax.tree.map(
        jnp.shape, params
    )
    np.testing.assert_allclose(
        windowed.apply(params, x), conv.apply(params, x), rtol=1e-5, atol=1e-5
    )
