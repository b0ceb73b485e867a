"""Input pipeline on TFDS mock data: shapes, sharding by process, exact eval, determinism,
resume, fail-fast on a missing dataset, host augmentation and on-device preprocessing."""

import contextlib
import functools
import socket
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from nested_tnt_jax import data
from nested_tnt_jax.data import augment, pipeline

from config_blocks import blocks

NUM_EXAMPLES = 40


@contextlib.contextmanager
def mocked(num_examples=NUM_EXAMPLES):
    """TFDS mock data for every dataset: `num_examples` random records per split."""
    with tfds.testing.mock_data(num_examples=num_examples):
        yield


def source_images(name, split, tmp_path):
    source = data.open_source(name, split, str(tmp_path))
    return [source[i]["image"] for i in range(len(source))]


def identify(images, reference):
    """Position in `reference` of each image (the un-augmented pipeline returns them as is)."""
    keys = {img.tobytes(): i for i, img in enumerate(reference)}
    return [keys[img.tobytes()] for img in images]


def plain_train(name, tmp_path, **kwargs):
    """A train iterator whose images are the source images: records can be identified."""
    kwargs.setdefault("global_batch_size", 8)
    return data.create_train_iterator(
        *blocks(name, tmp_path, train_split="train", crop="pad", pad=0, flip=False),
        image_size=32,
        **kwargs,
    )


def test_dataset_table():
    for name in ("cifar10", "cifar100", "oxford_flowers102"):
        info = data.dataset_info(name)
        assert info.name == name
        assert len(info.mean) == len(info.std) == 3
    assert data.dataset_info("cifar100").num_classes == 100
    assert data.dataset_info("oxford_flowers102").eval_split == "validation"
    assert data.dataset_info("cifar10").eval_split == "train[98%:]"
    with pytest.raises(ValueError, match="supports"):
        data.dataset_info("imagenet")


def test_resolve_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    assert data.resolve_data_dir(None) == str(tmp_path)
    assert data.resolve_data_dir("/x") == "/x"


@pytest.mark.parametrize(
    "name,size", [("cifar10", 32), ("cifar100", 48), ("oxford_flowers102", 40)]
)
def test_train_and_eval_batches_have_the_interface_shapes(name, size, tmp_path):
    with mocked():
        train = data.create_train_iterator(
            *blocks(name, tmp_path), global_batch_size=8, image_size=size, seed=0
        )
        batch = next(train)
        evals = data.create_eval_batches(
            *blocks(name, tmp_path),
            split=data.dataset_info(name).eval_split,
            global_batch_size=16,
            image_size=size,
        )
        eval_batch = next(iter(evals))
    assert batch["image"].shape == (8, size, size, 3) and batch["image"].dtype == np.uint8
    assert batch["label"].shape == (8,) and batch["label"].dtype == np.int32
    assert set(batch) == {"image", "label"}
    assert eval_batch["image"].shape == (16, size, size, 3)
    assert eval_batch["mask"].dtype == np.bool_ and eval_batch["index"].dtype == np.int32
    assert np.all(batch["label"] < data.dataset_info(name).num_classes)


def test_flowers_mock_images_vary_in_size(tmp_path):
    with mocked():
        shapes = {img.shape for img in source_images("oxford_flowers102", "train", tmp_path)}
    assert len(shapes) > 1


