"""What the node tells from the ROS graph about mistakes in the setup around it (issue 17): a second node with the
same name (D5: both answer the same services), and two cameras of different sizes on one topic (D8: the tracker
resets at every switch; the warning is throttled and names the publishers)."""

import threading

import pytest
import ros_helpers as rh
from diagnostic_msgs.msg import DiagnosticStatus

from threeam_ros.input_check import CameraCallbackGroup, same_name_problem


def test_same_name_is_found_in_the_graph_names():
    assert same_name_problem([("threeam_tracker", "/")], "threeam_tracker", "/") is None
    assert same_name_problem([("threeam_tracker", "/"), ("threeam_tracker", "/robot")], "threeam_tracker", "/") is None
    text = same_name_problem([("threeam_tracker", "/robot")] * 2, "threeam_tracker", "/robot")
    assert text.startswith("2 nodes are named /robot/threeam_tracker") and "node_name:=" in text


class Entity:  # what the executor marks on a subscription or waitable it has handed out
    _executor_event = False


def test_camera_group_waits_on_nothing_while_one_of_its_entities_is_handed_out():
    group = CameraCallbackGroup()
    subscription, lost_event = Entity(), Entity()
    group.add_entity(subscription)
    group.add_entity(lost_event)
    assert group.can_execute(subscription) and group.can_execute(lost_event)
    subscription._executor_event = True  # a frame handed to a worker thread, not yet taken
    assert not group.can_execute(lost_event)
    subscription._executor_event = False
    assert group.beginning_execution(lost_event) and not group.can_execute(subscription)  # mutually exclusive


def warns(client, needle: str):
    for msg in client.diagnostics.messages():
        status = msg.status[0] if msg.status else None
        if status is not None and status.level == DiagnosticStatus.WARN and needle in status.message:
            return status.message
    return None


@pytest.mark.ros
def test_a_second_node_with_the_same_name_is_warned_about(tmp_path):
    params = {**rh.TINY, "diagnostics.period": 0.25}
    needle = "2 nodes are named /threeam_tracker"
    with rh.running_node(tmp_path / "first.log", params, subscribe=()) as (first, client):
        assert not warns(client, "nodes are named")
        second = rh.NodeProcess(tmp_path / "second.log", params)
        try:
            message = rh.wait_until(lambda: warns(client, needle), 60.0, "a diagnostics warning about the name")
            assert "answer the same services" in message and "node_name:=" in message
            rh.wait_until(lambda: needle in first.log() and needle in second.log(), 30.0, "the warning in both logs")
        finally:
            assert second.stop() == 0, second.log()[-3000:]


@pytest.mark.ros
def test_two_cameras_of_different_sizes_on_one_topic(tmp_path):
    import rclpy
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header

    from threeam_ros import conversions

    params = {**rh.TINY, "diagnostics.period": 0.25, "publish.overlay": False}
    with rh.running_node(tmp_path / "node.log", params, subscribe=("labels",)) as (node, client):
        other = rclpy.create_node("second_camera", context=client.context)
        small = other.create_publisher(Image, "image", qos_profile_sensor_data)
        rh.wait_until(lambda: small.get_subscription_count() >= 1, 10.0, "the second camera's match")
        camera = rh.Camera(client, rate_hz=10.0)  # 128x96
        stop = threading.Event()

        def second_camera():  # 96x64, between the first camera's frames
            i = 0
            while not stop.wait(0.1):
                header = Header(stamp=client.stamp(), frame_id="camera")
                small.publish(conversions.rgb_to_image(rh.frame(i, 96, 64), header))
                i += 1

        thread = threading.Thread(target=second_camera)
        thread.start()
        try:
            rh.wait_until(lambda: int(client.diagnostics_totals().get("size_changes", 0)) >= 12, 30.0, "size changes")
        finally:
            stop.set()
            thread.join(5.0)
            camera.stop()
        changes = int(client.diagnostics_totals()["size_changes"])
        log = node.log()
        warnings = [line for line in log.splitlines() if "image size changed" in line]
        # throttled: one line per size pair per 10 s, not one per frame
        assert 1 <= len(warnings) <= 4 < changes, (len(warnings), changes)
        assert "2 publishers on /image (/second_camera, /threeam_test_client)" in warnings[0]
        assert "give each camera its own topic" in warnings[0]
        message = warns(client, "2 publishers on /image")
        assert message and "image size changed" in message  # /diagnostics says it too
        other.destroy_node()
