"""What 3AM fine-tunes (paper sec. 4, training setup): the merger, SAM 2's memory attention and mask decoder.

The one table of trainable parts: the trainer's parameter groups and saved state, and the 3AM checkpoint's
contents (threeam_checkpoint) are all read from `trainable_parts`.
"""

from __future__ import annotations

from torch import nn

# The trainable parts by name, with the paper's learning rates (sec. 4, training setup), in parameter-group order.
PAPER_LEARNING_RATES = {"merger": 1e-5, "memory_attention": 5e-6, "mask_decoder": 5e-6}
PARTS = tuple(PAPER_LEARNING_RATES)


def trainable_parts(sam2_model: nn.Module, merger: nn.Module | None) -> dict[str, nn.Module]:
    """{name: module} of the parts 3AM fine-tunes, in PARTS order; without a merger (plain SAM 2 fine-tuning)
    only SAM 2's memory attention and mask decoder."""
    parts = {
        "merger": merger,
        "memory_attention": sam2_model.memory_attention,
        "mask_decoder": sam2_model.sam_mask_decoder,
    }
    return {name: module for name, module in parts.items() if module is not None}


def trainable_parameter_groups(
    sam2_model: nn.Module, merger: nn.Module | None, must3r: nn.Module | None = None, lrs: dict | None = None
) -> list[dict]:
    """Freeze everything but the merger, SAM 2's memory attention and mask decoder; return AdamW param groups.

    Sets requires_grad on every parameter of the given modules (MUSt3R too, when given), then returns
    [{"name", "params", "lr"}, ...] with the paper's learning rates unless `lrs` overrides some of them.
    Without a merger only memory attention and mask decoder train, with the same learning rates.
    """
    lrs = {**PAPER_LEARNING_RATES, **(lrs or {})}
    unknown = sorted(set(lrs) - set(PAPER_LEARNING_RATES))
    if unknown:
        raise ValueError(f"unknown parameter groups {unknown}; the groups are {sorted(PAPER_LEARNING_RATES)}")
    for module in (sam2_model, merger, must3r):
        if module is not None:
            module.requires_grad_(False)
    groups = []
    for name, module in trainable_parts(sam2_model, merger).items():
        module.requires_grad_(True)
        groups.append({"name": name, "params": list(module.parameters()), "lr": lrs[name]})
    return groups


__all__ = ["PAPER_LEARNING_RATES", "PARTS", "trainable_parameter_groups", "trainable_parts"]
