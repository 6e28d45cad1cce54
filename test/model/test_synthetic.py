"""Procedural scene generator: determinism, geometry consistency, the written layout and its readers."""

import numpy as np
import pytest

from threeam_model.data.readers import MoseVideo, SyntheticScene
from threeam_model.data.synthetic import export_davis, generate_scene, render_scene


@pytest.fixture(scope="module")
def scene():
    return render_scene(seed=3, num_frames=24, width=96, height=72, num_objects=4)


def test_shapes_dtypes_and_determinism(scene):
    assert scene["rgb"].shape == (24, 72, 96, 3) and scene["rgb"].dtype == np.uint8
    assert scene["depth"].shape == (24, 72, 96) and scene["depth"].dtype == np.float32
    assert scene["instance"].shape == (24, 72, 96) and scene["instance"].dtype == np.uint16
    assert scene["K"].shape == (3, 3) and scene["poses"].shape == (24, 4, 4)
    again = render_scene(seed=3, num_frames=24, width=96, height=72, num_objects=4)
    for key in ("rgb", "depth", "instance", "poses"):
        np.testing.assert_array_equal(scene[key], again[key])
    other = render_scene(seed=4, num_frames=24, width=96, height=72, num_objects=4)
    assert not np.array_equal(scene["rgb"], other["rgb"])


def test_poses_are_rigid_and_depth_positive(scene):
    R = scene["poses"][:, :3, :3]
    np.testing.assert_allclose(R @ R.transpose(0, 2, 1), np.broadcast_to(np.eye(3), R.shape), atol=1e-9)
    np.testing.assert_allclose(np.linalg.det(R), 1.0, atol=1e-9)
    assert (scene["depth"] > 0.1).all() and np.isfinite(scene["depth"]).all()


def test_depth_backprojects_onto_the_rendered_object(scene):
    """Pixels labelled as a sphere, lifted with depth + K + pose, lie on that sphere's surface in the world."""
    K_inv = np.linalg.inv(scene["K"])
    checked = 0
    for obj in scene["objects"]:
        if obj["shape"] != "sphere":
            continue
        for t in range(len(scene["poses"])):
            vs, us = np.nonzero(scene["instance"][t] == obj["id"])
            if us.size == 0:
                continue
            pix = np.stack([us, vs, np.ones_like(us)], 1).astype(np.float64)
            cam = (pix @ K_inv.T) * scene["depth"][t][vs, us, None]
            world = cam @ scene["poses"][t][:3, :3].T + scene["poses"][t][:3, 3]
            dist = np.linalg.norm(world - obj["center"], axis=1)
            np.testing.assert_allclose(dist, obj["size"][0] / 2, atol=1e-4)
            checked += us.size
    assert checked > 100


def test_objects_leave_and_reenter_view():
    scene = render_scene(seed=0, num_frames=40, width=80, height=60, num_objects=4)
    reentries = 0
    for obj in scene["objects"]:
        visible = (scene["instance"] == obj["id"]).reshape(40, -1).any(1).astype(int)
        runs = np.flatnonzero(np.diff(visible) == 1)  # invisible -> visible transitions
        reentries += int(visible[0] == 0 and len(runs) >= 2 or visible[0] == 1 and len(runs) >= 1)
    assert reentries >= 2, "the camera path should make several objects leave the view and come back"


def test_lookalike_copies_first_object():
    scene = render_scene(seed=1, num_frames=4, width=64, height=48, num_objects=3, lookalike=True)
    first, copy = scene["objects"][0], scene["objects"][-1]
    assert copy["lookalike_of"] == first["id"] and copy["id"] != first["id"]
    assert copy["shape"] == first["shape"] and copy["size"] == first["size"] and copy["texture"] == first["texture"]
    assert copy["center"][:2] != first["center"][:2]


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="num_objects"):
        render_scene(num_objects=0)
    with pytest.raises(ValueError, match="lookalike"):
        render_scene(num_objects=1, lookalike=True)


def test_written_layout_reads_back_exactly(tmp_path):
    mem = render_scene(seed=5, num_frames=6, width=64, height=48, num_objects=3)
    path = generate_scene(tmp_path / "scene5", seed=5, num_frames=6, width=64, height=48, num_objects=3)
    reader = SyntheticScene(path)
    assert len(reader) == 6 and reader.has_geometry and reader.object_ids == [1, 2, 3]
    for i in range(6):
        f = reader.frame(i)
        np.testing.assert_array_equal(f.rgb, mem["rgb"][i])
        np.testing.assert_array_equal(f.instance, mem["instance"][i])
        np.testing.assert_allclose(f.depth, mem["depth"][i], atol=0.51e-3)  # millimetre PNG
        np.testing.assert_allclose(f.pose, mem["poses"][i], atol=1e-9)
        np.testing.assert_allclose(f.K, mem["K"], atol=1e-9)
    with pytest.raises(IndexError):
        reader.frame(6)


def test_davis_export_reads_as_mose(tmp_path):
    path = generate_scene(tmp_path / "s", seed=2, num_frames=3, width=64, height=48, num_objects=2)
    export_davis(path, tmp_path / "davis", name="clip")
    video = MoseVideo(tmp_path / "davis", "clip")
    mem = SyntheticScene(path)
    assert len(video) == 3 and not video.has_geometry
    for i in range(3):
        np.testing.assert_array_equal(video.frame(i).instance, mem.frame(i).instance)
        assert np.abs(video.frame(i).rgb.astype(int) - mem.frame(i).rgb).mean() < 6  # JPEG
