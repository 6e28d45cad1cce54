"""The node on a sensor_msgs/CompressedImage topic (input.transport compressed): jpeg and png frames are tracked with
their headers kept; undecodable data is rejected and counted without stopping the node."""

import pytest
import ros_helpers as rh
from sensor_msgs.msg import CompressedImage

pytestmark = pytest.mark.ros


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    log = tmp_path_factory.mktemp("node") / "tracker_node.log"
    params = {
        **rh.TINY,
        "input.transport": "compressed",
        "topics.image": "image/compressed",
        "diagnostics.period": 0.25,
    }
    with rh.running_node(log, params, transport="compressed", image_topic="image/compressed", reliable=True) as pair:
        yield pair


def test_compressed_frames_are_tracked_and_bad_ones_rejected(rig):
    node, client = rig
    for i, fmt in enumerate(["png", "jpeg", "png"]):
        header, labels = client.publish_and_wait(rh.frame(i), fmt)
        assert labels.header == header and (labels.width, labels.height) == (rh.W, rh.H)
    mask = rh.rect_mask(30, 40, 60, 70)
    assert client.call("add_prompt", object_id=2, mask=rh.mask_image(mask)).success
    header, _ = client.publish_and_wait(rh.frame(3), "jpeg")
    assert [o.object_id for o in client.objects_for(header.stamp).objects] == [2]

    bad = [
        CompressedImage(format="jpeg", data=b"\xff\xd8\xff\xe0 this is not a jpeg"),
        CompressedImage(format="png", data=b""),
        CompressedImage(format="tiff", data=b"II*\x00\x08\x00"),
    ]
    for i, msg in enumerate(bad, start=1):
        msg.header.stamp = client.stamp()
        client.publish_raw(msg)
        rh.wait_until(lambda i=i: int(client.diagnostics_totals().get("frames_rejected", 0)) >= i, 10.0, "rejection")
    header, _ = client.publish_and_wait(rh.frame(4), "png")
    assert [o.object_id for o in client.objects_for(header.stamp).objects] == [2]
    assert node.alive() and int(client.diagnostics_totals()["internal_errors"]) == 0
