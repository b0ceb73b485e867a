"""Building blocks shared by the model families: MLP, DropPath, initialisers, block stacking.

Names of submodules and parameters follow timm's state_dict keys (`fc1`, `proj`, ...) so a
converted checkpoint reads the same in both libraries; `convert.py` relies on this.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import Primitive

Dtype = Any
PyTree = Any

# timm initialises every Linear with trunc_normal(std=.02) and zero bias.
dense_init = nn.initializers.truncated_normal(0.02)
# PyTorch's default Conv2d init (kaiming_uniform with a=sqrt(5)) has variance 1 / (3 fan_in).
conv_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def dense(features: int, name: str, dtype: Dtype, use_bias: bool = True) -> nn.Dense:
    """A Dense with timm's init and float32 params computing in `dtype`."""
    return nn.Dense(
        features,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=dense_init,
        name=name,
    )


def layer_norm(eps: float, name: str, dtype: Dtype) -> nn.LayerNorm:
    """LayerNorm with an explicit epsilon: timm's TNT uses 1e-5, its ViT 1e-6."""
    return nn.LayerNorm(epsilon=eps, dtype=dtype, param_dtype=jnp.float32, name=name)


def gelu(x: jax.Array) -> jax.Array:
    """Exact GELU in PyTorch's form, x / 2 * (1 + erf(x / sqrt(2))).

    `jax.nn.gelu(approximate=False)` computes the same function through erfc, which XLA expands
    into an exp and several selects; erf is one rational polynomial, faster on CPU
    (docs/performance.md), and it is the formula `torch.nn.GELU` evaluates (the two forms differ
    by at most 1e-6).
    """
    return 0.5 * x * (1.0 + jax.lax.erf(x * jnp.asarray(np.sqrt(0.5), x.dtype)))


class Mlp(nn.Module):
    """timm's Mlp: fc1 -> exact GELU -> dropout -> fc2 -> dropout."""

    hidden_features: int
    out_features: int
    drop: float = 0.0
    deterministic: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = dense(self.hidden_features, "fc1", self.dtype)(x)
        x = gelu(x)
        x = nn.Dropout(self.drop)(x, deterministic=self.deterministic)
        x = dense(self.out_features, "fc2", self.dtype)(x)
        return nn.Dropout(self.drop)(x, deterministic=self.deterministic)


class DropPath(nn.Module):
    """Stochastic depth per sample (the leading axis), as timm's `drop_path`.

    The rate is a call argument rather than a field so that blocks stacked with `nn.scan`
    (which share their fields) can each get their own rate from the linear schedule.
    """

    deterministic: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, rate: float | jax.Array) -> jax.Array:
        if self.deterministic or (isinstance(rate, (int, float)) and rate == 0.0):
            return x
        keep = 1.0 - rate
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        mask = jax.random.bernoulli(self.make_rng("dropout"), keep, shape)
        return jnp.where(mask, x / keep, 0.0).astype(x.dtype)


def drop_path_rates(drop_path_rate: float, depth: int) -> np.ndarray:
    """timm's linear stochastic-depth schedule: 0 at the first block up to the rate at the last."""
    return np.linspace(0.0, drop_path_rate, depth, dtype=np.float32)


# What each scanned block keeps for the backward pass: the outputs of its products, of the
# transcendental functions (softmax's exp, GELU's erf) and of the head mixer (a custom_vjp with
# its own blocked loop); everything else, the elementwise and reduction steps between them, is
# recomputed inside the backward loop. Without a policy, scan's backward reads every
# intermediate the linearised block uses as a stacked residual written by the forward loop,
# (x - mean), the normalised words, the GELU's input..., which unrolled blocks never write out
# because XLA fuses them into their consumers. Saving only these makes the scanned step faster
# and smaller than saving everything (docs/performance.md, "Scanned blocks").
SCAN_SAVED_PRIMITIVES = frozenset(
    {"dot_general", "conv_general_dilated", "exp", "erf", "custom_vjp_call"}
)


def scan_residual_policy(prim: Primitive, *_, **__) -> bool:
    """`jax.checkpoint` policy of scanned blocks: save what `SCAN_SAVED_PRIMITIVES` names."""
    return prim.name in SCAN_SAVED_PRIMITIVES


def stack_blocks(
    block: type[nn.Module],
    block_kwargs: dict[str, Any],
    carry: PyTree,
    rates: np.ndarray,
    *,
    scan: bool,
    remat: bool,
) -> PyTree:
    """Apply `len(rates)` blocks to `carry` (each `block(carry, rate) -> (carry, None)`).

    Block 0 always runs on its own as `blocks_0`: in a nested model it starts the logit chains
    (its carried logits come in as None) and has no mixer, so it differs structurally from the
    rest. The rest run either as a Python loop (`blocks_1`, `blocks_2`, ... like timm's
    `blocks.1`, ...) or, with `scan`, as one
    `nn.scan` named `blocks` whose params are stacked over a leading depth axis (faster to
    compile for deep models), each block under `scan_residual_policy` unless `remat` saves
    nothing. `params_to_scan` / `params_to_loop` convert between the two.
    """
    cls = nn.remat(block) if remat else block
    carry, _ = cls(**block_kwargs, name="blocks_0")(carry, float(rates[0]))
    if len(rates) == 1:
        return carry
    if scan:
        body = cls if remat else nn.remat(block, policy=scan_residual_policy)
        scanned = nn.scan(
            body,
            variable_axes={"params": 0},
            split_rngs={"params": True, "dropout": True, "noise": True},
            in_axes=0,
            length=len(rates) - 1,
        )
        carry, _ = scanned(**block_kwargs, name="blocks")(carry, jnp.asarray(rates[1:]))
        return carry
    for i, rate in enumerate(rates[1:], start=1):
        carry, _ = cls(**block_kwargs, name=f"blocks_{i}")(carry, float(rate))
    return carry


def params_to_scan(params: PyTree) -> PyTree:
    """Loop layout (`blocks_0`, `blocks_1`, ...) -> scan layout (`blocks_0`, stacked `blocks`)."""
    params = dict(params)
    rest = []
    i = 1
    while f"blocks_{i}" in params:
        rest.append(params.pop(f"blocks_{i}"))
        i += 1
    if rest:
        params["blocks"] = jax.tree.map(lambda *xs: jnp.stack(xs), *rest)
    return params


def params_to_loop(params: PyTree) -> PyTree:
    """Scan layout (`blocks_0`, stacked `blocks`) -> loop layout (`blocks_0`, `blocks_1`, ...)."""
    params = dict(params)
    stacked = params.pop("blocks", None)
    if stacked is not None:
        depth = jax.tree.leaves(stacked)[0].shape[0]
        for i in range(depth):
            params[f"blocks_{i + 1}"] = jax.tree.map(lambda x, i=i: x[i], stacked)
    return params
