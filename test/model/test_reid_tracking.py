"""Geometric re-identification on rendered scenes with exact depth and poses.

Scenes are placed by hand (objects, camera path) and rendered by the procedural generator's ray caster, so every
frame has exact depth, intrinsics, pose and instance ids. The base tracker is `GroundTruthTracker`: perfect while it
follows an object, lost for good once the object leaves the view, and it follows whatever instance a prompt points
at. So these tests judge only the re-identification's own decisions: when it prompts, and where.
"""

from types import SimpleNamespace

import numpy as np
import pytest

from threeam_model.data.synthetic import intrinsics, look_at, render_frame
from threeam_model.instances.oracle import GroundTruthTracker
from threeam_model.interface import CameraGeometry
from threeam_model.reid import GeometricReID, GeometryInputError, Must3rGeometry, ReIDConfig, RGBDGeometry
from threeam_model.reid.reid import OCCLUDED, OUT_OF_VIEW, VISIBLE

W, H = 160, 120
K = intrinsics(W, H, 70.0)
_CHECKER = {"pattern": "checker", "scale": 0.5}
ROOM = {
    "half_extent": 6.0,
    "height": 3.0,
    "textures": [dict(_CHECKER, colors=[[90 + 30 * k, 120, 160 - 20 * k]] * 2 + [[60, 60, 60]]) for k in range(6)],
}


def _box(obj_id, x, y, size=(0.5, 0.5, 0.6), yaw=0.3, colors=((200, 40, 40), (40, 200, 40), (40, 40, 200))):
    tex = {"pattern": "checker", "colors": [list(c) for c in colors], "scale": 0.1}
    return {"id": obj_id, "shape": "box", "center": [x, y, size[2] / 2], "size": list(size), "yaw": yaw, "texture": tex}


def _render(poses, objects_per_frame):
    frames = [render_frame(p, K, W, H, objs, ROOM) for p, objs in zip(poses, objects_per_frame)]
    rgb, depth, inst = (np.stack(x) for x in zip(*frames))
    return rgb, depth, inst


def _yaw_pose(position, yaw_deg, target_height=0.3):
    """Camera at `position` looking horizontally-ish towards +y rotated by yaw (positive = to the right)."""
    a = np.deg2rad(yaw_deg)
    direction = np.array([np.sin(a), np.cos(a)])
    target = np.array([*(np.asarray(position[:2]) + 3.0 * direction), target_height])
    return look_at(np.asarray(position, float), target)


def _run(rgb, depth, inst, poses, obj_gt=1, config=None, lose_below=20, start=0, switch_at=None):
    """Prompt object 1 with its GT mask on `start`, track the rest; returns (tracker, results, base)."""
    base = GroundTruthTracker(lambda i: inst[start + i], lose_below=lose_below)
    tracker = GeometricReID(base, RGBDGeometry(), config or ReIDConfig())
    results = []
    for t in range(start, len(rgb)):
        if switch_at is not None and t == switch_at[0]:
            base.switch(1, switch_at[1])
        res = tracker.track(rgb[t], geometry=CameraGeometry(depth[t], K, poses[t]))
        if t == start:
            res.objects[1] = tracker.add_prompt(1, mask=inst[t] == obj_gt)
        results.append(res)
    return tracker, results, base


def _events_by_frame(tracker):
    out = {}
    for e in tracker.events:
        out.setdefault(e.frame_index, []).append(e)
    return out


def _first_return(visible_px, min_px):
    """First frame where the object is back (>= min_px) after having been absent (< 1 px)."""
    gone = False
    for t, n in enumerate(visible_px):
        if n == 0:
            gone = True
        elif gone and n >= min_px:
            return t
    return None


def _assert_prompt_inside(event, gt_mask):
    (x, y) = event.points[event.labels == 1][0]
    assert gt_mask[int(y), int(x)], f"prompt point ({x}, {y}) lies outside the ground-truth mask"