@pytest.mark.parametrize("global_batch", [8, 12])
def test_eval_counts_every_example_once_over_simulated_processes(global_batch, tmp_path):
    num_examples = 37  # does not divide by the batch sizes
    seen, masked, steps, rows = [], 0, set(), {}
    make = functools.partial(
        data.create_eval_batches,
        *blocks("cifar10", tmp_path),
        split="test",
        global_batch_size=global_batch,
        image_size=32,
    )
    with mocked(num_examples):
        for process in range(2):
            evals = make(process_index=process, process_count=2)
            batches = list(evals)
            steps.add((len(batches), evals.num_steps, len(evals)))
            for step, batch in enumerate(batches):
                assert batch["image"].shape[0] == global_batch // 2
                masked += int(batch["mask"].sum())
                seen.extend(batch["index"][batch["mask"]].tolist())
                assert np.all(batch["index"][~batch["mask"]] == -1)
                rows.setdefault(step, []).extend(batch["index"].tolist())
        alone = [b["index"].tolist() for b in make(process_index=0, process_count=1)]
    assert steps == {(-(-num_examples // global_batch),) * 3}
    assert alone == [rows[step] for step in sorted(rows)]  # the same global batches
    assert masked == num_examples == evals.num_examples
    assert sorted(seen) == list(range(num_examples))


def test_eval_passes_repeat_identically(tmp_path):
    with mocked():
        evals = data.create_eval_batches(
            *blocks("oxford_flowers102", tmp_path),
            split="validation",
            global_batch_size=16,
            image_size=24,
        )
        first = [b["image"] for b in evals]
        second = [b["image"] for b in evals]
    assert len(first) == evals.num_steps == 3
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)


class CountingSource:
    """A source that counts the records read from it."""

    def __init__(self, source):
        self.source, self.reads = source, 0

    def __len__(self):
        return len(self.source)

    def __getitem__(self, key):
        self.reads += 1
        return self.source[key]


def test_decoded_source_reads_each_record_once_and_serves_it_from_memory(tmp_path):
    with mocked():
        source = data.open_source("oxford_flowers102", "train", str(tmp_path))
        counting = CountingSource(source)
        decoded = pipeline.DecodedSource(counting)
        assert counting.reads == len(decoded) == NUM_EXAMPLES
        for i in range(NUM_EXAMPLES):
            record = source[i]
            assert set(decoded[i]) == {"image", "label"}
            np.testing.assert_array_equal(decoded[i]["image"], record["image"])
            assert decoded[i]["label"] == record["label"]
    assert counting.reads == NUM_EXAMPLES


def test_cached_splits_give_the_same_batches(tmp_path):
    def batches(cache_decoded):
        train = data.create_train_iterator(
            *blocks("cifar10", tmp_path, cache_decoded=cache_decoded),
            global_batch_size=8,
            image_size=32,
            seed=1,
            start_step=3,
        )
        evals = data.create_eval_batches(
            *blocks("cifar10", tmp_path, cache_decoded=cache_decoded),
            split="train[98%:]",
            global_batch_size=16,
            image_size=32,
        )
        return [next(train) for _ in range(6)] + list(evals)

    with mocked():
        cached, read = batches(True), batches(False)
    assert len(cached) == len(read) == 6 + 3
    for x, y in zip(cached, read):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])


def test_cached_flowers_keep_small_images_and_the_same_eval_batches(tmp_path):
    """Varying-size images in memory: training ones shrunk to twice the host size (the crops
    are cut from them), eval ones stored as their views, so eval batches are unchanged and
    still count every image once."""
    size = 8  # below the mock images' sizes, so that the training images are shrunk

    def evals(cache_decoded):
        return list(
            data.create_eval_batches(
                *blocks("oxford_flowers102", tmp_path, cache_decoded=cache_decoded),
                split="test",
                global_batch_size=16,
                image_size=size,
            )
        )

    with mocked(37):
        cached, read = evals(True), evals(False)
        source = data.open_source("oxford_flowers102", "train", str(tmp_path))
        train = data.create_train_iterator(
            *blocks("oxford_flowers102", tmp_path, cache_decoded=True),
            global_batch_size=8,
            image_size=size,
            seed=0,
        )
        batch = next(train)
    assert len(cached) == len(read) == 3
    for x, y in zip(cached, read):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])
    assert sum(int(b["mask"].sum()) for b in cached) == 37
    assert batch["image"].shape == (8, size, size, 3)
    stored = pipeline.DecodedSource(
        source, functools.partial(augment.shrink, short_side=pipeline.CACHED_TRAIN_SCALE * size)
    )
    for i in range(len(source)):
        original, kept = source[i]["image"], stored[i]["image"]
        assert min(kept.shape[:2]) == min(min(original.shape[:2]), 2 * size)
        ratio = (original.shape[0] / original.shape[1]) / (kept.shape[0] / kept.shape[1])
        assert abs(np.log(ratio)) < 0.2  # aspect kept (up to rounding of small sides)


