"""The nesting spec: which logit chains of a model are nested, and how each link mixes them.

Every model family takes one field, `nesting: Nesting`, and hands it unchanged to each of its
attention layers, which reads its own chain's switch (`Nesting.nested(chain)`). A family names
its chains (`FamilySpec.chains` in `registry`): TNT has two, `inner` (words) and `outer`
(sentences); ViT has one, `outer` (its tokens play the sentences' part). With every chain off a
family computes its plain model from the same parameters.

In a run config the spec is `config.model.nesting`, one field per attribute, so each ablation
is one flag: `--config.model.nesting.inner=False`, `--config.model.nesting.mixer=False`,
`--config.model.nesting.logit_noise=0.0`.

Runs recorded before the spec existed carry the switches among the model overrides under the
families' old names (`nest_inner`, `nest_outer` for TNT, `nested` for ViT, `mixer`,
`mixer_ratio`, `logit_noise`); `from_legacy` maps a recorded config onto today's names, so an
old run resumes, reloads and reproduces as recorded.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

CHAINS = ("inner", "outer")


@dataclasses.dataclass(frozen=True)
class Nesting:
    """Nested multi-head attention settings shared by every family (`attention.Attention`).

    `inner` / `outer`: whether that logit chain is nested (each block's attention adds the
    previous block's logits). `mixer`: the head mixer g on each link after the first;
    `mixer_ratio`: its hidden width over the number of heads. `logit_noise`: the standard
    deviation of the noise added to the carried logits in training (0 turns it off).
    """

    inner: bool = False
    outer: bool = False
    mixer: bool = True
    mixer_ratio: int = 4
    logit_noise: float = 1.0

    def nested(self, chain: str) -> bool:
        """Whether `chain` (one of `CHAINS`) is nested."""
        return bool(getattr(self, chain))

    def replace(self, **changes: Any) -> Nesting:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELDS = tuple(f.name for f in dataclasses.fields(Nesting))
# The ranges `create_model` checks, as `errors.check_range` takes them.
RANGES: dict[str, dict[str, Any]] = {
    "mixer_ratio": dict(low=1, integer=True),
    "logit_noise": dict(low=0, hint="the standard deviation of the nested-attention noise"),
}
# Old model-override names of the nesting switches -> `Nesting` fields.
LEGACY_NAMES = {
    "nest_inner": "inner",
    "nest_outer": "outer",
    "nested": "outer",
    "mixer": "mixer",
    "mixer_ratio": "mixer_ratio",
    "logit_noise": "logit_noise",
}
_OVERRIDES, _NESTING = "model.overrides.", "model.nesting."


def split_legacy(overrides: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Model overrides -> (the overrides that are not nesting switches, `Nesting` fields named
    by the old names among them)."""
    rest, fields = {}, {}
    for key, value in overrides.items():
        if key in LEGACY_NAMES:
            fields[LEGACY_NAMES[key]] = value
        else:
            rest[key] = value
    return rest, fields


def from_legacy(flat: Mapping[str, Any]) -> dict[str, Any]:
    """A flat recorded config (`{"model.overrides.nest_inner": True, ...}`) with its old nesting
    switches renamed to today's fields (`"model.nesting.inner"`); other keys are unchanged."""
    out = {}
    for key, value in flat.items():
        name = key[len(_OVERRIDES) :] if key.startswith(_OVERRIDES) else None
        out[_NESTING + LEGACY_NAMES[name] if name in LEGACY_NAMES else key] = value
    return out
