"""SAM 2 losses (parity with the sam2 package's own training loss) and the prompting schedule."""

import importlib.util
import sys
import types

import numpy as np
import pytest
import torch

from threeam_model.train.losses import LossWeights, dice_per_mask, focal_per_mask, video_losses
from threeam_model.train.prompting import PromptSchedule, plan_prompts


@pytest.fixture(scope="module")
def official_loss_module():
    """sam2's training/loss_fns.py, loaded from the installed package with its two trainer-only imports stubbed
    (the rest of sam2's trainer needs packages we do not install)."""
    import sam2

    path = __import__("pathlib").Path(sam2.__file__).parents[1] / "training" / "loss_fns.py"
    stubs = {
        "training.trainer": types.SimpleNamespace(CORE_LOSS_KEY="core_loss"),
        "training.utils.distributed": types.SimpleNamespace(
            get_world_size=lambda: 1, is_dist_avail_and_initialized=lambda: False
        ),
    }
    saved = {k: sys.modules.get(k) for k in stubs}
    sys.modules.update(stubs)
    try:
        spec = importlib.util.spec_from_file_location("sam2_official_loss_fns", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    return module


def _random_outputs(gen, frames, n, steps, m, size):
    outs = []
    for _ in range(frames):
        k = steps[_ % len(steps)]
        outs.append(
            {
                "multistep_pred_multimasks_high_res": [
                    torch.randn(n, m, size, size, generator=gen) * 3 for _ in range(k)
                ],
                "multistep_pred_ious": [torch.rand(n, m, generator=gen) for _ in range(k)],
                "multistep_object_score_logits": [torch.randn(n, 1, generator=gen) * 2 for _ in range(k)],
            }
        )
    return outs


@pytest.mark.parametrize("m", [1, 3])
def test_matches_sam2_training_loss(official_loss_module, m):
    gen = torch.Generator().manual_seed(m)
    frames, n, size = 4, 3, 16
    targets = (torch.rand(frames, n, size, size, generator=gen) > 0.6).float()
    targets[1, 2] = 0  # object absent on a frame: no mask/dice/iou loss there, presence target 0
    outs = _random_outputs(gen, frames, n, steps=[3, 1], m=m, size=size)
    official = official_loss_module.MultiStepMultiMasksAndIous(
        weight_dict={"loss_mask": 20, "loss_dice": 1, "loss_iou": 1, "loss_class": 1},
        supervise_all_iou=True,
        iou_use_l1_loss=True,
        pred_obj_scores=True,
        focal_gamma_obj_score=0.0,
        focal_alpha_obj_score=-1.0,
    )(outs, targets)
    ours = video_losses(outs, targets, LossWeights())
    for key in ("loss_mask", "loss_dice", "loss_iou", "loss_class"):
        torch.testing.assert_close(ours[key], official[key].float(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ours["loss"], official["core_loss"].float(), rtol=1e-6, atol=1e-6)


def test_focal_and_dice_hand_values():
    # one pixel, logit 0 (p = 0.5), target 1: ce = ln 2, (1 - p_t)^2 = 0.25, alpha_t = 0.25
    focal = focal_per_mask(torch.zeros(1, 1, 1, 1), torch.ones(1, 1, 1, 1))
    assert focal.item() == pytest.approx(np.log(2) * 0.25 * 0.25)
    # perfect confident prediction on a 2x2 mask with 2 positives: dice = 1 - (2*2 + 1) / (2 + 2 + 1) = 0
    logits = torch.tensor([[[[50.0, -50.0], [50.0, -50.0]]]])
    target = (logits > 0).float()
    assert dice_per_mask(logits, target).item() == pytest.approx(0.0, abs=1e-6)
    assert dice_per_mask(-logits, target).item() == pytest.approx(1 - 1 / 5, abs=1e-6)


def test_prompt_plans_follow_the_schedule():
    rng = np.random.default_rng(0)
    s = PromptSchedule()
    plans = [plan_prompts(s, 8, rng) for _ in range(2000)]
    assert 0.45 < np.mean([p.use_points for p in plans]) < 0.55
    for p in plans:
        assert p.init_cond_frames[0] == 0 and 1 <= len(p.init_cond_frames) <= 2
        assert len(set(p.init_cond_frames)) == len(p.init_cond_frames)
        assert set(p.box_frames) <= set(p.init_cond_frames)
        if p.use_points:
            assert p.frames_to_correct[: len(p.init_cond_frames)] == p.init_cond_frames
            assert len(p.init_cond_frames) <= len(p.frames_to_correct) <= 2
        else:
            assert p.frames_to_correct == [] and p.box_frames == []
        order = p.processing_order(8)
        assert sorted(order) == list(range(8)) and order[: len(p.init_cond_frames)] == p.init_cond_frames
    with_points = [p for p in plans if p.use_points]
    box_share = np.mean([len(p.box_frames) / len(p.init_cond_frames) for p in with_points])
    assert 0.45 < box_share < 0.55
    assert 0.4 < np.mean([len(p.init_cond_frames) == 2 for p in plans]) < 0.6
    single = plan_prompts(s, 1, rng)
    assert single.use_points and single.init_cond_frames == [0]
