"""Nested multi-head attention: the logit chain, the mixer, the noise, and the gradient path."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nested_tnt_jax.models.attention import (
    CORE_FORMS, CPU_BLOCK_ELEMENTS, Attention, LogitMixer, attend, core_form, head_logits, mix_heads)

DIM, HEADS = 16, 4


def _x(seed: int = 0, shape=(3, 5, DIM)) -> jax.Array:
    return jax.random.normal(jax.random.key(seed), shape)


def _heads_first(t: jax.Array) -> jax.Array:
    """(b, h, q, k) -> the (h, b, q, k) layout of the carried logits."""
    return jnp.swapaxes(t, 0, 1)


def _scores(params, x):
    """S = Q K^T / sqrt(d) from an Attention's qk params, written out independently, laid out
    (h, b, q, k) like the carried logits."""
    b, n, _ = x.shape
    qk = (x @ params["qk"]["kernel"]).reshape(b, n, 2, HEADS, DIM // HEADS)
    q, k = qk[:, :, 0].transpose(0, 2, 1, 3), qk[:, :, 1].transpose(0, 2, 1, 3)
    return _heads_first(q @ k.transpose(0, 1, 3, 2) / np.sqrt(DIM // HEADS))


def test_plain_attention_matches_softmax_reference_and_carries_nothing():
    attn = Attention(DIM, HEADS)
    x = _x()
    params = attn.init(jax.random.key(1), x)["params"]
    y, logits = attn.apply({"params": params}, x)
    assert logits is None
    probs = _heads_first(jax.nn.softmax(_scores(params, x), axis=-1))
    v = (x @ params["v"]["kernel"]).reshape(3, 5, HEADS, -1).transpose(0, 2, 1, 3)
    ctx = (probs @ v).transpose(0, 2, 1, 3).reshape(3, 5, DIM)
    ref = ctx @ params["proj"]["kernel"] + params["proj"]["bias"]
    np.testing.assert_allclose(y, ref, atol=1e-5)


@pytest.mark.parametrize("shape", [(6, 16, 4, 6), (2, 9, 3, 40)])
@pytest.mark.parametrize("form", CORE_FORMS[1:])
def test_core_forms_give_the_einsum_values_and_gradients(form, shape):
    """Each way of writing QK^T and AV (narrow word heads and wide outer heads) against the
    plain einsums, forward and backward, with logits heads first in every form."""
    q, k, v, cotangent = (jax.random.normal(jax.random.key(i), shape) for i in range(4))

    def core(form):
        def fn(q, k, v):
            logits = head_logits(q, k, form)
            return attend(jax.nn.softmax(logits, axis=-1), v, form), logits
        return jax.jit(lambda q, k, v: jax.vjp(fn, q, k, v))

    (want, want_logits), want_vjp = core("einsum")(q, k, v)
    (got, got_logits), got_vjp = core(form)(q, k, v)
    assert got_logits.shape == (shape[2], shape[0], shape[1], shape[1])
    np.testing.assert_allclose(got_logits, want_logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    cotangents = (cotangent, jnp.ones_like(want_logits))
    for g, w in zip(got_vjp(cotangents), want_vjp(cotangents)):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


def test_broadcast_form_keeps_bfloat16_and_tracks_float32():
    q, k, v = (jax.random.normal(jax.random.key(i), (4, 16, 2, 6)) for i in range(3))
    bf16 = [t.astype(jnp.bfloat16) for t in (q, k, v)]
    logits = head_logits(*bf16[:2], "broadcast")
    out = attend(jax.nn.softmax(logits, axis=-1), bf16[2], "broadcast")
    assert logits.dtype == out.dtype == jnp.bfloat16
    want = attend(jax.nn.softmax(head_logits(q, k), axis=-1), v)
    np.testing.assert_allclose(out.astype(jnp.float32), want, atol=0.05)


def test_core_form_on_cpu_picks_by_head_width_and_unknown_forms_fail():
    widths = (6, 8, 24, 32, 64)
    # Without the trainer's XLA options, YNNPACK would materialise the broadcast products.
    assert [core_form("auto", d) for d in widths] == [
        "einsum", "einsum", "einsum", "heads_first", "heads_first"]
    assert [core_form("auto_xla_options", d) for d in widths] == [
        "broadcast", "broadcast", "einsum", "heads_first", "heads_first"]
    assert [core_form(form, 6) for form in CORE_FORMS] == list(CORE_FORMS)
    with pytest.raises(ValueError, match="Unknown attention_core 'bmm'.*auto_xla_options"):
        core_form("bmm", 6)
    x = jnp.zeros((1, 2, 1, 4))
    with pytest.raises(ValueError, match="Unknown attention core form 'bmm'"):
        head_logits(x, x, "bmm")


def test_first_layer_of_chain_carries_scores_and_has_no_mixer():
    attn = Attention(DIM, HEADS, nested=True)
    x = _x()
    params = attn.init(jax.random.key(1), x)["params"]
    assert "mixer" not in params
    _, logits = attn.apply({"params": params}, x)
    np.testing.assert_allclose(logits, _scores(params, x), atol=1e-5)


@pytest.mark.parametrize("mixer", [True, False])
def test_later_layer_adds_previous_logits_and_mixer(mixer):
    attn = Attention(DIM, HEADS, nested=True, mixer=mixer)
    x = _x()
    prev = jax.random.normal(jax.random.key(2), (HEADS, 3, 5, 5))
    params = attn.init(jax.random.key(1), x, prev)["params"]
    assert ("mixer" in params) == mixer
    _, logits = attn.apply({"params": params}, x, prev)
    z = _scores(params, x) + prev
    expected = z
    if mixer:
        expected = z + LogitMixer(HEADS).apply({"params": params["mixer"]}, z)
        assert float(jnp.abs(expected - z).max()) > 1e-3  # the mixer does something
    np.testing.assert_allclose(logits, expected, atol=1e-5)


def test_mixer_is_an_mlp_over_heads_with_xavier_init():
    heads, ratio = 6, 4
    mixer = LogitMixer(heads, ratio)
    z = jax.random.normal(jax.random.key(0), (heads, 2, 7, 7))
    params = mixer.init(jax.random.key(1), z)["params"]
    shapes = {k: (v["kernel"].shape, v["bias"].shape) for k, v in params.items()}
    h = heads * ratio
    assert shapes == {"fc1": ((heads, h), (h,)), "fc2": ((h, h), (h,)), "fc3": ((h, heads), (heads,))}
    for layer in params.values():
        fan_in, fan_out = layer["kernel"].shape
        bound = np.sqrt(6.0 / (fan_in + fan_out)) / np.sqrt(2.0)
        assert float(jnp.abs(layer["kernel"]).max()) <= bound
        assert float(jnp.abs(layer["kernel"]).max()) > 0.8 * bound
        assert not np.any(layer["bias"])
    # Position-wise over (query, key): permuting keys permutes the output the same way.
    perm = np.array([3, 1, 0, 6, 2, 5, 4])
    out = mixer.apply({"params": params}, z)
    np.testing.assert_allclose(mixer.apply({"params": params}, z[..., perm]), out[..., perm],
                               atol=1e-5)


def _mixer_layers(heads: int, hidden: int, dtype=jnp.float32):
    keys = jax.random.split(jax.random.key(5), 6)
    widths = (heads, hidden, hidden, heads)
    return tuple((jax.random.normal(keys[2 * i], (a, b)).astype(dtype) / np.sqrt(a),
                  jax.random.normal(keys[2 * i + 1], (b,)).astype(dtype))
                 for i, (a, b) in enumerate(zip(widths, widths[1:])))


@pytest.mark.parametrize("n, block", [(1200, 300), (1001, 250), (1000, 600)])
def test_blocked_mixer_matches_unblocked_values_and_gradients(n, block):
    """The CPU path (column blocks, hand-written backward) against plain autodiff, including
    a width that needs zero padding (1001) and one too small to block (1000 < 2 * 600)."""
    heads, hidden = 3, 12
    layers = _mixer_layers(heads, hidden)
    z = jax.random.normal(jax.random.key(6), (heads, n)) * 3.0  # both LeakyReLU branches
    cotangent = jax.random.normal(jax.random.key(7), (heads, n))

    def value_and_grads(block):
        out, vjp = jax.vjp(lambda layers, z: mix_heads(layers, z, block), layers, z)
        return out, vjp(cotangent)

    plain, plain_grads = value_and_grads(0)
    blocked, blocked_grads = jax.jit(value_and_grads, static_argnums=0)(block)
    np.testing.assert_allclose(blocked, plain, rtol=1e-5, atol=1e-5)
    for got, want in zip(jax.tree.leaves(blocked_grads), jax.tree.leaves(plain_grads)):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(jnp.abs(want).max()))
    uses_scan = "scan" in str(jax.make_jaxpr(lambda z: mix_heads(layers, z, block))(z))
    assert uses_scan == (n >= 2 * block)


def test_logit_mixer_blocks_large_logits_on_cpu_with_unchanged_values():
    heads, ratio = 2, 4
    columns = 2 * CPU_BLOCK_ELEMENTS // (heads * ratio)  # the smallest size that is blocked
    z = jax.random.normal(jax.random.key(0), (heads, 4, 16, columns // 64)) * 3.0
    mixer = LogitMixer(heads, ratio)
    params = mixer.init(jax.random.key(1), z[:, :1])["params"]
    assert "scan" in str(jax.make_jaxpr(lambda z: mixer.apply({"params": params}, z))(z))
    layers = tuple((params[f"fc{i}"]["kernel"], params[f"fc{i}"]["bias"]) for i in (1, 2, 3))
    np.testing.assert_allclose(mixer.apply({"params": params}, z),
                               mix_heads(layers, z.reshape(heads, -1)).reshape(z.shape),
                               rtol=1e-5, atol=1e-5)


def test_blocked_mixer_keeps_bfloat16_and_its_gradients_track_float32():
    heads, hidden, n = 2, 8, 4096
    layers32 = _mixer_layers(heads, hidden)
    layers16 = jax.tree.map(lambda p: p.astype(jnp.bfloat16), layers32)
    z = jax.random.normal(jax.random.key(6), (heads, n))
    loss = lambda layers, block: jnp.sum(mix_heads(layers, z.astype(layers[0][0].dtype), block)  # noqa: E731
                                         .astype(jnp.float32))
    grads16 = jax.grad(loss)(layers16, 512)
    assert all(g.dtype == jnp.bfloat16 for g in jax.tree.leaves(grads16))
    grads32 = jax.grad(loss)(layers32, 0)
    for got, want in zip(jax.tree.leaves(grads16), jax.tree.leaves(grads32)):
        np.testing.assert_allclose(got.astype(jnp.float32), want, rtol=0.05,
                                   atol=0.02 * float(jnp.abs(want).max()))


def test_noise_only_in_training_and_scaled():
    x = _x()
    prev = jax.random.normal(jax.random.key(2), (HEADS, 3, 5, 5))
    eval_attn = Attention(DIM, HEADS, nested=True)
    params = eval_attn.init(jax.random.key(1), x, prev)["params"]
    _, clean = eval_attn.apply({"params": params}, x, prev)
    _, again = eval_attn.apply({"params": params}, x, prev)
    np.testing.assert_array_equal(clean, again)

    train_attn = Attention(DIM, HEADS, nested=True, deterministic=False)
    _, noisy = train_attn.apply({"params": params}, x, prev, rngs={"noise": jax.random.key(3, impl="rbg")})
    eps = np.asarray(noisy - clean).ravel()
    assert abs(eps.mean()) < 0.2 and 0.8 < eps.std() < 1.2
    _, other = train_attn.apply({"params": params}, x, prev, rngs={"noise": jax.random.key(4, impl="rbg")})
    assert float(jnp.abs(other - noisy).max()) > 0.1

    quiet = Attention(DIM, HEADS, nested=True, deterministic=False, logit_noise=0.0)
    _, off = quiet.apply({"params": params}, x, prev)  # no noise rng needed
    np.testing.assert_allclose(off, clean, atol=1e-6)


@pytest.mark.parametrize("nested", [True, False])
def test_gradient_reaches_first_layer_qk_through_carried_logits(nested):
    """Layer 2 sees the input x, not layer 1's output, so layer 1's qk can only get a gradient
    from a loss on layer 2's output through the carried logits."""
    first, second = Attention(DIM, HEADS, nested=nested), Attention(DIM, HEADS, nested=nested)
    x = _x()
    p1 = first.init(jax.random.key(1), x)["params"]
    _, l1 = first.apply({"params": p1}, x)
    p2 = second.init(jax.random.key(2), x, l1)["params"]

    def loss(p1):
        _, logits1 = first.apply({"params": p1}, x)
        y2, _ = second.apply({"params": p2}, x, logits1)
        return jnp.sum(y2**2)

    grad_norm = float(jnp.abs(jax.grad(loss)(p1)["qk"]["kernel"]).sum())
    assert (grad_norm > 1e-4) == nested
