"""Geometry sources (RGB-D + pose, MUSt3R pointmap) and the per-object anchor of geometric re-identification."""

import numpy as np
import pytest
from scipy import ndimage

from threeam_model.data.synthetic import intrinsics, look_at, render_frame
from threeam_model.interface import CameraGeometry, FrameResult, TrackerInputError
from threeam_model.reid import GeometryInputError, ObjectAnchor, RGBDGeometry, check_camera, pointmap_geometry
from threeam_model.reid.geometry import Must3rGeometry, fit_projection, grid_stride

W, H = 160, 120
_TEX = {"pattern": "checker", "colors": [[200, 50, 50], [50, 200, 50], [50, 50, 200]], "scale": 0.1}
ROOM = {"half_extent": 5.0, "height": 3.0, "textures": [dict(_TEX, scale=0.5)] * 6}
SPHERE = {"id": 1, "shape": "sphere", "center": [0.3, 0.2, 0.5], "size": [0.8] * 3, "yaw": 0.0, "texture": _TEX}
POSE = look_at(np.array([0.5, -3.0, 1.4]), np.array([0.2, 0.2, 0.5]))


def _render(K, w, h):
    return render_frame(POSE, K, w, h, [SPHERE], ROOM)


def test_rgbd_points_lie_on_the_surface_and_project_back():
    K = intrinsics(W, H)
    rgb, depth, inst = _render(K, W, H)
    src = RGBDGeometry()
    geo = src.geometry(rgb, 1, CameraGeometry(depth, K, POSE))
    sphere = inst == 1
    r = np.linalg.norm(geo.points[sphere] - np.array(SPHERE["center"]), axis=1)
    assert np.abs(r - 0.4).max() < 1e-3
    uv, z = geo.project(geo.points.reshape(-1, 3).astype(np.float64))
    jj, ii = np.meshgrid(np.arange(W), np.arange(H))
    assert np.abs(uv - np.stack([jj.ravel(), ii.ravel()], 1)).max() < 1e-3
    assert np.allclose(z, depth.ravel(), rtol=1e-5)


def test_rgbd_stride_resolution_and_units():
    K = intrinsics(W, H)
    rgb, depth, inst = _render(K, W, H)
    src = RGBDGeometry()
    camera = CameraGeometry(depth, K, POSE)
    full = src.geometry(rgb, 1, camera)
    # stride 4: the grid samples every 4th pixel, and its projection maps into grid coordinates
    coarse = src.geometry(rgb, 4, camera)
    assert coarse.grid_size == (30, 40) and coarse.stride == 4
    assert np.allclose(coarse.points, full.points[::4, ::4], atol=1e-5)
    uv, _ = coarse.project(full.points[8, 12][None].astype(np.float64))
    assert np.allclose(uv, [[3, 2]], atol=1e-3)
    # depth at twice the colour resolution (registered, same field of view), in uint16 millimetres
    K2 = K.copy()
    K2[:2] *= 2
    K2[:2, 2] = (np.array([2 * W, 2 * H]) - 1) / 2
    _, depth2, _ = _render(K2, 2 * W, 2 * H)
    src_mm = RGBDGeometry(depth_scale=0.001)
    geo2 = src_mm.geometry(rgb, 1, CameraGeometry(np.round(depth2 * 1000).astype(np.uint16), K2, POSE))
    inner = ndimage.binary_erosion(inst == 1, iterations=2)  # silhouette pixels may sample the background
    assert np.isfinite(geo2.depth).all()
    assert np.allclose(geo2.depth[inner], full.depth[inner], rtol=0.01)
    assert np.allclose(geo2.projection, full.projection, atol=1e-6)


def test_rgbd_unknown_depth_and_bad_input():
    K = intrinsics(W, H)
    rgb, depth, _ = _render(K, W, H)
    depth = depth.copy()
    depth[:10] = 0
    depth[10:12] = np.nan
    src = RGBDGeometry()
    geo = src.geometry(rgb, 1, CameraGeometry(depth, K, POSE))
    assert not geo.valid[:12].any() and np.isnan(geo.points[:12]).all() and geo.valid[12:].all()
    assert src.geometry(rgb, 1, None) is None  # a frame given without geometry has none
    bad = {
        "K must be": CameraGeometry(depth, np.eye(2), POSE),
        "rotation": CameraGeometry(depth, K, np.diag([2.0, 1, 1, 1])),
        r"\(H, W\)": CameraGeometry(depth[0], K, POSE),
        "numeric": CameraGeometry(depth.astype(bool), K, POSE),
        "c2w must be": CameraGeometry(depth, K, np.eye(3)),
    }
    for match, camera in bad.items():
        # the same check in the source, in its pre-check and in the public helper (the ROS node uses it)
        for check in (lambda c: src.geometry(rgb, 1, c), src.check, check_camera):
            with pytest.raises(GeometryInputError, match=match):
                check(camera)
    assert issubclass(GeometryInputError, TrackerInputError)
    with pytest.raises(GeometryInputError, match="CameraGeometry"):
        check_camera((depth, K, POSE))
    with pytest.raises(GeometryInputError, match="depth_scale"):
        RGBDGeometry(depth_scale=0)
    # (H, W, 1) depth and integer K are normalised; an already clean geometry is returned as it is
    checked = check_camera(CameraGeometry(depth[..., None], K.astype(np.int64), POSE))
    assert checked.depth.shape == (H, W) and checked.K.dtype == np.float64
    clean = CameraGeometry(depth, K.astype(np.float64), POSE.astype(np.float64))
    assert check_camera(clean) is clean


