"""Bad input never kills the tracker node: malformed frames, a size change mid-stream, every kind of bad prompt, and
300+ random service requests (hypothesis), while a camera keeps streaming. An anchor object prompted at the start
must still be tracked at the end, and every answer must be a clear refusal or a success the state model predicts.
"""

import collections
import math

import pytest
import ros_helpers as rh
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from sensor_msgs.msg import Image

from threeam_interfaces.msg import PromptPoint
from threeam_interfaces.srv import AddPrompt, ListObjects, RemoveObject

pytestmark = pytest.mark.ros

ANCHOR = 4242
MAX_OBJECTS = 6
A = (40, 50)  # anchor prompt point (x, y)


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    log = tmp_path_factory.mktemp("node") / "tracker_node.log"
    params = {**rh.TINY, "input.qos": "reliable", "tracker.max_objects": MAX_OBJECTS, "diagnostics.period": 0.25}
    with rh.running_node(log, params, reliable=True) as (node, client):
        client.publish_and_wait(rh.frame(0))
        camera = rh.Camera(client, rate_hz=10.0)
        try:
            prompt_anchor(client)
            yield node, client, camera
        finally:
            camera.stop()


def prompt_anchor(client):
    mask = rh.rect_mask(A[0] - 10, A[1] - 8, A[0] + 10, A[1] + 8)
    resp = client.call("add_prompt", object_id=ANCHOR, mask=rh.mask_image(mask))
    assert resp.success, resp.message


def assert_anchor_tracked(node, client):
    """A frame published from now on comes back with the anchor among its objects, from a live node."""
    assert node.alive(), node.log()[-3000:]
    n = len(client.camera_headers())

    def newer_objects():
        stamps = {(h.stamp.sec, h.stamp.nanosec) for h in client.camera_headers()[n:]}
        # any newer frame will do: the node skips frames that a newer one overtook
        return next(
            (m for m in client.objects.messages() if (m.header.stamp.sec, m.header.stamp.nanosec) in stamps), None
        )

    objects = rh.wait_until(newer_objects, 20.0, "objects of a newer camera frame")
    assert ANCHOR in [o.object_id for o in objects.objects]
    assert client.labels_for(objects.header.stamp).header == objects.header


def diag(client, key):
    return int(client.diagnostics_totals().get(key, 0))


# --------------------------------------------------------------------------------------------------- frames


def _img(h, w, encoding, step, data):
    msg = Image(height=h, width=w, encoding=encoding, step=step)
    msg.data = data
    return msg


