"""Field metadata for configuration dataclasses: what a knob means and which values it takes, in one place.

A config field declared with `knob(default, description, choices=..., min_value=..., max_value=...)` carries its
description and allowed values; front ends (the ROS node's parameters, command-line options) are derived from
`knobs_of(Config)` instead of listing the same names, defaults and help texts again.
"""

from __future__ import annotations

import dataclasses
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


def knob(default, description: str, choices: tuple = (), min_value=None, max_value=None, group: str = ""):
    """A dataclass field with its meaning and allowed values attached (see `knobs_of`)."""
    meta = {"knob": (description, tuple(choices), min_value, max_value, group)}
    return dataclasses.field(default=default, metadata=meta)


def knobs_of(cls, group: str | None = None) -> list[Knob]:
    """The declared knobs of a config dataclass (of one group, if given), in field order; fields without knob
    metadata are left out."""
    out = []
    for f in dataclasses.fields(cls):
        if "knob" in f.metadata:
            description, choices, low, high, where = f.metadata["knob"]
            if group is None or where == group:
                out.append(Knob(f.name, f.default, description, choices, low, high, where))
    return out


def check_knobs(config) -> None:
    """ValueError naming the first field of `config` whose value is outside its knob's choices or range."""
    for k in knobs_of(type(config)):
        value = getattr(config, k.name)
        if k.choices and value not in k.choices:
            raise ValueError(f"{k.name} must be one of {', '.join(map(str, k.choices))}, got {value!r}")
        if k.min_value is not None and value < k.min_value:
            raise ValueError(f"{k.name} must be >= {k.min_value}, got {value}")
        if k.max_value is not None and value > k.max_value:
            raise ValueError(f"{k.name} must be <= {k.max_value}, got {value}")
