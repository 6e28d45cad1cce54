"""A camera faster than the node (frames in bursts of three): the node keeps only the newest frame, never a queue.
Frames it skips are counted as dropped, every frame it gets is accounted for, it never publishes an older frame after
a newer one, the newest frame is always processed, and services answer during the flood.

Only what cannot depend on the machine's speed is asserted here; the timings of the same scenario (latency at the
start and the end of the flood, how long the last frame takes, service answer times) are printed by this test and
measured by benchmarks/node_latency.py.
"""

import node_flood
import pytest
import ros_helpers as rh

pytestmark = pytest.mark.ros

FRAMES = 300
RATE_HZ = 30.0
BURST = 3  # frames back to back: the node cannot keep up with them however fast it is, so it must drop


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    log = tmp_path_factory.mktemp("node") / "tracker_node.log"
    # a 128 px model input keeps the node below the camera's rate, without flooding loopback
    params = {
        **rh.TINY,
        "model.image_size": 128,
        "publish.overlay": False,
        "diagnostics.period": 0.25,
        # every label image must reach the test even when loopback stalls for a moment (reliable repair)
        "publish.queue_depth": 100,
    }
    # the labels carry the stamps; fewer streams, less CPU
    with rh.running_node(log, params, subscribe=("labels",)) as pair:
        yield pair


def test_newest_frame_only_drops_counted_services_answer(rig):
    node, client = rig
    node_flood.prompt_two_objects(client)
    # fails if a service call failed or timed out (10 s)
    result = node_flood.flood(client, FRAMES, RATE_HZ, burst=BURST)
    print("\n" + result.summary())
    counts = result.counts
    assert counts["frames_dropped"] > 0, "the camera was not faster than the node: this test measured nothing"
    assert counts["frames_processed"] + counts["frames_dropped"] == counts["frames_received"]
    assert counts["frames_rejected"] == 0
    # one label image per processed frame, and frames come out in the order they were published: the node never
    # goes back to an older frame it had put aside (a queue would, a newest-frame slot cannot)
    assert len(result.latencies) == counts["frames_processed"]
    assert result.arrival_order == sorted(result.arrival_order)
    assert result.latencies[-1][0] == result.last_index  # the last frame is never dropped
    assert result.service_times["list_objects"] and result.service_times["add_prompt"]
    assert node.alive()
