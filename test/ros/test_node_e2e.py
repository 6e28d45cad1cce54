"""End to end on the real ROS 2 middleware: the tracker node (tiny random-weight streaming SAM 2) in its own process,
this test as the camera and the user: frames -> add_prompt -> label images with the same stamps -> remove -> reset.

Random weights make the model's own masks meaningless, so where a test needs a mask at a known place it prompts with
a mask (SAM 2 returns a mask prompt as the output of its frame); on later frames it checks the node's outputs agree
with each other (label image, per-object masks, boxes, visibility) and carry the input's header.
"""

import numpy as np
import pytest
import ros_helpers as rh
from sensor_msgs.msg import Image

pytestmark = pytest.mark.ros

P = (40, 50)  # the prompt point (x, y)


@pytest.fixture(scope="module")
def tracker(tmp_path_factory):
    log = tmp_path_factory.mktemp("node") / "tracker_node.log"
    with rh.running_node(log, {**rh.TINY, "publish.object_masks": True, "diagnostics.period": 0.5}) as pair:
        yield pair


def check_outputs_agree(client, header, expected_ids):
    """Label image and TrackedObjectArray for one input header: same header, same ids, consistent masks/boxes."""
    labels_msg = client.labels_for(header.stamp)
    objects_msg = client.objects_for(header.stamp)
    assert labels_msg.header == header and objects_msg.header == header
    assert (labels_msg.width, labels_msg.height, labels_msg.encoding) == (rh.W, rh.H, "mono16")
    labels = rh.labels_array(labels_msg)
    assert [o.object_id for o in objects_msg.objects] == sorted(expected_ids)
    assert set(np.unique(labels).tolist()) <= {0, *expected_ids}
    for obj in objects_msg.objects:
        mask = rh.labels_array(obj.mask) > 0  # mono8, 255 = object
        assert obj.mask.header == header and mask.shape == (rh.H, rh.W)
        assert obj.visible == bool(mask.any())
        assert ((labels == obj.object_id) <= mask).all(), "a label pixel lies outside its object's own mask"
        if len(expected_ids) == 1:
            np.testing.assert_array_equal(labels == obj.object_id, mask)
        if obj.visible:
            ys, xs = np.nonzero(mask)
            assert (obj.bbox.x_offset, obj.bbox.y_offset) == (xs.min(), ys.min())
            assert (obj.bbox.width, obj.bbox.height) == (xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
        assert 0.0 <= obj.score <= 1.0
    return labels, objects_msg


def test_node_declares_every_parameter_with_a_description(tracker):
    from rcl_interfaces.srv import DescribeParameters, ListParameters

    from threeam_ros.params import PARAMS

    _, client = tracker
    lister = client.node.create_client(ListParameters, f"{rh.NODE}/list_parameters")
    describer = client.node.create_client(DescribeParameters, f"{rh.NODE}/describe_parameters")
    assert lister.wait_for_service(timeout_sec=20.0) and describer.wait_for_service(timeout_sec=20.0)
    client.types["list_parameters"], client.clients["list_parameters"] = ListParameters, lister
    client.types["describe_parameters"], client.clients["describe_parameters"] = DescribeParameters, describer
    names = set(client.call("list_parameters").result.names) - {"use_sim_time", "start_type_description_service"}
    assert names == {p.name for p in PARAMS}
    described = client.call("describe_parameters", names=sorted(names)).descriptors
    assert all(d.description for d in described)
    by_name = {d.name: d for d in described}  # what `ros2 param describe` shows: ranges and choices too
    assert by_name["tracker.max_objects"].integer_range[0].from_value == 1
    alpha = by_name["publish.overlay_alpha"].floating_point_range[0]
    assert (alpha.from_value, alpha.to_value) == (0.0, 1.0)
    assert "one of: raw, compressed" in by_name["input.transport"].additional_constraints


def test_prompt_before_any_frame_is_refused(tracker):
    _, client = tracker
    resp = client.call("add_prompt", object_id=1, points=[_point(*P)])
    assert not resp.success and "no camera frame" in resp.message
    listed = client.call("list_objects")
    assert listed.success and list(listed.objects) == []


def test_frames_prompt_track_remove_reset(tracker):
    node, client = tracker
    # 1. frames without objects: empty label images with the input's header (stamp and frame_id)
    for i in range(4):
        header, labels_msg = client.publish_and_wait(rh.frame(i))
        assert labels_msg.header == header and not rh.labels_array(labels_msg).any()

    # 2. prompt object 5 with a mask around P on the newest frame; object 7 with a click
    mask = rh.rect_mask(P[0] - 12, P[1] - 10, P[0] + 12, P[1] + 10)
    n_labels = len(client.labels.messages())
    resp = client.call("add_prompt", object_id=5, mask=rh.mask_image(mask))
    assert resp.success, resp.message
    assert "object 5 started" in resp.message and resp.object.object_id == 5 and resp.object.visible
    box = resp.object.bbox
    assert box.x_offset <= P[0] < box.x_offset + box.width and box.y_offset <= P[1] < box.y_offset + box.height
    # the prompted frame is published again with the prompt's result and the same header
    prompted = client.labels_for(header.stamp, after=n_labels)
    labels = rh.labels_array(prompted)
    assert prompted.header == header
    assert labels[P[1], P[0]] == 5 and (labels[P[1] - 5 : P[1] + 6, P[0] - 5 : P[0] + 6] == 5).all()
    assert ((labels == 5) == mask).mean() > 0.98  # SAM 2 resamples a mask prompt to its 64x64 input and back
    resp = client.call("add_prompt", object_id=7, points=[_point(100, 20), _point(90, 30, positive=False)])
    assert resp.success and "object 7 started" in resp.message, resp.message
    resp = client.call("add_prompt", object_id=7, points=[_point(101, 21)], stamp=header.stamp)
    assert resp.success and "object 7 refined" in resp.message, resp.message

    # 3. tracking: every frame's outputs carry its header and both ids
    for i in range(4, 9):
        header, _ = client.publish_and_wait(rh.frame(i))
        check_outputs_agree(client, header, {5, 7})
    listed = client.call("list_objects")
    assert listed.success and [o.object_id for o in listed.objects] == [5, 7]
    overlay = client.overlay.messages()[-1]
    assert (overlay.encoding, overlay.width, overlay.height) == ("rgb8", rh.W, rh.H)

    # 4. remove_object: the id disappears from every output; removing it again is refused
    resp = client.call("remove_object", object_id=7)
    assert resp.success and "object 7 removed" in resp.message, resp.message
    for i in range(9, 12):
        header, _ = client.publish_and_wait(rh.frame(i))
        labels, _ = check_outputs_agree(client, header, {5})
        assert not (labels == 7).any()
    resp = client.call("remove_object", object_id=7)
    assert not resp.success and "cannot remove object 7: it is not tracked" in resp.message
    assert [o.object_id for o in client.call("list_objects").objects] == [5]

    # 5. reset: everything is forgotten; prompts wait for the next frame
    resp = client.call("reset")
    assert resp.success and "forgot 1 object" in resp.message, resp.message
    assert list(client.call("list_objects").objects) == []
    refused = client.call("add_prompt", object_id=5, points=[_point(*P)])
    assert not refused.success and "no camera frame" in refused.message
    header, labels_msg = client.publish_and_wait(rh.frame(12))
    labels, objects_msg = check_outputs_agree(client, header, set())
    assert not labels.any()

    # 6. the diagnostics report what happened
    totals = rh.wait_until(
        lambda: (t := client.diagnostics_totals()) and int(t["frames_processed"]) >= 13 and t, 10.0, "diagnostics"
    )
    assert int(totals["frames_rejected"]) == 0 and int(totals["internal_errors"]) == 0
    assert float(totals["latency_ms.track.mean"]) > 0 and "RANDOM WEIGHTS" in totals["model"]
    assert node.alive()


def test_other_encodings_and_padding_track_the_same(tracker):
    _, client = tracker
    rgb = rh.frame(3)
    client.publish_and_wait(rgb)
    mask = rh.rect_mask(20, 20, 60, 70)
    assert client.call("add_prompt", object_id=3, mask=rh.mask_image(mask)).success
    for encoding in ("bgr8", "rgba8", "bgra8", "mono8"):
        header, labels_msg = client.publish_and_wait(rgb, encoding)
        assert labels_msg.header == header
    # a padded row layout (step > width * 3) is decoded, not rejected
    padded = Image(height=rh.H, width=rh.W, encoding="rgb8", step=rh.W * 3 + 16)
    padded.header.stamp, padded.header.frame_id = client.stamp(), "camera"
    padded.data = np.concatenate([rgb.reshape(rh.H, -1), np.zeros((rh.H, 16), np.uint8)], axis=1).tobytes()
    client.publish_raw(padded)
    client.labels_for(padded.header.stamp)
    assert int(client.diagnostics_totals().get("frames_rejected", 0)) == 0
    assert client.call("reset").success


def _point(x, y, positive=True):
    from threeam_interfaces.msg import PromptPoint

    return PromptPoint(x=float(x), y=float(y), positive=positive)


def test_publish_options_change_at_run_time_and_mono8_guards_ids(tracker):
    from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
    from rcl_interfaces.srv import SetParameters

    _, client = tracker
    setter = client.node.create_client(SetParameters, f"{rh.NODE}/set_parameters")
    assert setter.wait_for_service(timeout_sec=20.0)
    client.types["set_parameters"], client.clients["set_parameters"] = SetParameters, setter

    def set_param(name, **value):
        kind = ParameterType.PARAMETER_STRING if "string_value" in value else ParameterType.PARAMETER_BOOL
        param = Parameter(name=name, value=ParameterValue(type=kind, **value))
        return client.call("set_parameters", parameters=[param]).results[0]

    client.publish_and_wait(rh.frame(0))
    assert client.call("add_prompt", object_id=300, mask=rh.mask_image(rh.rect_mask(10, 10, 40, 40))).success
    refused = set_param("publish.label_encoding", string_value="mono8")
    assert not refused.successful and "300" in refused.reason  # id 300 does not fit mono8
    assert not set_param("publish.label_encoding", string_value="mono32").successful
    assert not set_param("model.variant", string_value="large").successful  # read-only: needs a restart
    assert client.call("remove_object", object_id=300).success
    assert set_param("publish.label_encoding", string_value="mono8").successful
    resp = client.call("add_prompt", object_id=300, points=[_point(*P)])
    assert not resp.success and "mono8" in resp.message
    assert client.call("add_prompt", object_id=200, mask=rh.mask_image(rh.rect_mask(10, 10, 40, 40))).success
    assert set_param("publish.overlay", bool_value=False).successful
    n_overlay = len(client.overlay.messages())
    header, labels_msg = client.publish_and_wait(rh.frame(1))
    assert labels_msg.encoding == "mono8" and labels_msg.step == rh.W
    assert set(np.unique(rh.labels_array(labels_msg))) <= {0, 200}
    client.publish_and_wait(rh.frame(2))
    assert len(client.overlay.messages()) == n_overlay  # no overlay while publish.overlay is false
    assert set_param("publish.label_encoding", string_value="mono16").successful
    assert set_param("publish.overlay", bool_value=True).successful
    assert client.call("reset").success
