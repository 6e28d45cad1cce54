"""A camera topic that delivers nothing is explained in the diagnostics: no publisher, another message type, or a
best-effort camera under input.qos reliable (the node has no default QoS event callbacks on its image subscription; see
threeam_ros/input_check.py)."""

import types

import pytest
import ros_helpers as rh
from diagnostic_msgs.msg import DiagnosticStatus
from rclpy.qos import ReliabilityPolicy

from threeam_ros.input_check import input_problem

IMAGE = "sensor_msgs/msg/Image"


def publisher(topic_type=IMAGE, reliability=ReliabilityPolicy.RELIABLE, name="camera"):
    return types.SimpleNamespace(
        node_name=name,
        node_namespace="/",
        topic_type=topic_type,
        qos_profile=types.SimpleNamespace(reliability=reliability),
    )


def test_each_reason_is_named_and_a_compatible_publisher_is_no_problem():
    assert input_problem([], "/image", IMAGE, reliable=False) == "no frames: nothing publishes on /image"
    wrong_type = input_problem([publisher("sensor_msgs/msg/CompressedImage")], "/image", IMAGE, reliable=False)
    assert "/camera publishes sensor_msgs/msg/CompressedImage" in wrong_type and "input.transport" in wrong_type
    best_effort = publisher(reliability=ReliabilityPolicy.BEST_EFFORT)
    text = input_problem([best_effort], "/image", IMAGE, reliable=True)
    assert "best effort" in text and "input.qos sensor_data" in text
    assert input_problem([best_effort], "/image", IMAGE, reliable=False) is None
    assert input_problem([best_effort, publisher(name="other")], "/image", IMAGE, reliable=True) is None
    assert input_problem([publisher()], "/image", IMAGE, reliable=True) is None


@pytest.mark.ros
def test_best_effort_camera_under_reliable_input_is_reported(tmp_path):
    params = {**rh.TINY, "input.qos": "reliable", "diagnostics.period": 0.2}
    # the test client publishes best effort, as cameras do
    log = tmp_path / "tracker_node.log"
    with rh.running_node(log, params, match_image=False, subscribe=("labels",)) as (node, client):
        client.publish(rh.frame(0))

        def warned():
            for msg in client.diagnostics.messages():
                status = msg.status[0]
                if status.level == DiagnosticStatus.WARN and "best effort" in status.message:
                    return status.message
            return None

        message = rh.wait_until(warned, 20.0, "a diagnostics warning about the best-effort camera")
        assert "/threeam_test_client publishes best effort on /image" in message
        assert "input.qos sensor_data" in message
        assert not client.labels.messages()  # nothing could arrive
        assert "input.qos sensor_data" in node.log()  # and the log says it too