def _model_pointmap(crop_box, hm, wm):
    """Exact pointmap of the crop `crop_box` of the frame resized to (hm, wm), as MUSt3R would give it."""
    K = intrinsics(W, H)
    x0, y0, x1, y1 = crop_box
    sx, sy = wm / (x1 - x0), hm / (y1 - y0)
    Km = np.array(
        [
            [K[0, 0] * sx, 0, (K[0, 2] + 0.5 - x0) * sx - 0.5],
            [0, K[1, 1] * sy, (K[1, 2] + 0.5 - y0) * sy - 0.5],
            [0, 0, 1],
        ]
    )
    _, depth_m, _ = _render(Km, wm, hm)
    jj, ii = np.meshgrid(np.arange(wm), np.arange(hm))
    cam = np.stack([jj, ii, np.ones_like(jj)], -1) @ np.linalg.inv(Km).T * depth_m[..., None]
    return cam @ POSE[:3, :3].T + POSE[:3, 3]


def test_pointmap_geometry_maps_through_the_crop_and_fits_the_camera():
    crop = (20, 0, 140, 120)  # a centre-cropped square, resized to 64x64
    world = _model_pointmap(crop, 64, 64)
    # MUSt3R's world frame is its first camera's, with its own scale: apply a similarity transform
    angle, scale, shift = 0.7, 0.37, np.array([1.0, -2.0, 0.5])
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    world_s = (world @ rot.T) * scale + shift
    conf = np.full((64, 64), 5.0)
    conf[:4] = 1.0  # unconfident rows are dropped
    geo = pointmap_geometry(world_s, conf, crop, (H, W), stride=2, conf_min=3.0)
    assert geo.grid_size == (60, 80)
    assert not geo.valid[:, :10].any() and not geo.valid[:, 70:].any()  # outside the crop (x < 20, x >= 140)
    assert not geo.valid[:3].any() and geo.valid[5:, 12:68].all()
    # the fitted camera projects each grid point back near its own grid pixel (nearest-neighbour sampling of a
    # 64x64 map onto a 120x120 region: within about one model pixel = 0.94 grid pixels)
    pts = geo.points[geo.valid].astype(np.float64)
    uv, z = geo.project(pts)
    ii, jj = np.nonzero(geo.valid)
    err = np.abs(uv - np.stack([jj, ii], 1))
    assert np.median(err) < 0.6 and err.max() < 2.5
    # depth in the scaled world's units
    K = intrinsics(W, H)
    _, depth, _ = _render(K, W, H)
    true = depth[::2, ::2][geo.valid] * scale
    assert np.median(np.abs(geo.depth[geo.valid] - true) / true) < 0.02


def test_fit_projection_recovers_an_exact_camera_and_refuses_degenerate_input():
    K = intrinsics(W, H)
    rng = np.random.default_rng(0)
    world = rng.uniform([-1, -1, 0], [1, 1, 1.5], (200, 3))
    P = K @ np.linalg.inv(POSE)[:3]
    hom = np.c_[world, np.ones(200)] @ P.T
    pix = hom[:, :2] / hom[:, 2:]
    fitted = fit_projection(world, pix)
    assert np.allclose(fitted, P, atol=1e-6)
    line = np.outer(np.linspace(0, 1, 20), [1.0, 2.0, 3.0])
    assert fit_projection(line, np.outer(np.linspace(0, 1, 20), [1.0, 1.0])) is None


