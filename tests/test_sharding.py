"""Mesh and global batches on 8 simulated CPU devices."""

import jax
import numpy as np
import pytest

from nested_tnt_jax import data, sharding


def test_mesh_spans_all_devices_on_the_data_axis():
    mesh = sharding.create_mesh()
    assert jax.device_count() == 8
    assert dict(mesh.shape) == {sharding.DATA_AXIS: 8, sharding.MODEL_AXIS: 1}
    assert dict(sharding.create_mesh(2).shape) == {sharding.DATA_AXIS: 4, sharding.MODEL_AXIS: 2}
    with pytest.raises(ValueError, match="does not divide the 8 devices"):
        sharding.create_mesh(3)


def test_global_batch_splits_every_leaf_over_the_devices():
    mesh = sharding.create_mesh()
    batch = {
        "image": np.arange(16 * 4 * 4 * 3, dtype=np.uint8).reshape(16, 4, 4, 3),
        "label": np.arange(16, dtype=np.int32),
        "mask": np.arange(16) < 13,
    }
    arrays = sharding.global_batch(batch, mesh)
    for key, value in batch.items():
        assert arrays[key].shape == value.shape and arrays[key].dtype == value.dtype
        assert arrays[key].sharding == sharding.data_sharding(mesh)
        assert len(arrays[key].addressable_shards) == 8
        np.testing.assert_array_equal(np.asarray(arrays[key]), value)
    shard = arrays["label"].addressable_shards[3]
    np.testing.assert_array_equal(np.asarray(shard.data), batch["label"][6:8])


def test_preprocess_runs_sharded_inside_jit():
    mesh = sharding.create_mesh()
    rng = np.random.default_rng(0)
    batch = sharding.global_batch(
        {
            "image": rng.integers(0, 256, (16, 8, 8, 3), dtype=np.uint8),
            "label": rng.integers(0, 10, (16,), dtype=np.int32),
        },
        mesh,
    )
    step = jax.jit(
        lambda b, r: data.preprocess(
            b, r, train=False, image_size=16, num_classes=10, mean=(0.5,) * 3, std=(0.5,) * 3
        )
    )
    images, targets = step(batch, jax.random.key(0))
    assert images.shape == (16, 16, 16, 3) and targets.shape == (16, 10)
    assert images.sharding.is_equivalent_to(sharding.data_sharding(mesh), 4)
