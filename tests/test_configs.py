"""Configs: every setup loads with registered names, arguments parse, bad configs are refused
before any work (and before anything is written)."""

import dataclasses
import importlib
import os
import pathlib
import re
import runpy
import subprocess
import sys

import jax
import ml_collections
import pytest

from nested_tnt_jax import data, models, train
from nested_tnt_jax.models import registry

CONFIGS = pathlib.Path(__file__).resolve().parent.parent / "configs"


def get_config(name: str, arg: str | None = None):
    return runpy.run_path(str(CONFIGS / f"{name}.py"))["get_config"](arg)


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "flowers102"])
@pytest.mark.parametrize("family", ["vit", "tnt", "nested_tnt"])
def test_paper_configs_are_valid(name, family):
    config = get_config(name, f"model={family}")
    assert config.model.name in models.list_models()
    assert config.model.name.startswith(family + "_")
    assert config.dataset.name in data.DATASETS
    assert config.image_size == 224
    assert config.optim.name == "sgd" and config.optim.momentum == 0.9
    assert config.augment.label_smoothing == 0.1 and config.augment.mixup_alpha > 0
    train.validate_config(config)


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cpu_variant_uses_cifar_models_at_32px(name):
    config = get_config(name, "model=nested_tnt,cpu")
    assert config.model.name == "nested_tnt_cifar_patch8_word4_32"
    assert config.image_size == 32
    train.validate_config(config)


def test_arguments_set_steps_and_batch():
    config = get_config("cifar10", "model=tnt,cpu,steps=7,batch=64")
    assert (config.model.name, config.num_train_steps, config.batch_size) == (
        "tnt_cifar_patch8_word4_32",
        7,
        64,
    )


@pytest.mark.parametrize(
    "steps, warmup", [(1, 0), (9, 0), (20, 2), (100, 10), (101, 100), (300, 100), (5000, 100)]
)
def test_steps_shorten_a_warmup_that_would_not_end_to_a_tenth_of_the_run(steps, warmup):
    config = get_config("cifar10", f"model=nested_tnt,cpu,steps={steps}")
    assert (config.num_train_steps, config.optim.warmup_steps) == (steps, warmup)
    train.validate_config(config)
    assert get_config("cifar10", "model=nested_tnt,cpu").optim.warmup_steps == 100


@pytest.mark.parametrize(
    "arg, match",
    [
        ("model=resnet", "model family"),
        ("modle=vit", "Unknown config argument 'modle'"),
    ],
)
def test_bad_arguments_are_refused(arg, match):
    with pytest.raises(ValueError, match=match):
        get_config("cifar10", arg)


def test_flowers_cpu_variant_crops_64px_views_of_images_kept_in_memory():
    config = get_config("flowers102", "model=nested_tnt,cpu")
    assert config.model.name == "nested_tnt_cifar_patch8_word4_32"
    assert config.image_size == config.input.host_image_size == 64
    assert config.augment.crop == "random_resized" and config.input.cache_decoded
    train.validate_config(config)


def test_unknown_key_is_refused_by_the_locked_config():
    config = get_config("cifar10")
    with pytest.raises(AttributeError):
        config.optim.learning_rat = 0.1
    with pytest.raises(AttributeError):
        config.bacth_size = 8


def refusal(tmp_path, mutate, match):
    """Runs train_and_evaluate on a broken config: it must fail fast and write nothing."""
    config = get_config("cifar10", "model=vit,cpu")
    mutate(config)
    workdir = tmp_path / "run"
    with pytest.raises(train.ConfigError, match=match):
        train.train_and_evaluate(config, str(workdir))
    assert not workdir.exists()


def test_image_size_not_multiple_of_patch(tmp_path):
    def mutate(c):
        c.image_size = 30

    refusal(tmp_path, mutate, r"config\.image_size is 30.*patch size 8")


