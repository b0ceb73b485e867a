"""The real CIFAR-10 (the shared, read-only copy: the `shared_tfds` fixture): exact evaluation
on 8 devices."""

import jax
import numpy as np
import pytest

from nested_tnt_jax import data, sharding

from config_blocks import blocks


@pytest.mark.parametrize("cache_decoded", [False, True])
def test_test_split_is_counted_exactly_once_on_eight_devices(shared_tfds, cache_decoded):
    mesh = sharding.create_mesh()
    global_batch_size = 96  # 10,000 is not a multiple of 96: the last batch is padded.
    local = global_batch_size // jax.process_count()
    evals = data.create_eval_batches(
        *blocks("cifar10", shared_tfds, cache_decoded=cache_decoded),
        split="test",
        global_batch_size=global_batch_size,
        image_size=32,
    )
    assert evals.num_examples == 10_000 and evals.num_steps == 105
    count = jax.jit(lambda b: (b["mask"].sum(), jax.numpy.where(b["mask"], b["index"], -1)))
    masked, indices, labels, steps = 0, [], [], 0
    for host_batch in evals:
        assert host_batch["image"].shape == (local, 32, 32, 3)
        batch = sharding.global_batch(host_batch, mesh)
        assert len(batch["image"].addressable_shards) == 8
        n, index = count(batch)
        masked += int(n)
        indices.append(np.asarray(index))
        labels.append(host_batch["label"][host_batch["mask"]])
        steps += 1
    indices = np.concatenate(indices)
    assert steps == evals.num_steps
    assert masked == 10_000
    np.testing.assert_array_equal(np.sort(indices[indices >= 0]), np.arange(10_000))
    np.testing.assert_array_equal(
        np.bincount(np.concatenate(labels), minlength=10), np.full(10, 1_000)
    )


def test_default_splits_carve_validation_from_train(shared_tfds):
    info = data.dataset_info("cifar10")
    assert data.split_size("cifar10", info.train_split, str(shared_tfds)) == 49_000
    assert data.split_size("cifar10", info.eval_split, str(shared_tfds)) == 1_000
