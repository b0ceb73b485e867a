"""Nested-ViT: ViT with one nested logit chain over its attention stack."""

import pathlib
import runpy

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nested_tnt_jax import train
from nested_tnt_jax.models import Nesting, create_model, model_config, params_to_scan

NESTED = "nested_vit_cifar_patch8_32"
PLAIN = "vit_cifar_patch8_32"
CONFIGS = pathlib.Path(__file__).resolve().parent.parent / "configs"
RNGS = {"dropout": jax.random.key(11, impl="rbg"), "noise": jax.random.key(12, impl="rbg")}


def _images(batch: int = 2) -> jax.Array:
    return jax.random.normal(jax.random.key(0), (batch, 32, 32, 3))


def _init(model):
    return model.init(jax.random.key(0), _images(1))["params"]


def test_registry_pairs_every_nested_vit_with_its_vit():
    for size in (
        "tiny_patch16_224",
        "small_patch16_224",
        "base_patch16_224",
        "cifar_patch4_32",
        "cifar_patch8_32",
    ):
        assert model_config(f"nested_vit_{size}")[1] == dict(
            model_config(f"vit_{size}")[1], nesting=Nesting(outer=True)
        )


def test_chain_off_computes_vit_from_the_same_params():
    vit = create_model(PLAIN, num_classes=10)
    nested = create_model(NESTED, num_classes=10)
    plain = create_model(NESTED, num_classes=10, nesting={"outer": False})
    nested_params, vit_params = _init(nested), _init(vit)
    # The chain starts at block 0 (no mixer there) and every later block mixes the carried logits.
    assert "mixer" not in nested_params["blocks_0"]["attn"]
    assert all("mixer" in nested_params[f"blocks_{i}"]["attn"] for i in range(1, nested.depth))
    assert jax.tree.structure(vit_params) == jax.tree.structure(_init(plain))
    x = _images()
    ref = vit.apply({"params": vit_params}, x)
    np.testing.assert_array_equal(plain.apply({"params": vit_params}, x), ref)
    np.testing.assert_array_equal(plain.apply({"params": vit_params}, x, train=True), ref)
    # With the chain on, the same attention weights give another model.
    assert (
        float(
            jnp.abs(
                nested.apply({"params": nested_params}, x) - vit.apply({"params": nested_params}, x)
            ).max()
        )
        > 1e-4
    )


def test_noise_only_in_training_and_scale_zero_turns_it_off():
    model = create_model(NESTED, num_classes=10)
    params = _init(model)
    x = _images()
    ev = model.apply({"params": params}, x)
    a = model.apply({"params": params}, x, train=True, rngs=RNGS)
    np.testing.assert_array_equal(a, model.apply({"params": params}, x, train=True, rngs=RNGS))
    assert float(jnp.abs(a - ev).max()) > 1e-4
    quiet = create_model(NESTED, num_classes=10, nesting={"logit_noise": 0.0})
    np.testing.assert_allclose(quiet.apply({"params": params}, x, train=True), ev, atol=1e-6)


def test_scanned_chain_matches_the_loop():
    loop = create_model(NESTED, num_classes=10)
    params = _init(loop)
    scan = create_model(NESTED, num_classes=10, scan_blocks=True)
    scanned = params_to_scan(params)
    assert scanned["blocks"]["attn"]["mixer"]["fc1"]["kernel"].shape[0] == loop.depth - 1
    assert jax.tree.structure(_init(scan)) == jax.tree.structure(scanned)
    x = _images()
    np.testing.assert_allclose(
        scan.apply({"params": scanned}, x), loop.apply({"params": params}, x), atol=1e-5
    )


@pytest.mark.parametrize("arg", ["model=nested_vit", "model=nested_vit,cpu"])
def test_configs_select_nested_vit_with_its_switches(arg):
    config = runpy.run_path(str(CONFIGS / "cifar10.py"))["get_config"](arg)
    train.validate_config(config)
    cpu = arg.endswith("cpu")
    assert config.model.name == (
        "nested_vit_cifar_patch8_32" if cpu else "nested_vit_small_patch16_224"
    )
    nesting = config.model.nesting
    assert nesting.outer is True and nesting.inner is False and nesting.mixer is True
    # The CPU recipe scales the logit noise as it does for Nested-TNT.
    assert nesting.logit_noise == (0.1 if cpu else 1.0)
