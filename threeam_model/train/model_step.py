"""One training forward pass: a sampled clip with its ground-truth masks -> SAM 2's multi-step outputs per frame.

The frozen parts run without autograd: SAM 2's image encoder (all frames at once) and MUSt3R (done by the caller,
see must3r_features.py). Per frame, the Feature Merger turns SAM 2's stride-16 feature and the frame's MUSt3R
outputs into F_merged (`threeam_model.streaming.merge_features`, the same function the tracker uses), which replaces
the stride-16 feature for memory attention, the mask decoder's input and the memory encoder, exactly as at
inference. Then SAM 2's own tracking step runs on every frame with the prompting schedule of prompting.py, all
objects of the clip as one batch, gradients flowing through memory across frames (as SAM2Train does).

With `merger=None` the same step fine-tunes plain SAM 2 (the paper's "SAM2 (Finetuned)" baseline).
"""

from __future__ import annotations

import numpy as np
import torch
from sam2.modeling.sam2_utils import get_next_point, sample_box_points
from sam2.utils.misc import concat_points
from torch import nn

from threeam_model.streaming.engine import sam2_preprocess
from threeam_model.streaming.features import merge_features
from threeam_model.train.prompting import PromptPlan, PromptSchedule


def sam2_input(frames: np.ndarray, size: int) -> torch.Tensor:
    """(T, H, W, 3) uint8 -> (T, 3, size, size) normalised, as the tracker prepares a frame (`sam2_preprocess`)."""
    return torch.stack([sam2_preprocess(frame, size) for frame in frames])


def mask_targets(masks: np.ndarray, size: int) -> torch.Tensor:
    """(T, N, H, W) bool -> (T, N, size, size) bool, nearest resize (SAM 2's training masks live at image size)."""
    t = torch.from_numpy(np.ascontiguousarray(masks)).float()
    t_, n = t.shape[:2]
    resized = nn.functional.interpolate(t.flatten(0, 1)[:, None], size=(size, size), mode="nearest")
    return resized[:, 0].view(t_, n, size, size) > 0.5