def test_must3r_source_runs_on_the_tiny_streaming_model():
    from threeam_model.must3r import tiny_must3r
    from threeam_model.must3r.stream import Must3rStream

    stream = Must3rStream(tiny_must3r(), image_size={4 / 3: (64, 48)}, max_memory_images=4)
    src = Must3rGeometry(stream, conf_min=1.0)
    rgb, _, _ = _render(intrinsics(W, H), W, H)
    for _ in range(2):
        geo = src.geometry(rgb, grid_stride((H, W), 40))
        assert geo is not None and geo.grid_size == (30, 40) and geo.stride == 4
        assert geo.valid.mean() > 0.5 and np.isfinite(geo.projection).all()
    src.reset()
    assert stream.frame_count == 0


def test_must3r_source_reads_the_base_trackers_scene_output():
    from types import SimpleNamespace

    crop = (20, 0, 140, 120)
    scene = SimpleNamespace(pts3d=_model_pointmap(crop, 64, 64), conf=np.full((64, 64), 5.0), crop_box=crop)
    rgb, _, _ = _render(intrinsics(W, H), W, H)
    src = Must3rGeometry.from_tracker_scene(conf_min=3.0)
    assert src.stream is None
    geo = src.geometry(rgb, 2, None, FrameResult(0, (H, W), {}, scene=scene))
    expected = pointmap_geometry(scene.pts3d, scene.conf, crop, (H, W), stride=2, conf_min=3.0)
    assert np.array_equal(geo.valid, expected.valid) and np.allclose(geo.projection, expected.projection)
    src.reset()  # no stream of its own to reset
    with pytest.raises(GeometryInputError, match="no scene output.*method 3am.*stream"):
        src.geometry(rgb, 2, None, FrameResult(0, (H, W), {}))


# ------------------------------------------------------------------------------------------------------ anchor


def test_anchor_voxel_means_counts_and_last_seen():
    a = ObjectAnchor(max_voxels=100, voxel_rel=0.1)  # voxel 0.2 at depth 2
    pts = np.array([[0.01, 0.01, 0.01], [0.03, 0.05, 0.07], [0.5, 0.5, 0.5]])
    a.add(pts, np.full(3, 2.0), frame_index=3)
    assert a.voxel_size == pytest.approx(0.2) and len(a) == 2
    order = np.argsort(a.points[:, 0])
    assert np.allclose(a.points[order[0]], [0.02, 0.03, 0.04]) and a.counts[order].tolist() == [2, 1]
    a.add(np.array([[0.05, 0.05, 0.05]]), np.array([9.0]), frame_index=5)  # voxel size stays fixed
    assert a.voxel_size == pytest.approx(0.2) and len(a) == 2
    assert a.counts[order].tolist() == [3, 1] and a.last_seen[order].tolist() == [5, 3]
    assert a.last_seen_frame == 5
    a.clear()
    assert len(a) == 0 and a.voxel_size is None


def test_anchor_cap_evicts_the_least_recently_seen():
    a = ObjectAnchor(max_voxels=10, voxel_rel=0.5)  # voxel 1.0 at depth 2
    a.add(np.arange(8)[:, None] * [1.0, 0, 0] + 0.5, np.full(8, 2.0), frame_index=0)
    a.add(np.array([[0.5, 0.5, 0.5]]), np.array([2.0]), frame_index=1)  # refresh voxel x=0
    a.add(np.arange(4)[:, None] * [0, 1.0, 0] + [0.5, 10.5, 0.5], np.full(4, 2.0), frame_index=2)
    assert len(a) == 10
    xs = sorted(a.points[a.last_seen == 0][:, 0].round(1).tolist())
    assert len(xs) == 5  # 3 of the 8 old ones left; the refreshed one (x=0.5) stayed
    assert 0.5 in a.points[:, 0].round(1).tolist()
    # more new voxels than the cap at once: the most observed ones are kept
    b = ObjectAnchor(max_voxels=3, voxel_rel=0.5)
    pts = np.repeat(np.arange(6)[:, None] * [1.0, 0, 0] + 0.5, [1, 5, 1, 4, 1, 3], axis=0)
    b.add(pts, np.full(len(pts), 2.0), frame_index=0)
    assert sorted(b.counts.tolist()) == [3, 4, 5]


def test_anchor_extent_and_centre():
    rng = np.random.default_rng(1)
    v = rng.normal(size=(5000, 3))
    pts = 0.5 * v / np.linalg.norm(v, axis=1, keepdims=True) + [1.0, 2.0, 3.0]  # sphere of diameter 1
    a = ObjectAnchor(max_voxels=4096, voxel_rel=0.01)
    a.add(pts, np.full(len(pts), 2.0), frame_index=0)
    assert a.extent == pytest.approx(1.0, abs=0.03)
    assert np.allclose(a.centre, [1.0, 2.0, 3.0], atol=0.02)