BAD_FRAMES = {
    "unknown encoding": _img(rh.H, rh.W, "yuv422", rh.W * 2, bytes(rh.H * rh.W * 2)),
    "depth encoding": _img(rh.H, rh.W, "32FC1", rh.W * 4, bytes(rh.H * rh.W * 4)),
    "empty encoding": _img(rh.H, rh.W, "", rh.W * 3, bytes(rh.H * rh.W * 3)),
    "zero size": _img(0, 0, "rgb8", 0, b""),
    "zero height": _img(0, rh.W, "rgb8", rh.W * 3, b""),
    "truncated": _img(rh.H, rh.W, "rgb8", rh.W * 3, bytes(rh.H * rh.W * 3 // 2)),
    "no data": _img(rh.H, rh.W, "bgr8", rh.W * 3, b""),
    "step too small": _img(rh.H, rh.W, "rgb8", rh.W, bytes(rh.H * rh.W * 3)),
    "absurd size": _img(100000, 100000, "mono8", 100000, bytes(1000)),
}


def test_malformed_frames_are_rejected_counted_and_survived(rig):
    node, client, camera = rig
    camera.pause()
    client.labels_for(client.camera_headers()[-1].stamp)  # the node has nothing left to do
    before = diag(client, "frames_rejected")
    for i, (case, msg) in enumerate(sorted(BAD_FRAMES.items()), start=1):
        msg.header.stamp, msg.header.frame_id = client.stamp(), "camera"
        client.publish_raw(msg)
        # reliable QoS, and the node is idle: each bad frame reaches the decoder and is counted
        rh.wait_until(lambda i=i: diag(client, "frames_rejected") >= before + i, 10.0, f"rejection of {case!r}")
        assert node.alive(), f"{case}: the node died\n{node.log()[-3000:]}"
    assert diag(client, "frames_rejected") == before + len(BAD_FRAMES)
    assert "frame rejected" in node.log()
    camera.resume()
    assert_anchor_tracked(node, client)
    assert diag(client, "internal_errors") == 0


def test_size_change_mid_stream_resets_with_a_warning(rig):
    node, client, camera = rig
    camera.size = (96, 64)
    header = rh.wait_until(
        lambda: next((h for h in client.camera_headers()[-3:] if _is_small(client, h)), None), 10.0, "a small frame"
    )
    labels = client.labels_for(header.stamp)
    assert (labels.width, labels.height) == (96, 64)
    assert "image size changed from 128x96 to 96x64" in node.log()
    listed = client.call("list_objects")
    assert listed.success and list(listed.objects) == []  # memory and objects were reset
    resp = client.call("add_prompt", object_id=1, points=[PromptPoint(x=90.0, y=60.0)])
    assert resp.success, resp.message  # prompts now use the new size
    camera.size = (rh.W, rh.H)
    rh.wait_until(lambda: "image size changed from 96x64 to 128x96" in node.log(), 10.0, "the second size change")
    rh.wait_until(lambda: client.call("list_objects").objects == [] or None, 5.0, "the reset after the size change")
    rh.wait_until(lambda: _newest_labels_size(client) == (rh.W, rh.H), 10.0, "full-size labels")
    prompt_anchor(client)
    assert_anchor_tracked(node, client)


def _is_small(client, header):
    msg = next((m for m in client.labels.messages() if m.header.stamp == header.stamp), None)
    return msg is not None and msg.width == 96


def _newest_labels_size(client):
    msgs = client.labels.messages()
    return (msgs[-1].width, msgs[-1].height) if msgs else None


# --------------------------------------------------------------------------------------------------- prompts


def _pt(x, y, positive=True):
    return PromptPoint(x=float(x), y=float(y), positive=positive)


def _mask(h, w, encoding="mono8", fill=255, data=None):
    msg = Image(height=h, width=w, encoding=encoding, step=w * (3 if encoding == "rgb8" else 1))
    msg.data = data if data is not None else bytes([fill]) * (msg.step * h)
    return msg


BAD_PROMPTS = {
    "point outside": (dict(object_id=9, points=[_pt(500, 10)]), "outside the 128x96 image"),
    "negative point": (dict(object_id=9, points=[_pt(-1, 5)]), "outside"),
    "point on the edge": (dict(object_id=9, points=[_pt(rh.W, 5)]), "outside"),
    "NaN point": (dict(object_id=9, points=[_pt(math.nan, 5)]), "NaN"),
    "infinite point": (dict(object_id=9, points=[_pt(3, math.inf)]), "infinite"),
    "no prompt at all": (dict(object_id=9), "at least one of"),
    "box of 3 numbers": (dict(object_id=9, box=[1.0, 2.0, 3.0]), "box must be"),
    "inverted box": (dict(object_id=9, box=[50.0, 10.0, 20.0, 40.0]), "inverted"),
    "box outside": (dict(object_id=9, box=[200.0, 10.0, 300.0, 40.0]), "outside"),
    "NaN box": (dict(object_id=9, box=[1.0, math.nan, 20.0, 40.0]), "NaN"),
    "empty mask": (dict(object_id=9, mask=_mask(rh.H, rh.W, fill=0)), "mask is empty"),
    "mis-sized mask": (dict(object_id=9, mask=_mask(10, 10)), "mask must be (H, W) = (96, 128)"),
    "colour mask": (dict(object_id=9, mask=_mask(rh.H, rh.W, "rgb8")), "mono8 or 8UC1"),
    "truncated mask": (dict(object_id=9, mask=_mask(rh.H, rh.W, data=bytes(100))), "truncated"),
    "zero-size mask with data": (dict(object_id=9, mask=_mask(0, 0, data=b"\x01")), "empty"),
    "mask and points": (
        dict(object_id=9, mask=_mask(rh.H, rh.W), points=[_pt(3, 3)]),
        "cannot be combined",
    ),
    "object id 0": (dict(object_id=0, points=[_pt(3, 3)]), "1..65535"),
    # the service's int64 field carries ids a uint16 would silently wrap (70000 -> 4464) or refuse in the client
    "object id 70000": (dict(object_id=70000, points=[_pt(3, 3)]), "1..65535 (0 is background), got 70000"),
    "object id -1": (dict(object_id=-1, points=[_pt(3, 3)]), "1..65535 (0 is background), got -1"),
    "stale stamp": (dict(object_id=9, points=[_pt(3, 3)], stamp={"sec": 1, "nanosec": 5}), "not in memory"),
}


@pytest.mark.parametrize("case", sorted(BAD_PROMPTS))
def test_bad_prompts_are_refused_with_the_reason(rig, case):
    node, client, _ = rig
    fields, needle = BAD_PROMPTS[case]
    fields = dict(fields)
    if "stamp" in fields:
        from builtin_interfaces.msg import Time

        fields["stamp"] = Time(**fields["stamp"])
    resp = client.call("add_prompt", **fields)
    assert not resp.success and needle in resp.message, resp.message
    tracked = [o.object_id for o in client.call("list_objects").objects]
    assert 9 not in tracked and 70000 % 65536 not in tracked  # no id wrapped onto another


def test_bad_object_requests_are_refused(rig):
    node, client, _ = rig
    cases = [(0, "1..65535"), (77, "cannot remove object 77: it is not tracked"), (65535, "not tracked")]
    cases += [
        (70000, "1..65535 (0 is background), got 70000"),
        (-1, "1..65535 (0 is background), got -1"),
    ]  # int64 on the wire
    for obj_id, needle in cases:
        resp = client.call("remove_object", object_id=obj_id)
        assert not resp.success and needle in resp.message, resp.message
    added = []
    for obj_id in range(1, MAX_OBJECTS + 2):
        if len(client.call("list_objects").objects) >= MAX_OBJECTS:
            resp = client.call("add_prompt", object_id=obj_id, points=[_pt(5, 5)])
            assert not resp.success and "max_objects" in resp.message, resp.message
            break
        assert client.call("add_prompt", object_id=obj_id, points=[_pt(5 + obj_id, 5)]).success
        added.append(obj_id)
    for obj_id in added:
        assert client.call("remove_object", object_id=obj_id).success
    assert [o.object_id for o in client.call("list_objects").objects] == [ANCHOR]
    assert_anchor_tracked(node, client)


# --------------------------------------------------------------------------------------------------- random


# Valid parts, and defects that each make a request invalid; hypothesis composes them.
coord_x = st.floats(0.0, rh.W - 0.01)
coord_y = st.floats(0.0, rh.H - 0.01)
valid_points = st.lists(st.builds(_pt, coord_x, coord_y, st.booleans()), min_size=1, max_size=4)


@st.composite
def valid_box(draw):
    x0, y0 = draw(st.floats(-20.0, rh.W - 2.0)), draw(st.floats(-20.0, rh.H - 2.0))
    return [x0, y0, draw(st.floats(max(x0, 0.0) + 1.0, rh.W + 20.0)), draw(st.floats(max(y0, 0.0) + 1.0, rh.H + 20.0))]


@st.composite
def valid_mask(draw):
    x0, y0 = draw(st.integers(0, rh.W - 1)), draw(st.integers(0, rh.H - 1))
    x1, y1 = draw(st.integers(x0 + 1, rh.W)), draw(st.integers(y0 + 1, rh.H))
    return rh.mask_image(rh.rect_mask(x0, y0, x1, y1))


random_id = st.integers(0, 65535).filter(lambda i: i != ANCHOR)
small_id = st.integers(1, 12)  # often hits tracked ids: refinements and removals succeed too
mostly_small_id = st.integers(0, 3).flatmap(lambda k: random_id if k == 0 else small_id)


@st.composite
def labelled_add_prompt(draw):
    """(request, defect or None): a valid prompt, or one with exactly one defect."""
    kind = draw(st.sampled_from(["points", "box", "box+points", "mask"]))
    req = AddPrompt.Request(object_id=draw(mostly_small_id.filter(bool)))
    if "points" in kind:
        req.points = draw(valid_points)
    if "box" in kind:
        req.box = draw(valid_box())
    if kind == "mask":
        req.mask = draw(valid_mask())
    defect = draw(
        st.sampled_from(
            [None] * 8
            + ["id0", "nan", "outside", "box_len", "box_inverted", "box_outside", "mask_size"]
            + ["mask_empty", "mask_encoding", "mask_truncated", "mask_and_points", "nothing", "stamp"]
        )
    )
    if defect == "id0":
        req.object_id = 0
    elif defect == "nan":
        bad = draw(st.sampled_from([math.nan, math.inf, -math.inf]))
        req.points = list(req.points) + [_pt(bad, 3.0)] if draw(st.booleans()) else [_pt(3.0, bad)]
        req.mask = Image()
    elif defect == "outside":
        x = draw(st.one_of(st.floats(rh.W, 1e6), st.floats(-1e6, -0.01)))
        req.points = [_pt(x, 5.0)]
        req.mask = Image()
    elif defect == "box_len":
        req.box = draw(st.lists(st.floats(0.0, 50.0), min_size=1, max_size=7).filter(lambda b: len(b) != 4))
        req.mask = Image()
    elif defect == "box_inverted":
        x0 = draw(st.floats(1.0, rh.W - 1.0))
        req.box = [x0, 5.0, draw(st.floats(0.0, x0)), 50.0]
        req.mask = Image()
    elif defect == "box_outside":
        x0 = draw(st.floats(rh.W, 1e4))
        req.box = [x0, 5.0, x0 + 10.0, 50.0]
        req.mask = Image()
    elif defect == "mask_size":
        h, w = draw(st.tuples(st.integers(1, 200), st.integers(1, 200)).filter(lambda s: s != (rh.H, rh.W)))
        req.mask, req.points, req.box = _mask(h, w), [], []
    elif defect == "mask_empty":
        req.mask, req.points, req.box = _mask(rh.H, rh.W, fill=0), [], []
    elif defect == "mask_encoding":
        enc = draw(st.sampled_from(["rgb8", "mono16", "32FC1", "", "jpeg"]))
        req.mask, req.points, req.box = _mask(rh.H, rh.W, data=bytes(rh.H * rh.W * 4)), [], []
        req.mask.encoding = enc
    elif defect == "mask_truncated":
        req.mask, req.points, req.box = _mask(rh.H, rh.W, data=bytes(draw(st.integers(0, rh.H * rh.W - 1)))), [], []
    elif defect == "mask_and_points":
        req.mask, req.points = draw(valid_mask()), draw(valid_points)
    elif defect == "nothing":
        req.points, req.box, req.mask = [], [], Image()
    elif defect == "stamp":
        req.stamp.sec, req.stamp.nanosec = draw(st.integers(1, 2**31 - 1)), draw(st.integers(0, 999_999_999))
    return req, defect


@st.composite
def garbage_add_prompt(draw):
    """Anything the message types can carry: arbitrary floats, lengths, mask geometry and bytes."""
    floats = st.floats(width=32, allow_nan=True, allow_infinity=True)
    req = AddPrompt.Request(object_id=draw(random_id))
    req.points = draw(st.lists(st.builds(_pt, floats, floats, st.booleans()), max_size=5))
    req.box = draw(st.lists(floats, max_size=6))
    if draw(st.booleans()):
        h, w = draw(st.integers(0, 120)), draw(st.integers(0, 140))
        req.mask = Image(height=h, width=w, encoding=draw(st.sampled_from(["mono8", "8UC1", "rgb8", "bgr8", "x"])))
        req.mask.step = draw(st.integers(0, 300))
        req.mask.data = draw(st.binary(max_size=2 * h * w + 10))
    return req


REQUEST_KINDS = {
    "prompt": labelled_add_prompt().map(lambda rd: ("add", rd[0], rd[1])),
    "garbage": garbage_add_prompt().map(lambda r: ("add", r, "garbage")),
    "remove": mostly_small_id.map(lambda i: ("remove", RemoveObject.Request(object_id=i), None)),
    # (the unused number keeps hypothesis from treating every list request as the same example)
    "list": st.integers().map(lambda _: ("list", ListObjects.Request(), None)),
}
requests = st.sampled_from(["prompt", "prompt", "prompt", "garbage", "garbage", "remove", "remove", "list"]).flatmap(
    REQUEST_KINDS.__getitem__
)


def test_random_service_requests_never_break_the_node(rig):
    node, client, camera = rig
    for obj in client.call("list_objects").objects:
        if obj.object_id != ANCHOR:
            assert client.call("remove_object", object_id=obj.object_id).success
    tracked = {ANCHOR}
    sent = []

    @settings(
        max_examples=320,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(requests)
    def one_request(item):
        kind, req, label = item
        service = {"add": "add_prompt", "remove": "remove_object", "list": "list_objects"}[kind]
        resp = client.call_request(service, req)
        sent.append(f"{kind}:{'valid' if label is None else 'defect' if label != 'garbage' else label}:{resp.success}")
        assert isinstance(resp.success, bool) and resp.message, f"{service} answered without a message"
        if kind == "list":
            assert resp.success and [o.object_id for o in resp.objects] == sorted(tracked)
        elif kind == "remove":
            assert resp.success == (req.object_id in tracked), resp.message
            tracked.discard(req.object_id)
        elif label == "garbage":
            if resp.success:
                tracked.add(req.object_id)
        elif label is not None:
            assert not resp.success, f"a request with defect {label!r} was accepted: {resp.message}"
        elif req.object_id in tracked or len(tracked) < MAX_OBJECTS:
            assert resp.success, f"a valid prompt was refused: {resp.message}"
            tracked.add(req.object_id)
            assert resp.object.object_id == req.object_id
        else:
            assert not resp.success and "max_objects" in resp.message, resp.message
        if not resp.success:
            assert len(resp.message) > 10  # a reason a person can act on

    one_request()
    print(f"{len(sent)} random requests:", dict(sorted(collections.Counter(sent).items())))
    assert len(sent) >= 300
    assert ANCHOR in tracked
    assert_anchor_tracked(node, client)
    assert diag(client, "internal_errors") == 0
    assert "internal error" not in node.log()
