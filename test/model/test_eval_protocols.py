"""Protocols (conditioning frame, Selected Subset, bidirectional and two-view runs) and the runner, with a fake
tracker whose answers are known, so every score can be computed by hand."""

import json

import numpy as np
import pytest

from threeam_model.data.frames import Frame, VideoSource
from threeam_model.eval.protocols import (
    SubsetRule,
    conditioning_frame,
    count_segments,
    group_by_conditioning_frame,
    in_selected_subset,
    run_bidirectional,
    run_two_view,
    visible_segments,
)
from threeam_model.eval.report import markdown_table, summarise, write_report
from threeam_model.eval.runner import BenchSettings, run_benchmark
from threeam_model.interface import FrameResult, ObjectResult, Tracker


class StaticTracker(Tracker):
    """Predicts, for every object, the mask it was prompted with. Logs every call (frames carry their index)."""

    def __init__(self):
        self.log = []
        self.masks = {}
        self.idx = -1
        self.size = None

    def track(self, frame):
        self.idx += 1
        self.size = frame.shape[:2]
        self.log.append(("track", int(frame[0, 0, 0])))
        return FrameResult(self.idx, self.size, {k: self._result(k) for k in self.masks})

    def _result(self, k):
        return ObjectResult.from_logits(k, np.where(self.masks[k], 1.0, -1.0), 1.0)

    def add_prompt(self, obj_id, points=None, labels=None, box=None, mask=None, conditioning=None):
        self.log.append(("prompt", obj_id))
        self.masks[obj_id] = np.asarray(mask, bool)
        return self._result(obj_id)

    def remove_object(self, obj_id):
        del self.masks[obj_id]

    def reset(self):
        self.log.append(("reset",))
        self.masks, self.idx = {}, -1

    @property
    def object_ids(self):
        return sorted(self.masks)

    @property
    def frame_index(self):
        return self.idx


def _frame(i):
    f = np.zeros((4, 4, 3), np.uint8)
    f[0, 0, 0] = i
    return f


# ------------------------------------------------------------------------------------------ Selected Subset


def test_visible_segments_and_counting():
    vis = [0, 1, 1, 1, 0, 0, 1, 0, 1, 1, 1, 1, 1]
    assert visible_segments(vis) == [(1, 4), (6, 7), (8, 13)]
    assert visible_segments(vis, l_min=1) == [(1, 4), (8, 13)]  # the 1-frame blip is not longer than 1
    assert count_segments(vis, l_min=3) == 1  # a segment must be LONGER than l_min: 3 frames do not count
    assert count_segments(vis, l_min=2) == 2
    assert count_segments([1] * 10, 0) == 1  # continuously visible: one segment, no reappearance
    assert count_segments([0] * 5, 0) == 0
    assert count_segments([1, 0, 1, 0, 1], 0) == 3


def test_selected_subset_membership():
    rule = SubsetRule(l_min=2, min_segments=2, min_visible_pixels=5)
    # areas: a 3-frame visit, gone, a 4-frame return -> two counted segments
    assert in_selected_subset([9, 9, 9, 0, 0, 9, 9, 9, 9], rule)
    # the return is too short (2 frames, not > l_min)
    assert not in_selected_subset([9, 9, 9, 0, 0, 9, 9, 0], rule)
    # tiny masks (< 5 px) do not count as visible, so the "gap" of 3 px splits the track
    assert in_selected_subset([9, 9, 9, 3, 9, 9, 9], rule)
    assert not in_selected_subset([9, 9, 9, 3, 9, 9, 9], SubsetRule(l_min=2, min_segments=2, min_visible_pixels=1))
    assert in_selected_subset([9, 0, 9, 9, 9, 0, 9, 9, 9, 0, 9, 9, 9], SubsetRule(l_min=2, min_segments=3))
    with pytest.raises(ValueError):
        SubsetRule(l_min=-1)


def test_conditioning_frame_is_largest_mask():
    assert conditioning_frame([0, 5, 9, 9, 2]) == 2  # first of ties
    with pytest.raises(ValueError, match="never visible"):
        conditioning_frame([0, 0])
    assert group_by_conditioning_frame({3: 5, 1: 2, 2: 5}) == {2: [1], 5: [2, 3]}


# ----------------------------------------------------------------------------------------------------- runs


def test_bidirectional_run_order_and_fresh_backward_start():
    tr = StaticTracker()
    prompt = {1: np.ones((4, 4), bool)}
    out = list(run_bidirectional(tr, _frame, 6, 2, prompt))
    assert [t for t, _ in out] == [2, 3, 4, 5, 1, 0]
    assert tr.log == [
        ("reset",),
        ("track", 2),
        ("prompt", 1),
        ("track", 3),
        ("track", 4),
        ("track", 5),
        ("reset",),
        ("track", 2),
        ("prompt", 1),
        ("track", 1),
        ("track", 0),
    ]
    assert all(set(r) == {1} for _, r in out)
    # conditioning on the last frame: no forward frames; on the first: no backward run
    assert [t for t, _ in run_bidirectional(tr, _frame, 3, 2, prompt)] == [2, 1, 0]
    tr.log.clear()
    assert [t for t, _ in run_bidirectional(tr, _frame, 3, 0, prompt)] == [0, 1, 2]
    assert tr.log.count(("reset",)) == 1
    with pytest.raises(ValueError, match="outside"):
        list(run_bidirectional(tr, _frame, 3, 3, prompt))


