"""Video object segmentation metrics: the paper's three IoU variants and the DAVIS J / F measures.

Paper metrics (3AM, Sec. 4.1, Tables 2-4 and 6), for one object track over the frames of a sequence:
- IoU: mean per-frame IoU over ALL frames. A frame where ground truth and prediction are both empty scores 1;
  one where exactly one of them is empty scores 0.
- Positive IoU: mean per-frame IoU over the frames whose ground-truth mask is non-empty.
- Successful IoU: mean per-frame IoU over the frames whose ground-truth mask is non-empty AND whose IoU is > 0.

Averaging. The paper scores "each object track" and reports one number per method and set; it does not spell out
how tracks are combined. We average per object (macro): each object's three means first, then the plain mean over
objects, so a long track weighs as much as a short one, like the DAVIS "per object, then mean" convention. An
object whose Positive / Successful set is empty has no value for that metric (NaN) and is left out of that mean;
the counts of objects that do contribute are reported next to each mean. The frame-pooled (micro) means are
computed too, for comparison.

DAVIS measures follow the official davis2017-evaluation toolkit (davis2017/metrics.py and utils.py): J is the
Jaccard index with both-empty = 1; F is the boundary F-measure on 1-pixel boundary maps matched within a disk of
radius ceil(bound_th * image diagonal); statistics are mean, recall (fraction > 0.5) and decay (first quarter
minus last quarter).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Iterable, Sequence

import cv2
import numpy as np

DAVIS_BOUND_TH = 0.008  # the toolkit's default boundary tolerance, as a fraction of the image diagonal


# ------------------------------------------------------------------------------------------- per-frame IoU


def _as_bool(mask: np.ndarray, name: str) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (H, W) mask, got shape {mask.shape}")
    return mask.astype(bool, copy=False)


def mask_counts(gt: np.ndarray, pred: np.ndarray) -> tuple[int, int, int, int]:
    """(intersection, union, gt pixels, pred pixels) of two (H, W) masks."""
    gt = _as_bool(gt, "gt")
    pred = _as_bool(pred, "pred")
    if gt.shape != pred.shape:
        raise ValueError(f"gt {gt.shape} and prediction {pred.shape} differ in size; resize the prediction first")
    inter = int(np.count_nonzero(gt & pred))
    n_gt = int(np.count_nonzero(gt))
    n_pred = int(np.count_nonzero(pred))
    return inter, n_gt + n_pred - inter, n_gt, n_pred


def iou_from_counts(inter: int, union: int) -> float:
    """IoU with the both-empty convention (union 0 -> 1)."""
    return 1.0 if union == 0 else inter / union


def frame_iou(gt: np.ndarray, pred: np.ndarray) -> float:
    """IoU of two (H, W) masks; 1 when both are empty."""
    inter, union, _, _ = mask_counts(gt, pred)
    return iou_from_counts(inter, union)


# ------------------------------------------------------------------------------------- per-object scores


@dataclasses.dataclass
class ObjectScores:
    """The paper's three metrics for one object track (NaN where a metric's frame set is empty)."""

    iou: float
    positive_iou: float
    successful_iou: float
    n_frames: int
    n_positive: int  # frames with a non-empty ground-truth mask
    n_successful: int  # positive frames with IoU > 0

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def object_scores(per_frame_iou: Sequence[float], gt_present: Sequence[bool]) -> ObjectScores:
    """Score one object from its per-frame IoU (both-empty = 1) and its ground-truth presence per frame."""
    iou = np.asarray(per_frame_iou, dtype=np.float64).reshape(-1)
    present = np.asarray(gt_present, dtype=bool).reshape(-1)
    if iou.shape != present.shape:
        raise ValueError(f"{iou.size} IoU values but {present.size} presence flags")
    if iou.size == 0:
        raise ValueError("an object track needs at least one frame")
    if np.isnan(iou).any() or (iou < 0).any() or (iou > 1).any():
        raise ValueError("per-frame IoU must lie in [0, 1]")
    successful = present & (iou > 0)
    return ObjectScores(
        iou=float(iou.mean()),
        positive_iou=float(iou[present].mean()) if present.any() else math.nan,
        successful_iou=float(iou[successful].mean()) if successful.any() else math.nan,
        n_frames=int(iou.size),
        n_positive=int(present.sum()),
        n_successful=int(successful.sum()),
    )


def object_scores_from_masks(gt_masks: Iterable[np.ndarray], pred_masks: Iterable[np.ndarray]) -> ObjectScores:
    """Score one object from its (H, W) ground-truth and predicted masks, frame by frame."""
    ious, present = [], []
    for gt, pred in zip(gt_masks, pred_masks, strict=True):
        inter, union, n_gt, _ = mask_counts(gt, pred)
        ious.append(iou_from_counts(inter, union))
        present.append(n_gt > 0)
    return object_scores(ious, present)


METRIC_NAMES = ("iou", "positive_iou", "successful_iou")


def average_objects(scores: Sequence[ObjectScores]) -> dict:
    """Macro average over objects (the averaging we use for the paper's tables), NaNs left out.

    Returns {metric: mean, "n_objects_<metric>": how many objects contributed, "n_objects": total}.
    """
    out: dict = {"n_objects": len(scores)}
    for name in METRIC_NAMES:
        values = np.array([getattr(s, name) for s in scores], dtype=np.float64)
        valid = values[~np.isnan(values)]
        out[name] = float(valid.mean()) if valid.size else math.nan
        out[f"n_objects_{name}"] = int(valid.size)
    return out


def pool_frames(per_frame_iou: Sequence[Sequence[float]], gt_present: Sequence[Sequence[bool]]) -> dict:
    """Micro average: every (object, frame) pair weighs the same. For comparison with the macro average."""
    if not per_frame_iou:
        return {name: math.nan for name in METRIC_NAMES}
    iou = np.concatenate([np.asarray(v, dtype=np.float64).reshape(-1) for v in per_frame_iou])
    present = np.concatenate([np.asarray(v, dtype=bool).reshape(-1) for v in gt_present])
    return dataclasses.asdict(object_scores(iou, present)) if iou.size else {n: math.nan for n in METRIC_NAMES}


# ----------------------------------------------------------------------------------------- DAVIS J and F


def davis_j(gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None = None) -> float:
    """Region similarity J (Jaccard index) of one frame, as the DAVIS toolkit: both empty -> 1; void ignored."""
    gt = _as_bool(gt, "gt")
    pred = _as_bool(pred, "pred")
    if gt.shape != pred.shape:
        raise ValueError(f"gt {gt.shape} and prediction {pred.shape} differ in size")
    keep = np.ones_like(gt) if void is None else ~_as_bool(void, "void")
    inter = np.count_nonzero(gt & pred & keep)
    union = np.count_nonzero((gt | pred) & keep)
    # The toolkit tests np.isclose(union, 0), which for integer counts means union == 0.
    return 1.0 if union == 0 else inter / union


def boundary_map(mask: np.ndarray) -> np.ndarray:
    """1-pixel-wide boundary of a binary mask, shifted half a pixel towards the origin (DAVIS seg2bmap).

    A pixel is on the boundary when it differs from its right, lower or lower-right neighbour (pixels past the
    image count as background); on the last row only the right neighbour and on the last column only the lower
    neighbour are compared, and the bottom-right corner is never a boundary.
    """
    seg = _as_bool(mask, "mask")
    right = np.zeros_like(seg)
    right[:, :-1] = seg[:, 1:]
    down = np.zeros_like(seg)
    down[:-1, :] = seg[1:, :]
    diag = np.zeros_like(seg)
    diag[:-1, :-1] = seg[1:, 1:]
    bmap = (seg ^ right) | (seg ^ down) | (seg ^ diag)
    bmap[-1, :] = seg[-1, :] ^ right[-1, :]
    bmap[:, -1] = seg[:, -1] ^ down[:, -1]
    bmap[-1, -1] = False
    return bmap


def disk_kernel(radius: int) -> np.ndarray:
    """(2r+1, 2r+1) uint8 disk: the offsets (dy, dx) with dy^2 + dx^2 <= r^2."""
    r = int(radius)
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return ((yy * yy + xx * xx) <= r * r).astype(np.uint8)


def boundary_tolerance(image_size: tuple[int, int], bound_th: float = DAVIS_BOUND_TH) -> int:
    """Match radius in pixels: bound_th itself if >= 1, else ceil(bound_th * image diagonal)."""
    if bound_th >= 1:
        return int(bound_th)
    return int(math.ceil(bound_th * math.hypot(*image_size)))


def davis_f(
    gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None = None, bound_th: float = DAVIS_BOUND_TH
) -> float:
    """Boundary F-measure of one frame, as the DAVIS toolkit's f_measure."""
    gt = _as_bool(gt, "gt")
    pred = _as_bool(pred, "pred")
    if gt.shape != pred.shape:
        raise ValueError(f"gt {gt.shape} and prediction {pred.shape} differ in size")
    if void is not None:
        keep = ~_as_bool(void, "void")
        gt, pred = gt & keep, pred & keep
    kernel = disk_kernel(boundary_tolerance(gt.shape, bound_th))
    pred_b = boundary_map(pred)
    gt_b = boundary_map(gt)
    n_pred = int(np.count_nonzero(pred_b))
    n_gt = int(np.count_nonzero(gt_b))
    if n_pred == 0 and n_gt == 0:
        return 1.0
    if n_pred == 0 or n_gt == 0:
        return 0.0  # precision or recall is 0 and the other is 1
    # Outside the image counts as background for the dilation (cv2's default border for dilate).
    pred_dil = cv2.dilate(pred_b.astype(np.uint8), kernel).astype(bool)
    gt_dil = cv2.dilate(gt_b.astype(np.uint8), kernel).astype(bool)
    precision = np.count_nonzero(pred_b & gt_dil) / n_pred
    recall = np.count_nonzero(gt_b & pred_dil) / n_gt
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


@dataclasses.dataclass
class DavisStatistics:
    mean: float
    recall: float  # fraction of frames with value > 0.5
    decay: float  # mean of the first quarter of frames minus mean of the last quarter


def davis_statistics(per_frame: Sequence[float]) -> DavisStatistics:
    """Mean, recall and decay of per-frame J or F values, as the DAVIS toolkit's db_statistics (NaNs skipped)."""
    values = np.asarray(per_frame, dtype=np.float64).reshape(-1)
    if values.size == 0:
        raise ValueError("no per-frame values to summarise")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        mean = float(np.nanmean(values))
        recall = float(np.nanmean(values > 0.5))
        # Four overlapping bins with the toolkit's edges: round(linspace(1, n, 5)) - 1, both ends inclusive.
        edges = (np.round(np.linspace(1, values.size, 5) + 1e-10) - 1).astype(int)
        first = values[edges[0] : edges[1] + 1]
        last = values[edges[3] : edges[4] + 1]
        decay = float(np.nanmean(first) - np.nanmean(last))
    return DavisStatistics(mean, recall, decay)


__all__ = [
    "DAVIS_BOUND_TH",
    "METRIC_NAMES",
    "DavisStatistics",
    "ObjectScores",
    "average_objects",
    "boundary_map",
    "boundary_tolerance",
    "davis_f",
    "davis_j",
    "davis_statistics",
    "disk_kernel",
    "frame_iou",
    "iou_from_counts",
    "mask_counts",
    "object_scores",
    "object_scores_from_masks",
    "pool_frames",
]