def test_shrink_only_ever_downscales():
    image = np.random.default_rng(0).integers(0, 256, (40, 100, 3), np.uint8)
    assert augment.shrink(image, 20).shape == (20, 50, 3)
    assert augment.shrink(image, 40) is image and augment.shrink(image, 64) is image


def test_processes_read_their_rows_of_the_one_process_batches(tmp_path):
    """The global batch is the same records whatever the process count; epochs reshuffle."""
    with mocked():
        reference = source_images("cifar10", "train", tmp_path)
        alone = plain_train("cifar10", tmp_path, seed=3, process_index=0, process_count=1)
        pair = [
            plain_train("cifar10", tmp_path, seed=3, process_index=p, process_count=2)
            for p in range(2)
        ]
        # 40 records, global batch 8: 5 batches per epoch; 10 batches cross into epoch two.
        ids = [identify(next(alone)["image"], reference) for _ in range(10)]
        for batch in ids:
            rows = sum((identify(next(it)["image"], reference) for it in pair), [])
            assert rows == batch
    first, second = sum(ids[:5], []), sum(ids[5:], [])
    assert sorted(first) == sorted(second) == list(range(NUM_EXAMPLES))
    assert first != second


def test_same_seed_same_batches_other_seed_other_batches(tmp_path):
    def take(seed):
        train = data.create_train_iterator(
            *blocks("oxford_flowers102", tmp_path), global_batch_size=8, image_size=24, seed=seed
        )
        return [next(train) for _ in range(3)]

    with mocked():
        a, b, c = take(1), take(1), take(2)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["label"], y["label"])
    assert not all(np.array_equal(x["image"], z["image"]) for x, z in zip(a, c))


def test_start_step_yields_the_uninterrupted_batches(tmp_path):
    """A resumed run's iterator (start_step=k) continues the batches of an uninterrupted one."""
    make = lambda start: data.create_train_iterator(  # noqa: E731
        *blocks("cifar10", tmp_path), global_batch_size=12, image_size=32, seed=7, start_step=start
    )
    with mocked():
        run = make(0)
        expected = [next(run) for _ in range(7)][2:]  # crosses the epoch boundary at 40 records
        resumed = make(2)
        got = [next(resumed) for _ in range(5)]
    for x, y in zip(expected, got):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["label"], y["label"])


def test_batch_size_must_split_over_processes(tmp_path):
    with mocked(), pytest.raises(ValueError, match="multiple of the number of processes"):
        data.create_train_iterator(
            *blocks("cifar10", tmp_path),
            global_batch_size=9,
            image_size=32,
            seed=0,
            process_index=0,
            process_count=2,
        )


def test_unknown_crop_mode_is_rejected(tmp_path):
    with mocked(), pytest.raises(ValueError, match="augment.crop"):
        data.create_train_iterator(
            *blocks("cifar10", tmp_path, crop="center"), global_batch_size=8, image_size=32, seed=0
        )


