"""The ScanNet and ScanNet++ scene readers, on layouts written here from a generated scene (no dataset needed)."""

import json

import cv2
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from threeam_model.data.ply import write_ply
from threeam_model.data.synthetic import render_scene, scene_points
from threeam_model.instances.scenes import open_scene
from threeam_model.instances.superpoints import superpoints

CHAIR, WALL = 2, 1  # ScanNet200 ids


@pytest.fixture(scope="module")
def generated():
    sc = render_scene(seed=4, num_frames=5, width=96, height=72, num_objects=3)
    pts = scene_points(sc, spacing=0.08)
    spx = superpoints(pts["points"], pts["normals"])
    # annotations are per superpoint (each in one group): the expected instance of a point is its superpoint's
    majority = np.array([np.bincount(pts["instance"][spx == s]).argmax() for s in range(spx.max() + 1)])
    return sc, dict(pts, instance=majority[spx]), spx


def _mesh(path, pts):
    p = pts["points"]
    write_ply(
        path,
        {
            "x": p[:, 0],
            "y": p[:, 1],
            "z": p[:, 2],
            "red": pts["colors"][:, 0],
            "green": pts["colors"][:, 1],
            "blue": pts["colors"][:, 2],
        },
    )


def _groups(pts, spx):
    """One annotation group per object (label chair) and one for the room (label wall)."""
    groups = []
    for obj_id in np.unique(pts["instance"]):
        segs = np.unique(spx[pts["instance"] == obj_id]).tolist()
        groups.append({"objectId": int(obj_id) + 10, "label": "chair" if obj_id else "wall", "segments": segs})
    return groups


def _check_gt(gt, pts):
    # each generated object is one GT instance; the room (wall) is void
    assert (gt[pts["instance"] == 0] == 0).all()
    for obj_id in np.unique(pts["instance"])[1:]:
        assert len(np.unique(gt[pts["instance"] == obj_id])) == 1 and gt[pts["instance"] == obj_id][0] > 0
    assert len(np.unique(gt)) == len(np.unique(pts["instance"]))


