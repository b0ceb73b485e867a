"""Print a Markdown table of every registered model: parameters and GFLOPs per image.

FLOPs come from XLA's cost analysis of the jitted eval forward at batch 1 and the model's own
resolution (`jax.jit(...).lower(...).cost_analysis()`, nothing is run or initialised: the
params are abstract shapes). XLA counts a multiply-add as 2 FLOPs; papers (TNT, timm) quote
multiply-adds, so their "FLOPs" are about half of these.

Usage: python benchmarks/model_table.py [name ...]
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np

from nested_tnt_jax.models import create_model, list_models


def model_row(name: str) -> tuple[str, int, int, float]:
    """(name, img_size, parameter count, GFLOPs per image) for registered model `name`."""
    model = create_model(name)
    images = jax.ShapeDtypeStruct((1, model.img_size, model.img_size, 3), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), images)
    params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables))
    lowered = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(variables, images)
    cost = lowered.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return name, model.img_size, params, float(cost["flops"]) / 1e9


def main(names: list[str]) -> None:
    print("| model | resolution | parameters | GFLOPs / image |")
    print("|---|---:|---:|---:|")
    for name in names or list_models():
        name, size, params, gflops = model_row(name)
        print(f"| `{name}` | {size} | {params:,} | {gflops:.3f} |", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
