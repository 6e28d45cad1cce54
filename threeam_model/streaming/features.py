"""Feature providers: the stride-16 feature that memory attention and the memory encoder work on.

The engine encodes each frame once with SAM 2's image encoder and hands the encoder output to its provider, which
returns the stride-16 feature every object of that frame shares (the stride-4/8 features go to the mask decoder
unchanged). `SamFeatures` returns SAM 2's own feature; `MergedFeatures` is 3AM's: one MUSt3R step on the frame and
the Feature Merger fusing its 3D-aware features into SAM 2's (paper sec. 3.2). A provider with a per-frame scene
output (3AM: MUSt3R's pointmap, confidence, crop box) returns it, and the engine passes it on in `FrameResult.scene`.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from threeam_model.interface import CameraGeometry


@dataclasses.dataclass
class FeatureOutput:
    feature: torch.Tensor  # (1, C, H/16, W/16), the shape of SAM 2's stride-16 feature
    scene: object | None = None  # per-frame scene output, passed on as FrameResult.scene
    timings: dict[str, float] = dataclasses.field(default_factory=dict)  # stage -> seconds


@runtime_checkable
class FeatureProvider(Protocol):
    """Makes the stride-16 feature of each frame (see the module docstring)."""

    def bind(self, sam2_model) -> None:
        """Check that this provider fits the SAM 2 model and move onto its device; raise ValueError if not."""

    def __call__(self, backbone_out: dict, frame: np.ndarray, geometry: CameraGeometry | None) -> FeatureOutput:
        """backbone_out: `SAM2Base.forward_image` output for the frame ("backbone_fpn": stride 4, 8, 16 maps,
        "vision_pos_enc"); frame: the (H, W, 3) uint8 RGB frame; geometry: the caller's camera geometry, if any."""

    def reset(self) -> None:
        """Start a new stream (the engine's reset calls it)."""

    def compile(self, mode: str | None) -> None:
        """Run the per-frame modules through torch.compile with static shapes (`mode`: torch.compile's)."""

    def nbytes(self) -> int:
        """Bytes of state this provider keeps between frames (bounded)."""


class SamFeatures:
    """SAM 2's own stride-16 feature (plain SAM 2)."""

    def bind(self, sam2_model) -> None:
        pass

    def compile(self, mode: str | None) -> None:
        pass  # nothing to compile: the engine compiles the image encoder

    def __call__(self, backbone_out: dict, frame: np.ndarray, geometry: CameraGeometry | None) -> FeatureOutput:
        return FeatureOutput(backbone_out["backbone_fpn"][-1])

    def reset(self) -> None:
        pass

    def nbytes(self) -> int:
        return 0


def merge_features(merger, sam_feat: torch.Tensor, must3r, image_size: tuple[int, int]) -> torch.Tensor:
    """F_merged (1, C, Hs, Ws) from SAM 2's stride-16 feature (1, C, Hs, Ws) and a `Must3rFrame` of the same
    frame; image_size is the original frame's (H, W). Training uses it too."""
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


class MergedFeatures:
    """3AM's feature: SAM 2's merged with streaming MUSt3R's by the Feature Merger.

    must3r: a `Must3rStream` (its own bounded memory, reset with the engine); merger: a `FeatureMerger` whose sizes
    match both models. The scene output is the frame's `Must3rFrame`.
    """

    def __init__(self, must3r, merger):
        self.must3r = must3r
        self.merger = merger.eval()
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
        self._merge = self.merger

    def compile(self, mode: str | None) -> None:
        """Run the merger through torch.compile (static shapes per stream; MUSt3R itself stays eager)."""
        self._merge = torch.compile(self.merger, dynamic=False, mode=mode)

    def bind(self, sam2_model) -> None:
        width = sam2_model.hidden_dim
        if self.merger.cfg.sam_dim != width:
            raise ValueError(f"merger sam_dim {self.merger.cfg.sam_dim} differs from SAM 2's width {width}")
        self.merger.to(sam2_model.device)

    def __call__(self, backbone_out: dict, frame: np.ndarray, geometry: CameraGeometry | None) -> FeatureOutput:
        t0 = time.perf_counter()
        # MUSt3R applies its own autocast (decoder only; pose and focal fitting need float32): leave the engine's
        with torch.autocast(backbone_out["backbone_fpn"][-1].device.type, enabled=False):
            scene = self.must3r.step(frame)
        t1 = time.perf_counter()
        merged = merge_features(self._merge, backbone_out["backbone_fpn"][-1], scene, frame.shape[:2])
        return FeatureOutput(merged, scene, {"must3r": t1 - t0, "merger": time.perf_counter() - t1})

    def reset(self) -> None:
        self.must3r.reset()

    def nbytes(self) -> int:
        memory = self.must3r.memory
        return 0 if memory is None else memory.nbytes()


__all__ = ["FeatureOutput", "FeatureProvider", "MergedFeatures", "SamFeatures", "merge_features"]
