"""The model registry: each family file registers itself, its variants and its config choices.

A family file (`vit.py`, `tnt.py`, or one outside the tree) calls, at import:

- `register_family(Family(...))`: its module class and what the tools need of it: its logit
  chains per attention submodule (visualize), its heads per chain, its word grid if it has an
  inner chain, its timm twin (benchmarks), the ranges of its own numeric fields;
- `register_model(name, family, **fields)` per variant (as timm's `@register_model`): the
  registry name and the module fields it sets (sizes, `nesting=Nesting(...)`);
- `register_choice(name, paper=..., cpu=..., references=..., order=...)` per value of the
  configs' `model=` argument: the paper's and the CPU setup's variant, the choices a sweep
  compares it with, and its place in sweeps and tables.

Tools read these declarations (`family_of`, `choices`); none lists the families. The built-in
families are imported by `models/__init__.py`; `NESTED_TNT_JAX_FAMILIES` names more, as module
names or `.py` paths separated by `os.pathsep`, imported after them (`load_external`), so a
family kept outside the tree needs no edit in it.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn

FAMILIES_ENV = "NESTED_TNT_JAX_FAMILIES"

# Ranges of the numeric fields the families share, checked by `create_model`: sizes are
# positive integers, rates are probabilities of dropping.
_SIZES = ("img_size", "patch_size", "num_classes", "embed_dim", "depth")
_RATES = ("drop_rate", "pos_drop_rate", "proj_drop_rate", "attn_drop_rate", "drop_path_rate")
SHARED_RANGES: dict[str, dict[str, Any]] = {
    **{f: dict(low=1, integer=True) for f in _SIZES},
    **{f: dict(low=0, high=1, high_open=True, hint="a dropout probability") for f in _RATES},
    "mlp_ratio": dict(low=0, low_open=True, hint="MLP width over embedding width"),
}


def positive_sizes(*fields: str) -> dict[str, dict[str, Any]]:
    """Ranges for a family's own size fields: positive integers."""
    return {f: dict(low=1, integer=True) for f in fields}


@dataclasses.dataclass(frozen=True)
class Family:
    """A model family as the tools see it.

    `chains`: attention submodule name -> the nesting chain it is a link of (`"inner"` or
    `"outer"`, `nesting.CHAINS`); `create_model` refuses a nesting spec that turns on a chain
    the family lacks. `heads(model)`: heads per chain of a built model. `chain_words`: chain ->
    how a figure title names it. `word_grid(model)`: the side of the word grid in a patch, for
    a family with an inner chain over words. `timm_twin(model, num_classes)`: timm's PyTorch
    model of the same architecture (random weights), for the throughput benchmark; None when
    timm has none. `field_ranges`: `errors.check_range` bounds of the module's own numeric
    fields (the shared ones are in `SHARED_RANGES`).
    """

    name: str
    module: type[nn.Module]
    chains: Mapping[str, str]
    heads: Callable[[nn.Module], dict[str, int]]
    chain_words: Mapping[str, str]
    word_grid: Callable[[nn.Module], int] | None = None
    timm_twin: Callable[[nn.Module, int], Any] | None = None
    field_ranges: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)

    @property
    def chain_names(self) -> tuple[str, ...]:
        return tuple(sorted(set(self.chains.values())))

    def ranges(self) -> dict[str, Mapping[str, Any]]:
        return {**SHARED_RANGES, **self.field_ranges}


@dataclasses.dataclass(frozen=True)
class Choice:
    """A value of the configs' `model=` argument: the registry names of its paper-setup and
    CPU-setup variants, the choices a sweep reports it against (paired by seed), and its place
    in sweeps and tables (`order`, then registration)."""

    name: str
    paper: str
    cpu: str
    references: tuple[str, ...] = ()
    order: int = 100


_FAMILIES: dict[str, Family] = {}
_MODELS: dict[str, tuple[Family, dict[str, Any]]] = {}
_CHOICES: dict[str, Choice] = {}


def register_family(family: Family) -> Family:
    """Adds `family` (ValueError if its name is taken by another module)."""
    old = _FAMILIES.get(family.name)
    if old is not None and old.module is not family.module:
        raise ValueError(f"Model family {family.name!r} is registered twice.")
    _FAMILIES[family.name] = family
    return family


def register_model(name: str, family: Family, **fields: Any) -> None:
    """Registers variant `name` of `family`: the module fields it sets."""
    if name in _MODELS and _MODELS[name][0].module is not family.module:
        raise ValueError(f"Model {name!r} is registered by two families.")
    _MODELS[name] = (family, dict(fields))


def register_choice(
    name: str, *, paper: str, cpu: str, references: tuple[str, ...] = (), order: int = 100
) -> None:
    """Registers `model=name` for the configs (its variants must be registered first)."""
    for model in (paper, cpu):
        if model not in _MODELS:
            raise ValueError(f"Choice {name!r} names {model!r}, which is not a registered model.")
    _CHOICES[name] = Choice(name, paper, cpu, tuple(references), order)


def model_names() -> list[str]:
    """Registered model names, sorted."""
    return sorted(_MODELS)


def lookup(name: str) -> tuple[Family, dict[str, Any]]:
    """(family, registered fields) of model `name` (ValueError listing the names if unknown)."""
    if name not in _MODELS:
        raise ValueError(f"Unknown model {name!r}. Choose one of: {', '.join(model_names())}.")
    family, fields = _MODELS[name]
    return family, dict(fields)


def family_of(model: nn.Module | str) -> Family:
    """The family of a registered model name or of a built module."""
    if isinstance(model, str):
        return lookup(model)[0]
    for family in families():
        if type(model) is family.module:
            return family
    raise ValueError(f"{type(model).__name__} is not the module of a registered model family.")


def families() -> list[Family]:
    """The registered families, in registration order."""
    return list(_FAMILIES.values())


def choices() -> dict[str, Choice]:
    """The configs' `model=` choices, by `order`, then in registration order."""
    ranked = sorted(enumerate(_CHOICES.values()), key=lambda item: (item[1].order, item[0]))
    return {choice.name: choice for _, choice in ranked}


def load_external(spec: str | None = None) -> list[str]:
    """Imports the family modules named in `spec` (default: `$NESTED_TNT_JAX_FAMILIES`): module
    names or `.py` paths separated by `os.pathsep`. Returns what it imported."""
    spec = os.environ.get(FAMILIES_ENV, "") if spec is None else spec
    loaded = []
    for item in filter(None, (s.strip() for s in spec.split(os.pathsep))):
        if item.endswith(".py"):
            name = "nested_tnt_jax_family_" + os.path.splitext(os.path.basename(item))[0]
            if name not in sys.modules:
                found = importlib.util.spec_from_file_location(name, item)
                if found is None or not os.path.isfile(item):
                    raise ImportError(f"{FAMILIES_ENV} names {item!r}, which is not a file.")
                module = importlib.util.module_from_spec(found)
                sys.modules[name] = module
                found.loader.exec_module(module)
        else:
            importlib.import_module(item)
        loaded.append(item)
    return loaded
