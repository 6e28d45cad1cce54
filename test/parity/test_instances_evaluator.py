"""The class-agnostic ScanNet AP against the numbers the official ScanNet evaluator recorded, and its rules."""

import json

import numpy as np
import pytest

from threeam_model.instances.evaluator import (
    OVERLAPS,
    VALID_CLASS_IDS_200,
    SceneInstances,
    average_precision,
    evaluate,
    masks_from_labels,
    scannet200_agnostic_gt,
)

SCENES = ("synth_scene0", "synth_scene1", "synth_scene2")


@pytest.fixture(scope="module")
def reference(shared_dir):
    root = shared_dir / "reference" / "instance3d"
    expected = json.loads((root / "expected.json").read_text())
    scenes = {name: dict(np.load(root / "scenes" / f"{name}.npz")) for name in SCENES}
    return expected, scenes


def _scene(data: dict, name: str, conf1: bool) -> SceneInstances:
    scores = np.ones(len(data["pred_scores"])) if conf1 else data["pred_scores"]
    return SceneInstances(scannet200_agnostic_gt(data["gt_ids"]), data["pred_masks"], scores, name)


def test_constants_are_the_official_ones(reference):
    expected, _ = reference
    np.testing.assert_array_equal(OVERLAPS, expected["overlaps_in_order_of_ap_per_overlap"])
    assert len(VALID_CLASS_IDS_200) == len(set(VALID_CLASS_IDS_200)) == 200
    assert expected["constants"]["min_region_sizes"] == [100]


def test_agnostic_gt_is_what_the_official_evaluator_received(reference):
    _, scenes = reference
    for data in scenes.values():
        mine = scannet200_agnostic_gt(data["gt_ids"])
        np.testing.assert_array_equal(np.where(mine > 0, 3000 + mine % 1000, 0), data["gt_ids_agnostic"])


@pytest.mark.parametrize("variant", ["scores", "all_conf_1.0_open3dis_protocol"])
def test_reproduces_the_official_evaluator(reference, variant):
    expected, scenes = reference
    conf1 = variant != "scores"
    recorded = expected["variants"][variant]
    cases = [(SCENES, recorded["pooled_all_3_scenes"])]
    cases += [((name,), recorded["per_scene"][name]) for name in SCENES]
    for names, want in cases:
        got = evaluate([_scene(scenes[n], n, conf1) for n in names])
        np.testing.assert_allclose(got.ap_per_overlap, want["ap_per_overlap"], rtol=0, atol=1e-6, err_msg=str(names))
        for key, value in (("AP", got.ap), ("AP50", got.ap50), ("AP25", got.ap25)):
            assert value == pytest.approx(want[key], abs=1e-6), (names, key)


def test_pooled_is_not_the_mean_of_scenes(reference):
    expected, scenes = reference
    pooled = evaluate([_scene(scenes[n], n, False) for n in SCENES]).ap
    per_scene = np.mean([evaluate([_scene(scenes[n], n, False)]).ap for n in SCENES])
    assert pooled == pytest.approx(0.3161795100, abs=1e-9) and abs(pooled - per_scene) > 0.02


def _blocks(*sizes):
    """GT over consecutive blocks: size > 0 is an instance (ids 1, 2, ...), size < 0 is |size| void vertices."""
    gt, next_id = [], 1
    for s in sizes:
        gt.append(np.full(abs(s), next_id if s > 0 else 0))
        next_id += s > 0
    return np.concatenate(gt)


def _mask(n, *ranges):
    m = np.zeros(n, bool)
    for a, b in ranges:
        m[a:b] = True
    return m


def test_min_region_size_and_strict_iou():
    gt = _blocks(200, 99, -300)
    n = gt.size
    # exact on GT 1; a perfect but 99-vertex prediction of the small GT is dropped, not a false positive
    res = evaluate([SceneInstances(gt, [_mask(n, (0, 200)), _mask(n, (200, 299))], [0.9, 0.8])])
    assert res.num_gt == 1 and res.num_pred == 1 and res.ap == pytest.approx(1.0)
    # IoU exactly 0.5 does not match at 0.5 (strict), but does at 0.25
    res = evaluate([SceneInstances(gt, [_mask(n, (0, 100))], [0.9])])
    assert res.ap50 == 0.0 and res.ap25 == pytest.approx(1.0)


def test_void_share_decides_false_positives():
    gt = _blocks(200, -400)
    n = gt.size
    hit = _mask(n, (0, 200))

    def aps(extra):
        return np.array(evaluate([SceneInstances(gt, [hit, extra], [0.5, 0.9])]).ap_per_overlap[:9])

    # all void: never a false positive
    np.testing.assert_array_equal(aps(_mask(n, (250, 400))), 1.0)
    # 50 on the GT (IoU 0.14), 150 void: ignored share 0.75 is above 0.5..0.7, not above 0.75.. (0.7500000000000002)
    mostly_void = aps(_mask(n, (150, 350)))
    assert (mostly_void[:5] == 1.0).all() and (mostly_void[5:] < 1.0).all()
    # share exactly 0.5 (IoU 0.33): "<= overlap" makes it a false positive at 0.5 already
    assert (aps(_mask(n, (100, 300))) < 1.0).all()


def test_duplicate_is_a_false_positive_with_the_lower_score():
    gt = _blocks(200, 200)
    n = gt.size
    a, dup, b = _mask(n, (0, 200)), _mask(n, (0, 180)), _mask(n, (200, 400))
    res = evaluate([SceneInstances(gt, [a, dup, b], [0.6, 0.9, 0.3])])
    # the GT keeps 0.9, the duplicate is an FP at 0.6: points (scores >= 0.3: p 2/3, r 1), (>= 0.6: p 1/2, r 1/2),
    # (>= 0.9: p 1, r 1/2), artificial (1, 0)
    want = average_precision(np.array([1.0, 1.0, 0.0]), np.array([0.9, 0.3, 0.6]), 0)
    assert res.ap50 == pytest.approx(want)
    # step widths (r_{i-1} - r_{i+1}) / 2 over recalls [1, 1/2, 1/2, 0] are all 1/4
    assert want == pytest.approx((2 / 3 + 1 / 2 + 1 + 1) / 4)


def test_no_predictions_and_no_gt():
    gt = _blocks(150, -50)
    assert evaluate([SceneInstances(gt, np.zeros((0, gt.size), bool), [])]).ap == 0.0
    void_only = np.zeros(300, np.int64)
    assert np.isnan(evaluate([SceneInstances(void_only, [_mask(300, (0, 150))], [0.5])]).ap)
    # predictions that are all ignored (on void): the official script crashes, its ports give 0
    assert evaluate([SceneInstances(_blocks(150, -200), [_mask(350, (160, 350))], [0.5])]).ap == 0.0


def test_masks_from_labels():
    labels = np.array([0, 3, 3, 7, 0, 7])
    masks, scores = masks_from_labels(labels, {3: 0.5, 7: 0.25})
    np.testing.assert_array_equal(masks, [labels == 3, labels == 7])
    np.testing.assert_array_equal(scores, [0.5, 0.25])
