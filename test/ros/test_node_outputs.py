"""The node's vision_msgs and viewer outputs on the real middleware: Detection2DArray agrees with the label image on
every frame, LabelInfo is latched for a late subscriber and follows the set of objects, the overlay's camera_info
carries the camera's calibration (a nominal one before it arrives), the colourised labels and the compressed
outputs decode to what the raw topics carry."""

import cv2
import numpy as np
import pytest
import ros_helpers as rh
from rclpy.qos import DurabilityPolicy, QoSProfile
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from vision_msgs.msg import Detection2DArray, LabelInfo

from threeam_ros.conversions import object_color

pytestmark = pytest.mark.ros


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    log = tmp_path_factory.mktemp("node") / "tracker_node.log"
    params = {**rh.TINY, "publish.compressed": True, "publish.labels_color": True, "diagnostics.period": 0.5}
    with rh.running_node(log, params, reliable=True) as (node, client):
        subs = {}
        for name, msg_type, topic in (
            ("detections", Detection2DArray, "detections"),
            ("camera_info", CameraInfo, "overlay/camera_info"),
            ("color", Image, "labels_color"),
            ("labels_png", CompressedImage, "labels/compressed"),
            ("overlay_jpeg", CompressedImage, "overlay/compressed"),
        ):
            subs[name] = rh.Received()
            client.node.create_subscription(msg_type, f"{rh.NODE}/{topic}", subs[name].add, 50)
        rh.wait_until(lambda: client.node.count_publishers(f"{rh.NODE}/detections") >= 1, 20, "detections pub")
        yield node, client, subs


def for_stamp(store: rh.Received, stamp, what: str):
    return rh.wait_until(
        lambda: next((m for m in store.messages() if m.header.stamp == stamp), None), 20, f"{what} for the frame"
    )


def test_detections_agree_with_labels_and_objects_on_every_frame(rig):
    _, client, subs = rig
    client.publish_and_wait(rh.frame(0))
    for obj_id, mask in ((2, rh.rect_mask(10, 10, 50, 40)), (5, rh.rect_mask(70, 50, 120, 90))):
        assert client.call("add_prompt", object_id=obj_id, mask=rh.mask_image(mask)).success
    seen = set()
    for i in range(1, 9):
        header, labels_msg = client.publish_and_wait(rh.frame(i))
        labels = rh.labels_array(labels_msg)
        dets = for_stamp(subs["detections"], header.stamp, "detections")
        objects = client.objects_for(header.stamp)
        assert dets.header == header
        boxes = {o.object_id: o.bbox for o in objects.objects if o.visible}
        by_id = {int(d.id): d for d in dets.detections}
        assert set(by_id) == set(boxes), "a detection for every visible object, none for the others"
        for obj_id, det in by_id.items():
            assert det.header == header and len(det.results) == 1
            assert det.results[0].hypothesis.class_id == str(obj_id)
            score = next(o.score for o in objects.objects if o.object_id == obj_id)
            assert det.results[0].hypothesis.score == pytest.approx(score)
            roi = boxes[obj_id]
            assert det.bbox.size_x == roi.width and det.bbox.size_y == roi.height
            assert det.bbox.center.position.x == roi.x_offset + (roi.width - 1) / 2
            assert det.bbox.center.position.y == roi.y_offset + (roi.height - 1) / 2
            ys, xs = np.nonzero(labels == obj_id)
            if xs.size:  # the label image gives a pixel to one object: its pixels lie inside that object's box
                assert xs.min() >= roi.x_offset and xs.max() < roi.x_offset + roi.width
                assert ys.min() >= roi.y_offset and ys.max() < roi.y_offset + roi.height
        assert set(np.unique(labels)) - {0} <= set(by_id)
        seen |= set(by_id)
    assert seen, "no object was visible on any frame: nothing was compared"


def test_label_info_is_latched_for_a_late_subscriber_and_follows_the_objects(rig):
    _, client, _ = rig
    latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    assert client.call("add_prompt", object_id=7, mask=rh.mask_image(rh.rect_mask(20, 60, 40, 90))).success
    client.publish_and_wait(rh.frame(10))
    late = rh.Received()
    client.node.create_subscription(LabelInfo, f"{rh.NODE}/label_info", late.add, latched)

    def classes():
        msgs = late.messages()
        return {c.class_id: c.class_name for c in msgs[-1].class_map} if msgs else None

    got = rh.wait_until(lambda: (c := classes()) and 7 in c and c, 20, "the latched LabelInfo")
    assert got[0] == "background" and {2, 5, 7} <= set(got)
    assert client.call("remove_object", object_id=7).success
    client.publish_and_wait(rh.frame(11))
    rh.wait_until(lambda: (c := classes()) is not None and 7 not in c, 20, "a LabelInfo without the removed object")


def test_overlay_camera_info_is_the_cameras_with_the_overlays_header(rig):
    _, client, subs = rig
    header, _ = client.publish_and_wait(rh.frame(20))
    nominal = for_stamp(subs["camera_info"], header.stamp, "camera_info")
    assert (nominal.width, nominal.height) == (rh.W, rh.H) and nominal.k[0] == max(rh.W, rh.H)
    info_pub = client.node.create_publisher(CameraInfo, "camera_info", 10)
    calib = CameraInfo(width=rh.W, height=rh.H, distortion_model="plumb_bob", d=[0.1, -0.01, 0.0, 0.0, 0.0])
    calib.k = [100.0, 0.0, 63.0, 0.0, 101.0, 47.0, 0.0, 0.0, 1.0]
    rh.wait_until(lambda: info_pub.get_subscription_count() >= 1, 20, "the node's camera_info subscription")

    def relayed():
        info_pub.publish(calib)
        h, _ = client.publish_and_wait(rh.frame(21))
        msg = for_stamp(subs["camera_info"], h.stamp, "camera_info")
        return msg if list(msg.k) == list(calib.k) else None

    msg = rh.wait_until(relayed, 20, "the camera's calibration beside the overlay", poll=0.2)
    overlay = next(m for m in client.overlay.messages() if m.header.stamp == msg.header.stamp)
    assert msg.header == overlay.header and list(msg.d) == list(calib.d)


def test_color_labels_and_compressed_outputs_decode_to_the_raw_outputs(rig):
    _, client, subs = rig
    header, labels_msg = client.publish_and_wait(rh.frame(30))
    labels = rh.labels_array(labels_msg)
    color = for_stamp(subs["color"], header.stamp, "labels_color")
    rgb = np.frombuffer(color.data, np.uint8).reshape(color.height, color.width, 3)
    assert color.encoding == "rgb8" and not rgb[labels == 0].any()
    for obj_id in set(np.unique(labels)) - {0}:
        assert (rgb[labels == obj_id] == object_color(int(obj_id))).all()
    png = for_stamp(subs["labels_png"], header.stamp, "labels/compressed")
    assert png.format == "mono16; png compressed"
    decoded = cv2.imdecode(np.frombuffer(png.data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert decoded.dtype == np.uint16 and np.array_equal(decoded, labels)
    jpeg = for_stamp(subs["overlay_jpeg"], header.stamp, "overlay/compressed")
    assert jpeg.format == "rgb8; jpeg compressed bgr8"
    overlay = cv2.imdecode(np.frombuffer(jpeg.data, np.uint8), cv2.IMREAD_COLOR)
    assert overlay.shape == (rh.H, rh.W, 3)
