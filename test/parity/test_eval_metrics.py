"""The paper's IoU variants on hand-made tracks, and DAVIS J / F against the official evaluator's values."""

import json
import math

import numpy as np
import pytest
from PIL import Image

from threeam_model.eval.metrics import (
    average_objects,
    boundary_map,
    boundary_tolerance,
    davis_f,
    davis_j,
    davis_statistics,
    disk_kernel,
    frame_iou,
    object_scores,
    object_scores_from_masks,
    pool_frames,
)


def _box(h, w, y0, y1, x0, x1):
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


EMPTY = np.zeros((8, 8), bool)
A = _box(8, 8, 0, 4, 0, 4)  # 16 px
B = _box(8, 8, 0, 4, 2, 6)  # 16 px, overlaps A in 8 px -> IoU 8/24
FAR = _box(8, 8, 6, 8, 6, 8)  # disjoint from A


def test_frame_iou_conventions():
    assert frame_iou(EMPTY, EMPTY) == 1.0  # absent and predicted absent
    assert frame_iou(EMPTY, A) == 0.0  # false positive on an absent object
    assert frame_iou(A, EMPTY) == 0.0  # missed object
    assert frame_iou(A, A) == 1.0
    assert frame_iou(A, B) == pytest.approx(8 / 24)
    assert frame_iou(A, FAR) == 0.0
    with pytest.raises(ValueError, match="differ in size"):
        frame_iou(A, np.zeros((4, 4), bool))


def test_absent_object_frames_count_only_in_iou():
    # GT: present, absent, absent, present. Prediction: exact, empty (correct), false positive, half overlap.
    gt = [A, EMPTY, EMPTY, A]
    pred = [A, EMPTY, B, B]
    s = object_scores_from_masks(gt, pred)
    assert s.n_frames == 4 and s.n_positive == 2 and s.n_successful == 2
    assert s.iou == pytest.approx((1 + 1 + 0 + 8 / 24) / 4)
    assert s.positive_iou == pytest.approx((1 + 8 / 24) / 2)
    assert s.successful_iou == pytest.approx((1 + 8 / 24) / 2)


def test_reappearance_lost_after_gap():
    # Visible 0-2, gone 3-4, back 5-7; the tracker predicts empty while gone, then the wrong place on return.
    gt = [A, A, A, EMPTY, EMPTY, A, A, A]
    pred = [A, B, A, EMPTY, EMPTY, FAR, EMPTY, B]
    s = object_scores_from_masks(gt, pred)
    per_frame = [1, 8 / 24, 1, 1, 1, 0, 0, 8 / 24]
    assert s.iou == pytest.approx(sum(per_frame) / 8)
    assert s.n_positive == 6
    assert s.positive_iou == pytest.approx((1 + 8 / 24 + 1 + 0 + 0 + 8 / 24) / 6)
    assert s.n_successful == 4  # the two frames with IoU 0 are not "successful"
    assert s.successful_iou == pytest.approx((1 + 8 / 24 + 1 + 8 / 24) / 4)
    assert s.successful_iou > s.positive_iou


def test_empty_predictions_everywhere():
    gt = [A, EMPTY, A, EMPTY, EMPTY]
    s = object_scores_from_masks(gt, [EMPTY] * 5)
    assert s.iou == pytest.approx(3 / 5)  # only the absent frames score (1 each)
    assert s.positive_iou == 0.0
    assert math.isnan(s.successful_iou) and s.n_successful == 0


def test_never_visible_object_has_no_positive_score():
    s = object_scores([1.0, 1.0, 0.0], [False, False, False])
    assert s.iou == pytest.approx(2 / 3)
    assert math.isnan(s.positive_iou) and math.isnan(s.successful_iou)


def test_object_scores_rejects_bad_input():
    with pytest.raises(ValueError, match="3 IoU values but 2"):
        object_scores([1, 1, 1], [True, True])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        object_scores([1.5], [True])
    with pytest.raises(ValueError, match="at least one frame"):
        object_scores([], [])


def test_macro_average_over_objects_skips_undefined_and_differs_from_pooling():
    long = object_scores([1.0] * 9 + [0.0], [True] * 10)  # iou 0.9, positive 0.9, successful 1.0
    short = object_scores([0.0, 0.5], [True, True])  # iou 0.25, positive 0.25, successful 0.5
    empty_pred = object_scores([0.0, 1.0], [True, False])  # successful undefined
    avg = average_objects([long, short, empty_pred])
    assert avg["n_objects"] == 3
    assert avg["iou"] == pytest.approx((0.9 + 0.25 + 0.5) / 3)
    assert avg["positive_iou"] == pytest.approx((0.9 + 0.25 + 0.0) / 3)
    assert avg["successful_iou"] == pytest.approx((1.0 + 0.5) / 2)
    assert avg["n_objects_successful_iou"] == 2
    pooled = pool_frames([[1.0] * 9 + [0.0], [0.0, 0.5], [0.0, 1.0]], [[True] * 10, [True, True], [True, False]])
    assert pooled["iou"] == pytest.approx((9 + 0.5 + 1.0) / 14)
    assert pooled["iou"] != pytest.approx(avg["iou"])
    assert math.isnan(average_objects([])["iou"])


