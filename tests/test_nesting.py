"""The nesting spec's old names: a run recorded before `config.model.nesting` existed resumes,
and an old sweep's recorded flags match today's."""

import json
import pathlib
import runpy

import pytest

from experiments import sweep
from nested_tnt_jax import workdir
from nested_tnt_jax.errors import ConfigError
from nested_tnt_jax.metrics import CONFIG_FILE
from nested_tnt_jax.models import nesting

CONFIGS = pathlib.Path(__file__).resolve().parent.parent / "configs"


def test_old_override_names_map_onto_the_spec():
    assert nesting.from_legacy(
        {
            "model.overrides.nest_inner": False,
            "model.overrides.nested": True,
            "model.overrides.logit_noise": 0.1,
            "model.overrides.dtype": "x",
            "seed": 3,
        }
    ) == {
        "model.nesting.inner": False,
        "model.nesting.outer": True,
        "model.nesting.logit_noise": 0.1,
        "model.overrides.dtype": "x",
        "seed": 3,
    }
    assert nesting.split_legacy({"nest_outer": False, "mixer": False, "depth": 2}) == (
        {"depth": 2},
        {"outer": False, "mixer": False},
    )


def _old_record(config) -> dict:
    """`config` as an older trainer recorded it: the switches among the model overrides."""
    recorded = json.loads(config.to_json_best_effort())
    spec = recorded["model"].pop("nesting")
    recorded["model"]["overrides"].update(
        nest_inner=spec["inner"],
        nest_outer=spec["outer"],
        mixer=spec["mixer"],
        mixer_ratio=spec["mixer_ratio"],
        logit_noise=spec["logit_noise"],
    )
    return recorded


def test_a_run_recorded_with_the_old_names_resumes(tmp_path):
    config = runpy.run_path(str(CONFIGS / "cifar10.py"))["get_config"]("model=nested_tnt,cpu")
    (tmp_path / CONFIG_FILE).write_text(json.dumps(_old_record(config)))
    assert workdir.check_resume(str(tmp_path), config) == []
    config.model.nesting.inner = False  # another ablation is another run
    with pytest.raises(ConfigError, match=r"model\.nesting\.inner: True -> False"):
        workdir.check_resume(str(tmp_path), config)


def test_an_old_sweep_record_matches_todays_flags():
    assert sweep.current_flag("--config.model.overrides.nest_outer=False") == (
        "--config.model.nesting.outer=False"
    )
    assert sweep.current_flag("--config.model.overrides.dtype=bfloat16") == (
        "--config.model.overrides.dtype=bfloat16"
    )
    assert sweep.current_flag("--config.seed=3") == "--config.seed=3"
