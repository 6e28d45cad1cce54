"""Why a subscribed camera topic delivers nothing, from the ROS graph: no publisher, another message type, or a
best-effort publisher under a reliable subscription.

The node checks this from its diagnostics timer while no frame arrives, instead of through rclpy's QoS event
callbacks on the image subscription: with those attached (rclpy adds default ones), the executor thread spun under a
fast best-effort camera (Fast DDS) and starved the inference thread (measured: 300 Hz camera, 34 to 178 of 1,500
frames tracked with the callbacks, 216 to 256 without).
"""

from __future__ import annotations

from rclpy.qos import ReliabilityPolicy


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
                "set input.qos sensor_data"
            )
        else:
            return None  # this one can deliver: the camera may simply not have started
    return "no frames: " + "; ".join(problems)
