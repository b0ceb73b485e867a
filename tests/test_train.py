"""End-to-end runs under TFDS mock data on 8 simulated devices with tiny models.

Covers every config, exact resumption after SIGTERM, fine-tuning with a new head, and the
NaN stop. Runs are shared through module fixtures because each one compiles its steps.
"""

import json
import os
import pathlib
import runpy
import signal
from unittest import mock

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from nested_tnt_jax import checkpointing, data, metrics, train
from nested_tnt_jax.data import integrity

CONFIGS = pathlib.Path(__file__).resolve().parent.parent / "configs"
TINY = {
    "vit": dict(embed_dim=16, depth=1, num_heads=2, mlp_ratio=1.0),
    "tnt": dict(
        embed_dim=16, depth=2, inner_dim=8, num_heads_outer=2, num_heads_inner=1, mlp_ratio=1.0
    ),
}
RESULT_KEYS = {
    "test_top1",
    "test_top5",
    "test_loss",
    "test_examples",
    "num_params",
    "steps",
    "train_img_per_sec_per_device",
    "wall_time_s",
}


def tiny_config(name: str, model: str, steps: int = 4):
    """A config file's setup shrunk to seconds: tiny 32 px model, batch 16, frequent events."""
    arg = f"model={model}" if name == "flowers102" else f"model={model},cpu"
    config = runpy.run_path(str(CONFIGS / f"{name}.py"))["get_config"](arg)
    family = "vit" if model == "vit" else "tnt"
    config.model.name = f"{model}_cifar_patch8_32"
    config.model.overrides.update(TINY[family])
    config.model.overrides.drop_path_rate = 0.1  # Exercise the dropout rng stream.
    config.image_size = 32
    config.input.host_image_size = 32
    config.batch_size = 16
    config.num_train_steps = steps
    config.optim.warmup_steps = 1 if steps > 1 else 0
    config.log_every_steps = config.eval_every_steps = config.checkpoint_every_steps = 2
    return config


def _count_mock_split(dataset, split, data_dir, field):
    """Mock data has no files to read through: the split's size is its source's length."""
    return len(data.open_source(dataset, split, data_dir))


def run(config, workdir):
    with (
        tfds.testing.mock_data(num_examples=40),
        mock.patch.object(integrity, "check_split", _count_mock_split),
    ):
        return train.train_and_evaluate(config, str(workdir))


@pytest.fixture(scope="module")
def c10_run(tmp_path_factory):
    """Nested-TNT on cifar10 (mixup on, so the mix rng stream is used), 4 steps."""
    config = tiny_config("cifar10", "nested_tnt")
    config.augment.mixup_alpha = 0.8
    workdir = tmp_path_factory.mktemp("c10")
    return config, workdir, run(config, workdir)


@pytest.fixture(scope="module")
def c100_run(tmp_path_factory):
    config = tiny_config("cifar100", "vit", steps=2)
    workdir = tmp_path_factory.mktemp("c100")
    return config, workdir, run(config, workdir)


def check_outputs(workdir, results, steps, test_examples, validated=True):
    saved = json.loads((workdir / metrics.RESULTS_FILE).read_text())
    assert RESULT_KEYS <= set(saved)
    assert saved == json.loads(json.dumps(results))
    assert saved["steps"] == steps and saved["test_examples"] == test_examples
    assert 0.0 <= saved["test_top1"] <= saved["test_top5"] <= 1.0
    assert np.isfinite(saved["test_loss"]) and saved["num_params"] > 0
    history = metrics.read_history(str(workdir))
    assert [h["split"] for h in history][-1] == "test"
    # Validation runs every eval_every_steps except at the last step (the test follows).
    assert any(h["split"] == "eval" for h in history) == validated
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir))
    assert os.path.isdir(workdir / checkpointing.CHECKPOINT_DIR / str(steps))


def test_cifar10_nested_tnt_end_to_end(c10_run):
    _, workdir, results = c10_run
    check_outputs(workdir, results, steps=4, test_examples=40)


def test_cifar100_end_to_end(c100_run):
    _, workdir, results = c100_run
    check_outputs(workdir, results, steps=2, test_examples=40, validated=False)


def test_flowers102_end_to_end(tmp_path):
    config = tiny_config("flowers102", "vit", steps=2)
    assert config.augment.crop == "random_resized"
    results = run(config, tmp_path)
    check_outputs(tmp_path, results, steps=2, test_examples=40, validated=False)


