"""The 3AM checkpoint: what fine-tuning changes, on top of the official SAM 2.1 and MUSt3R checkpoints.

3AM trains only the Feature Merger, SAM 2's memory attention and SAM 2's mask decoder (paper sec. 4, training setup);
everything else stays as in the official checkpoints. A 3AM checkpoint therefore holds exactly those three state
dicts plus the configuration needed to rebuild and check them:

    {
      "format": "threeam-3am", "version": 1,
      "config": {"merger": MergerConfig.to_dict(), "sam2_variant": "l", "sam2_image_size": 1024,
                 "must3r": "512", ... any extra metadata (step, dataset) ...},
      "merger": state_dict, "memory_attention": state_dict, "mask_decoder": state_dict,
    }

Loading is strict: every key present, no extra key, every shape equal; anything else is refused with a message that
says which part does not fit and why (usually: the checkpoint was trained on another SAM 2.1 variant or MUSt3R size).
"""

from __future__ import annotations

import os
import pathlib

import torch
from torch import nn

from threeam_model.errors import CheckpointError
from threeam_model.merger import FeatureMerger, MergerConfig
from threeam_model.train.trainable import PARTS, trainable_parts

FORMAT = "threeam-3am"
VERSION = 1


def _parts(merger: FeatureMerger, sam2_model: nn.Module) -> dict[str, nn.Module]:
    return trainable_parts(sam2_model, merger)  # a checkpoint holds exactly what training fine-tunes


def save_checkpoint(path, merger: FeatureMerger, sam2_model: nn.Module, config: dict | None = None) -> pathlib.Path:
    """Write a 3AM checkpoint (atomically: a crash never leaves a half-written file under `path`).

    config: metadata to keep alongside, e.g. {"sam2_variant": "l", "sam2_image_size": 1024, "must3r": "512"};
    the merger's own configuration is always added under "merger".
    """
    path = pathlib.Path(path)
    cfg = dict(config or {})
    if "merger" in cfg:
        raise ValueError("config['merger'] is written from the merger itself; do not pass it")
    cfg["merger"] = merger.cfg.to_dict()
    payload = {"format": FORMAT, "version": VERSION, "config": cfg}
    for name, module in _parts(merger, sam2_model).items():
        payload[name] = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def read_checkpoint(path) -> dict:
    """Read and validate the container of a 3AM checkpoint (not yet matched against any model)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise CheckpointError(f"3AM checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a corrupt or foreign file
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint: {exc}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        got = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        hint = ""
        if isinstance(payload, dict) and "model" in payload:
            hint = " (it looks like an official SAM 2 or MUSt3R checkpoint: pass it as that model's checkpoint)"
        raise CheckpointError(f"{path} is not a 3AM checkpoint: format {got!r}, expected {FORMAT!r}{hint}")
    if payload.get("version") != VERSION:
        raise CheckpointError(f"{path} has 3AM checkpoint version {payload.get('version')}; this code reads {VERSION}")
    missing = [k for k in ("config", *PARTS) if not isinstance(payload.get(k), dict)]
    if missing:
        raise CheckpointError(f"{path} lacks the parts {missing} of a 3AM checkpoint")
    try:
        MergerConfig.from_dict(payload["config"].get("merger", {}))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path} holds an invalid merger config: {exc}") from None
    return payload


def merger_config(payload: dict) -> MergerConfig:
    return MergerConfig.from_dict(payload["config"]["merger"])


def check_compatible(payload: dict, expected: dict, source="the 3AM checkpoint") -> None:
    """Refuse a checkpoint whose recorded config differs from `expected` on any key both define."""
    bad = [
        f"{k}: checkpoint has {payload['config'][k]!r}, the tracker is built with {v!r}"
        for k, v in expected.items()
        if k in payload["config"] and payload["config"][k] != v
    ]
    if bad:
        raise CheckpointError(f"{source} was trained for other models: " + "; ".join(bad))


def load_into(payload: dict, merger: FeatureMerger, sam2_model: nn.Module, source="the 3AM checkpoint") -> None:
    """Load merger, memory attention and mask decoder weights with strict key and shape matching."""
    if merger.cfg != merger_config(payload):
        raise CheckpointError(
            f"{source} holds a merger with config {merger_config(payload)}, the built merger has {merger.cfg}"
        )
    problems = []
    parts = _parts(merger, sam2_model)
    for name, module in parts.items():
        own = module.state_dict()
        theirs = payload[name]
        missing = sorted(set(own) - set(theirs))
        unexpected = sorted(set(theirs) - set(own))
        shapes = [
            f"{k} {tuple(theirs[k].shape)} vs {tuple(own[k].shape)}"
            for k in sorted(set(own) & set(theirs))
            if tuple(theirs[k].shape) != tuple(own[k].shape)
        ]
        if missing or unexpected or shapes:
            problems.append(
                f"{name}: {len(missing)} missing keys {missing[:3]}, {len(unexpected)} unexpected keys "
                f"{unexpected[:3]}, {len(shapes)} shape mismatches {shapes[:3]}"
            )
    if problems:
        raise CheckpointError(
            f"{source} does not fit the built models (trained on another SAM 2.1 variant or MUSt3R size?): "
            + "; ".join(problems)
        )
    for name, module in parts.items():
        module.load_state_dict(payload[name], strict=True)


def load_checkpoint(path, merger: FeatureMerger, sam2_model: nn.Module, expected: dict | None = None) -> dict:
    """read_checkpoint + check_compatible + load_into; returns the checkpoint's config."""
    payload = read_checkpoint(path)
    if expected:
        check_compatible(payload, expected, source=str(path))
    load_into(payload, merger, sam2_model, source=str(path))
    return payload["config"]


__all__ = [
    "FORMAT",
    "PARTS",
    "VERSION",
    "CheckpointError",
    "check_compatible",
    "load_checkpoint",
    "load_into",
    "merger_config",
    "read_checkpoint",
    "save_checkpoint",
]
