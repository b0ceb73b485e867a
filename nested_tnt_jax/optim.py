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

from nested_tnt_jax.errors import ConfigError, check_range

OPTIMIZERS = ("sgd", "adamw")


def check_config(optim: ml_collections.ConfigDict, total_steps: int | None = None) -> None:
    """Raises ConfigError (naming the field) for an `optim` block that cannot train; with
    `total_steps`, also a warmup that does not end before the run does (`check_warmup`)."""
    if optim.name not in OPTIMIZERS:
        raise ConfigError(
            f"config.optim.name is {optim.name!r}, which is not a known optimiser. "
            f"Set it to one of {', '.join(OPTIMIZERS)}."
        )
    check_range("optim.learning_rate", optim.learning_rate, low=0, hint="the peak of the schedule")
    check_range(
        "optim.momentum",
        optim.momentum,
        low=0,
        high=1,
        high_open=True,
        hint="SGD's momentum; 0 for none",
    )
    check_range("optim.b1", optim.b1, low=0, high=1, high_open=True, hint="AdamW's beta1")
    check_range("optim.b2", optim.b2, low=0, high=1, high_open=True, hint="AdamW's beta2")
    check_range("optim.weight_decay", optim.weight_decay, low=0, hint="0 for none")
    check_range("optim.warmup_steps", optim.warmup_steps, low=0, integer=True)
    check_range(
        "optim.grad_clip_norm",
        optim.grad_clip_norm,
        low=0,
        hint="the global gradient norm to clip to; 0 for no clipping",
    )
    check_range(
        "optim.grad_accum_steps",
        optim.grad_accum_steps,
        low=1,
        integer=True,
        hint="micro-batches per step; 1 for no accumulation",
    )
    if total_steps is not None:
        check_warmup(optim, total_steps)


def check_warmup(optim: ml_collections.ConfigDict, total_steps: int) -> None:
    """Raises ConfigError unless the warmup ends before the last of `total_steps` steps."""
    if optim.warmup_steps and optim.warmup_steps >= total_steps:
        raise ConfigError(
            f"config.optim.warmup_steps is {optim.warmup_steps}, not less than the run's "
            f"{total_steps} steps, so the learning rate would never reach its peak and "
            "decay. Set warmup_steps below the run's length (0 for no warmup), or lengthen "
            "the run."
        )


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
    check_config(optim)
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
                schedule,
                b1=optim.b1,
                b2=optim.b2,
                weight_decay=optim.weight_decay,
                mask=weight_decay_mask,
            )
        )
    return optax.chain(*parts), schedule
