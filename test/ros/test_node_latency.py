"""A camera far faster than the node (300 Hz, in bursts of three): the node keeps only the newest frame, never a
queue. Latency does not grow over the stream, frames it skips are counted as dropped, every frame it gets is accounted
for, it never publishes an older frame after a newer one, the newest frame is always processed, and services answer
during the flood.

The one wall-clock assertion compares the stream's end with its start, with a margin far below what a queue would
cost: at this rate a node that queued would end seconds behind (every frame it could not track in time, times its
step). The timings themselves are printed here and measured by benchmarks/node_latency.py.
"""

import statistics

import node_flood
import pytest
import ros_helpers as rh

pytestmark = pytest.mark.ros

FRAMES = 1500
RATE_HZ = 300.0
BURST = 3  # frames back to back: the node cannot keep up with them however fast it is, so it must drop


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    log = tmp_path_factory.mktemp("node") / "tracker_node.log"
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


def test_latency_stays_flat_newest_frame_only_drops_counted(rig):
    node, client = rig
    node_flood.prompt_two_objects(client)
    # fails if a service call failed or timed out (10 s)
    result = node_flood.flood(client, FRAMES, RATE_HZ, burst=BURST)
    print("\n" + result.summary())
    counts = result.counts
    assert counts["frames_processed"] * 2 < counts["frames_received"], "the camera did not outpace the node"
    assert counts["frames_processed"] + counts["frames_dropped"] == counts["frames_received"]
    assert counts["frames_rejected"] == 0
    # one label image per processed frame, and frames come out in the order they were published: the node never
    # goes back to an older frame it had put aside (a queue would, a newest-frame slot cannot)
    assert len(result.latencies) == counts["frames_processed"]
    assert result.arrival_order == sorted(result.arrival_order)
    assert result.latencies[-1][0] == result.last_index  # the last frame is never dropped
    # bounded, not growing: the median latency of the last third of the processed frames against the first third
    # (a queue would add (frames received - processed) x step, several seconds here)
    first, final = result.thirds()
    backlog_s = (counts["frames_received"] - counts["frames_processed"]) * statistics.median(
        s for _, s in result.latencies
    )
    assert final < first + 1.0, f"latency grew from {first:.3f} s to {final:.3f} s (a queue: ~{backlog_s:.0f} s)"
    assert result.service_times["list_objects"] and result.service_times["add_prompt"]
    assert node.alive()
