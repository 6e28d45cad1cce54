"""RGB-D geometry plumbing of the node: pose and intrinsics conversion, nearest-stamp matching, waiting, refusals."""

import threading

import numpy as np
import pytest
from geometry_msgs.msg import PoseStamped
from scipy.spatial.transform import Rotation
from sensor_msgs.msg import CameraInfo, Image

from threeam_ros.geometry_sync import GeometrySync, camera_info_to_k, pose_to_c2w


def _pose(t, quat_xyzw=(0, 0, 0, 1), xyz=(0, 0, 0), frame="world"):
    msg = PoseStamped()
    msg.header.stamp.sec, msg.header.stamp.nanosec = int(t), int(round((t % 1) * 1e9))
    msg.header.frame_id = frame
    msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = xyz
    o = msg.pose.orientation
    o.x, o.y, o.z, o.w = quat_xyzw
    return msg


def _depth(t, metres=2.0):
    msg = Image(height=2, width=3, encoding="32FC1", step=12)
    msg.header.stamp.sec, msg.header.stamp.nanosec = int(t), int(round((t % 1) * 1e9))
    msg.data = np.full((2, 3), metres, np.float32).tobytes()
    return msg


def _info(fx=100.0):
    return CameraInfo(k=[fx, 0.0, 1.5, 0.0, fx, 1.0, 0.0, 0.0, 1.0])


def test_pose_to_c2w_matches_scipy_rotation():
    rot = Rotation.from_euler("xyz", [10, -35, 70], degrees=True)
    q = rot.as_quat()  # x, y, z, w
    c2w = pose_to_c2w(_pose(0, tuple(2 * q), (1.0, -2.0, 0.5)).pose)  # an unnormalised quaternion is normalised
    np.testing.assert_allclose(c2w[:3, :3], rot.as_matrix(), atol=1e-12)
    np.testing.assert_allclose(c2w[:3, 3], [1.0, -2.0, 0.5])
    np.testing.assert_allclose(c2w[3], [0, 0, 0, 1])
    for bad in [_pose(0, (0, 0, 0, 0)), _pose(0, (np.nan, 0, 0, 1)), _pose(0, xyz=(np.inf, 0, 0))]:
        with pytest.raises(ValueError):
            pose_to_c2w(bad.pose)


def test_camera_info_k_is_checked():
    np.testing.assert_allclose(camera_info_to_k(_info()), [[100, 0, 1.5], [0, 100, 1], [0, 0, 1]])
    with pytest.raises(ValueError, match="pinhole"):
        camera_info_to_k(CameraInfo())


def test_nearest_depth_and_pose_within_tolerance():
    sync = GeometrySync(tolerance_s=0.05, static_pose=False, world_frame="world")
    stamp = _pose(10.0).header.stamp
    assert sync.geometry_for(stamp)[1] == "no camera_info received yet"
    sync.add_camera_info(_info())
    for t, metres in ((9.9, 1.0), (10.02, 2.0), (10.2, 3.0)):
        sync.add_depth(_depth(t, metres))
    assert "no pose" in sync.geometry_for(stamp)[1]
    sync.add_pose(_pose(10.03, xyz=(5.0, 0, 0)))
    sync.add_pose(_pose(9.5, xyz=(7.0, 0, 0)))
    (depth, k, c2w), why = sync.geometry_for(stamp)
    assert why == "" and depth.shape == (2, 3) and (depth == 2.0).all() and c2w[0, 3] == 5.0
    assert "no depth" in sync.geometry_for(_pose(11.0).header.stamp)[1]
    with pytest.raises(ValueError, match="expected reid.world_frame"):
        sync.add_pose(_pose(10.0, frame="odom"))


def test_static_camera_uses_identity_and_late_depth_is_waited_for():
    sync = GeometrySync(tolerance_s=0.05, static_pose=True)
    sync.add_camera_info(_info())
    stamp = _depth(20.0).header.stamp
    late = threading.Timer(0.05, lambda: sync.add_depth(_depth(20.01)))
    late.start()
    (depth, _, c2w), why = sync.geometry_for(stamp, wait_s=5.0)
    late.join()
    assert why == "" and np.array_equal(c2w, np.eye(4)) and (depth == 2.0).all()
    assert sync.geometry_for(_depth(30.0).header.stamp, wait_s=0.01)[0] is None  # gives up after wait_s


def test_pose_from_a_lookup_uses_the_depth_frame_and_the_frame_stamp():
    from geometry_msgs.msg import Transform

    from threeam_ros.geometry_sync import transform_to_c2w

    rot = Rotation.from_euler("z", 30, degrees=True)
    tf = Transform()
    tf.translation.x, tf.translation.y, tf.translation.z = 1.0, 2.0, 3.0
    tf.rotation.x, tf.rotation.y, tf.rotation.z, tf.rotation.w = rot.as_quat()
    asked = []

    def lookup(frame_id, stamp):  # stands in for a TF buffer: answers only for the camera's optical frame
        asked.append((frame_id, stamp.sec))
        if frame_id != "camera_optical":
            return None, f"no TF world <- {frame_id!r}"
        return transform_to_c2w(tf), ""

    sync = GeometrySync(tolerance_s=0.05, static_pose=False, world_frame="world", pose_lookup=lookup)
    sync.add_camera_info(_info())
    depth = _depth(10.0)
    depth.header.frame_id = "camera_optical"
    sync.add_depth(depth)
    (depth_m, k, c2w), why = sync.geometry_for(_pose(10.01).header.stamp, wait_s=0.0)  # no pose topic to wait for
    assert why == "" and asked == [("camera_optical", 10)]
    np.testing.assert_allclose(c2w[:3, :3], rot.as_matrix(), atol=1e-12)
    np.testing.assert_allclose(c2w[:3, 3], [1, 2, 3])
    np.testing.assert_allclose(depth_m, 2.0)

    depth.header.frame_id = "elsewhere"
    sync.clear()
    sync.add_depth(depth)
    geometry, why = sync.geometry_for(_pose(10.0).header.stamp)
    assert geometry is None and why == "no TF world <- 'elsewhere'"