def test_object_leaves_view_and_returns_from_the_other_side_is_reacquired():
    # the camera stands still and turns right a full turn: the box leaves over the left edge, comes back from the right
    position = (0.0, -3.0, 1.2)
    yaws = np.arange(0, 361, 10.0)
    poses = np.stack([_yaw_pose(position, a) for a in yaws])
    rgb, depth, inst = _render(poses, [[_box(1, 0.0, 0.0)]] * len(poses))
    px = (inst == 1).sum(axis=(1, 2))
    assert px[0] > 500 and (px[8:28] == 0).all(), "the scene no longer has the object leave the view"

    tracker, results, base = _run(rgb, depth, inst, poses)
    ret = _first_return(px, 1)
    events = _events_by_frame(tracker)
    prompts = [t for t in events]
    assert prompts, "the returning object was never re-acquired"
    first = prompts[0]
    assert ret <= first <= ret + 2, f"object back on frame {ret}, first re-acquisition on {first}"
    (event,) = events[first]
    assert event.kind == "reacquire"
    _assert_prompt_inside(event, inst[first] == 1)
    assert results[first].objects[1].reacquired
    assert results[first].objects[1].visible
    # while the object was away nothing was prompted, and after the return it is followed to the end
    assert all(t >= ret for t in prompts)
    assert base.following(1) == 1
    assert all(not r.objects[1].reacquired for i, r in enumerate(results) if i not in events)
    assert np.array_equal(results[-1].objects[1].mask, inst[-1] == 1)


def test_object_returns_seen_from_its_other_side_is_reacquired():
    # the camera circles the box (half an orbit) while looking away from it, then looks back: the box returns with
    # the side it never showed before facing the camera
    n = 19
    theta = np.deg2rad(np.linspace(-90, 90, n))  # camera angle around the box, from -y to +y
    pan = np.concatenate([np.linspace(0, 80, 5), np.full(n - 10, 80.0), np.linspace(80, 0, 5)])
    poses = []
    for th, p in zip(theta, pan):
        pos = np.array([2.8 * np.sin(th), -2.8 * np.cos(th), 1.2])
        a = np.arctan2(-pos[0], -pos[1]) + np.deg2rad(p)  # towards the box, turned by the pan
        poses.append(look_at(pos, np.array([pos[0] + 3 * np.sin(a), pos[1] + 3 * np.cos(a), 0.3])))
    poses = np.stack(poses)
    box = _box(1, 0.0, 0.0, size=(0.5, 0.5, 0.6), yaw=0.0)
    rgb, depth, inst = _render(poses, [[box]] * n)
    px = (inst == 1).sum(axis=(1, 2))
    ret = _first_return(px, 1)
    assert px[0] > 300 and ret is not None and ret > 6, "the scene no longer has the object leave and come back"

    tracker, results, base = _run(rgb, depth, inst, poses)
    events = _events_by_frame(tracker)
    assert events, "the object seen from its other side was never re-acquired"
    first = min(events)
    assert ret <= first <= ret + 2, f"object back on frame {ret}, first re-acquisition on {first}"
    _assert_prompt_inside(events[first][0], inst[first] == 1)
    assert base.following(1) == 1 and results[-1].objects[1].visible


def test_object_that_stays_out_of_view_is_not_prompted():
    position = (0.0, -3.0, 1.2)
    yaws = np.concatenate([np.arange(0, 181, 15.0), np.full(10, 180.0)])
    poses = np.stack([_yaw_pose(position, a) for a in yaws])
    rgb, depth, inst = _render(poses, [[_box(1, 0.0, 0.0)]] * len(poses))
    assert ((inst[5:] == 1).sum(axis=(1, 2)) == 0).all()

    tracker, results, _ = _run(rgb, depth, inst, poses)
    assert not tracker.events
    assert not any(r.objects[1].visible for r in results[5:])
    assert tracker.view(1).state == OUT_OF_VIEW
    assert len(tracker.anchor(1)) >= ReIDConfig().min_anchor_voxels  # the anchor is kept while away


