"""SAM 2's training loss, unchanged (paper supplement C.2): focal (20) + dice (1) on masks, L1 (1) on the predicted
IoU, cross-entropy (1) on object presence, summed over every prediction step of every frame.

Adopted from SAM 2.1's training config (sam2/configs/sam2.1_training/*.yaml, loss `MultiStepMultiMasksAndIous`):
- focal loss alpha 0.25, gamma 2, averaged over pixels; dice with +1 smoothing; both divided by the number of
  objects;
- with several mask candidates (multimask output), focal + dice back-propagate only through the candidate with
  the lowest 20 * focal + dice; the IoU head is supervised on *all* candidates (supervise_all_iou = true) with
  L1 (iou_use_l1_loss = true) against the IoU of the binarised candidate with the ground truth;
- object presence: binary cross-entropy on the object-score logit (SAM 2's focal with gamma 0, no alpha), target
  = "the ground-truth mask is non-empty";
- mask, dice and IoU terms count only where the object is present;
- a frame's loss sums its prediction steps (the initial prediction plus each correction click), and a sample's
  loss sums its frames.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

LOSS_KEYS = ("loss_mask", "loss_dice", "loss_iou", "loss_class")


@dataclasses.dataclass
class LossWeights:
    loss_mask: float = 20.0  # focal
    loss_dice: float = 1.0
    loss_iou: float = 1.0  # L1 on predicted IoU
    loss_class: float = 1.0  # object presence cross-entropy


def focal_per_mask(logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0):
    """(N, M, H, W) logits and 0/1 targets -> (N, M) sigmoid focal loss averaged over pixels."""
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss.flatten(2).mean(-1)


def dice_per_mask(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(N, M, H, W) -> (N, M) 1 - soft dice, with +1 smoothing on both sides."""
    prob = logits.sigmoid().flatten(2)
    t = targets.flatten(2)
    return 1 - (2 * (prob * t).sum(-1) + 1) / (prob.sum(-1) + t.sum(-1) + 1)


def actual_iou(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(N, M, H, W) -> (N, M) IoU of (logits > 0) with the target (0 when both are empty)."""
    pred = logits.flatten(2) > 0
    gt = targets.flatten(2) > 0
    inter = (pred & gt).sum(-1).float()
    union = (pred | gt).sum(-1).float()
    return inter / union.clamp(min=1.0)


def step_losses(
    multimasks: torch.Tensor,
    pred_ious: torch.Tensor,
    object_score_logits: torch.Tensor,
    targets: torch.Tensor,
    num_objects: float,
    weights: LossWeights,
) -> dict[str, torch.Tensor]:
    """Losses of one prediction step.

    multimasks: (N, M, H, W) mask logits at the target's resolution; pred_ious: (N, M);
    object_score_logits: (N, 1); targets: (N, H, W) 0/1 ground truth; num_objects: normaliser.
    """
    t = targets[:, None].float().expand_as(multimasks)
    focal = focal_per_mask(multimasks, t) / num_objects
    dice = dice_per_mask(multimasks, t) / num_objects
    iou = F.l1_loss(pred_ious, actual_iou(multimasks, t), reduction="none") / num_objects
    present = targets.flatten(1).any(-1, keepdim=True).float()  # (N, 1)
    cls = F.binary_cross_entropy_with_logits(object_score_logits, present, reduction="none").mean(-1).sum()
    cls = cls / num_objects
    if multimasks.shape[1] > 1:
        best = torch.argmin(focal * weights.loss_mask + dice * weights.loss_dice, dim=-1)
        rows = torch.arange(len(best), device=best.device)
        focal, dice = focal[rows, best][:, None], dice[rows, best][:, None]
        iou = iou.mean(-1, keepdim=True)  # supervise_all_iou
    return {
        "loss_mask": (focal * present).sum(),
        "loss_dice": (dice * present).sum(),
        "loss_iou": (iou * present).sum(),
        "loss_class": cls,
    }


def video_losses(
    frame_outputs: list[dict],
    targets: torch.Tensor,
    weights: LossWeights | None = None,
    num_objects: float | None = None,
) -> dict[str, torch.Tensor]:
    """Sum of step losses over frames and prediction steps, plus the weighted total under key "loss".

    frame_outputs[t]: {"multistep_pred_multimasks_high_res": [(N, M, H, W), ...], "multistep_pred_ious": [...],
    "multistep_object_score_logits": [...]} (SAM 2's training outputs); targets: (T, N, H, W).
    num_objects defaults to N (SAM 2 averages it over ranks; with batch 1 per rank and the same N that is N).
    """
    weights = weights or LossWeights()
    if len(frame_outputs) != len(targets):
        raise ValueError(f"{len(frame_outputs)} frame outputs but {len(targets)} target frames")
    n = float(num_objects if num_objects is not None else targets.shape[1])
    n = max(n, 1.0)
    total = {k: targets.new_zeros((), dtype=torch.float32) for k in LOSS_KEYS}
    for out, tgt in zip(frame_outputs, targets):
        steps = zip(
            out["multistep_pred_multimasks_high_res"],
            out["multistep_pred_ious"],
            out["multistep_object_score_logits"],
        )
        for masks, ious, scores in steps:
            for k, v in step_losses(masks, ious, scores, tgt, n, weights).items():
                total[k] = total[k] + v
    total["loss"] = sum(getattr(weights, k) * total[k] for k in LOSS_KEYS)
    return total
