"""Each dataset reader parses a small sample written here in its documented layout.

Samples are made from a synthetic scene, so the reader's depth, intrinsics, poses and ids can be checked
against known values, not just parsed.
"""

import csv
import json

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from scipy.spatial.transform import Rotation

from threeam_model.data.readers import ASEScene, MoseVideo, ScanNetPPScene, davis_palette
from threeam_model.data.readers.ase import fisheye624_project
from threeam_model.data.synthetic import intrinsics, render_scene

W, H, T = 96, 72, 5


@pytest.fixture(scope="module")
def scene():
    return render_scene(seed=11, num_frames=T, width=W, height=H, num_objects=3)


def _wxyz(R):
    x, y, z, w = Rotation.from_matrix(R).as_quat()
    return w, x, y, z


def test_scannetpp_iphone_layout(tmp_path, scene):
    iphone = tmp_path / "data" / "abc123" / "iphone"
    for sub in ("rgb", "depth", "colmap"):
        (iphone / sub).mkdir(parents=True)
    obj_dir = tmp_path / "semantics_2d" / "obj_ids" / "abc123"
    obj_dir.mkdir(parents=True)
    K = scene["K"]
    # COLMAP: pixel centres at +0.5, OPENCV model with (ignored) distortion
    (iphone / "colmap" / "cameras.txt").write_text(
        f"# camera list\n1 OPENCV {W} {H} {K[0, 0]} {K[1, 1]} {K[0, 2] + 0.5} {K[1, 2] + 0.5} 0.01 0 0 0\n"
    )
    lines = ["# image list"]
    for i in range(T):
        w2c = np.linalg.inv(scene["poses"][i])
        q = _wxyz(w2c[:3, :3])
        lines += [f"{i + 1} {' '.join(map(str, q))} {' '.join(map(str, w2c[:3, 3]))} 1 iphone/frame_{i:06d}.jpg", ""]
    (iphone / "colmap" / "images.txt").write_text("\n".join(lines) + "\n")
    for i in range(T):
        name = f"frame_{i:06d}"
        cv2.imwrite(str(iphone / "rgb" / f"{name}.jpg"), scene["rgb"][i][:, :, ::-1])
        cv2.imwrite(str(iphone / "depth" / f"{name}.png"), np.round(scene["depth"][i] * 1000).astype(np.uint16))
        if i == 3:
            continue  # a frame the semantics step skipped: the reader must leave it out
        ids = scene["instance"][i][::2, ::2].astype(np.int64) - 1  # half resolution, -1 = no object
        torch.save(ids, obj_dir / f"{name}.jpg.pth")

    reader = ScanNetPPScene(tmp_path / "data", "abc123", tmp_path / "semantics_2d" / "obj_ids")
    assert len(reader) == T - 1 and reader.has_geometry and reader.dataset == "scannetpp"
    f = reader.frame(3)  # the 4th kept frame = original frame 4
    np.testing.assert_array_equal(f.instance, scene["instance"][4][::2, ::2])
    np.testing.assert_allclose(f.K, intrinsics(W // 2, H // 2), atol=1e-9)
    np.testing.assert_allclose(f.pose, scene["poses"][4], atol=1e-9)
    np.testing.assert_allclose(f.depth, scene["depth"][4][::2, ::2], atol=0.51e-3)
    assert f.rgb.shape == (H // 2, W // 2, 3)
    assert reader.object_ids == sorted(set(np.unique(scene["instance"][[0, 1, 2, 4]]).tolist()) - {0})
    with pytest.raises(FileNotFoundError, match="missing"):
        ScanNetPPScene(tmp_path / "data", "nope", tmp_path / "semantics_2d" / "obj_ids")


def _write_ase(root, scene, camera, T_device_camera, depth_maps, instances):
    d = root / "7"
    for sub in ("rgb", "depth", "instances"):
        (d / sub).mkdir(parents=True)
    with open(d / "trajectory.csv", "w", newline="") as fh:
        cols = ["graph_uid", "tracking_timestamp_us"] + [f"t{c}_world_device" for c in "xyz"]
        cols += [f"q{c}_world_device" for c in "xyzw"]
        writer = csv.writer(fh)
        writer.writerow(cols)
        for i, pose in enumerate(scene["poses"]):
            T_wd = pose @ np.linalg.inv(T_device_camera)
            x, y, z, w = Rotation.from_matrix(T_wd[:3, :3]).as_quat()
            writer.writerow(["g", i * 100000, *T_wd[:3, 3], x, y, z, w])
    for i in range(len(depth_maps)):
        cv2.imwrite(str(d / "rgb" / f"vignette{i:07d}.jpg"), np.full((*depth_maps[i].shape, 3), 128, np.uint8))
        cv2.imwrite(str(d / "depth" / f"depth{i:07d}.png"), np.round(depth_maps[i] * 1000).astype(np.uint16))
        cv2.imwrite(str(d / "instances" / f"instance{i:07d}.png"), instances[i].astype(np.uint16))
    (d / "camera.json").write_text(json.dumps(dict(camera, T_device_camera=T_device_camera.tolist())))
    return d


def test_ase_pinhole_ray_distance_and_device_pose(tmp_path, scene):
    K = scene["K"]
    us, vs = np.meshgrid(np.arange(W), np.arange(H))
    ray_norm = np.sqrt(((us - K[0, 2]) / K[0, 0]) ** 2 + ((vs - K[1, 2]) / K[1, 1]) ** 2 + 1)
    ranges = scene["depth"] * ray_norm  # ASE stores distance along the ray
    T_dc = np.eye(4)
    T_dc[:3, :3] = Rotation.from_euler("xyz", [10, -20, 90], degrees=True).as_matrix()
    T_dc[:3, 3] = [0.01, -0.05, 0.002]
    camera = {"model": "pinhole", "params": [K[0, 0], K[1, 1], K[0, 2], K[1, 2]], "width": W, "height": H}
    _write_ase(tmp_path, scene, camera, T_dc, ranges, scene["instance"])
    reader = ASEScene(tmp_path, 7)
    assert len(reader) == T and reader.dataset == "ase"
    for i in (0, T - 1):
        f = reader.frame(i)
        np.testing.assert_allclose(f.depth, scene["depth"][i], atol=1e-3)
        np.testing.assert_allclose(f.pose, scene["poses"][i], atol=1e-6)
        np.testing.assert_array_equal(f.instance, scene["instance"][i])


def test_fisheye624_reduces_to_equidistant():
    pts = np.array([[0.3, -0.2, 1.0], [0.0, 0.0, 2.0], [-1.0, 0.5, 0.5]])
    params = [200.0, 100.0, 90.0] + [0.0] * 12
    uv = fisheye624_project(pts, params)
    r = np.hypot(pts[:, 0], pts[:, 1])
    theta = np.arctan2(r, pts[:, 2])
    expect = np.stack(
        [100 + 200 * theta * pts[:, 0] / np.maximum(r, 1e-12), 90 + 200 * theta * pts[:, 1] / np.maximum(r, 1e-12)], 1
    )
    np.testing.assert_allclose(uv, expect, atol=1e-9)


def test_ase_fisheye_rectifies_a_plane(tmp_path):
    """A fronto-parallel plane at z = 2 m seen by an equidistant fisheye must come out as z-depth 2 m."""
    scene = render_scene(seed=0, num_frames=1, width=32, height=32, num_objects=1)
    size, f = 200, 60.0
    us, vs = np.meshgrid(np.arange(size), np.arange(size))
    theta = np.hypot(us - 99.5, vs - 99.5) / f
    ranges = np.where(theta < 1.2, 2.0 / np.cos(np.minimum(theta, 1.2)), 0)
    instance = (us > 99.5).astype(np.uint16) * 5  # right half = object 5
    camera = {
        "model": "fisheye624",
        "params": [f, 99.5, 99.5] + [0.0] * 12,
        "width": size,
        "height": size,
        "pinhole": {"width": 64, "height": 48, "focal": 40.0},
    }
    _write_ase(tmp_path, scene, camera, np.eye(4), [ranges], [instance])
    fr = ASEScene(tmp_path, "7").frame(0)
    assert fr.depth.shape == (48, 64) and fr.rgb.shape == (48, 64, 3)
    np.testing.assert_allclose(fr.depth, 2.0, rtol=0.01)
    assert (fr.instance[:, :31] == 0).all() and (fr.instance[:, 33:] == 5).all()


def test_mose_and_davis_layouts(tmp_path):
    root = tmp_path / "MOSE" / "train"
    (root / "JPEGImages" / "vid1").mkdir(parents=True)
    (root / "Annotations" / "vid1").mkdir(parents=True)
    rng = np.random.default_rng(0)
    ids = []
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(
            root / "JPEGImages" / "vid1" / f"{i:05d}.jpg"
        )
        ann = np.zeros((40, 50), np.uint8)
        ann[5 + i : 15 + i, 10:20] = 1
        ann[20:30, 30:45] = 3
        ids.append(ann)
        img = Image.fromarray(ann, mode="P")
        img.putpalette(davis_palette())
        img.save(root / "Annotations" / "vid1" / f"{i:05d}.png")
    assert MoseVideo.list_videos(root) == ["vid1"]
    video = MoseVideo(root, "vid1")
    assert len(video) == 3 and not video.has_geometry and video.object_ids == [1, 3]
    f = video.frame(2)
    np.testing.assert_array_equal(f.instance, ids[2])
    assert f.rgb.shape == (40, 50, 3) and f.depth is None and f.pose is None
    (root / "Annotations" / "vid1" / "00001.png").unlink()
    with pytest.raises(FileNotFoundError, match="no annotation"):
        video.frame(1)


def test_davis2016_binary_masks(shared_dir):
    """The shared DAVIS-2016 clip (mode-L masks, 0/255) reads as object 1; its folder is laid out as
    blackswan/JPEGImages/*.jpg, so blackswan/ is the dataset root and the video name is empty."""
    video = MoseVideo(shared_dir / "data" / "davis" / "blackswan", "")
    assert len(video) == 50
    f = video.frame(0)
    assert f.rgb.shape == (480, 854, 3)
    assert set(np.unique(f.instance).tolist()) == {0, 1}