def test_occluded_object_is_not_prompted_until_it_comes_out():
    # the camera slides sideways; a wide pillar between it and the box hides the box for a while
    xs = np.linspace(-1.6, 1.6, 17)
    poses = np.stack([look_at(np.array([x, -3.5, 1.2]), np.array([x * 0.3, 0.0, 0.3])) for x in xs])
    pillar = _box(9, 0.0, -1.6, size=(1.0, 0.3, 2.5), yaw=0.0, colors=((120, 120, 120),) * 3)
    rgb, depth, inst = _render(poses, [[_box(1, 0.0, 0.0), pillar]] * len(poses))
    px = (inst == 1).sum(axis=(1, 2))
    hidden = np.flatnonzero(px == 0)
    assert px[0] > 300 and len(hidden) >= 3 and hidden.max() < len(px) - 2, "the pillar no longer hides the box"

    tracker, results, _ = _run(rgb, depth, inst, poses)
    events = _events_by_frame(tracker)
    assert not any(t in events for t in hidden), f"prompted while fully hidden: {sorted(events)}"
    # while hidden, the anchor is in view but behind the pillar
    states = {}
    probe = GeometricReID(GroundTruthTracker(lambda i: inst[i]), RGBDGeometry())
    for t in range(len(poses)):
        probe.track(rgb[t], geometry=CameraGeometry(depth[t], K, poses[t]))
        if t == 0:
            probe.add_prompt(1, mask=inst[0] == 1)
        states[t] = probe.view(1).state
    assert all(states[t] == OCCLUDED for t in hidden[1:-1]), states
    # once out again (over at least min_prior_pixels) it is re-acquired within 3 frames, with the prompt on the box
    ret = _first_return(px, ReIDConfig().min_prior_pixels)
    assert events and min(events) <= ret + 2
    first = min(events)
    _assert_prompt_inside(events[first][0], inst[first] == 1)
    assert results[-1].objects[1].visible and np.array_equal(results[-1].objects[1].mask, inst[-1] == 1)


def test_lookalike_distractor_mask_is_vetoed_and_corrected():
    # two identical boxes; on frame 6 the base tracker jumps to the copy
    xs = np.linspace(-0.3, 0.3, 12)
    poses = np.stack([look_at(np.array([x, -3.2, 1.4]), np.array([0.0, 0.0, 0.3])) for x in xs])
    objs = [_box(1, -0.8, 0.0, yaw=0.2), _box(2, 0.8, 0.0, yaw=0.2)]
    rgb, depth, inst = _render(poses, [objs] * len(poses))
    assert ((inst == 1).sum(axis=(1, 2)) > 300).all() and ((inst == 2).sum(axis=(1, 2)) > 300).all()

    tracker, results, base = _run(rgb, depth, inst, poses, switch_at=(6, 2))
    events = _events_by_frame(tracker)
    assert sorted(events) == [6], f"expected exactly one correction, on frame 6; got {sorted(events)}"
    (event,) = events[6]
    assert event.kind == "veto"
    _assert_prompt_inside(event, inst[6] == 1)
    (nx, ny) = event.points[event.labels == 0][0]
    assert inst[6][int(ny), int(nx)] == 2, "the negative point should sit on the look-alike"
    assert results[6].objects[1].reacquired
    assert np.array_equal(results[6].objects[1].mask, inst[6] == 1)
    assert base.following(1) == 1
    assert np.array_equal(results[-1].objects[1].mask, inst[-1] == 1)


def test_correct_tracking_raises_no_events_and_anchor_stays_bounded():
    xs = np.linspace(-0.5, 0.5, 10)
    poses = np.stack([look_at(np.array([x, -3.0, 1.3]), np.array([0.0, 0.0, 0.3])) for x in xs])
    objs = [_box(1, -0.8, 0.0), _box(2, 0.8, 0.0, colors=((30, 30, 200),) * 3)]
    rgb, depth, inst = _render(poses, [objs] * len(poses))
    cfg = ReIDConfig(max_voxels=50)
    tracker, results, _ = _run(rgb, depth, inst, poses, config=cfg)
    assert not tracker.events
    assert tracker.view(1).state == VISIBLE
    assert len(tracker.anchor(1)) == 50  # capped
    assert all("reid" in r.timings for r in results)


