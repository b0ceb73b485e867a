"""Nested multi-head attention: the logit chain, the mixer, the noise, and the gradient path."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nested_tnt_jax.models.attention import Attention, LogitMixer

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