def test_batch_not_divisible_by_devices(tmp_path):
    assert jax.device_count() == 8

    def mutate(c):
        c.batch_size = 12

    refusal(tmp_path, mutate, r"config\.batch_size is 12.*multiple of 8")


def test_batch_not_divisible_into_micro_batches(tmp_path):
    def mutate(c):
        c.batch_size = 24
        c.optim.grad_accum_steps = 2

    refusal(tmp_path, mutate, r"config\.batch_size is 24.*multiple of 16")


def test_unknown_model(tmp_path):
    def mutate(c):
        c.model.name = "vit_huge_patch14_224"

    refusal(tmp_path, mutate, r"config\.model\.name is 'vit_huge_patch14_224'")


def test_unknown_dataset(tmp_path):
    def mutate(c):
        c.dataset.name = "imagenet2012"

    refusal(tmp_path, mutate, r"config\.dataset\.name is 'imagenet2012'")


def test_unknown_model_override(tmp_path):
    def mutate(c):
        c.model.overrides.drop_path = 0.1

    refusal(tmp_path, mutate, r"config\.model\.overrides.*drop_path")


def test_another_family_by_name_points_to_the_model_argument(tmp_path):
    def mutate(c):
        c.model.name = "vit_small_patch16_224"

    config = get_config("cifar10", "model=nested_tnt,cpu")
    mutate(config)
    with pytest.raises(train.ConfigError, match=r":model=<family>.*configs/cifar10.py:model=vit"):
        train.validate_config(config)


def test_model_axis_must_divide_devices(tmp_path):
    def mutate(c):
        c.mesh.model_axis = 3

    refusal(tmp_path, mutate, r"config\.mesh\.model_axis is 3")


def test_missing_init_from(tmp_path):
    def mutate(c):
        c.init_from = os.path.join(str(tmp_path), "nowhere")

    refusal(tmp_path, mutate, r"config\.init_from .* does not exist")


def test_nesting_switches_are_present_for_command_line_overrides():
    """`--config.model.nesting.<field>=...` needs the field to exist with its type."""
    config = get_config("cifar10", "model=nested_tnt,cpu")
    nesting = config.model.nesting
    assert (nesting.inner, nesting.outer, nesting.mixer) == (True, True, True)
    assert nesting.logit_noise == 0.1  # the CPU setup's own value is kept
    nesting.inner, nesting.mixer, nesting.logit_noise = False, False, 0.0
    model = models.create_model(config.model.name, nesting=nesting.to_dict())
    assert model.nesting == models.Nesting(inner=False, outer=True, mixer=False, logit_noise=0.0)
    assert get_config("cifar10", "model=tnt").model.nesting.outer is False
    vit = get_config("cifar10", "model=vit").model
    assert set(vit.nesting) == set(nesting) and not vit.nesting.outer
    with pytest.raises(AttributeError):
        nesting.nest_inner = False  # the spec's fields are fixed: a typo is refused


def numeric_fields(config, prefix=""):
    """Dotted names of the numeric (not bool) leaves of `config`, except `model.overrides` and
    `model.nesting`: those are the model's constructor arguments, which `models.create_model`
    owns."""
    for key, value in config.items():
        name = f"{prefix}{key}"
        if name in ("model.overrides", "model.nesting"):
            continue
        if isinstance(value, ml_collections.ConfigDict):
            yield from numeric_fields(value, name + ".")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            yield name


def _set(config, field, value):
    *parents, leaf = field.split(".")
    node = config
    for parent in parents:
        node = node[parent]
    node[leaf] = value


FIELDS = sorted(numeric_fields(get_config("cifar10", "model=nested_tnt,cpu")))


def test_the_walk_sees_the_fields_the_issue_names():
    for field in (
        "num_train_steps",
        "num_epochs",
        "optim.learning_rate",
        "optim.momentum",
        "optim.warmup_steps",
        "optim.grad_clip_norm",
        "augment.mixup_alpha",
        "augment.label_smoothing",
        "batch_size",
        "input.worker_count",
        "eval_every_steps",
    ):
        assert field in FIELDS, field


