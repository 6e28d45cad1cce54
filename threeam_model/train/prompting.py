"""SAM 2's training-time prompting schedule (which frames get which prompts, and the correction clicks).

Adopted from SAM 2.1's training configuration (sam2/configs/sam2.1_training, model `SAM2Train`):
- with probability 0.5 the conditioning frames get the ground-truth mask as prompt; otherwise a point prompt,
  which is a box (two corner clicks, SAM 2's noisy `sample_box_points`) with probability 0.5 and else one click
  sampled uniformly from the object (`get_next_point`, method "uniform");
- 1 or 2 initial conditioning frames (random): the first frame, plus a random later one;
- with point prompts, correction clicks go on the conditioning frames plus random extra frames, up to 2 frames
  in all (random count); each gets 7 clicks, each sampled from the current error region (from the ground truth
  with probability 0.1), and each click is a new prediction step supervised by the loss; corrected frames become
  conditioning frames (add_all_frames_to_correct_as_cond);
- frames are processed conditioning frames first, then the rest in order.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class PromptSchedule:
    prob_points: float = 0.5  # prob_to_use_pt_input_for_train
    prob_box: float = 0.5  # prob_to_use_box_input_for_train (given point input)
    num_init_cond_frames: int = 2  # random 1..this
    num_frames_to_correct: int = 2  # random num_init_cond..this
    num_correction_points: int = 7  # num_correction_pt_per_frame
    prob_correct_from_gt: float = 0.1  # prob_to_sample_from_gt_for_train
    add_corrected_as_cond: bool = True  # add_all_frames_to_correct_as_cond


@dataclasses.dataclass
class PromptPlan:
    use_points: bool
    init_cond_frames: list[int]
    frames_to_correct: list[int]
    box_frames: list[int]  # conditioning frames prompted with a box (when use_points)

    @property
    def cond_frames(self) -> set[int]:
        return set(self.init_cond_frames)

    def processing_order(self, num_frames: int) -> list[int]:
        return self.init_cond_frames + [t for t in range(num_frames) if t not in self.init_cond_frames]


def plan_prompts(schedule: PromptSchedule, num_frames: int, rng: np.random.Generator) -> PromptPlan:
    """Draw one sample's prompt plan (a 1-frame sample always gets a point prompt, as in SAM 2)."""
    s = schedule
    prob_points = 1.0 if num_frames == 1 else s.prob_points
    n_init = 1 if num_frames == 1 else min(s.num_init_cond_frames, num_frames)
    n_correct = 1 if num_frames == 1 else min(s.num_frames_to_correct, num_frames)
    use_points = bool(rng.random() < prob_points)
    if n_init > 1:
        n_init = int(rng.integers(1, n_init, endpoint=True))
    if use_points and n_correct > n_init:
        n_correct = int(rng.integers(n_init, n_correct, endpoint=True))
    init = [0] + (rng.choice(np.arange(1, num_frames), n_init - 1, replace=False).tolist() if n_init > 1 else [])
    box_frames = [t for t in init if use_points and rng.random() < s.prob_box]
    if not use_points:
        correct: list[int] = []
    else:
        rest = [t for t in range(num_frames) if t not in init]
        extra = max(n_correct - n_init, 0)
        correct = init + (rng.choice(rest, extra, replace=False).tolist() if extra else [])
    return PromptPlan(use_points, [int(t) for t in init], [int(t) for t in correct], [int(t) for t in box_frames])
