"""Nested multi-head attention: the logit chain, the core forms and their choice, the noise,
and the gradient path (the mixer's own forms: test_mixer.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nested_tnt_jax.models.attention import Attention, LogitMixer
from nested_tnt_jax.models.nesting import Nesting
from nested_tnt_jax.ops import CORE_FORMS, core_form
from nested_tnt_jax.ops.cores import attend, head_logits

NESTED = Nesting(outer=True)

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


def test_core_form_picks_by_backend_and_head_width_and_unknown_forms_fail():
    widths = (6, 8, 24, 32, 64)
    by_width = ["broadcast", "broadcast", "einsum", "heads_first", "heads_first"]
    assert [core_form("auto", d, "cpu") for d in widths] == by_width
    assert [core_form("auto", d) for d in widths] == by_width  # this test runs on CPU
    for accelerator in ("gpu", "tpu"):  # the per-width rule only when asked for
        assert [core_form("auto", d, accelerator) for d in widths] == ["einsum"] * len(widths)
        assert [core_form("by_width", d, accelerator) for d in widths] == by_width
    assert [core_form(form, 6, "gpu") for form in CORE_FORMS] == list(CORE_FORMS)
    with pytest.raises(ValueError, match="Unknown attention_core 'bmm'.*by_width"):
        core_form("bmm", 6)
    x = jnp.zeros((1, 2, 1, 4))
    with pytest.raises(ValueError, match="Unknown attention core form 'bmm'"):
        head_logits(x, x, "bmm")


def test_first_layer_of_chain_carries_scores_and_has_no_mixer():
    attn = Attention(DIM, HEADS, nesting=NESTED)
    x = _x()
    params = attn.init(jax.random.key(1), x)["params"]
    assert "mixer" not in params
    _, logits = attn.apply({"params": params}, x)
    np.testing.assert_allclose(logits, _scores(params, x), atol=1e-5)


@pytest.mark.parametrize("mixer", [True, False])
def test_later_layer_adds_previous_logits_and_mixer(mixer):
    attn = Attention(DIM, HEADS, nesting=NESTED.replace(mixer=mixer))
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


def test_noise_only_in_training_and_scaled():
    x = _x()
    prev = jax.random.normal(jax.random.key(2), (HEADS, 3, 5, 5))
    eval_attn = Attention(DIM, HEADS, nesting=NESTED)
    params = eval_attn.init(jax.random.key(1), x, prev)["params"]
    _, clean = eval_attn.apply({"params": params}, x, prev)
    _, again = eval_attn.apply({"params": params}, x, prev)
    np.testing.assert_array_equal(clean, again)

    train_attn = Attention(DIM, HEADS, nesting=NESTED, deterministic=False)
    _, noisy = train_attn.apply(
        {"params": params}, x, prev, rngs={"noise": jax.random.key(3, impl="rbg")}
    )
    eps = np.asarray(noisy - clean).ravel()
    assert abs(eps.mean()) < 0.2 and 0.8 < eps.std() < 1.2
    _, other = train_attn.apply(
        {"params": params}, x, prev, rngs={"noise": jax.random.key(4, impl="rbg")}
    )
    assert float(jnp.abs(other - noisy).max()) > 0.1

    quiet = Attention(DIM, HEADS, nesting=NESTED.replace(logit_noise=0.0), deterministic=False)
    _, off = quiet.apply({"params": params}, x, prev)  # no noise rng needed
    np.testing.assert_allclose(off, clean, atol=1e-6)


@pytest.mark.parametrize("nested", [True, False])
def test_gradient_reaches_first_layer_qk_through_carried_logits(nested):
    """Layer 2 sees the input x, not layer 1's output, so layer 1's qk can only get a gradient
    from a loss on layer 2's output through the carried logits."""
    spec = Nesting(outer=nested)
    first, second = Attention(DIM, HEADS, nesting=spec), Attention(DIM, HEADS, nesting=spec)
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
