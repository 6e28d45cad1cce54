"""Command-line options derived from config knobs (threeam_model/knobs.py): one option per knob, with its name,
default, choices and description, in the knob's front-end spelling (None as its `none_as`, tuples comma-separated,
mappings as JSON), so the CLIs and the ROS node offer the same knobs the same way."""

from __future__ import annotations

import argparse

from threeam_model.knobs import knobs_of


def add_knob_options(group, config_cls, prefix: str = "", groups=None, skip=(), aliases=None, only=None) -> None:
    """One option per knob of a config dataclass (--<prefix>-<name>); groups: only the knobs of these groups;
    skip: knob names offered otherwise; only: just these knobs; aliases: {knob name: [extra flags]}."""
    aliases = aliases or {}
    for k in _selected(config_cls, groups, skip, only):
        dest = f"{prefix}_{k.name}" if prefix else k.name
        flags = ["--" + dest.replace("_", "-"), *aliases.get(k.name, ())]
        default = k.front_default
        if isinstance(default, bool):
            group.add_argument(
                *flags, dest=dest, action=argparse.BooleanOptionalAction, default=default, help=k.description
            )
        else:
            group.add_argument(
                *flags, dest=dest, type=type(default), choices=k.choices or None, default=default, help=k.description
            )


def knob_values(args, config_cls, prefix: str = "", groups=None, skip=(), only=None) -> dict:
    """The config values of the options add_knob_options made (same prefix, groups, skip and only)."""
    return {
        k.name: k.from_front(getattr(args, f"{prefix}_{k.name}" if prefix else k.name))
        for k in _selected(config_cls, groups, skip, only)
    }


# older spellings of two TrackerConfig knobs, kept as aliases of the derived options
TRACKER_ALIASES = {"threeam_checkpoint": ["--checkpoint"], "onnx_dir": ["--onnx"]}


def add_tracker_options(group, skip=()) -> None:
    """TrackerConfig's model and tracker knobs as options (--method, --variant, --image-size, --device, ...,
    --max-objects, --memory-policy, ...), but `skip`."""
    from threeam_model.factory import TrackerConfig

    add_knob_options(group, TrackerConfig, groups=("model", "tracker"), skip=skip, aliases=TRACKER_ALIASES)


def tracker_values(args, skip=()) -> dict:
    """TrackerConfig keyword arguments from the options add_tracker_options made (same skip)."""
    from threeam_model.factory import TrackerConfig

    return knob_values(args, TrackerConfig, groups=("model", "tracker"), skip=skip)


def _selected(config_cls, groups, skip, only=None):
    return [
        k
        for k in knobs_of(config_cls)
        if (groups is None or k.group in groups) and k.name not in skip and (only is None or k.name in only)
    ]


__all__ = ["TRACKER_ALIASES", "add_knob_options", "add_tracker_options", "knob_values", "tracker_values"]
