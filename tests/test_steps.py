"""Train / eval step functions on a tiny ViT: learning, accumulation, NaN guard, masking."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from nested_tnt_jax import data, models, optim, steps

INFO = data.dataset_info("cifar10")


def preprocess(batch, rng, train):
    return data.preprocess(
        batch,
        rng,
        train=train,
        image_size=32,
        num_classes=10,
        label_smoothing=0.1,
        mean=INFO.mean,
        std=INFO.std,
    )


def setup(accum=1, lr=1e-2):
    model = models.create_model(
        "vit_cifar_patch8_32", num_classes=10, embed_dim=16, depth=1, num_heads=2, mlp_ratio=1.0
    )
    optim_config = ml_collections.ConfigDict(
        dict(
            name="adamw",
            learning_rate=lr,
            momentum=0.9,
            b1=0.9,
            b2=0.999,
            weight_decay=0.0,
            warmup_steps=0,
            grad_clip_norm=1.0,
            grad_accum_steps=accum,
        )
    )
    tx, schedule = optim.create_optimizer(optim_config, total_steps=100)
    state = steps.create_train_state(
        steps.init_params(model, jax.random.PRNGKey(0)), tx, jax.random.PRNGKey(1)
    )
    step_fn = jax.jit(
        functools.partial(
            steps.train_step,
            model=model,
            tx=tx,
            schedule=schedule,
            preprocess=preprocess,
            grad_accum_steps=accum,
        )
    )
    return model, state, step_fn


def batch(n=8, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "image": rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
        "label": rng.integers(0, 10, n).astype(np.int32),
    }


def test_train_step_fits_a_fixed_batch():
    _, state, step_fn = setup()
    b = batch()
    losses = []
    for _ in range(10):
        state, metrics = step_fn(state, b)
        losses.append(float(metrics["loss"]))
    assert losses[-1] < 0.8 * losses[0]
    assert int(state.step) == 10
    assert set(metrics) == {"loss", "accuracy", "grad_norm", "learning_rate"}
    assert float(metrics["grad_norm"]) > 0 and float(metrics["learning_rate"]) > 0


def test_accumulated_micro_batches_equal_the_full_batch():
    b = batch(16)
    _, state1, step1 = setup(accum=1)
    _, state4, step4 = setup(accum=4)
    state1, m1 = step1(state1, b)
    state4, m4 = step4(state4, b)
    np.testing.assert_allclose(m1["loss"], m4["loss"], rtol=1e-5)
    np.testing.assert_allclose(m1["grad_norm"], m4["grad_norm"], rtol=1e-4)
    for a, c in zip(jax.tree.leaves(state1.params), jax.tree.leaves(state4.params)):
        np.testing.assert_allclose(a, c, rtol=1e-4, atol=2e-5)  # lr 1e-2 updates.


def test_same_inputs_give_identical_results():
    b = batch()
    _, state_a, step_fn = setup()
    _, state_b, _ = setup()
    state_a, _ = step_fn(state_a, b)
    state_b, _ = step_fn(state_b, b)
    for a, c in zip(jax.tree.leaves(state_a), jax.tree.leaves(state_b)):
        np.testing.assert_array_equal(a, c)


def test_non_finite_loss_leaves_parameters_unchanged():
    model, state, _ = setup()
    tx, schedule = optim.create_optimizer(
        ml_collections.ConfigDict(
            dict(
                name="sgd",
                learning_rate=0.1,
                momentum=0.9,
                b1=0.9,
                b2=0.999,
                weight_decay=0.0,
                warmup_steps=0,
                grad_clip_norm=0.0,
                grad_accum_steps=1,
            )
        ),
        total_steps=10,
    )

    def poisoned(batch, rng, train):
        images, targets = preprocess(batch, rng, train)
        return images * jnp.nan, targets

    step_fn = jax.jit(
        functools.partial(
            steps.train_step, model=model, tx=tx, schedule=schedule, preprocess=poisoned
        )
    )
    before = jax.tree.map(np.asarray, state.params)
    state = state.replace(opt_state=tx.init(state.params))
    new_state, metrics = step_fn(state, batch())
    assert not np.isfinite(float(metrics["loss"]))
    assert int(new_state.step) == 1
    for a, c in zip(jax.tree.leaves(before), jax.tree.leaves(new_state.params)):
        np.testing.assert_array_equal(a, c)


def test_eval_step_counts_only_real_examples():
    model, state, _ = setup()
    eval_fn = jax.jit(functools.partial(steps.eval_step, model=model, preprocess=preprocess))
    real = batch(6, seed=3)
    padded = {k: np.concatenate([v, v[:2]]) for k, v in real.items()}
    padded["mask"] = np.array([True] * 6 + [False] * 2)
    full = eval_fn(state.params, {**real, "mask": np.ones(6, bool)})
    out = eval_fn(state.params, padded)
    assert float(out["count"]) == 6
    for key in ("correct_top1", "correct_top5", "loss_sum"):
        np.testing.assert_allclose(out[key], full[key], rtol=1e-6)
    assert float(out["correct_top5"]) >= float(out["correct_top1"])


def test_sharded_parameters_match_replicated():
    """mesh.model_axis > 1: params and optimiser state split over `model`, same update."""
    from jax.sharding import PartitionSpec

    from nested_tnt_jax import sharding

    model, state, _ = setup()
    b = batch(16)
    results = []
    for model_axis in (1, 2):
        mesh = sharding.create_mesh(model_axis)
        assert mesh.shape == {"data": 8 // model_axis, "model": model_axis}
        state_sharding = steps.TrainState(
            step=sharding.replicated_sharding(mesh),
            params=sharding.param_shardings(state.params, mesh),
            opt_state=sharding.param_shardings(state.opt_state, mesh),
            rng=sharding.replicated_sharding(mesh),
        )
        if model_axis == 2:
            spec = state_sharding.params["head"]["kernel"].spec  # (16, 10): dim 0 divides.
            assert spec == PartitionSpec("model", None)
            assert state_sharding.params["head"]["bias"].spec == PartitionSpec("model")
        tx, schedule = optim.create_optimizer(
            ml_collections.ConfigDict(
                dict(
                    name="adamw",
                    learning_rate=1e-2,
                    momentum=0.9,
                    b1=0.9,
                    b2=0.999,
                    weight_decay=0.0,
                    warmup_steps=0,
                    grad_clip_norm=1.0,
                    grad_accum_steps=1,
                )
            ),
            total_steps=100,
        )
        step_fn = jax.jit(
            functools.partial(
                steps.train_step, model=model, tx=tx, schedule=schedule, preprocess=preprocess
            ),
            in_shardings=(state_sharding, sharding.data_sharding(mesh)),
            out_shardings=(state_sharding, sharding.replicated_sharding(mesh)),
        )
        new_state, _ = step_fn(
            jax.device_put(state, state_sharding), sharding.global_batch(b, mesh)
        )
        results.append(jax.device_get(new_state.params))
    for a, c in zip(jax.tree.leaves(results[0]), jax.tree.leaves(results[1])):
        np.testing.assert_allclose(a, c, rtol=1e-5, atol=2e-5)  # Adam: tiny grads, lr 1e-2.