# ---------------------------------------------------------------------------------------------- DAVIS J/F


def test_boundary_map_of_a_square():
    m = _box(6, 6, 1, 4, 1, 4)  # rows/cols 1..3
    b = boundary_map(m)
    # The map marks pixels that differ from their right/lower/lower-right neighbour: the square's own top-left
    # pixels are interior-adjacent, so the boundary sits on rows/cols 0 and 3 (half a pixel towards the origin).
    expected = np.zeros((6, 6), bool)
    expected[0, 0:4] = True  # above the square: differs from the pixel below/diagonal
    expected[0:4, 0] = True
    expected[3, 1:4] = True  # last row of the square: differs from below
    expected[1:4, 3] = True
    assert np.array_equal(b, expected)
    assert not boundary_map(np.zeros((5, 5), bool)).any()
    full = np.ones((4, 4), bool)
    assert not boundary_map(full).any()  # outside the image on the last row/col is not compared


def test_disk_and_tolerance():
    k = disk_kernel(2)
    assert k.shape == (5, 5) and k.sum() == 13 and k[0, 2] == 1 and k[0, 0] == 0
    assert boundary_tolerance((480, 854)) == 8
    assert boundary_tolerance((100, 100), bound_th=3) == 3


def test_davis_f_cases():
    a = _box(64, 64, 10, 40, 10, 40)
    assert davis_f(a, a) == 1.0
    assert davis_f(np.zeros_like(a), np.zeros_like(a)) == 1.0
    assert davis_f(a, np.zeros_like(a)) == 0.0
    assert davis_f(np.zeros_like(a), a) == 0.0
    near = _box(64, 64, 11, 41, 10, 40)  # shifted by 1 px, inside the 1 px tolerance of a 64x64 image
    assert davis_f(a, near) == 1.0
    far = _box(64, 64, 20, 50, 20, 50)  # shifted by 10 px: only the crossing parts match
    assert 0.0 < davis_f(a, far) < 0.5
    void = np.zeros_like(a)
    void[:, 32:] = True
    assert davis_j(a, near, void) == pytest.approx(np.sum(a & near & ~void) / np.sum((a | near) & ~void))


def test_davis_statistics_by_hand():
    values = [1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2]  # n=9: bin edges round(linspace(1, 9, 5)) - 1
    st = davis_statistics(values)
    assert st.mean == pytest.approx(0.6)
    assert st.recall == pytest.approx(5 / 9)
    # edges 0, 2, 4, 6, 8: first bin = values[0:3], last bin = values[6:9]
    assert st.decay == pytest.approx(0.9 - 0.3)


def test_j_and_f_match_official_davis_evaluator(shared_dir):
    """Per-frame J and F on blackswan (OSVOS vs GT) equal the official davis2017-evaluation values to 1e-6."""
    ref = json.loads((shared_dir / "reference/vos_metrics/blackswan_osvos.json").read_text())
    seq = shared_dir / "data/davis/blackswan"
    j_ours, f_ours = [], []
    for name in ref["frames"]:
        gt = np.array(Image.open(seq / "Annotations" / name)) > 127  # binarisation as the reference README says
        pred = np.array(Image.open(seq / "osvos" / name)) == 1
        assert int(gt.sum()) == ref["mask_pixels"]["gt_foreground_per_frame"][len(j_ours)]
        assert int(pred.sum()) == ref["mask_pixels"]["pred_foreground_per_frame"][len(j_ours)]
        j_ours.append(davis_j(gt, pred))
        f_ours.append(davis_f(gt, pred))
    assert len(j_ours) == 50
    np.testing.assert_allclose(j_ours, ref["J"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(f_ours, ref["F"], rtol=0, atol=1e-6)
    assert davis_statistics(j_ours).mean == pytest.approx(ref["J_mean"], abs=1e-6)
    assert davis_statistics(f_ours).mean == pytest.approx(ref["F_mean"], abs=1e-6)
    # The paper's metrics on the same pair (every GT frame non-empty, every IoU > 0: all three equal J's mean).
    s = object_scores_from_masks(
        [np.array(Image.open(seq / "Annotations" / n)) > 127 for n in ref["frames"]],
        [np.array(Image.open(seq / "osvos" / n)) == 1 for n in ref["frames"]],
    )
    style = ref["threeam_style"]
    assert s.iou == pytest.approx(style["IoU"], abs=1e-9)
    assert s.positive_iou == pytest.approx(style["Positive_IoU"], abs=1e-9)
    assert s.successful_iou == pytest.approx(style["Successful_IoU"], abs=1e-9)
