"""The real ROS 2 middleware across two processes: a sensor_msgs/Image topic and a threeam_interfaces service.

The peer process publishes images and serves threeam_interfaces/srv/RemoveObject; this process subscribes and calls.
Both run inside the private network namespace that scripts/isolated.sh sets up (checked first).
"""

import subprocess
import sys
import textwrap
import time

import pytest
import ros_helpers as rh

pytestmark = pytest.mark.ros

PEER = textwrap.dedent(
    """
    import rclpy
    from rclpy.node import Node
    from sensor_msgs.msg import Image
    from threeam_interfaces.srv import RemoveObject

    class Peer(Node):
        def __init__(self):
            super().__init__("middleware_peer")
            self.pub = self.create_publisher(Image, "peer/image", 10)
            self.create_service(RemoveObject, "peer/remove_object", self.on_remove)
            self.count = 0
            self.create_timer(0.05, self.publish)

        def publish(self):
            msg = Image(height=2, width=3, encoding="rgb8", step=9, data=bytes(range(18)))
            msg.header.frame_id = "camera"
            msg.header.stamp.sec = self.count
            self.count += 1
            self.pub.publish(msg)

        def on_remove(self, request, response):
            response.success = request.object_id == 7
            response.message = f"peer saw object {request.object_id}"
            return response

    rclpy.init()
    rclpy.spin(Peer())
    """
)


def test_image_topic_and_service_across_processes():
    rh.require_isolation()
    import rclpy
    from sensor_msgs.msg import Image

    from threeam_interfaces.srv import RemoveObject

    peer = subprocess.Popen([sys.executable, "-c", PEER], stderr=subprocess.PIPE, text=True)
    rclpy.init()
    node = rclpy.create_node("middleware_test")
    try:
        received = []
        node.create_subscription(Image, "peer/image", received.append, 10)
        client = node.create_client(RemoveObject, "peer/remove_object")
        assert client.wait_for_service(timeout_sec=20.0), "the peer's service never appeared"

        deadline = time.monotonic() + 20.0
        while len(received) < 3 and time.monotonic() < deadline:
            rclpy.spin_once(node, timeout_sec=0.1)
        assert len(received) >= 3, "no images arrived from the peer process"
        img = received[-1]
        assert (img.height, img.width, img.encoding, img.header.frame_id) == (2, 3, "rgb8", "camera")
        assert bytes(img.data) == bytes(range(18))
        assert received[-1].header.stamp.sec > received[0].header.stamp.sec

        for object_id, expected in ((7, True), (3, False)):
            future = client.call_async(RemoveObject.Request(object_id=object_id))
            rclpy.spin_until_future_complete(node, future, timeout_sec=20.0)
            assert future.done(), "the service call timed out"
            assert future.result().success is expected
            assert future.result().message == f"peer saw object {object_id}"
        assert peer.poll() is None, peer.stderr.read()
    finally:
        node.destroy_node()
        rclpy.shutdown()
        peer.terminate()
        peer.wait(timeout=10)
