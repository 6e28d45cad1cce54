"""Scene points of generated scenes (what the 3D evaluation is over) and the PLY reader / writer."""

import filecmp

import numpy as np
import pytest

from threeam_model.data.ply import read_ply, write_ply
from threeam_model.data.synthetic import POINTS_FILE, generate_scene, render_scene, scene_points


@pytest.fixture(scope="module")
def scene():
    return render_scene(seed=3, num_frames=24, width=96, height=72, num_objects=4)


def test_points_lie_on_their_objects_and_are_seen(scene):
    pts = scene_points(scene, spacing=0.05)
    assert pts["points"].dtype == np.float32 and pts["colors"].dtype == np.uint8
    assert set(np.unique(pts["instance"])) == {0, 1, 2, 3, 4}
    np.testing.assert_allclose(np.linalg.norm(pts["normals"], axis=1), 1.0, atol=1e-5)
    for obj in scene["objects"]:
        p = pts["points"][pts["instance"] == obj["id"]]
        assert len(p) > 50
        if obj["shape"] == "sphere":
            np.testing.assert_allclose(np.linalg.norm(p - obj["center"], axis=1), obj["size"][0] / 2, atol=1e-5)
        assert p[:, 2].min() > 0.0  # no bottom face: it rests on the floor, no frame sees it
    # the floor under an object is never seen, so it is not a point
    room = pts["points"][pts["instance"] == 0]
    for obj in scene["objects"]:
        if obj["shape"] == "sphere":
            continue  # a sphere touches the floor in one point
        near = np.linalg.norm(room[:, :2] - np.asarray(obj["center"][:2]), axis=1) < 0.05
        assert not (near & (room[:, 2] < 1e-6)).any()
    # same scene, same points (no random draw)
    again = scene_points(scene, spacing=0.05)
    for key in pts:
        np.testing.assert_array_equal(pts[key], again[key])


def test_scene_points_are_written_only_on_request(tmp_path):
    plain = generate_scene(tmp_path / "plain", seed=5, num_frames=4, width=64, height=48, num_objects=3)
    full = generate_scene(
        tmp_path / "full",
        seed=5,
        num_frames=4,
        width=64,
        height=48,
        num_objects=3,
        with_points=True,
        point_spacing=0.06,
    )
    assert not (plain / POINTS_FILE).exists()
    written = sorted(p.relative_to(plain) for p in plain.rglob("*") if p.is_file())
    assert all(filecmp.cmp(plain / f, full / f, shallow=False) for f in written)  # nothing else changes
    vertex, faces = read_ply(full / POINTS_FILE)
    want = scene_points(render_scene(seed=5, num_frames=4, width=64, height=48, num_objects=3), 0.06)
    assert faces is None
    np.testing.assert_array_equal(np.stack([vertex["x"], vertex["y"], vertex["z"]], 1), want["points"])
    np.testing.assert_array_equal(vertex["instance"], want["instance"])
    np.testing.assert_array_equal(np.stack([vertex["red"], vertex["green"], vertex["blue"]], 1), want["colors"])


def test_ply_round_trip_and_ascii(tmp_path):
    rng = np.random.default_rng(0)
    xyz = rng.normal(size=(7, 3)).astype(np.float32)
    faces = np.array([[0, 1, 2], [2, 3, 4], [4, 5, 6]])
    path = write_ply(
        tmp_path / "m.ply",
        {"x": xyz[:, 0], "y": xyz[:, 1], "z": xyz[:, 2], "label": np.arange(7, dtype=np.int32)},
        faces,
    )
    vertex, f = read_ply(path)
    np.testing.assert_array_equal(vertex["y"], xyz[:, 1])
    np.testing.assert_array_equal(vertex["label"], np.arange(7))
    np.testing.assert_array_equal(f, faces)
    text = "ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\nproperty float z\n"
    text += "property uchar red\nelement face 1\nproperty list uchar int vertex_indices\nend_header\n"
    text += "0 0 0 10\n1 0 0 20\n0 1 0 30\n3 0 1 2\n"
    (tmp_path / "a.ply").write_text(text)
    vertex, f = read_ply(tmp_path / "a.ply")
    np.testing.assert_array_equal(vertex["red"], [10, 20, 30])
    np.testing.assert_array_equal(f, [[0, 1, 2]])
    with pytest.raises(ValueError, match="not a PLY"):
        (tmp_path / "b.ply").write_text("hello")
        read_ply(tmp_path / "b.ply")
