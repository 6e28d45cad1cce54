"""Field metadata for configuration dataclasses: what a knob means and which values it takes, in one place.

A config field declared with `knob(default, description, choices=..., min_value=..., max_value=...)` carries its
description and allowed values; front ends (the ROS node's parameters, command-line options, the training
config) are derived from `knobs_of(Config)` instead of listing the same names, defaults and help texts again.

Front ends hold scalars: ROS parameters have no None, no tuple of strings and no mapping. A knob therefore says
how it is spelled there (`Knob.front_default`, `Knob.from_front`): None as its `none_as` value ("" or 0), a tuple
of strings comma-separated, a mapping as a JSON object. Every front end uses that one spelling.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any


@dataclasses.dataclass(frozen=True)
class Knob:
    name: str
    default: Any
    description: str
    choices: tuple = ()
    min_value: float | None = None
    max_value: float | None = None
    group: str = ""  # which part of a front end offers it (the node: its parameter prefix, e.g. "model")
    none_as: Any = None  # how a front end spells a None value ("" or 0), when None is allowed

    @property
    def front_default(self):
        """The default as a front end holds it (a scalar)."""
        return self.to_front(self.default)

    def to_front(self, value):
        """A config value in the front ends' spelling."""
        if value is None:
            return self.none_as
        if isinstance(value, tuple):
            return ",".join(map(str, value))
        if isinstance(value, dict):
            return json.dumps(value, sort_keys=True)
        return value

    def from_front(self, value):
        """A front end's value as the config takes it (ValueError for a malformed one)."""
        if self.none_as is not None and value == self.none_as:
            return None
        if isinstance(self.default, tuple):
            return tuple(v.strip() for v in str(value).split(",") if v.strip())
        if isinstance(self.default, dict):
            try:
                parsed = json.loads(value) if isinstance(value, str) else value
            except json.JSONDecodeError as exc:
                raise ValueError(f'{self.name} must be a JSON object, e.g. {{"stride": 3}}: {exc}') from None
            if not isinstance(parsed, dict):
                raise ValueError(f'{self.name} must be a JSON object, e.g. {{"stride": 3}}, got {value!r}')
            return parsed
        return value


def knob(
    default=dataclasses.MISSING,
    description: str = "",
    choices: tuple = (),
    min_value=None,
    max_value=None,
    group: str = "",
    none_as=None,
    default_factory=None,
):
    """A dataclass field with its meaning and allowed values attached (see `knobs_of`). `default_factory` for a
    mutable default (a dict); `none_as` when the default or a value may be None (see the module docstring)."""
    meta = {"knob": (description, tuple(choices), min_value, max_value, group, none_as)}
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def knobs_of(cls, group: str | None = None) -> list[Knob]:
    """The declared knobs of a config dataclass (of one group, if given), in field order; fields without knob
    metadata are left out."""
    out = []
    for f in dataclasses.fields(cls):
        if "knob" in f.metadata:
            description, choices, low, high, where, none_as = f.metadata["knob"]
            default = f.default
            if default is dataclasses.MISSING and f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            if group is None or where == group:
                out.append(Knob(f.name, default, description, choices, low, high, where, none_as))
    return out


def check_knobs(config) -> None:
    """ValueError naming the first field of `config` whose value is outside its knob's choices or range."""
    for k in knobs_of(type(config)):
        value = getattr(config, k.name)
        if value is None and k.none_as is not None:
            continue
        if k.choices and value not in k.choices:
            raise ValueError(f"{k.name} must be one of {', '.join(map(str, k.choices))}, got {value!r}")
        if k.min_value is not None and value < k.min_value:
            raise ValueError(f"{k.name} must be >= {k.min_value}, got {value}")
        if k.max_value is not None and value > k.max_value:
            raise ValueError(f"{k.name} must be <= {k.max_value}, got {value}")
