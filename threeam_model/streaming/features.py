"""Feature providers: the stride-16 feature that memory attention and the memory encoder work on.

The engine encodes each frame once with SAM 2's image encoder and hands the encoder output to its provider, which
returns the stride-16 feature every object of that frame shares (the stride-4/8 features go to the mask decoder
unchanged). `SamFeatures` returns SAM 2's own feature; `MergedFeatures` is 3AM's: one MUSt3R step on the frame and
the Feature Merger fusing its 3D-aware features into SAM 2's (paper sec. 3.2). A provider with a per-frame scene
output (3AM: MUSt3R's pointmap, confidence, crop box) returns it, and the engine passes it on in `FrameResult.scene`.
"""

from __future__ import annotations

import contextlib
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

    def start(self, frame: np.ndarray, geometry: CameraGeometry | None) -> None:
        """Called before SAM 2's image encoder runs on the frame: work that does not need its output may start
        here (3AM queues MUSt3R on a side CUDA stream). `__call__` follows for the same frame."""

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

    def start(self, frame: np.ndarray, geometry: CameraGeometry | None) -> None:
        pass

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

    MUSt3R needs only the frame, so `start` submits its step before SAM 2's image encoder runs: on CUDA on a side
    stream, so the two models share the GPU, with the same kernels and results as one after the other (the merger
    waits for both). Timings: "must3r" (host time of the step), "merger", and MUSt3R's stages as "must3r_<stage>"
    (`Must3rFrame.timings`: device time on CUDA).
    """

    def __init__(self, must3r, merger, merge=None):
        """merge: what runs the merger, with the module's call (e.g. export.runtime.OnnxMerger); None = the module."""
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
        self._merge = self.merger if merge is None else merge
        self._side = None  # the CUDA stream MUSt3R runs on
        self._pending = None  # (frame, pending MUSt3R step, host seconds spent submitting it)

    def compile(self, mode: str | None) -> None:
        """Run the merger through torch.compile (static shapes per stream; MUSt3R itself stays eager)."""
        if self._merge is self.merger:  # another runtime stays as it is
            self._merge = torch.compile(self.merger, dynamic=False, mode=mode)

    def bind(self, sam2_model) -> None:
        width = sam2_model.hidden_dim
        if self.merger.cfg.sam_dim != width:
            raise ValueError(f"merger sam_dim {self.merger.cfg.sam_dim} differs from SAM 2's width {width}")
        self.merger.to(sam2_model.device)

    def _on_side_stream(self):
        """A context running on MUSt3R's side stream (CUDA), or a no-op."""
        device = self.must3r.device
        if device.type != "cuda":
            return contextlib.nullcontext()
        if self._side is None:
            self._side = torch.cuda.Stream(device)
        return torch.cuda.stream(self._side)

    def start(self, frame: np.ndarray, geometry: CameraGeometry | None) -> None:
        t0 = time.perf_counter()
        if self.must3r.device.type == "cuda":  # MUSt3R's inputs and outputs of earlier frames: in order
            self._on_side_stream()  # makes the stream
            self._side.wait_stream(torch.cuda.current_stream(self.must3r.device))
        # MUSt3R applies its own autocast (decoder only; pose and focal fitting need float32): leave the engine's
        with self._on_side_stream(), torch.autocast(self.must3r.device.type, enabled=False):
            pending = self.must3r.submit(frame)
        self._pending = (frame, pending, time.perf_counter() - t0)

    def __call__(self, backbone_out: dict, frame: np.ndarray, geometry: CameraGeometry | None) -> FeatureOutput:
        if self._pending is None or self._pending[0] is not frame:  # a caller that did not start this frame
            self.start(frame, geometry)
        _, pending, submit_s = self._pending
        self._pending = None
        t0 = time.perf_counter()
        with self._on_side_stream(), torch.autocast(self.must3r.device.type, enabled=False):
            scene = pending.result()
        if self._side is not None:
            main = torch.cuda.current_stream(self.must3r.device)
            main.wait_stream(self._side)
            for t in (
                scene.enc_tokens,
                *scene.feats.values(),
                scene.pts3d,
                scene.pts3d_local,
                scene.conf,
                scene.rays,
                scene.c2w,
            ):
                t.record_stream(main)  # made on the side stream, read on this one: not reused before it is done
        t1 = time.perf_counter()
        merged = merge_features(self._merge, backbone_out["backbone_fpn"][-1], scene, frame.shape[:2])
        timings = {"must3r": submit_s + t1 - t0, "merger": time.perf_counter() - t1}
        timings.update({f"must3r_{stage}": seconds for stage, seconds in scene.timings.items()})
        return FeatureOutput(merged, scene, timings)

    def reset(self) -> None:
        self._pending = None
        self.must3r.reset()

    def nbytes(self) -> int:
        memory = self.must3r.memory
        return 0 if memory is None else memory.nbytes()


__all__ = ["FeatureOutput", "FeatureProvider", "MergedFeatures", "SamFeatures", "merge_features"]
