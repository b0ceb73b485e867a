"""Optimiser: which parameters get weight decay, and the warmup + cosine schedule."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from nested_tnt_jax import models, optim, steps


def optim_config(**overrides) -> ml_collections.ConfigDict:
    base = dict(
        name="sgd",
        learning_rate=0.1,
        momentum=0.9,
        b1=0.9,
        b2=0.999,
        weight_decay=0.1,
        warmup_steps=10,
        grad_clip_norm=1.0,
        grad_accum_steps=1,
    )
    return ml_collections.ConfigDict({**base, **overrides})


def tnt_params():
    model = models.create_model(
        "nested_tnt_cifar_patch4_32",
        num_classes=10,
        embed_dim=16,
        depth=2,
        inner_dim=8,
        mlp_ratio=1.0,
    )
    return steps.init_params(model, jax.random.PRNGKey(0))


def test_decay_mask_selects_kernels_only():
    params = tnt_params()
    mask = optim.weight_decay_mask(params)
    flat = {
        "/".join(str(getattr(k, "key", k)) for k in path): v
        for path, v in jax.tree_util.tree_leaves_with_path(mask)
    }
    assert flat["head/kernel"] and flat["blocks_0/mlp/fc1/kernel"]
    for name in (
        "cls_token",
        "patch_pos",
        "pixel_pos",
        "head/bias",
        "norm/scale",
        "norm/bias",
        "blocks_0/norm_in/scale",
        "blocks_0/mlp/fc1/bias",
    ):
        assert not flat[name], name
    # Every leaf is decided: decayed leaves are exactly the >= 2-D `kernel`s.
    for name, decay in flat.items():
        assert decay == name.endswith("/kernel"), name


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_weight_decay_touches_only_masked_leaves(name):
    params = tnt_params()
    tx, _ = optim.create_optimizer(optim_config(name=name, warmup_steps=0), total_steps=10)
    zero_grads = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zero_grads, tx.init(params), params)
    mask = optim.weight_decay_mask(params)
    for update, param, decay in zip(
        jax.tree.leaves(updates), jax.tree.leaves(params), jax.tree.leaves(mask)
    ):
        if decay and np.any(param != 0):
            assert np.any(update != 0)
        elif not decay:
            np.testing.assert_array_equal(update, 0)


def test_schedule_warmup_then_cosine_to_zero():
    schedule = optim.learning_rate_schedule(optim_config(learning_rate=0.4, warmup_steps=10), 110)
    np.testing.assert_allclose(schedule(0), 0.0)
    np.testing.assert_allclose(schedule(5), 0.2, rtol=1e-6)
    np.testing.assert_allclose(schedule(10), 0.4, rtol=1e-6)
    np.testing.assert_allclose(schedule(60), 0.2, rtol=1e-5)  # Half way down the cosine.
    np.testing.assert_allclose(schedule(110), 0.0, atol=1e-7)
    values = np.array([schedule(s) for s in range(10, 111)])
    assert np.all(np.diff(values) <= 1e-9)


def test_schedule_survives_warmup_longer_than_run():
    schedule = optim.learning_rate_schedule(optim_config(warmup_steps=500), 20)
    values = np.array([schedule(s) for s in range(21)])
    assert np.all(np.isfinite(values)) and values.max() > 0


def test_gradient_clipping_bounds_the_update():
    params = {"w": {"kernel": jnp.ones((4, 4))}}
    tx, _ = optim.create_optimizer(
        optim_config(
            momentum=0.0, weight_decay=0.0, warmup_steps=0, learning_rate=1.0, grad_clip_norm=0.5
        ),
        total_steps=100,
    )
    grads = {"w": {"kernel": jnp.full((4, 4), 10.0)}}
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(optax_norm(updates), 0.5, rtol=1e-5)


def optax_norm(tree):
    return float(jnp.sqrt(sum(jnp.sum(x**2) for x in jax.tree.leaves(tree))))


def test_unknown_optimizer_is_refused():
    with pytest.raises(ValueError, match="optim.name"):
        optim.create_optimizer(optim_config(name="lamb"), total_steps=10)