def test_two_view_memory_holds_only_the_source_frame():
    tr = StaticTracker()
    out = list(run_two_view(tr, _frame, 4, 1, {7: np.ones((4, 4), bool)}))
    assert [t for t, _ in out] == [0, 1, 2, 3]
    # before every target frame the tracker is reset and sees only the source frame (1) and the prompt
    tracked = [e for e in tr.log if e[0] == "track"]
    assert tracked == [("track", 1), ("track", 0), ("track", 1), ("track", 1), ("track", 2), ("track", 1), ("track", 3)]
    assert tr.log.count(("reset",)) == 4


# --------------------------------------------------------------------------------------------------- runner


class HandMadeVideo(VideoSource):
    """8 frames of 8x8. Object 1: a 2x2 square that stays put, largest (3x3) on frame 5, absent on frames 2-3.
    Object 2: a 2x2 square moving one pixel right per frame, visible on every frame."""

    dataset = "handmade"

    def __init__(self):
        self.labels = []
        for t in range(8):
            lab = np.zeros((8, 8), np.int64)
            if t not in (2, 3):
                lab[0:2, 0:2] = 1
            if t == 5:
                lab[0:3, 0:3] = 1
            lab[5:7, t % 6 : t % 6 + 2] = 2
            self.labels.append(lab)

    @property
    def name(self):
        return "handmade"

    def __len__(self):
        return 8

    @property
    def has_geometry(self):
        return False

    def frame(self, index, with_rgb=True):
        return Frame(index, _frame(index), self.labels[index])


def test_runner_scores_a_static_tracker_by_hand(tmp_path):
    src = HandMadeVideo()
    settings = BenchSettings(subset=SubsetRule(l_min=1, min_segments=2))
    results = run_benchmark(StaticTracker(), [src], settings, tmp_path, method={"label": "static"}, progress=False)
    r = results[0]
    o1, o2 = r["objects"]["1"], r["objects"]["2"]
    # Object 1 is prompted with its 3x3 mask on frame 5: IoU 4/9 where the 2x2 square shows, 0 where it is absent
    # (the static prediction is a false positive), 1 on frame 5.
    assert o1["conditioning_frame"] == 5
    iou1 = [4 / 9, 4 / 9, 0, 0, 4 / 9, 1, 4 / 9, 4 / 9]
    np.testing.assert_allclose(o1["per_frame"]["iou"], iou1)
    assert o1["iou"] == pytest.approx(np.mean(iou1))
    assert o1["positive_iou"] == pytest.approx(np.mean([4 / 9] * 5 + [1]))
    assert o1["successful_iou"] == pytest.approx(o1["positive_iou"])
    assert o1["visible_segments"] == 2 and o1["selected_subset"]
    # Object 2: all masks are 2x2 (ties), so frame 0 conditions it; the static mask overlaps 1 column on frame 1.
    assert o2["conditioning_frame"] == 0
    iou2 = [1, 2 / 6, 0, 0, 0, 0, 1, 2 / 6]  # frame 6 wraps back to column 0
    np.testing.assert_allclose(o2["per_frame"]["iou"], iou2)
    assert o2["successful_iou"] == pytest.approx(np.mean([1, 2 / 6, 1, 2 / 6]))
    assert o2["n_successful"] == 4 and not o2["selected_subset"]
    assert o2["J"]["mean"] == pytest.approx(np.mean(iou2))
    # outputs: result JSON (strict), per-object masks, palette label PNGs
    saved = json.loads((tmp_path / "handmade" / "result.json").read_text())
    assert saved["objects"]["1"]["per_frame"]["iou"] == pytest.approx(iou1)
    assert sorted(p.name for p in (tmp_path / "handmade" / "masks" / "2").iterdir())[:2] == ["00000.png", "00001.png"]
    assert len(list((tmp_path / "handmade" / "labels").glob("*.png"))) == 8
    # summary: macro average over the two objects; the subset holds object 1 only
    s = summarise(results)
    assert s["whole"]["iou"] == pytest.approx((np.mean(iou1) + np.mean(iou2)) / 2)
    assert s["subset"]["n_objects"] == 1 and s["subset"]["iou"] == pytest.approx(np.mean(iou1))
    table = markdown_table({"static": s})
    assert "| static | " in table and f"{s['whole']['iou']:.4f}" in table
    write_report(results, tmp_path, "static")
    assert (tmp_path / "table.md").is_file() and (tmp_path / "plots" / "object_iou_spread.png").stat().st_size > 1000


def test_runner_resumes_finished_sequences(tmp_path):
    src = HandMadeVideo()
    settings = BenchSettings(boundary=False, write_masks=False)
    first = run_benchmark(StaticTracker(), [src], settings, tmp_path, method={"label": "a"}, progress=False)
    assert not first[0]["resumed"]
    tr = StaticTracker()
    again = run_benchmark(tr, [src], settings, tmp_path, method={"label": "a"}, progress=False)
    assert again[0]["resumed"] and tr.log == []  # nothing re-run
    assert again[0]["summary"] == first[0]["summary"]
    changed = run_benchmark(
        tr,
        [src],
        BenchSettings(protocol="two_view", boundary=False, write_masks=False),
        tmp_path,
        method={"label": "a"},
        progress=False,
    )
    assert not changed[0]["resumed"] and tr.log  # other settings: the sequence is run again
