"""A camera faster than the node: the node keeps only the newest frame, so end-to-end latency stays bounded (it does
not grow over 300 frames), the frames it skips are counted as dropped, and services answer during the flood.

The bounds are loose on purpose (a shared 2-core CI machine): a node that queued frames instead would fall behind
by seconds over this run (300 frames at 30 Hz against a model step of tens of milliseconds).
"""

import statistics
import threading
import time

import numpy as np
import pytest
import ros_helpers as rh
from std_msgs.msg import Header

from threeam_ros import conversions

pytestmark = pytest.mark.ros

FRAMES = 300
RATE_HZ = 30.0


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    log = tmp_path_factory.mktemp("node") / "tracker_node.log"
    # a 128 px model input keeps the node well below the camera's rate on any machine, without flooding loopback
    params = {**rh.TINY, "model.image_size": 128, "publish.overlay": False, "diagnostics.period": 0.25}
    # the labels carry the stamps; fewer streams, less CPU
    with rh.running_node(log, params, subscribe=("labels",)) as pair:
        yield pair


def test_latency_stays_bounded_and_drops_are_counted(rig):
    node, client = rig
    client.publish_and_wait(rh.frame(0))
    for obj_id, (x, y) in ((1, (30, 40)), (2, (90, 60))):
        mask = rh.rect_mask(x - 10, y - 8, x + 10, y + 8)
        assert client.call("add_prompt", object_id=obj_id, mask=rh.mask_image(mask)).success
    client.publish_and_wait(rh.frame(1))  # the prompts are committed to memory: both objects now track
    before = settled_totals(client, {}, min_processed=2)
    client.labels.clear()

    # services during the flood: list_objects answers from a snapshot, add_prompt waits for at most one frame
    service_times = {"list_objects": [], "add_prompt": []}
    stop = threading.Event()

    def user():
        while not stop.is_set():
            t = time.monotonic()
            assert client.call("list_objects", timeout=10.0).success
            service_times["list_objects"].append(time.monotonic() - t)
            t = time.monotonic()
            resp = client.call("add_prompt", timeout=10.0, object_id=1, points=[_point(30, 40)])
            assert resp.success, resp.message
            service_times["add_prompt"].append(time.monotonic() - t)
            stop.wait(0.1)  # a person clicking, not a second flood

    user_thread = threading.Thread(target=user, daemon=True)
    user_thread.start()
    sent = {}  # (sec, nanosec) -> monotonic publish time
    frames = [conversions.rgb_to_image(rh.frame(i), Header(frame_id="camera")) for i in range(8)]
    start = time.monotonic()
    for i in range(FRAMES):
        msg = frames[i % len(frames)]
        msg.header.stamp = client.stamp()
        sent[(msg.header.stamp.sec, msg.header.stamp.nanosec)] = time.monotonic()
        client.publish_raw(msg)
        time.sleep(max(0.0, start + (i + 1) / RATE_HZ - time.monotonic()))
    publish_s = time.monotonic() - start
    stop.set()
    user_thread.join(30.0)
    last = (msg.header.stamp.sec, msg.header.stamp.nanosec)
    client.labels_for(msg.header.stamp, timeout=20.0)  # the newest frame is always processed

    # (publish index, seconds from publish to the first label image with that stamp; the node publishes a frame
    # again after each add_prompt, with the same header)
    first_arrival = {}
    for arrived, labels in client.labels.items():
        key = (labels.header.stamp.sec, labels.header.stamp.nanosec)
        if key in sent:
            first_arrival.setdefault(key, arrived)
    order = {key: i for i, key in enumerate(sent)}
    latencies = sorted((order[key], arrived - sent[key]) for key, arrived in first_arrival.items())
    assert latencies[-1][0] == order[last]
    totals = settled_totals(client, before, min_processed=len(latencies))
    received, processed = _delta(totals, before, "frames_received"), _delta(totals, before, "frames_processed")
    dropped, rejected = _delta(totals, before, "frames_dropped"), _delta(totals, before, "frames_rejected")
    values = [s for _, s in latencies]
    third = max(len(values) // 3, 1)
    first, final = statistics.median(values[:third]), statistics.median(values[-third:])
    print(
        f"\n{FRAMES} frames published in {publish_s:.2f} s ({FRAMES / publish_s:.0f} Hz); node received {received}, "
        f"processed {processed}, dropped {dropped}, rejected {rejected}; frames with label images: {len(values)}\n"
        f"latency publish -> labels (s): median first third {first:.3f}, last third {final:.3f}, "
        f"p90 {np.percentile(values, 90):.3f}, max {max(values):.3f}\n"
        f"service answers during the flood (s): list_objects max {max(service_times['list_objects']):.3f} "
        f"over {len(service_times['list_objects'])}, add_prompt max {max(service_times['add_prompt']):.3f} "
        f"over {len(service_times['add_prompt'])}; in the node: list_objects max "
        f"{totals.get('latency_ms.service.list_objects.max')} ms, add_prompt max "
        f"{totals.get('latency_ms.service.add_prompt.max')} ms (last diagnostics period)"
    )
    assert dropped > 0, "the camera was not faster than the node: this test measured nothing"
    assert processed < received
    assert rejected == 0 and len(values) == processed
    # bounded, not growing: a queueing node would end seconds behind. The 90th percentile (not the max) is bounded
    # because a shared 2-core machine can stall loopback delivery for a second or two now and then.
    assert np.percentile(values, 90) < 1.5
    assert final < 2 * first + 0.25
    assert service_times["list_objects"] and max(service_times["list_objects"]) < 2.0
    assert service_times["add_prompt"] and max(service_times["add_prompt"]) < 2.0
    assert node.alive()


def settled_totals(client, before, min_processed):
    """Diagnostics of an idle node: every frame it got is accounted for (processed, dropped or rejected)."""

    def settled():
        t = client.diagnostics_totals()
        if not t or _delta(t, before, "frames_processed") < min_processed:
            return None
        counted = sum(_delta(t, before, k) for k in ("frames_processed", "frames_dropped", "frames_rejected"))
        return t if counted == _delta(t, before, "frames_received") else None

    return rh.wait_until(settled, 10.0, "diagnostics that account for every frame")


def _delta(totals, before, key):
    return int(totals[key]) - int(before.get(key, 0))


def _point(x, y):
    from threeam_interfaces.msg import PromptPoint

    return PromptPoint(x=float(x), y=float(y))