def test_frames_without_geometry_pass_the_base_result_through():
    poses = np.stack([_yaw_pose((0.0, -3.0, 1.2), a) for a in (0.0, 60.0, 0.0)])
    rgb, depth, inst = _render(poses, [[_box(1, 0.0, 0.0)]] * 3)
    base = GroundTruthTracker(lambda i: inst[min(i, 2)])  # frame 3 shows frame 2 again
    tracker = GeometricReID(base, RGBDGeometry())
    tracker.track(rgb[0], geometry=CameraGeometry(depth[0], K, poses[0]))
    tracker.add_prompt(1, mask=inst[0] == 1)
    for t in (1, 2):  # no geometry given: no re-acquisition on frame 2 although the box is back
        res = tracker.track(rgb[t])
    assert not res.objects[1].visible and not tracker.events
    # the next frame's geometry is the one given with it: here it brings the box back at once
    res = tracker.track(rgb[2], geometry=CameraGeometry(depth[2], K, poses[2]))
    assert res.objects[1].reacquired and [e.frame_index for e in tracker.events] == [3]


class _RecordingOracle(GroundTruthTracker):
    def track(self, frame, geometry=None):
        self.given = geometry
        return super().track(frame, geometry=geometry)


def test_bad_geometry_is_refused_before_the_base_tracker_sees_the_frame():
    poses = np.stack([_yaw_pose((0.0, -3.0, 1.2), 0.0)] * 2)
    rgb, depth, inst = _render(poses, [[_box(1, 0.0, 0.0)]] * 2)
    base = _RecordingOracle(lambda i: inst[i])
    tracker = GeometricReID(base, RGBDGeometry())
    camera = CameraGeometry(depth[0][..., None], K, poses[0])
    tracker.track(rgb[0], geometry=camera)
    assert base.given.depth.shape == (H, W)  # the base gets the geometry too, as checked
    tracker.add_prompt(1, mask=inst[0] == 1)
    with pytest.raises(GeometryInputError, match="rotation"):
        tracker.track(rgb[1], geometry=CameraGeometry(depth[1], K, np.diag([2.0, 1, 1, 1])))
    assert tracker.frame_index == 0  # the frame was not consumed: the caller can track it without geometry
    res = tracker.track(rgb[1])
    assert res.frame_index == 1 and res.objects[1].visible and base.given is None


@pytest.mark.parametrize("prompt", ["point", "box"])
def test_prompt_kinds(prompt):
    position = (0.0, -3.0, 1.2)
    poses = np.stack([_yaw_pose(position, a) for a in np.concatenate([np.arange(0, 91, 15.0), [0.0, 0.0]])])
    rgb, depth, inst = _render(poses, [[_box(1, 0.0, 0.0)]] * len(poses))
    tracker, results, _ = _run(rgb, depth, inst, poses, config=ReIDConfig(prompt=prompt))
    (event,) = [e for e in tracker.events]
    assert (event.box is None) == (prompt == "point")
    assert (len(event.points) == 0) == (prompt == "box")
    assert results[-1].objects[1].visible


def _two_twins_pan():
    """Camera pans from object 1 to its look-alike 2: 1 leaves the view while 2 stays in it."""
    position = (0.0, -3.0, 1.2)
    yaws = np.arange(-30.0, 55.0, 6.0)
    poses = np.stack([_yaw_pose(position, a) for a in yaws])
    objs = [_box(1, -1.5, 0.0, yaw=0.2), _box(2, 1.5, 0.0, yaw=0.2)]
    rgb, depth, inst = _render(poses, [objs] * len(poses))
    return rgb, depth, inst, poses


def test_lookalike_jump_while_anchor_out_of_view_is_rejected_only_when_asked():
    rgb, depth, inst, poses = _two_twins_pan()
    px1, px2 = (inst == 1).sum(axis=(1, 2)), (inst == 2).sum(axis=(1, 2))
    gone = int(np.flatnonzero(px1 < 20)[0])
    assert px1[0] > 300 and px2[gone] > 300 and (px1[gone:] == 0).all()

    def run(reject):
        base = GroundTruthTracker(lambda i: inst[i], lookalikes={1: 2, 2: 1})
        tracker = GeometricReID(base, RGBDGeometry(), ReIDConfig(reject_out_of_view=reject))
        results = []
        for t in range(len(rgb)):
            res = tracker.track(rgb[t], geometry=CameraGeometry(depth[t], K, poses[t]))
            if t == 0:
                res.objects[1] = tracker.add_prompt(1, mask=inst[0] == 1)
            results.append(res)
        return tracker, results

    tracker, results = run(False)  # default: the anchor is out of view, so nothing is known against the jump
    assert not tracker.events and np.array_equal(results[gone].objects[1].mask, inst[gone] == 2)
    tracker, results = run(True)
    events = _events_by_frame(tracker)
    assert min(events) == gone and all(e.kind == "reject" for es in events.values() for e in es)
    (event,) = events[gone]
    assert event.labels.tolist() == [0] and event.box is None
    (x, y) = event.points[0]
    assert inst[gone][int(y), int(x)] == 2
    assert not results[gone].objects[1].visible and results[gone].objects[1].reacquired


