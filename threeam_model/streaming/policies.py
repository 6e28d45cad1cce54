"""Memory policies by name, each with the input pipeline its method publishes: what `TrackerConfig.memory_policy`,
`threeam-track --memory-policy`, `threeam-bench --memory-policy` and the node's `tracker.memory_policy` choose.

- "sam2": the official SAM 2 rule (`memory.Sam2Window`), conditioning frames capped at `max_cond_frames`.
- "dam4sam": DAM4SAM's RAM + DRM (`dam4sam.Dam4samPolicy`), with its tracker's antialiased bilinear resize and
  corrections kept as conditioning frames; `args` override its hyperparameters (see Dam4samPolicy).
- "sam2long": SAM2Long's memory tree (`sam2long.Sam2LongPolicy`, several pathways per object; SAM2Long's code is
  CC BY-NC 4.0: users of this policy should check those terms), every prompt a conditioning frame.
"""

from __future__ import annotations

from threeam_model.streaming.dam4sam import Dam4samPolicy
from threeam_model.streaming.memory import Sam2Window
from threeam_model.streaming.sam2long import Sam2LongPolicy

MEMORY_POLICIES = ("sam2", "dam4sam", "sam2long")


def policy_options(name: str, model, max_cond_frames: int, args: dict | None = None) -> dict:
    """StreamingSAM2 keyword arguments for a named memory policy on `model`."""
    args = dict(args or {})
    if name == "sam2":
        if args:
            raise ValueError(f"memory policy sam2 takes no options (max_cond_frames aside), got {sorted(args)}")
        return {"memory_policy": Sam2Window(model, max_cond_frames)}
    if name == "dam4sam":
        try:
            policy = Dam4samPolicy(model, **args)
        except TypeError as exc:
            raise ValueError(f"bad dam4sam option: {exc}") from None
        return {"memory_policy": policy, "resize": "antialias_bilinear", "correction_as_cond": True}
    if name == "sam2long":
        try:
            policy = Sam2LongPolicy(model, **{"max_cond_frames": max_cond_frames, **args})
        except TypeError as exc:
            raise ValueError(f"bad sam2long option: {exc}") from None
        return {"memory_policy": policy, "correction_as_cond": True}
    raise ValueError(f"memory_policy must be one of {MEMORY_POLICIES}, got {name!r}")


__all__ = ["MEMORY_POLICIES", "policy_options"]
