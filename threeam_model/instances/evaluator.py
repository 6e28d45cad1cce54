"""Class-agnostic 3D instance segmentation AP, equal to the official ScanNet evaluator run with a single class.

Re-implemented from the logic of ScanNet's `BenchmarkScripts/3d_evaluation/evaluate_semantic_instance.py` (as
class-agnostic papers call it: every counted GT instance and every prediction gets one label), checked against
numbers that evaluator recorded (../shared/reference/instance3d). The rules, per scene, per IoU threshold `t`:

- a prediction with fewer than `min_region_size` (100) vertices is dropped before anything else;
- a GT instance is counted when it has at least `min_region_size` vertices; smaller ones are not GT, but their
  vertices are ignored in the false-positive test below (as are void vertices, GT id 0);
- GT instances are visited in increasing id order and each one's overlapping predictions in prediction order:
  the first prediction not yet used with IoU > t (strict) matches; every further one with IoU > t is a false
  positive carrying the lower of the two scores, and the GT keeps the higher;
- a prediction that matches no GT instance (IoU > t with none, small ones included) is a false positive only when
  its share of ignored vertices (void + small GT instances) is <= t;
- unmatched GT instances are false negatives.
All scenes are pooled into one precision/recall curve: one point per distinct score (predictions scoring at least
that much), an artificial point (precision 1, recall 0) last, and AP = sum_i p_i (r_{i-1} - r_{i+1}) / 2 with
r_{-1} = r_0 and r_{n+1} = 0 (no precision envelope). AP is the mean over t in 0.50:0.95 (9 values), AP50 and AP25
the values at 0.5 and 0.25. With GT but no prediction AP is 0; without GT it is NaN. Where predictions exist but
none is a true or counted false positive the official script crashes (IndexError); like its Python 3 ports used by
ESAM and Open3DIS, this gives 0.

The ScanNet200 class-agnostic protocol (ESAM, Open3DIS): a GT instance counts when its ScanNet200 label is one of
the 198 classes other than wall (1) and floor (3); everything else is void (`scannet200_agnostic_gt`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

# np.arange's own float steps, exactly as the official script builds them (0.8000000000000003 etc.)
OVERLAPS = np.append(np.arange(0.5, 0.95, 0.05), 0.25)
MIN_REGION_SIZE = 100

# ScanNet200's raw category ids (BenchmarkScripts/ScanNet200/scannet200_constants.py, VALID_CLASS_IDS_200).
VALID_CLASS_IDS_200 = (
    1,
    2,
    3,
    4,
    5,
    6,
    7,
    8,
    9,
    10,
    11,
    13,
    14,
    15,
    16,
    17,
    18,
    19,
    21,
    22,
    23,
    24,
    26,
    27,
    28,
    29,
    31,
    32,
    33,
    34,
    35,
    36,
    38,
    39,
    40,
    41,
    42,
    44,
    45,
    46,
    47,
    48,
    49,
    50,
    51,
    52,
    54,
    55,
    56,
    57,
    58,
    59,
    62,
    63,
    64,
    65,
    66,
    67,
    68,
    69,
    70,
    71,
    72,
    73,
    74,
    75,
    76,
    77,
    78,
    79,
    80,
    82,
    84,
    86,
    87,
    88,
    89,
    90,
    93,
    95,
    96,
    97,
    98,
    99,
    100,
    101,
    102,
    103,
    104,
    105,
    106,
    107,
    110,
    112,
    115,
    116,
    118,
    120,
    121,
    122,
    125,
    128,
    130,
    131,
    132,
    134,
    136,
    138,
    139,
    140,
    141,
    145,
    148,
    154,
    155,
    156,
    157,
    159,
    161,
    163,
    165,
    166,
    168,
    169,
    170,
    177,
    180,
    185,
    188,
    191,
    193,
    195,
    202,
    208,
    213,
    214,
    221,
    229,
    230,
    232,
    233,
    242,
    250,
    261,
    264,
    276,
    283,
    286,
    300,
    304,
    312,
    323,
    325,
    331,
    342,
    356,
    370,
    392,
    395,
    399,
    408,
    417,
    488,
    540,
    562,
    570,
    572,
    581,
    609,
    748,
    776,
    1156,
    1163,
    1164,
    1165,
    1166,
    1167,
    1168,
    1169,
    1170,
    1171,
    1172,
    1173,
    1174,
    1175,
    1176,
    1178,
    1179,
    1180,
    1181,
    1182,
    1183,
    1184,
    1185,
    1186,
    1187,
    1188,
    1189,
    1190,
    1191,
)
SCANNET200_STUFF = (1, 3)  # wall, floor: not instances in the class-agnostic protocol


def scannet200_agnostic_gt(gt_ids: np.ndarray) -> np.ndarray:
    """Per-vertex GT in the ScanNet encoding (label * 1000 + instance, 0 = unannotated) -> class-agnostic GT:
    the id itself where the label is a ScanNet200 class other than wall and floor, else 0 (void)."""
    gt_ids = np.asarray(gt_ids, dtype=np.int64)
    labels = gt_ids // 1000
    counted = np.isin(labels, VALID_CLASS_IDS_200) & ~np.isin(labels, SCANNET200_STUFF)
    return np.where(counted, gt_ids, 0)


@dataclasses.dataclass
class SceneInstances:
    """One scene's ground truth and predictions over the same N vertices.

    gt: (N,) integer instance id per vertex, 0 = void (unannotated or not an instance class);
    masks: (P, N) bool, one row per predicted instance (rows may overlap); scores: (P,) confidences.
    """

    gt: np.ndarray
    masks: np.ndarray
    scores: np.ndarray
    name: str = ""

    def __post_init__(self):
        self.gt = np.asarray(self.gt).reshape(-1).astype(np.int64)
        self.masks = np.asarray(self.masks, dtype=bool).reshape(-1, self.gt.size)
        self.scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
        if len(self.scores) != len(self.masks):
            raise ValueError(f"{self.name or 'scene'}: {len(self.masks)} masks but {len(self.scores)} scores")


def masks_from_labels(labels: np.ndarray, scores: dict[int, float]) -> tuple[np.ndarray, np.ndarray]:
    """Per-vertex predicted ids (0 = none) and {id: score} -> (masks (P, N), scores (P,)) in increasing id order."""
    labels = np.asarray(labels).reshape(-1)
    ids = [i for i in sorted(int(x) for x in np.unique(labels)) if i != 0]
    masks = np.stack([labels == i for i in ids]) if ids else np.zeros((0, labels.size), bool)
    return masks, np.array([float(scores[i]) for i in ids], dtype=np.float64)


@dataclasses.dataclass
class InstanceAP:
    ap: float  # mean over IoU 0.50:0.95
    ap50: float
    ap25: float
    ap_per_overlap: list[float]  # in the order of OVERLAPS
    num_gt: int  # counted GT instances, all scenes
    num_pred: int  # predictions kept (>= min_region_size), all scenes

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class _SceneMatches:
    """What matching needs from one scene: sizes and intersections, nothing per vertex."""

    gt_sizes: np.ndarray  # (G,) vertices of every GT instance (small ones too), in increasing id order
    pred_sizes: np.ndarray  # (P,) of the predictions kept
    pred_scores: np.ndarray  # (P,)
    pred_void: np.ndarray  # (P,) vertices on void
    inter: np.ndarray  # (P, G) intersections


def _scene_matches(scene: SceneInstances, min_region_size: int) -> _SceneMatches:
    ids, gt_index, gt_sizes = np.unique(scene.gt, return_inverse=True, return_counts=True)
    has_void = ids[0] == 0 if ids.size else False
    keep = scene.masks.sum(1) >= min_region_size
    masks, scores = scene.masks[keep], scene.scores[keep]
    inter = np.stack([np.bincount(gt_index[m], minlength=len(ids)) for m in masks]) if len(masks) else None
    if inter is None:
        inter = np.zeros((0, len(ids)), np.int64)
    void = inter[:, 0] if has_void else np.zeros(len(masks), np.int64)
    if has_void:
        inter, gt_sizes = inter[:, 1:], gt_sizes[1:]
    return _SceneMatches(gt_sizes, masks.sum(1), scores, void, inter)


def _match(m: _SceneMatches, overlap: float, min_region_size: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(y_true, y_score, hard false negatives) of one scene at one IoU threshold."""
    union = m.gt_sizes[None, :] + m.pred_sizes[:, None] - m.inter
    iou = np.where(m.inter > 0, m.inter / np.maximum(union, 1), 0.0)
    counted = np.flatnonzero(m.gt_sizes >= min_region_size)
    used = np.zeros(len(m.pred_sizes), bool)
    gt_score = np.full(len(counted), -np.inf)
    gt_matched = np.zeros(len(counted), bool)
    dup_scores = []
    hard_fn = 0
    for k, g in enumerate(counted):
        for p in np.flatnonzero(m.inter[:, g] > 0):  # prediction order
            if used[p] or not iou[p, g] > overlap:
                continue
            if gt_matched[k]:  # a duplicate: the lower score is a false positive
                dup_scores.append(min(gt_score[k], m.pred_scores[p]))
                gt_score[k] = max(gt_score[k], m.pred_scores[p])
            else:
                gt_matched[k], gt_score[k], used[p] = True, m.pred_scores[p], True
        hard_fn += int(not gt_matched[k])
    small = m.gt_sizes < min_region_size
    fp_scores = []
    for p in range(len(m.pred_sizes)):
        if (iou[p] > overlap).any():
            continue
        ignored = m.pred_void[p] + m.inter[p, small].sum()
        if ignored / m.pred_sizes[p] <= overlap:
            fp_scores.append(m.pred_scores[p])
    y_true = np.concatenate([np.ones(gt_matched.sum()), np.zeros(len(dup_scores) + len(fp_scores))])
    y_score = np.concatenate([gt_score[gt_matched], dup_scores, fp_scores])
    return y_true, y_score, hard_fn


