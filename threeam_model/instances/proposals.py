"""2D instance proposals on keyframes: SAM 2's automatic mask generator, or the ground truth (oracle).

`SamProposals` runs the `sam2` package's own `SAM2AutomaticMaskGenerator` on a `SAM2Base` (the tracker's model, so
the image encoder weights are loaded once). The project installs `sam2` without its declared dependencies, and the
generator imports four things from torchvision (`batched_nms`, `box_area`, `Resize`, `Normalize`, `ToTensor`);
when torchvision is absent, equivalents written here are put in place for that import only (`_sam2_amg_module`), so
the generator's own code runs unchanged. The image predictor inside it assumes a 1024 px model for its feature
sizes; they are set from the model's image size (so 512 px and the tiny test model work).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import sys
import types
import warnings

import numpy as np
import torch
import torch.nn.functional as F


@dataclasses.dataclass
class Proposal:
    mask: np.ndarray  # (H, W) bool
    score: float  # confidence in [0, 1] (SAM 2: predicted IoU; oracle: 1)


class OracleProposals:
    """Every ground-truth instance of the frame (id != 0) with at least `min_area` pixels, score 1."""

    def __init__(self, min_area: int = 50):
        self.min_area = int(min_area)

    def __call__(self, rgb: np.ndarray, instance: np.ndarray | None = None) -> list[Proposal]:
        if instance is None:
            raise ValueError("oracle proposals need the frame's ground-truth instance map")
        ids, counts = np.unique(instance, return_counts=True)
        return [Proposal(instance == i, 1.0) for i, c in zip(ids, counts) if i != 0 and c >= self.min_area]


@dataclasses.dataclass
class SamProposalParams:
    """SAM2AutomaticMaskGenerator settings (its defaults, except the grid: 32 x 32 points is costly per keyframe)."""

    points_per_side: int = 16
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.8
    stability_score_thresh: float = 0.95
    box_nms_thresh: float = 0.7
    min_area: int = 50  # proposals with fewer pixels are dropped
    max_proposals: int | None = None  # keep the best-scoring ones


class SamProposals:
    """Proposals from `sam2.automatic_mask_generator.SAM2AutomaticMaskGenerator` on the given SAM2Base."""

    def __init__(self, model, params: SamProposalParams | None = None):
        self.params = params or SamProposalParams()
        p = self.params
        amg = _sam2_amg_module()
        with warnings.catch_warnings():  # sam2's transforms use torch.jit.script, deprecated in this torch
            warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=DeprecationWarning)
            self.generator = amg.SAM2AutomaticMaskGenerator(
                model,
                points_per_side=p.points_per_side,
                points_per_batch=p.points_per_batch,
                pred_iou_thresh=p.pred_iou_thresh,
                stability_score_thresh=p.stability_score_thresh,
                box_nms_thresh=p.box_nms_thresh,
                output_mode="binary_mask",
            )
        size = int(model.image_size)
        # backbone strides 4, 8, 16 (the predictor hard-codes them for a 1024 px model)
        self.generator.predictor._bb_feat_sizes = [
            (size // 4, size // 4),
            (size // 8, size // 8),
            (size // 16, size // 16),
        ]

    def __call__(self, rgb: np.ndarray, instance: np.ndarray | None = None) -> list[Proposal]:
        with torch.inference_mode(False), torch.no_grad():
            records = self.generator.generate(np.ascontiguousarray(rgb))
        out = [Proposal(np.asarray(r["segmentation"], bool), float(r["predicted_iou"])) for r in records]
        out = [p for p in out if p.mask.sum() >= self.params.min_area]
        out.sort(key=lambda p: -p.score)
        return out[: self.params.max_proposals] if self.params.max_proposals else out


# --------------------------------------------------------------------------- torchvision stand-ins for the import


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """Area of (x0, y0, x1, y1) boxes."""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression: indices kept, best score first; a box goes when its IoU with a kept,
    better-scoring box is above the threshold."""
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device)
    device = boxes.device
    boxes, scores = boxes.detach().cpu(), scores.detach().cpu()  # a sequential loop: cheaper on the host
    order = torch.sort(scores, descending=True, stable=True).indices
    b = boxes[order].double()
    area = box_area(b)
    lt = torch.maximum(b[:, None, :2], b[None, :, :2])
    rb = torch.minimum(b[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    iou = inter / (area[:, None] + area[None, :] - inter)
    suppressed = torch.zeros(len(b), dtype=torch.bool)
    keep = []
    for i in range(len(b)):
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= iou[i] > iou_threshold
    return order[torch.tensor(keep, dtype=torch.int64)].to(device)


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """NMS within each category of `idxs` (boxes of different categories never suppress each other)."""
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device)
    offsets = idxs.to(boxes) * (boxes.max() + 1)
    return nms(boxes + offsets[:, None], scores, iou_threshold)


class Resize(torch.nn.Module):
    """Bilinear, antialiased resize of a (C, H, W) float tensor to `size` (H, W), as torchvision's on tensors."""

    def __init__(self, size):
        super().__init__()
        self.size = [int(s) for s in size]

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return F.interpolate(img[None], size=self.size, mode="bilinear", align_corners=False, antialias=True)[0]


class Normalize(torch.nn.Module):
    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32)[:, None, None])
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32)[:, None, None])

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return (img - self.mean) / self.std


class ToTensor:
    """(H, W, C) uint8 array -> (C, H, W) float32 tensor in [0, 1]."""

    def __call__(self, pic) -> torch.Tensor:
        arr = np.asarray(pic)
        t = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))
        return t.float().div(255.0) if arr.dtype == np.uint8 else t.float()


@contextlib.contextmanager
def _torchvision_standin():
    """Make `torchvision.ops.boxes` and `torchvision.transforms` importable for one import, then remove them."""
    names = ("torchvision", "torchvision.ops", "torchvision.ops.boxes", "torchvision.transforms")
    mods = {n: types.ModuleType(n) for n in names}
    mods["torchvision.ops.boxes"].batched_nms = batched_nms
    mods["torchvision.ops.boxes"].box_area = box_area
    for cls in (Resize, Normalize, ToTensor):
        setattr(mods["torchvision.transforms"], cls.__name__, cls)
    sys.modules.update(mods)
    try:
        yield
    finally:
        for n in names:
            if sys.modules.get(n) is mods[n]:
                del sys.modules[n]


def _sam2_amg_module():
    """sam2.automatic_mask_generator, imported with torchvision or, without it, with the stand-ins above."""
    try:
        import torchvision  # noqa: F401
    except ImportError:
        if "sam2.automatic_mask_generator" not in sys.modules:
            with _torchvision_standin():
                importlib.import_module("sam2.utils.transforms")
                importlib.import_module("sam2.sam2_image_predictor")
                importlib.import_module("sam2.automatic_mask_generator")
    return importlib.import_module("sam2.automatic_mask_generator")


__all__ = ["OracleProposals", "Proposal", "SamProposalParams", "SamProposals", "batched_nms", "nms"]