def test_moved_object_is_followed_not_vetoed():
    # the object is carried 1 m to the side between frames 4 and 5; the base tracker follows it
    poses = np.stack([look_at(np.array([0.1 * t, -3.2, 1.3]), np.array([0.0, 0.0, 0.3])) for t in range(10)])
    objects = [[_box(1, -0.6 if t < 5 else 0.6, 0.0)] for t in range(10)]
    rgb, depth, inst = _render(poses, objects)
    tracker, results, base = _run(rgb, depth, inst, poses)
    assert not tracker.events
    assert tracker.view(1).state == VISIBLE  # the anchor was re-seeded where the object is now
    assert np.linalg.norm(tracker.anchor(1).centre[:2] - [0.6, 0.0]) < 0.3


@pytest.mark.parametrize(
    "bad",
    [dict(prompt="mask"), dict(depth_tol=0), dict(veto_max_near_frac=1.5), dict(max_voxels=0), dict(hull_margin=-1)],
)
def test_config_refuses_bad_thresholds(bad):
    with pytest.raises(ValueError):
        ReIDConfig(**bad)


class _ExactPointmapStream:
    """Stands in for Must3rStream: exact world points of each frame at half resolution, in a world frame of its own
    (rotated, shifted and scaled by 0.2 like MUSt3R's scale-free reconstruction), with confidence 5."""

    def __init__(self, poses, objects):
        self.poses, self.objects, self.i = poses, objects, 0
        a, self.scale = 0.8, 0.2
        self.rot = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
        self.Km = K.copy()
        self.Km[:2] /= 2
        self.Km[:2, 2] = (K[:2, 2] + 0.5) / 2 - 0.5

    def step(self, frame):
        pose = self.poses[self.i]
        self.i += 1
        _, depth, _ = render_frame(pose, self.Km, W // 2, H // 2, self.objects, ROOM)
        jj, ii = np.meshgrid(np.arange(W // 2), np.arange(H // 2))
        cam = np.stack([jj, ii, np.ones_like(jj)], -1) @ np.linalg.inv(self.Km).T * depth[..., None]
        world = cam @ pose[:3, :3].T + pose[:3, 3]
        pts = (world @ self.rot.T + [3.0, -1.0, 2.0]) * self.scale
        return SimpleNamespace(pts3d=pts, conf=np.full(depth.shape, 5.0), crop_box=(0, 0, W, H))

    def reset(self):
        self.i = 0


def test_rgb_only_geometry_in_a_scale_free_world_reacquires_the_returning_object():
    position = (0.0, -3.0, 1.2)
    poses = np.stack([_yaw_pose(position, a) for a in np.arange(0, 361, 10.0)])
    objects = [_box(1, 0.0, 0.0)]
    rgb, depth, inst = _render(poses, [objects] * len(poses))
    px = (inst == 1).sum(axis=(1, 2))
    base = GroundTruthTracker(lambda i: inst[i])
    tracker = GeometricReID(base, Must3rGeometry(_ExactPointmapStream(poses, objects), conf_min=3.0))
    for t in range(len(rgb)):
        res = tracker.track(rgb[t])
        if t == 0:
            tracker.add_prompt(1, mask=inst[0] == 1)
    events = _events_by_frame(tracker)
    ret = _first_return(px, 1)
    assert events and ret <= min(events) <= ret + 2
    _assert_prompt_inside(events[min(events)][0], inst[min(events)] == 1)
    assert res.objects[1].visible and base.following(1) == 1
