"""ThreeAMTracker: streaming SAM 2 whose memory works on SAM 2 features merged with MUSt3R's (paper sec. 3.2).

Per frame: SAM 2's image encoder and one MUSt3R step run once (shared by every object), the Feature Merger fuses
them into the stride-16 feature, and each object runs memory attention, the mask decoder and the memory encoder on
that merged feature with its own bounded memory bank. Everything per object, and the prompt / remove / reset API,
is the streaming SAM 2 predictor's: ThreeAMTracker only replaces its `memory_features` step.

`merge_features` is the one place that turns a SAM 2 feature and a `Must3rFrame` into F_merged; training uses it
too, and `trainable_parameter_groups` gives the paper's fine-tuning split (merger 1e-5, memory attention and mask
decoder 5e-6; everything else frozen).
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

from threeam_model.merger import FeatureMerger
from threeam_model.must3r.stream import Must3rFrame, Must3rStream
from threeam_model.sam2_stream import StreamingSAM2

# The paper's learning rates (sec. 4, training setup).
PAPER_LEARNING_RATES = {"merger": 1e-5, "memory_attention": 5e-6, "mask_decoder": 5e-6}


def merge_features(
    merger: FeatureMerger, sam_feat: torch.Tensor, must3r: Must3rFrame, image_size: tuple[int, int]
) -> torch.Tensor:
    """F_merged (1, C, Hs, Ws) from SAM 2's stride-16 feature (1, C, Hs, Ws) and MUSt3R's outputs for the same
    frame; image_size is the original frame's (H, W)."""
    layers = {i: must3r.feats[i][None] for i in merger.cfg.merge_layers if i in must3r.feats}
    return merger(
        sam_feat,
        enc_tokens=must3r.enc_tokens[None],
        layer_feats=layers,
        pts3d=must3r.pts3d[None],
        rays=must3r.rays[None],
        token_grid=must3r.token_grid,
        image_size=image_size,
        crop_box=must3r.crop_box,
    )


class ThreeAMTracker(StreamingSAM2):
    """3AM: StreamingSAM2 with the stride-16 feature replaced by F_merged (see the module docstring).

    sam2_model: a SAM2Base (its memory attention and mask decoder may hold 3AM fine-tuned weights).
    must3r: a Must3rStream (its own bounded memory); reset together with the tracker.
    merger: a FeatureMerger whose sizes match both models.
    Other keyword arguments are StreamingSAM2's (max_cond_frames, max_objects, dtype).
    """

    def __init__(self, sam2_model, must3r: Must3rStream, merger: FeatureMerger, **kwargs):
        self.must3r = must3r  # set before StreamingSAM2.__init__, which calls reset()
        self.merger = merger.eval()
        self.last_must3r: Must3rFrame | None = None
        self._merge_timings: dict[str, float] = {}
        hidden = sam2_model.hidden_dim
        if merger.cfg.sam_dim != hidden:
            raise ValueError(f"merger sam_dim {merger.cfg.sam_dim} differs from SAM 2's width {hidden}")
        enc_dim = must3r.model.encoder.embed_dim
        dec_dim = must3r.model.decoder.embed_dim
        if (merger.cfg.enc_dim, merger.cfg.dec_dim) != (enc_dim, dec_dim):
            raise ValueError(
                f"merger expects MUSt3R widths enc {merger.cfg.enc_dim} / dec {merger.cfg.dec_dim}, "
                f"the MUSt3R model has {enc_dim} / {dec_dim}"
            )
        if merger.cfg.patch_size != must3r.model.patch_size:
            raise ValueError(f"merger patch {merger.cfg.patch_size} differs from MUSt3R's {must3r.model.patch_size}")
        missing = sorted(set(merger.cfg.merge_layers) - set(must3r.feat_layers))
        if missing:
            raise ValueError(f"the MUSt3R stream does not return decoder layers {missing}; add them to feat_layers")
        super().__init__(sam2_model, **kwargs)
        self.merger.to(self.device)

    def reset(self) -> None:
        super().reset()
        self.must3r.reset()
        self.last_must3r = None

    def memory_features(self, backbone_out: dict, frame: np.ndarray) -> torch.Tensor:
        t0 = time.perf_counter()
        # MUSt3R applies its own autocast (decoder only; pose and focal fitting need float32): leave the tracker's
        with torch.autocast(self.device.type, enabled=False):
            self.last_must3r = self.must3r.step(frame)
        t1 = time.perf_counter()
        merged = merge_features(self.merger, backbone_out["backbone_fpn"][-1], self.last_must3r, frame.shape[:2])
        self._merge_timings = {"must3r": t1 - t0, "merger": time.perf_counter() - t1}
        return merged

    def track(self, frame: np.ndarray):
        result = super().track(frame)
        result.timings.update(self._merge_timings)
        return result

    def state_nbytes(self) -> int:
        """SAM 2 state plus MUSt3R's memory (both bounded by their caps)."""
        memory = self.must3r.memory
        return super().state_nbytes() + (0 if memory is None else memory.nbytes())


def trainable_parameter_groups(
    sam2_model: nn.Module, merger: FeatureMerger, must3r: nn.Module | None = None, lrs: dict | None = None
) -> list[dict]:
    """Freeze everything but the merger, SAM 2's memory attention and mask decoder; return AdamW param groups.

    Sets requires_grad on every parameter of the given modules (MUSt3R too, when given), then returns
    [{"name", "params", "lr"}, ...] with the paper's learning rates unless `lrs` overrides some of them.
    """
    lrs = {**PAPER_LEARNING_RATES, **(lrs or {})}
    unknown = sorted(set(lrs) - set(PAPER_LEARNING_RATES))
    if unknown:
        raise ValueError(f"unknown parameter groups {unknown}; the groups are {sorted(PAPER_LEARNING_RATES)}")
    for module in (sam2_model, merger, must3r):
        if module is not None:
            module.requires_grad_(False)
    parts = {
        "merger": merger,
        "memory_attention": sam2_model.memory_attention,
        "mask_decoder": sam2_model.sam_mask_decoder,
    }
    groups = []
    for name, module in parts.items():
        module.requires_grad_(True)
        groups.append({"name": name, "params": list(module.parameters()), "lr": lrs[name]})
    return groups


__all__ = ["PAPER_LEARNING_RATES", "ThreeAMTracker", "merge_features", "trainable_parameter_groups"]
