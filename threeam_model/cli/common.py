"""What the benchmark front ends share: the tracker a command line asks for, and how a result records it.

`threeam-bench` (VOS) and `threeam-bench --task instances3d` / `threeam-instances` both build their tracker here,
so the instances CLI does not import the VOS CLI (which dispatches to it) and the two keep one weight rule.
"""

from __future__ import annotations

import dataclasses

from threeam_model.errors import UsageError


def tracker_config(args):
    """The TrackerConfig the arguments describe; missing weights are an error unless random ones are allowed."""
    from threeam_model.factory import TrackerConfig, resolve_weights

    common = dict(
        method=args.method, device=args.device, dtype=args.dtype, seed=args.seed, memory_policy=args.memory_policy
    )
    if args.tiny:
        return TrackerConfig(tiny=True, **common)
    random = args.random_weights
    cfg = TrackerConfig(
        variant=args.variant,
        image_size=args.image_size,
        must3r=args.must3r,
        sam2_checkpoint=None if random else args.sam2_checkpoint,
        must3r_checkpoint=None if random else args.must3r_checkpoint,
        threeam_checkpoint=args.checkpoint,
        **common,
    )
    cfg, missing = resolve_weights(cfg)
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
