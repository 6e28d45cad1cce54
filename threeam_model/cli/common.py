"""What the benchmark front ends share: the tracker a command line asks for, and how a result records it.

`threeam-bench` (VOS) and `threeam-bench --task instances3d` / `threeam-instances` both build their tracker here,
so the instances CLI does not import the VOS CLI (which dispatches to it) and the two keep one weight rule.
"""

from __future__ import annotations

import dataclasses

from threeam_model.errors import UsageError


def tracker_config(args, skip=()):
    """The TrackerConfig the arguments describe (options from `options.add_tracker_options` with this skip, and
    --random-weights); missing weights are an error unless random ones are allowed."""
    from threeam_model.cli.options import tracker_values
    from threeam_model.factory import TrackerConfig, resolve_weights

    values = tracker_values(args, skip)
    if "method" in skip:
        values["method"] = args.method
    if args.random_weights:
        values.update(sam2_checkpoint=None, must3r_checkpoint=None)
    cfg, missing = resolve_weights(TrackerConfig(**values))
    if missing:
        raise UsageError(
            "official weights missing (benchmark numbers from random weights mean nothing):\n  "
            + "\n  ".join(missing)
            + "\nGet them with `threeam-download-weights`, pass --sam2-checkpoint / --must3r-checkpoint, "
            "or add --random-weights to run anyway."
        )
    return cfg


def method_record(cfg, label: str) -> dict:
    """The method as a result file records it: the config's fields (but the device), a label and a description."""
    rec = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "device"}
    rec.update(label=label, description=cfg.describe())
    return rec


__all__ = ["UsageError", "method_record", "tracker_config"]