def test_missing_dataset_fails_fast_with_placement_hint(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(socket, "create_connection", offline)  # hermetic: no network
    start = time.monotonic()
    with pytest.raises(FileNotFoundError) as error:
        data.create_eval_batches(
            *blocks("cifar100", tmp_path), split="test", global_batch_size=8, image_size=32
        )
    assert time.monotonic() - start < 15
    message = str(error.value)
    assert "'cifar100'" in message and str(tmp_path) in message
    assert "cifar-100-binary.tar.gz" in message
    assert str(tmp_path / "downloads" / "manual") in message
    assert not list((tmp_path / "cifar100").glob("*/*.array_record*"))


def test_archives_in_manual_dir_are_prepared_offline(tmp_path, monkeypatch):
    prepared = []

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    def record_prepare(builder, **kwargs):
        prepared.append((builder.name, kwargs["download_config"].manual_dir))

    monkeypatch.setattr(socket, "create_connection", offline)
    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", record_prepare)
    manual = tmp_path / "downloads" / "manual"
    manual.mkdir(parents=True)
    (manual / "cifar-10-binary.tar.gz").touch()
    with pytest.raises(Exception):  # noqa: B017 (the recording stub prepares nothing: TFDS raises)
        data.open_source("cifar10", "test", str(tmp_path))
    assert prepared == [("cifar10", str(manual))]


# Host augmentation.


def test_pad_and_crop_shifts_the_image_inside_zero_padding():
    image = np.arange(1, 8 * 8 * 3 + 1, dtype=np.uint8).reshape(8, 8, 3)
    crops = [augment.pad_and_crop(image, np.random.default_rng(s), 2) for s in range(20)]
    assert all(c.shape == image.shape for c in crops)
    assert any(not np.array_equal(c, image) for c in crops)
    for crop in crops:  # every crop is a window of the padded image
        padded = np.pad(image, ((2, 2), (2, 2), (0, 0)))
        assert any(
            np.array_equal(padded[t : t + 8, x : x + 8], crop) for t in range(5) for x in range(5)
        )


def test_random_resized_crop_and_eval_view_reach_the_host_size():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (50, 30, 3), dtype=np.uint8)
    for _ in range(10):
        assert augment.random_resized_crop(image, rng, 24).shape == (24, 24, 3)
    assert augment.eval_view(image, crop="random_resized", size=24).shape == (24, 24, 3)
    np.testing.assert_array_equal(
        augment.eval_view(image[:24, :24], crop="pad", size=24), image[:24, :24]
    )


def test_train_view_flip_is_deterministic_per_rng():
    image = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    views = [
        augment.train_view(image, np.random.default_rng(s), crop="pad", pad=0, flip=True, size=32)
        for s in range(16)
    ]
    flipped = [np.array_equal(v, image[:, ::-1]) for v in views]
    assert any(flipped) and not all(flipped)
    again = augment.train_view(
        image, np.random.default_rng(0), crop="pad", pad=0, flip=True, size=32
    )
    np.testing.assert_array_equal(again, views[0])


# On-device preprocessing.

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def uint8_batch(n=8, size=16, num_classes=10, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "image": rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
        "label": rng.integers(0, num_classes, (n,), dtype=np.int32),
    }


@functools.lru_cache(maxsize=None)
def jitted_preprocess(options):
    """One compiled preprocess per option set: compiling Beta sampling takes seconds."""
    return jax.jit(lambda b, r: data.preprocess(b, r, **dict(options)))


def run_preprocess(batch, seed=0, **kwargs):
    kwargs = {
        "train": True,
        "image_size": 16,
        "num_classes": 10,
        "mean": MEAN,
        "std": STD,
        **kwargs,
    }
    return jitted_preprocess(tuple(sorted(kwargs.items())))(batch, jax.random.key(seed))