def test_sigterm_then_resume_equals_uninterrupted(c10_run, tmp_path, monkeypatch):
    config, reference_dir, _ = c10_run
    calls = {"n": 0}
    original = checkpointing.StopSignal.is_set

    def terminate_at_step_3(self):
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self)

    monkeypatch.setattr(checkpointing.StopSignal, "is_set", terminate_at_step_3)
    assert run(config, tmp_path) is None  # Stopped: checkpoint at step 3, no results.
    assert not (tmp_path / metrics.RESULTS_FILE).exists()
    assert sorted(os.listdir(tmp_path / checkpointing.CHECKPOINT_DIR)) == ["2", "3"]
    monkeypatch.undo()

    results = run(config, tmp_path)
    assert results["resumed_from_step"] == 3 and results["steps"] == 4
    resumed = checkpointing.load_run_params(str(tmp_path))
    reference = checkpointing.load_run_params(str(reference_dir))
    for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(reference)):
        np.testing.assert_array_equal(a, b)


def test_finetune_from_run_with_other_class_count(c100_run, tmp_path):
    _, c100_dir, _ = c100_run
    config = tiny_config("cifar10", "vit", steps=1)
    config.init_from = str(c100_dir)
    config.optim.learning_rate = 0.0  # Params after the step are the loaded ones.
    run(config, tmp_path)
    pretrained = checkpointing.load_run_params(str(c100_dir))
    tuned = checkpointing.load_run_params(str(tmp_path))
    assert pretrained["head"]["kernel"].shape[-1] == 100
    assert tuned["head"]["kernel"].shape[-1] == 10
    flat_pre = dict(jax.tree_util.tree_leaves_with_path(pretrained))
    for path, value in jax.tree_util.tree_leaves_with_path(tuned):
        if path[0].key != "head":
            np.testing.assert_array_equal(value, flat_pre[path])


def test_finetune_refuses_a_different_body(c100_run, tmp_path):
    _, c100_dir, _ = c100_run
    config = tiny_config("cifar10", "vit", steps=1)
    config.model.overrides.embed_dim = 32
    config.init_from = str(c100_dir)
    with pytest.raises(ValueError, match="does not match the model"):
        run(config, tmp_path)


def test_non_finite_loss_stops_with_step_and_metric(tmp_path, monkeypatch):
    config = tiny_config("cifar10", "vit", steps=4)
    config.log_every_steps = config.checkpoint_every_steps = 1
    original = data.preprocess

    def poisoned(batch, rng, *, train, **kwargs):
        images, targets = original(batch, rng, train=train, **kwargs)
        return (images * np.inf if train else images), targets

    monkeypatch.setattr(data, "preprocess", poisoned)
    with pytest.raises(FloatingPointError, match=r"loss is nan at step 1"):
        run(config, tmp_path)
    assert not os.path.exists(tmp_path / checkpointing.CHECKPOINT_DIR / "1")


def test_finetune_from_timm_checkpoint(tmp_path):
    """init_from a timm ViT file (safetensors) with 100 classes: body loaded, new 10-way head."""
    import timm.models.vision_transformer as tv
    from safetensors.torch import save_file

    from nested_tnt_jax import convert

    torch_model = tv.VisionTransformer(
        img_size=32,
        patch_size=8,
        embed_dim=128,
        depth=4,
        num_heads=4,
        mlp_ratio=2.0,
        num_classes=100,
    )
    path = str(tmp_path / "vit.safetensors")
    save_file({k: v.contiguous() for k, v in torch_model.state_dict().items()}, path)
    config = tiny_config("cifar10", "vit", steps=1)
    config.model.overrides = {"drop_path_rate": 0.0}  # The registered shape, as timm's.
    config.init_from = path
    config.optim.learning_rate = 0.0
    run(config, tmp_path / "run")
    tuned = checkpointing.load_run_params(str(tmp_path / "run"))
    expected = convert.timm_to_flax(convert.load_checkpoint_file(path), config.model.name)
    assert tuned["head"]["kernel"].shape == (128, 10)
    np.testing.assert_array_equal(
        tuned["blocks_3"]["mlp"]["fc2"]["kernel"], expected["blocks_3"]["mlp"]["fc2"]["kernel"]
    )
    np.testing.assert_array_equal(tuned["pos_embed"], expected["pos_embed"])


def test_history_with_a_torn_last_line_reads_its_complete_rows(tmp_path):
    """A kill while a row is written leaves half a line; the resume reads the rows before it.
    A damaged row anywhere else is not silently dropped."""
    rows = [{"step": 1, "split": "train", "loss": 2.0}, {"step": 2, "split": "eval", "top1": 0.5}]
    text = "".join(json.dumps(r) + "\n" for r in rows)
    path = tmp_path / metrics.HISTORY_FILE
    path.write_text(text + '{"step": 3, "spl')
    assert metrics.read_history(str(tmp_path)) == rows
    path.write_text('{"step": 1, "spl\n' + text)
    with pytest.raises(json.JSONDecodeError):
        metrics.read_history(str(tmp_path))
