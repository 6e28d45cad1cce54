"""What the node learns about its camera input from the ROS graph, and the callback group of its camera subscription.

Why a subscribed camera topic delivers nothing (no publisher, another message type, or a best-effort publisher
under a reliable subscription) is checked from the diagnostics timer while no frame arrives, instead of through
rclpy's default QoS event callbacks: with those attached, the executor thread spun under a fast best-effort camera
(Fast DDS) and starved the inference thread (measured: 300 Hz camera, 34 to 178 of 1,500 frames tracked with the
callbacks, 216 to 256 without). The cause: with rmw_fastrtps an event waits on the same DDS condition as its
subscription (the reader's: data available, and the statuses of its events), so while a frame is handed to a worker
thread but not yet taken, a wait that includes the event returns at once, again and again, until the take.

The one event the node does attach, message-lost (frames the middleware dropped before the node saw them, counted as
frames_lost), sits in a `CameraCallbackGroup` with its subscription: neither is waited on while the other is handed
out and not yet taken, which closes that window. Measured with test/ros/test_node_latency.py (a 300 Hz camera, 1,500
frames; 2 runs, then 3 and 3): the event in a plain mutually exclusive group, 586 to 1,142 frames received and 61 to 170
tracked; in this group 1,493 to 1,500 received and 276 to 338 tracked; without the event 1,496 to 1,500 and 222
to 325.
"""

from __future__ import annotations

from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.qos import ReliabilityPolicy


class CameraCallbackGroup(MutuallyExclusiveCallbackGroup):
    """One entity at a time (mutually exclusive), and none of them waited on while another is handed to a worker
    thread but not yet taken (rclpy marks such an entity with `_executor_event`): the camera subscription and its
    message-lost event share one DDS condition, so waiting on either while the other's data sits untaken spins."""

    def can_execute(self, entity) -> bool:
        for ref in list(self.entities):
            other = ref()
            if other is not None and other is not entity and getattr(other, "_executor_event", False):
                return False
        return super().can_execute(entity)


def input_problem(publishers, topic: str, expected_type: str, reliable: bool) -> str | None:
    """The reason no frame can arrive on `topic`, or None when a compatible publisher exists.

    publishers: rclpy TopicEndpointInfo-like items (node_name, node_namespace, topic_type, qos_profile.reliability).
    """
    if not publishers:
        return f"no frames: nothing publishes on {topic}"
    problems = []
    for info in publishers:
        who = f"{info.node_namespace.rstrip('/')}/{info.node_name}"
        if info.topic_type != expected_type:
            problems.append(
                f"{who} publishes {info.topic_type} on {topic}, the node expects {expected_type} "
                "(input.transport raw: Image, compressed: CompressedImage)"
            )
        elif reliable and info.qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT:
            problems.append(
                f"{who} publishes best effort on {topic}, which input.qos reliable cannot receive; "
                "set input.qos sensor_data, or auto (follows the camera)"
            )
        else:
            return None  # this one can deliver: the camera may simply not have started
    return "no frames: " + "; ".join(problems)


def camera_reliability(publishers) -> bool | None:
    """input.qos auto: True (subscribe reliable) when every publisher on the topic is reliable, False (best effort)
    when one is best effort (a reliable reader gets nothing from it; a best-effort one gets every publisher's
    frames), None while nothing publishes."""
    if not publishers:
        return None
    return all(info.qos_profile.reliability == ReliabilityPolicy.RELIABLE for info in publishers)


def lost_frames_problem(lost: int, total: int, topic: str, profile: str) -> str:
    """What /diagnostics and the log say when the middleware reported frames lost before the node saw them.

    profile: the node's FASTDDS_DEFAULT_PROFILES_FILE ("" when none)."""
    if profile:
        fix = (
            f"start the camera's process with FASTDDS_DEFAULT_PROFILES_FILE={profile} as well (the node has it; "
            "over shared memory the camera's side decides)"
        )
    else:
        fix = (
            "the node runs without a Fast DDS profile: launch it with tracker.launch.py (fastdds_profile:=true, the "
            "default) and start the camera's process with FASTDDS_DEFAULT_PROFILES_FILE=<threeam_ros share>/config/"
            "fastdds_large_frames.xml"
        )
    return (
        f"{lost} frame(s) lost on {topic} before the node saw them ({total} so far): best-effort frames too large "
        f"for the middleware's default buffers; {fix}; over UDP also raise net.core.rmem_max; or publish the camera "
        "reliable (input.qos auto follows it). See the README, QoS advice for cameras"
    )


def same_name_problem(names_and_namespaces, name: str, namespace: str) -> str | None:
    """Another node with this node's fully qualified name in the graph: both answer the same services."""
    count = sum(1 for n, ns in names_and_namespaces if n == name and ns == namespace)
    if count < 2:
        return None
    fq = f"{namespace.rstrip('/')}/{name}"
    return (
        f"{count} nodes are named {fq}: they answer the same services and lifecycle requests (each call reaches "
        f"either one) and publish on the same topics; give each its own name or namespace (launch node_name:=... or "
        "namespace:=..., or --ros-args -r __node:=...)"
    )