def test_preprocess_normalises_and_one_hots_without_mixing():
    batch = uint8_batch()
    images, targets = run_preprocess(batch, train=False, mixup_alpha=0.8, cutmix_alpha=1.0)
    expected = (batch["image"] / 255.0 - np.array(MEAN)) / np.array(STD)
    np.testing.assert_allclose(images, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(targets, np.eye(10)[batch["label"]])
    assert images.dtype == jnp.float32


def test_preprocess_resizes_bicubic_to_the_model_resolution():
    batch = uint8_batch(size=8)
    images, _ = run_preprocess(batch, train=False, image_size=24)
    assert images.shape == (8, 24, 24, 3)
    flat = {"image": np.full((2, 8, 8, 3), 128, np.uint8), "label": np.zeros(2, np.int32)}
    images, _ = run_preprocess(flat, train=False, image_size=24)
    expected = np.broadcast_to((128 / 255.0 - np.array(MEAN)) / np.array(STD), images.shape)
    np.testing.assert_allclose(images, expected, rtol=1e-4, atol=1e-4)


def test_label_smoothing_values():
    batch = uint8_batch()
    _, targets = run_preprocess(batch, train=False, label_smoothing=0.1)
    on = targets[np.arange(8), batch["label"]]
    np.testing.assert_allclose(on, 0.9 + 0.01, rtol=1e-6)
    np.testing.assert_allclose(targets.sum(-1), 1.0, rtol=1e-6)


@pytest.mark.parametrize("mixup_alpha,cutmix_alpha", [(0.8, 0.0), (0.0, 1.0), (0.8, 1.0)])
def test_mixed_targets_sum_to_one_and_blend_two_labels(mixup_alpha, cutmix_alpha):
    batch = uint8_batch(seed=3)
    plain, plain_targets = run_preprocess(batch, train=False, label_smoothing=0.1)
    for seed in range(4):
        images, targets = run_preprocess(
            batch,
            seed=seed,
            mixup_alpha=mixup_alpha,
            cutmix_alpha=cutmix_alpha,
            label_smoothing=0.1,
        )
        np.testing.assert_allclose(targets.sum(-1), 1.0, rtol=1e-5)
        assert not np.allclose(images, plain)
        assert not np.allclose(targets, plain_targets)
        # Each example's target mixes only its own label and its partner's (batch reversed).
        support = (np.asarray(targets) > 0.011).sum(-1)
        assert np.all(support <= 2)


def test_cutmix_pastes_a_box_from_the_partner_and_weights_targets_by_area():
    batch = uint8_batch(seed=5)
    images, targets = run_preprocess(batch, seed=1, cutmix_alpha=1.0, label_smoothing=0.1)
    plain, _ = run_preprocess(batch, train=False, label_smoothing=0.1)
    images, plain = np.asarray(images), np.asarray(plain)
    from_self = np.all(np.isclose(images, plain), axis=-1)
    from_partner = np.all(np.isclose(images, plain[::-1]), axis=-1)
    assert np.all(from_self | from_partner)
    lam = from_self[0].mean()
    label, partner = batch["label"][0], batch["label"][-1]
    if label != partner:
        np.testing.assert_allclose(targets[0, label], lam * 0.9 + 0.01, atol=1e-5)


def test_preprocess_is_deterministic_in_the_rng():
    batch = uint8_batch()
    a = run_preprocess(batch, seed=9, mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1)
    b = run_preprocess(batch, seed=9, mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def test_worker_process_batches_match_in_process_ones_and_resume(tmp_path):
    """Batches do not depend on the worker count, and start_step works with workers."""
    make = lambda workers, start=0: data.create_train_iterator(  # noqa: E731
        *blocks("oxford_flowers102", tmp_path, worker_count=workers, prefetch=1),
        global_batch_size=8,
        image_size=24,
        seed=4,
        start_step=start,
    )
    evals = lambda workers: [  # noqa: E731
        b["index"].tolist()
        for b in data.create_eval_batches(
            *blocks("oxford_flowers102", tmp_path, worker_count=workers, prefetch=1),
            split="validation",
            global_batch_size=16,
            image_size=24,
        )
    ]
    with mocked():
        in_process = make(0)
        reference = [next(in_process) for _ in range(3)]
        workers = make(2)
        for expected in reference:
            np.testing.assert_array_equal(next(workers)["image"], expected["image"])
        resumed = make(2, start=1)  # starts on the second worker's turn
        for expected in reference[1:]:
            np.testing.assert_array_equal(next(resumed)["image"], expected["image"])
        del workers, resumed
        assert evals(2) == evals(0) and len(evals(0)) == 3  # 40 records: 3 batches of 16