def average_precision(y_true: np.ndarray, y_score: np.ndarray, hard_false_negatives: int) -> float:
    """The official script's area under the precision/recall curve (module docstring)."""
    if len(y_true) == 0:
        return 0.0  # the official script raises here; its Python 3 ports return 0
    order = np.argsort(y_score)
    y_true, y_score = y_true[order], y_score[order]
    cumsum = np.append(np.cumsum(y_true), 0)  # cumsum[-1] == 0 stands for "nothing below the lowest score"
    _, first = np.unique(y_score, return_index=True)
    n, n_true = len(y_score), cumsum[-2]
    precision, recall = np.zeros(len(first) + 1), np.zeros(len(first) + 1)
    for i, idx in enumerate(first):
        below = cumsum[idx - 1]  # true positives scoring below this threshold
        tp = n_true - below
        fp = n - idx - tp
        precision[i] = tp / (tp + fp)
        recall[i] = tp / (tp + below + hard_false_negatives)
    precision[-1], recall[-1] = 1.0, 0.0
    padded = np.concatenate([recall[:1], recall, [0.0]])
    step = (padded[:-2] - padded[2:]) / 2
    return float(np.dot(precision, step))


def evaluate(
    scenes: Sequence[SceneInstances],
    min_region_size: int = MIN_REGION_SIZE,
    overlaps: np.ndarray = OVERLAPS,
) -> InstanceAP:
    """Pooled class-agnostic AP over `scenes` (one evaluation, as papers report it)."""
    matches = [_scene_matches(s, min_region_size) for s in scenes]
    num_gt = int(sum((m.gt_sizes >= min_region_size).sum() for m in matches))
    num_pred = int(sum(len(m.pred_sizes) for m in matches))
    aps = []
    for overlap in overlaps:
        if num_gt == 0:
            aps.append(float("nan"))
            continue
        if num_pred == 0:
            aps.append(0.0)
            continue
        parts = [_match(m, overlap, min_region_size) for m in matches]
        y_true = np.concatenate([p[0] for p in parts])
        y_score = np.concatenate([p[1] for p in parts])
        aps.append(average_precision(y_true, y_score, sum(p[2] for p in parts)))
    aps_arr = np.asarray(aps)
    is25, is50 = np.isclose(overlaps, 0.25), np.isclose(overlaps, 0.5)
    with np.errstate(all="ignore"):
        ap = float(np.nan if num_gt == 0 else np.mean(aps_arr[~is25]))
    return InstanceAP(
        ap=ap,
        ap50=float(aps_arr[is50][0]) if is50.any() else float("nan"),
        ap25=float(aps_arr[is25][0]) if is25.any() else float("nan"),
        ap_per_overlap=[float(a) for a in aps_arr],
        num_gt=num_gt,
        num_pred=num_pred,
    )


__all__ = [
    "MIN_REGION_SIZE",
    "OVERLAPS",
    "VALID_CLASS_IDS_200",
    "InstanceAP",
    "SceneInstances",
    "average_precision",
    "evaluate",
    "masks_from_labels",
    "scannet200_agnostic_gt",
]
