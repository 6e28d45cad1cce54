"""RGB-D geometry for re-identification: pairs each camera frame with the depth image, intrinsics and camera pose
closest to it in time.

Depth and pose messages land in small bounded buffers from their callbacks; the inference thread asks for the
geometry of a frame stamp and gets (depth metres, K, camera-to-world) or the reason there is none (the frame then
passes through the tracker without geometry, as the re-identification mode allows). The pose comes from a pose
topic, from a lookup (TF: world frame <- the depth image's frame at the frame's stamp), or is the identity for a
static camera.
"""

from __future__ import annotations

import collections
import threading

import numpy as np

from threeam_ros import conversions

BUFFER = 30  # depth images / poses kept; at 30 Hz about one second


def stamp_seconds(stamp) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


def camera_info_to_k(msg) -> np.ndarray:
    """sensor_msgs/CameraInfo -> (3, 3) intrinsics; ValueError when K is unset or not a pinhole matrix."""
    k = np.asarray(msg.k, dtype=np.float64).reshape(3, 3)
    if not np.isfinite(k).all() or k[0, 0] <= 0 or k[1, 1] <= 0:
        raise ValueError(f"camera_info K is not a pinhole matrix with fx, fy > 0: {k.reshape(-1).tolist()}")
    return k


def pose_to_c2w(pose) -> np.ndarray:
    """geometry_msgs/Pose -> (4, 4) camera-to-world; ValueError for a non-finite or zero quaternion."""
    return _rigid_to_matrix(pose.position, pose.orientation)


def transform_to_c2w(transform) -> np.ndarray:
    """geometry_msgs/Transform of the camera frame in the world frame (a TF lookup world <- camera) -> (4, 4)."""
    return _rigid_to_matrix(transform.translation, transform.rotation)


def _rigid_to_matrix(position, orientation) -> np.ndarray:
    q = np.array([orientation.x, orientation.y, orientation.z, orientation.w], np.float64)
    t = np.array([position.x, position.y, position.z], np.float64)
    norm = np.linalg.norm(q)
    if not (np.isfinite(q).all() and np.isfinite(t).all()) or norm < 1e-6:
        raise ValueError(f"pose is not finite or its quaternion is zero: q={q.tolist()}, t={t.tolist()}")
    x, y, z, w = q / norm
    c2w = np.eye(4)
    c2w[:3, :3] = [
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ]
    c2w[:3, 3] = t
    return c2w


class GeometrySync:
    """Thread-safe nearest-stamp matching of depth and pose to frames (see the module docstring)."""

    def __init__(self, tolerance_s: float, static_pose: bool, world_frame: str = "", pose_lookup=None):
        """pose_lookup: None (poses arrive through add_pose, or the identity when static_pose), or a callable
        (camera frame_id, stamp) -> (c2w or None, why not), e.g. a TF lookup."""
        self.tolerance_s = tolerance_s
        self.static_pose = static_pose
        self.world_frame = world_frame
        self.pose_lookup = pose_lookup
        self._lock = threading.Condition()  # notified whenever depth or a pose arrives
        self._depth: collections.deque = collections.deque(maxlen=BUFFER)  # (t, depth message)
        self._poses: collections.deque = collections.deque(maxlen=BUFFER)  # (t, c2w)
        self._k: np.ndarray | None = None

    def add_depth(self, msg) -> None:
        with self._lock:
            self._depth.append((stamp_seconds(msg.header.stamp), msg))
            self._lock.notify_all()

    def add_camera_info(self, msg) -> None:
        k = camera_info_to_k(msg)
        with self._lock:
            self._k = k

    def add_pose(self, msg) -> None:
        if self.world_frame and msg.header.frame_id != self.world_frame:
            raise ValueError(f"pose in frame {msg.header.frame_id!r}, expected reid.world_frame {self.world_frame!r}")
        c2w = pose_to_c2w(msg.pose)
        with self._lock:
            self._poses.append((stamp_seconds(msg.header.stamp), c2w))
            self._lock.notify_all()

    def geometry_for(self, stamp, wait_s: float = 0.0) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray] | None, str]:
        """((depth metres, K, c2w), "") for a frame stamp, or (None, why not). Depth and pose travel on their own
        topics and may arrive after the frame: waits up to `wait_s` for them. Raises ConversionError for a bad
        depth image."""
        t = stamp_seconds(stamp)

        def match():
            depth = _nearest(self._depth, t, self.tolerance_s)
            fixed = self.static_pose or self.pose_lookup is not None  # nothing to wait for in the buffer
            c2w = np.eye(4) if fixed else _nearest(self._poses, t, self.tolerance_s)
            return depth, c2w

        with self._lock:
            self._lock.wait_for(lambda: all(x is not None for x in match()), timeout=wait_s)
            depth, c2w = match()
            k = self._k
        if k is None:
            return None, "no camera_info received yet"
        if depth is None:
            return None, f"no depth image within {self.tolerance_s:g} s of the frame"
        if c2w is None:
            return None, f"no pose within {self.tolerance_s:g} s of the frame"
        if self.pose_lookup is not None:
            c2w, why = self.pose_lookup(depth.header.frame_id, stamp)
            if c2w is None:
                return None, why
        return (conversions.image_to_depth(depth), k, c2w), ""

    def clear(self) -> None:
        with self._lock:
            self._depth.clear()
            self._poses.clear()


def _nearest(buffer, t: float, tolerance: float):
    best = min(buffer, key=lambda item: abs(item[0] - t), default=None)
    return best[1] if best is not None and abs(best[0] - t) <= tolerance else None
