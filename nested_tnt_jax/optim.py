"""Optimiser: learning-rate schedule, weight-decay mask, gradient clipping.

The paper trains with SGD (momentum 0.9), a cosine decay after a linear warmup, and weight decay
applied to weight matrices only. Everything here is a pure function of the config so that the
train loop, the tests and the step function all build the same transformation.

Gradient accumulation is not an optax wrapper here: `steps.train_step` scans over micro-batches
and applies the optimiser once per step, so a "step" always means one update on `batch_size`
examples whatever `optim.grad_accum_steps` is.
"""

from typing import Any

import jax
import ml_collections
import optax

OPTIMIZERS = ("sgd", "adamw")


def learning_rate_schedule(optim: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to `optim.learning_rate`, then cosine decay to 0 at `total_steps`."""
    warmup = min(optim.warmup_steps, max(total_steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=optim.learning_rate,
        warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1),
        end_value=0.0,
    )


def weight_decay_mask(params: Any) -> Any:
    """True for the leaves that get weight decay: the `kernel`s of dense and conv layers.

    Norm scales and biases, position embeddings and the class token are excluded, as in the
    paper (and DeiT/TNT): decaying them only shrinks offsets and learned positions.
    Deciding by leaf name keeps the rule independent of how a model family names its
    embeddings: only parameters Flax calls `kernel` are matrices applied to activations.
    """

    def is_kernel(path: tuple, _: Any) -> bool:
        last = path[-1]
        name = getattr(last, "key", getattr(last, "name", last))
        return name == "kernel"

    return jax.tree_util.tree_map_with_path(is_kernel, params)


def create_optimizer(
    optim: ml_collections.ConfigDict, total_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optax transformation for `optim` (a config's `optim` block) and its LR schedule.

    Order: clip the global gradient norm, then the optimiser with masked weight decay. For SGD
    the decay is added to the gradient before momentum (PyTorch's `SGD(weight_decay=)`, which
    the paper used); AdamW uses decoupled decay.
    """
    if optim.name not in OPTIMIZERS:
        raise ValueError(
            f"config.optim.name is {optim.name!r}, which is not a known optimiser. "
            f"Set it to one of {', '.join(OPTIMIZERS)}."
        )
    schedule = learning_rate_schedule(optim, total_steps)
    parts = []
    if optim.grad_clip_norm and optim.grad_clip_norm > 0:
        parts.append(optax.clip_by_global_norm(optim.grad_clip_norm))
    if optim.name == "sgd":
        if optim.weight_decay:
            parts.append(optax.add_decayed_weights(optim.weight_decay, mask=weight_decay_mask))
        parts.append(optax.sgd(schedule, momentum=optim.momentum or None))
    else:
        parts.append(
            optax.adamw(
                schedule, b1=optim.b1, b2=optim.b2,
                weight_decay=optim.weight_decay, mask=weight_decay_mask,
            )
        )
    return optax.chain(*parts), schedule
