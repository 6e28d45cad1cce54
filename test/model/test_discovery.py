"""Discovery: which proposals start tracks (size, score, overlap with tracked and kept masks, the cap), which ids
they get, and a run on a generated clip with the tiny random tracker, with an oracle generator (the scene's objects)
and with SAM 2's automatic mask generator."""

import numpy as np
import pytest

from threeam_model.data.synthetic import render_scene
from threeam_model.discovery import DiscoverySettings, discover, free_ids, select_new_objects
from threeam_model.factory import TrackerConfig, build_tracker
from threeam_model.instances.proposals import OracleProposals, Proposal, SamProposalParams, SamProposals
from threeam_model.interface import mask_box


def _rect(x0, y0, x1, y1, shape=(40, 60)):
    m = np.zeros(shape, bool)
    m[y0:y1, x0:x1] = True
    return m


def test_selection_filters_by_area_score_overlap_and_cap():
    occupied = _rect(0, 0, 20, 20)
    proposals = [
        Proposal(_rect(30, 0, 50, 20), 0.95),  # kept
        Proposal(_rect(5, 5, 25, 25), 0.99),  # 56% inside the tracked object: skipped
        Proposal(_rect(40, 30, 42, 32), 0.99),  # 4 pixels: too small
        Proposal(_rect(30, 25, 50, 40), 0.5),  # low score
        Proposal(_rect(32, 2, 48, 18), 0.9),  # inside the first kept one: a duplicate
        Proposal(_rect(0, 25, 25, 40), 0.8),  # kept
    ]
    settings = DiscoverySettings(min_area=10, min_score=0.7, max_overlap=0.3, max_new=8)
    kept = select_new_objects(proposals, occupied, settings, room=10)
    assert [p.score for p in kept] == [0.95, 0.8]
    assert len(select_new_objects(proposals, occupied, settings, room=1)) == 1
    capped = select_new_objects(proposals, occupied, DiscoverySettings(min_area=10, max_new=1), room=10)
    assert [p.score for p in capped] == [0.95]
    assert select_new_objects(proposals, occupied, settings, room=0) == []
    loose = DiscoverySettings(min_area=10, min_score=0.7, max_overlap=0.6)
    assert 0.99 in [p.score for p in select_new_objects(proposals, occupied, loose, room=10)]
    with pytest.raises(ValueError, match="size"):
        select_new_objects([Proposal(np.ones((5, 5), bool), 1.0)], occupied, settings, room=1)


def test_free_ids_are_the_smallest_unused():
    assert free_ids([1, 2, 4], 3) == [3, 5, 6]
    assert free_ids([], 0) == []
    assert free_ids(range(1, 65535), 3) == [65535]


def _largest_object(instance: np.ndarray) -> int:
    return int(np.bincount(instance.ravel())[1:].argmax()) + 1


@pytest.fixture(scope="module")
def clip():
    return render_scene(seed=2, num_frames=3, width=96, height=72, num_objects=3)


def test_discover_with_an_oracle_generator_starts_one_track_per_scene_object(clip):
    tracker = build_tracker(TrackerConfig(tiny=True, method="sam2", image_size=128, device="cpu"))
    result = tracker.track(clip["rgb"][0])
    oracle = OracleProposals(min_area=40)
    instance = clip["instance"][0]

    def generate(rgb):
        return oracle(rgb, instance)

    tracked_id = _largest_object(instance)
    first = tracker.add_prompt(10, mask=instance == tracked_id)  # one object a user already clicked on
    objects = {**result.objects, 10: first}
    found = discover(tracker, clip["rgb"][0], objects, generate, DiscoverySettings(min_area=40), max_objects=16)
    truth = {int(i): mask_box(instance == i) for i in np.unique(instance) if i and (instance == i).sum() >= 40}
    assert sorted(d.obj_id for d in found) == list(range(1, len(truth)))  # smallest free ids, 10 taken
    assert sorted(tracker.object_ids) == sorted([10] + [d.obj_id for d in found])
    # a mask prompt comes back as the frame's output (through the low-res mask): each new track's box is one scene
    # object's box, to within the low-res grid
    expected = sorted(b for i, b in truth.items() if i != tracked_id)
    boxes = sorted(d.result.box for d in found)
    assert len(boxes) == len(expected)
    for got, want in zip(boxes, expected):
        assert np.abs(np.subtract(got, want)).max() <= 3, (got, want)
    for d in found:
        assert not (d.result.mask & first.mask).any(), "a discovered object overlaps the tracked one"
    everything = {**objects, **{d.obj_id: d.result for d in found}}
    again = discover(tracker, clip["rgb"][0], everything, generate, DiscoverySettings(min_area=40), max_objects=16)
    assert again == [], "a second discovery on the same frame found the same objects again"


def test_discover_with_sam2s_generator_on_the_tiny_model_keeps_ids_unique_and_off_tracked_objects(clip):
    tracker = build_tracker(TrackerConfig(tiny=True, method="sam2", image_size=64, device="cpu"))
    result = tracker.track(clip["rgb"][0])
    tracked = tracker.add_prompt(1, mask=clip["instance"][0] == _largest_object(clip["instance"][0]))
    generate = SamProposals(
        tracker.model, SamProposalParams(points_per_side=6, pred_iou_thresh=0.0, stability_score_thresh=0.0, min_area=1)
    )
    settings = DiscoverySettings(min_area=5, min_score=0.0, max_overlap=0.0, max_new=4)
    found = discover(tracker, clip["rgb"][0], {**result.objects, 1: tracked}, generate, settings, max_objects=16)
    ids = [d.obj_id for d in found]
    assert len(ids) == len(set(ids)) and 1 not in ids and len(ids) <= 4
    proposals = generate(clip["rgb"][0])
    assert proposals, "SAM 2's generator proposed nothing: the test would check nothing"
    kept = select_new_objects(proposals, tracked.mask, settings, room=15)
    assert len(found) == len(kept)
    for p in kept:
        assert not (p.mask & tracked.mask).any()