def test_scannet_layout(generated, tmp_path):
    sc, pts, spx = generated
    name = "scene0000_00"
    root = tmp_path / name
    for sub in ("color", "depth", "pose", "intrinsic"):
        (root / sub).mkdir(parents=True)
    _mesh(root / f"{name}_vh_clean_2.ply", pts)
    (root / f"{name}_vh_clean_2.0.010000.segs.json").write_text(json.dumps({"segIndices": spx.tolist()}))
    (root / f"{name}.aggregation.json").write_text(json.dumps({"segGroups": _groups(pts, spx)}))
    label_map = tmp_path / "labels.tsv"
    label_map.write_text(
        "id\traw_category\tcategory\nKEEP\n".replace("KEEP\n", f"{CHAIR}\tchair\tchair\n") + f"{WALL}\twall\twall\n"
    )
    K4 = np.eye(4)
    K4[:3, :3] = sc["K"]
    np.savetxt(root / "intrinsic" / "intrinsic_depth.txt", K4)
    for i in range(5):
        cv2.imwrite(str(root / "color" / f"{i}.jpg"), sc["rgb"][i][:, :, ::-1])
        cv2.imwrite(str(root / "depth" / f"{i}.png"), np.round(sc["depth"][i] * 1000).astype(np.uint16))
        pose = sc["poses"][i] if i != 2 else np.full((4, 4), -np.inf)  # ScanNet marks lost tracking with -inf
        np.savetxt(root / "pose" / f"{i}.txt", pose)
    scene = open_scene(root, "scannet", label_map=label_map)
    assert scene.name == name and len(scene.frames) == 4  # the frame with an invalid pose is skipped
    np.testing.assert_allclose(scene.points, pts["points"], atol=1e-6)
    np.testing.assert_array_equal(scene.superpoints, spx)
    np.testing.assert_array_equal(scene.colors, pts["colors"])
    _check_gt(scene.gt, pts)
    assert (scene.gt[scene.gt > 0] // 1000 == CHAIR).all()
    f = scene.frames.frame(2)  # stream frame 2 = file 3
    np.testing.assert_allclose(f.pose, sc["poses"][3], atol=1e-9)
    np.testing.assert_allclose(f.depth, sc["depth"][3], atol=0.51e-3)
    np.testing.assert_allclose(f.K, sc["K"])
    assert f.rgb.shape == (72, 96, 3)
    with pytest.raises(ValueError, match="label_map"):
        open_scene(root, "scannet")
    # the benchmark's GT file instead of the aggregation
    gt_file = tmp_path / "gt.txt"
    np.savetxt(gt_file, np.where(pts["instance"] > 0, 5000 + pts["instance"], 1000 + 99), fmt="%d")
    scene = open_scene(root, "scannet", gt_file=gt_file)
    _check_gt(scene.gt, pts)


def test_scannetpp_layout(generated, tmp_path):
    sc, pts, spx = generated
    root = tmp_path / "data" / "abc123"
    scans, iphone = root / "scans", root / "iphone"
    for d in (scans, iphone / "rgb", iphone / "depth", iphone / "colmap"):
        d.mkdir(parents=True)
    _mesh(scans / "mesh_aligned_0.05.ply", pts)
    (scans / "segments.json").write_text(json.dumps({"segIndices": spx.tolist()}))
    groups = _groups(pts, spx)
    for g in groups:
        g["label"] = "wall" if g["label"] == "wall" else "office chair"
    (scans / "segments_anno.json").write_text(json.dumps({"segGroups": groups}))
    K = sc["K"]
    # COLMAP puts pixel centres at +0.5; a 2x larger colour image than the depth maps
    (iphone / "colmap" / "cameras.txt").write_text(
        f"1 PINHOLE 192 144 {2 * K[0, 0]} {2 * K[1, 1]} {2 * (K[0, 2] + 0.5)} {2 * (K[1, 2] + 0.5)}\n"
    )
    lines = []
    for i in range(5):
        name = f"frame_{i:06d}.jpg"
        w2c = np.linalg.inv(sc["poses"][i])
        qx, qy, qz, qw = Rotation.from_matrix(w2c[:3, :3]).as_quat()
        t = w2c[:3, 3]
        lines += [f"{i + 1} {qw} {qx} {qy} {qz} {t[0]} {t[1]} {t[2]} 1 {name}", ""]
        big = cv2.resize(sc["rgb"][i], (192, 144), interpolation=cv2.INTER_NEAREST)
        cv2.imwrite(str(iphone / "rgb" / name), big[:, :, ::-1])
        cv2.imwrite(str(iphone / "depth" / f"frame_{i:06d}.png"), np.round(sc["depth"][i] * 1000).astype(np.uint16))
    (iphone / "colmap" / "images.txt").write_text("\n".join(lines) + "\n")
    scene = open_scene(root, "scannetpp")
    assert scene.name == "abc123" and len(scene.frames) == 5
    np.testing.assert_array_equal(scene.superpoints, spx)
    _check_gt(scene.gt, pts)
    f = scene.frames.frame(1)
    assert f.rgb.shape == (72, 96, 3) and f.depth.shape == (72, 96)
    np.testing.assert_allclose(f.K, K, atol=1e-9)
    np.testing.assert_allclose(f.pose, sc["poses"][1], atol=1e-6)


def test_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="points.ply"):
        (tmp_path / "s").mkdir()
        (tmp_path / "s" / "scene.json").write_text(
            json.dumps({"format": "threeam-synthetic-v1", "num_frames": 0, "depth_scale": 1000})
        )
        np.savetxt(tmp_path / "s" / "intrinsics.txt", np.eye(3))
        (tmp_path / "s" / "poses.txt").write_text("")
        open_scene(tmp_path / "s", "synthetic")
    with pytest.raises(FileNotFoundError, match="vh_clean_2.ply"):
        open_scene(tmp_path / "s", "scannet")
    with pytest.raises(ValueError, match="unknown layout"):
        open_scene(tmp_path / "s", "kitti")