class ThreeAMTrainModel(nn.Module):
    """SAM 2 (+ Feature Merger) as one module for the optimiser and DistributedDataParallel."""

    def __init__(self, sam2_model: nn.Module, merger: nn.Module | None, schedule: PromptSchedule | None = None):
        super().__init__()
        self.sam2 = sam2_model
        self.merger = merger
        self.schedule = schedule or PromptSchedule()

    @property
    def image_size(self) -> int:
        return int(self.sam2.image_size)

    def train(self, mode: bool = True):
        """Trainable parts follow `mode`; frozen parts always stay in eval mode (no dropout, fixed statistics).
        The SAM2Base root follows `mode` too: its own `training` flag selects SAM 2's training behaviour."""
        super().train(mode)
        for name in ("image_encoder", "memory_encoder", "sam_prompt_encoder"):
            getattr(self.sam2, name).eval()
        return self

    def forward(
        self,
        images: torch.Tensor,
        targets: torch.Tensor,
        plan: PromptPlan,
        must3r_frames: list | None,
        frame_hw: tuple[int, int],
        rng: np.random.Generator,
    ) -> list[dict]:
        """images (T, 3, S, S) normalised; targets (T, N, S, S) bool; must3r_frames: T Must3rFrame or None.

        Returns one dict per frame (frame order) with SAM 2's training outputs: "multistep_pred_multimasks_high_res",
        "multistep_pred_ious", "multistep_object_score_logits" (lists over prediction steps), "pred_masks_high_res".
        """
        model = self.sam2
        num_frames, num_obj = targets.shape[:2]
        with torch.no_grad():
            backbone = model.forward_image(images)
        fpn = list(backbone["backbone_fpn"])
        top = fpn[-1]
        if self.merger is not None:
            if must3r_frames is None or len(must3r_frames) != num_frames:
                raise ValueError("3AM training needs one MUSt3R frame per sampled frame")
            top = torch.cat(
                [merge_features(self.merger, top[t : t + 1], must3r_frames[t], frame_hw) for t in range(num_frames)]
            )
        backbone = {"backbone_fpn": fpn[:-1] + [top], "vision_pos_enc": backbone["vision_pos_enc"]}
        _, feats, pos, sizes = model._prepare_backbone_features(backbone)

        output_dict = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
        outputs: dict[int, dict] = {}
        for t in plan.processing_order(num_frames):
            # every object of the clip sees frame t's features: expand the batch dimension (HW, 1, C) -> (HW, N, C)
            cur_feats = [x[:, t : t + 1].expand(-1, num_obj, -1) for x in feats]
            cur_pos = [x[:, t : t + 1].expand(-1, num_obj, -1) for x in pos]
            gt = targets[t][:, None]  # (N, 1, S, S)
            is_cond = t in plan.cond_frames
            point_inputs = mask_inputs = None
            if is_cond:
                if not plan.use_points:
                    mask_inputs = gt.float()
                elif t in plan.box_frames:
                    pts, labels = sample_box_points(gt)
                    point_inputs = {"point_coords": pts, "point_labels": labels}
                else:
                    pts, labels = get_next_point(gt_masks=gt, pred_masks=None, method="uniform")
                    point_inputs = {"point_coords": pts, "point_labels": labels}
            out = self._track_frame(
                t, is_cond, cur_feats, cur_pos, sizes, point_inputs, mask_inputs, gt, plan, output_dict, num_frames, rng
            )
            as_cond = is_cond or (self.schedule.add_corrected_as_cond and t in plan.frames_to_correct)
            output_dict["cond_frame_outputs" if as_cond else "non_cond_frame_outputs"][t] = out
            outputs[t] = out
        return [outputs[t] for t in range(num_frames)]

    def _track_frame(
        self, t, is_cond, feats, pos, sizes, point_inputs, mask_inputs, gt, plan, output_dict, num_frames, rng
    ):
        """SAM2Train.track_step: one tracking step, then the correction clicks on frames that get them."""
        model = self.sam2
        out, sam_outputs, high_res_features, pix_feat = model._track_step(
            t, is_cond, feats, pos, sizes, point_inputs, mask_inputs, output_dict, num_frames, False, None
        )
        low_multi, high_multi, ious, low_masks, high_masks, obj_ptr, obj_scores = sam_outputs
        steps = {
            "multistep_pred_multimasks_high_res": [high_multi],
            "multistep_pred_ious": [ious],
            "multistep_object_score_logits": [obj_scores],
        }
        if t in plan.frames_to_correct:
            for _ in range(self.schedule.num_correction_points):
                from_gt = rng.random() < self.schedule.prob_correct_from_gt
                new_pts, new_labels = get_next_point(
                    gt_masks=gt, pred_masks=None if from_gt else high_masks > 0, method="uniform"
                )
                point_inputs = concat_points(point_inputs, new_pts, new_labels)
                sam_outputs = model._forward_sam_heads(
                    backbone_features=pix_feat,
                    point_inputs=point_inputs,
                    mask_inputs=low_masks,
                    high_res_features=high_res_features,
                    multimask_output=model._use_multimask(is_cond, point_inputs),
                )
                low_multi, high_multi, ious, low_masks, high_masks, _, obj_scores = sam_outputs
                steps["multistep_pred_multimasks_high_res"].append(high_multi)
                steps["multistep_pred_ious"].append(ious)
                steps["multistep_object_score_logits"].append(obj_scores)
        out.update(steps)
        out["pred_masks"] = low_masks
        out["pred_masks_high_res"] = high_masks
        out["obj_ptr"] = obj_ptr
        model._encode_memory_in_output(feats, sizes, point_inputs, True, high_masks, obj_scores, out)
        return out


def freeze_for_3am(train_model: ThreeAMTrainModel, lrs: dict | None = None) -> list[dict]:
    """The paper's split: only the merger (1e-5), memory attention (5e-6) and mask decoder (5e-6) train.

    Without a merger (plain SAM 2 fine-tuning) only memory attention and mask decoder train, with the same learning
    rates (`trainable_parameter_groups`).
    """
    from threeam_model.train.trainable import trainable_parameter_groups

    return trainable_parameter_groups(train_model.sam2, train_model.merger, lrs=lrs)
