"""Pure train / eval step functions: the only place gradients are taken.

They are plain functions of (state, batch) with the model, optimiser and preprocessing bound
by `functools.partial`; `train.py` jits them over the mesh with explicit shardings and donates
the state. Randomness is a pure function of the run's key and the step number (folded in), so
a resumed run draws exactly what an uninterrupted one would.
"""

from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

PyTree = Any
# (uint8 batch, rng, train) -> (float images, soft targets); `data.preprocess` with the
# dataset and augmentation settings bound.
PreprocessFn = Callable[[dict, jax.Array, bool], tuple[jax.Array, jax.Array]]


@flax.struct.dataclass
class TrainState:
    """Everything a checkpoint needs besides the data position.

    `rng` is the run's base key (uint32[2], saved so a resume does not depend on the config's
    seed); per-step keys are derived from it and `step`.
    """

    step: jax.Array
    params: PyTree
    opt_state: PyTree
    rng: jax.Array


def init_params(model: nn.Module, rng: jax.Array) -> PyTree:
    """Fresh parameters of `model` (the 'params' collection) for its own input size."""
    images = jnp.zeros((1, model.img_size, model.img_size, 3), jnp.float32)
    params_rng, dropout_rng, noise_rng = jax.random.split(rng, 3)
    variables = model.init(
        {"params": params_rng, "dropout": dropout_rng, "noise": noise_rng}, images, train=False
    )
    return variables["params"]


def create_train_state(
    params: PyTree, tx: optax.GradientTransformation, rng: jax.Array
) -> TrainState:
    """Step 0 state around `params` (fresh or pre-trained)."""
    return TrainState(
        step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), rng=rng
    )


def _step_rngs(rng: jax.Array, step: jax.Array) -> dict[str, jax.Array]:
    """Per-step keys for the three random streams (model dropout, logit noise, mixup)."""
    dropout, noise, mix = jax.random.split(jax.random.fold_in(rng, step), 3)
    return {"dropout": dropout, "noise": noise, "mix": mix}


def _micro_batches(batch: dict, accum: int) -> dict:
    """(B, ...) -> (accum, B // accum, ...), micro-batch i taking rows i, i + accum, ...

    Strided rather than contiguous so each micro-batch keeps an equal share of every device's
    rows: the reshape stays local to each device's shard of the batch.
    """
    return jax.tree.map(
        lambda x: jnp.moveaxis(x.reshape(x.shape[0] // accum, accum, *x.shape[1:]), 1, 0), batch
    )


def train_step(
    state: TrainState,
    batch: dict,
    *,
    model: nn.Module,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    preprocess: PreprocessFn,
    grad_accum_steps: int = 1,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimiser update on a global uint8 `batch`; returns the new state and metrics.

    With `grad_accum_steps` > 1 the batch is split into that many micro-batches whose
    gradients are averaged in a `lax.scan` (memory of one micro-batch, the update of the
    whole batch). Metrics: `loss` (soft-target cross-entropy), `accuracy` (top-1 against the
    un-mixed labels), `grad_norm` (global L2 norm before clipping), `learning_rate`.
    If the loss or the gradient norm is not finite, the state is returned unchanged (only
    `step` advances) so that no non-finite value ever reaches a checkpoint; the metrics carry
    the non-finite value for the train loop to report.
    """
    rngs = _step_rngs(state.rng, state.step)

    def loss_fn(params, micro, index):
        keys = {k: jax.random.fold_in(v, index) for k, v in rngs.items()}
        images, targets = preprocess(micro, keys["mix"], True)
        logits = model.apply(
            {"params": params},
            images,
            train=True,
            rngs={"dropout": keys["dropout"], "noise": keys["noise"]},
        )
        loss = optax.softmax_cross_entropy(logits, targets).mean()
        correct = (jnp.argmax(logits, -1) == micro["label"]).mean()
        return loss, correct

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if grad_accum_steps == 1:
        (loss, accuracy), grads = grad_fn(state.params, batch, 0)
    else:

        def accumulate(carry, xs):
            index, micro = xs
            (loss, correct), grads = grad_fn(state.params, micro, index)
            return jax.tree.map(jnp.add, carry, (loss, correct, grads)), None

        zeros = (jnp.zeros(()), jnp.zeros(()), jax.tree.map(jnp.zeros_like, state.params))
        (loss, accuracy, grads), _ = jax.lax.scan(
            accumulate,
            zeros,
            (jnp.arange(grad_accum_steps), _micro_batches(batch, grad_accum_steps)),
        )
        loss, accuracy, grads = jax.tree.map(
            lambda x: x / grad_accum_steps, (loss, accuracy, grads)
        )

    grad_norm = optax.global_norm(grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)  # noqa: E731
    new_state = state.replace(
        step=state.step + 1,
        params=keep(params, state.params),
        opt_state=keep(opt_state, state.opt_state),
    )
    metrics = {
        "loss": loss,
        "accuracy": accuracy,
        "grad_norm": grad_norm,
        "learning_rate": schedule(state.step),
    }
    return new_state, metrics


def eval_step(
    params: PyTree, batch: dict, *, model: nn.Module, preprocess: PreprocessFn
) -> dict[str, jax.Array]:
    """Sums over the real (mask=True) examples of a padded eval batch.

    Returns `correct_top1`, `correct_top5`, `loss_sum` (plain cross-entropy against the true
    label, no smoothing) and `count`; the caller adds them over batches, so the final means are
    exact whatever the padding.
    """
    images, _ = preprocess(batch, jax.random.PRNGKey(0), False)
    logits = model.apply({"params": params}, images, train=False)
    labels = batch["label"]
    mask = batch["mask"].astype(jnp.float32)
    k = min(5, logits.shape[-1])
    top5 = jnp.any(jax.lax.top_k(logits, k)[1] == labels[:, None], axis=-1)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return {
        "correct_top1": jnp.sum((jnp.argmax(logits, -1) == labels) * mask),
        "correct_top5": jnp.sum(top5 * mask),
        "loss_sum": jnp.sum(loss * mask),
        "count": jnp.sum(mask),
    }