@pytest.mark.parametrize("field", FIELDS)
def test_every_numeric_field_is_range_checked(field):
    """Each numeric field refuses nonsense (a huge negative number; NaN for floats) with a
    message naming it; a field added without a range check fails here."""
    default = get_config("cifar10", "model=nested_tnt,cpu")
    for part in field.split("."):
        default = default[part]
    for field_value in [-(10**6)] + ([float("nan")] if isinstance(default, float) else []):
        config = get_config("cifar10", "model=nested_tnt,cpu")
        _set(config, field, field_value)
        with pytest.raises(train.ConfigError, match=rf"config\.{re.escape(field)} is"):
            train.validate_config(config)


@pytest.mark.parametrize(
    "field,value",
    [
        ("optim.momentum", 1.0),
        ("augment.label_smoothing", 1.0),
        ("num_train_steps", 0),
        ("input.prefetch", 0),
        ("optim.grad_accum_steps", 0),
        ("max_checkpoints_to_keep", 0),
    ],
)
def test_edges_of_the_ranges_are_refused(field, value):
    config = get_config("cifar10", "model=nested_tnt,cpu")
    _set(config, field, value)
    with pytest.raises(train.ConfigError, match=rf"config\.{re.escape(field)} is"):
        train.validate_config(config)


def test_every_numeric_model_field_has_a_range():
    """`create_model` checks each numeric field of every family's module; a new one without a
    range fails here."""
    for family in registry.families():
        for f in dataclasses.fields(family.module):
            if f.type in (int, float, "int", "float"):
                assert f.name in family.ranges(), (family.name, f.name)


@pytest.mark.parametrize(
    "block,field,value",
    [
        ("overrides", "drop_path_rate", -0.1),
        ("overrides", "drop_path_rate", 1.0),
        ("nesting", "logit_noise", -1.0),
        ("nesting", "logit_noise", float("nan")),
        ("nesting", "mixer_ratio", 0),
        ("overrides", "mlp_ratio", 0.0),
    ],
)
def test_model_overrides_out_of_range_are_refused(block, field, value):
    config = get_config("cifar10", "model=nested_tnt,cpu")
    config.model[block][field] = value
    with pytest.raises(train.ConfigError, match=rf"config\.model\.{block}\.{field} is"):
        train.validate_config(config)


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "flowers102"])
def test_configs_are_a_package_and_load_by_path_alike(name):
    module = importlib.import_module(f"configs.{name}")
    for arg in ("model=nested_tnt", "model=vit,cpu,steps=5"):
        assert module.get_config(arg).to_dict() == get_config(name, arg).to_dict()


def test_the_trainer_loads_a_config_package_from_another_directory(tmp_path):
    """`--config=<abs path>/configs/cifar10.py` from another working directory: the trainer
    puts the package's parent on the import path, so the file's `from configs import common`
    finds its siblings (the bad seed then stops the run before anything is written)."""
    root = tmp_path / "code"
    root.mkdir()
    (root / "nested_tnt_jax").symlink_to(CONFIGS.parent / "nested_tnt_jax")
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = dict(os.environ, PYTHONPATH=str(root), JAX_PLATFORMS="cpu")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "nested_tnt_jax.main",
            f"--config={CONFIGS / 'cifar10.py'}:model=tnt,cpu,steps=2",
            "--config.seed=-1",
            f"--workdir={work / 'run'}",
        ],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "config.seed is -1" in done.stderr
    assert not (work / "run").exists()


def test_an_old_nesting_flag_is_refused_naming_the_new_one(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "nested_tnt_jax.main",
            "--config=configs/cifar10.py:model=nested_tnt,cpu",
            "--config.model.overrides.nest_inner=False",
            f"--workdir={tmp_path / 'run'}",
        ],
        cwd=CONFIGS.parent,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2
    assert "use --config.model.nesting.inner" in done.stderr
    assert not (tmp_path / "run").exists()
