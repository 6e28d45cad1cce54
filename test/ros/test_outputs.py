"""The node's output messages built from tracker results, without DDS: detections, label info, camera_info, the
colourised labels and the lossless compressed labels."""

import cv2
import numpy as np
from sensor_msgs.msg import CameraInfo
from std_msgs.msg import Header

from threeam_model import viz
from threeam_model.interface import ObjectResult
from threeam_ros import conversions, outputs


def _result(obj_id: int, box, shape=(40, 60), score=0.75) -> ObjectResult:
    logits = np.full(shape, -5.0, np.float32)
    if box is not None:
        x0, y0, x1, y1 = box
        logits[y0 : y1 + 1, x0 : x1 + 1] = 5.0
    return ObjectResult.from_logits(obj_id, logits, score)


def test_detections_have_the_object_ids_boxes_and_scores_and_skip_invisible_objects():
    header = Header(frame_id="cam")
    msg = outputs.detections([_result(3, (10, 5, 19, 14)), _result(9, None)], header)
    assert msg.header.frame_id == "cam" and len(msg.detections) == 1
    det = msg.detections[0]
    assert det.id == "3" and det.results[0].hypothesis.class_id == "3"
    assert det.results[0].hypothesis.score == 0.75
    assert (det.bbox.size_x, det.bbox.size_y) == (10.0, 10.0)
    assert (det.bbox.center.position.x, det.bbox.center.position.y) == (14.5, 9.5)


def test_label_info_maps_background_and_every_object():
    info = outputs.label_info([4, 12], Header())
    classes = [(c.class_id, c.class_name) for c in info.class_map]
    assert classes == [(0, "background"), (4, "object 4"), (12, "object 12")]


def test_camera_info_is_the_cameras_when_sizes_match_else_nominal():
    header = Header(frame_id="cam")
    nominal = outputs.camera_info_for(None, header, (48, 64))
    assert (nominal.width, nominal.height) == (64, 48) and nominal.k[0] == nominal.k[4] == 64.0
    assert (nominal.k[2], nominal.k[5]) == (31.5, 23.5) and nominal.header.frame_id == "cam"
    camera = CameraInfo(width=64, height=48, distortion_model="equidistant", d=[0.1, 0.2, 0.3, 0.4])
    camera.k = [50.0, 0.0, 30.0, 0.0, 51.0, 20.0, 0.0, 0.0, 1.0]
    copied = outputs.camera_info_for(camera, header, (48, 64))
    assert list(copied.k) == list(camera.k) and copied.distortion_model == "equidistant"
    other_size = outputs.camera_info_for(camera, header, (96, 128))
    assert other_size.k[0] == 128.0 and other_size.width == 128


def test_color_labels_use_the_overlay_colours():
    labels = np.zeros((5, 6), np.uint16)
    labels[1:3, 1:4] = 7
    labels[4, :] = 300
    rgb = viz.color_labels(labels)
    assert rgb.shape == (5, 6, 3) and rgb.dtype == np.uint8 and not rgb[labels == 0].any()
    assert (rgb[labels == 7] == conversions.object_color(7)).all()
    assert (rgb[labels == 300] == conversions.object_color(300)).all()


def test_compressed_labels_are_lossless_16_bit():
    labels = np.random.default_rng(0).integers(0, 65535, (17, 23)).astype(np.uint16)
    msg = outputs.labels_to_png(conversions.labels_to_image(labels, Header(), "mono16"))
    assert msg.format == "mono16; png compressed"
    assert np.array_equal(cv2.imdecode(np.frombuffer(msg.data, np.uint8), cv2.IMREAD_UNCHANGED), labels)
