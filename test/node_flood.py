"""A camera faster than the node, with a person clicking prompts meanwhile: the scenario shared by the node latency
test (which asserts what cannot depend on machine speed) and benchmarks/node_latency.py (which prints the timings).
"""

from __future__ import annotations

import dataclasses
import statistics
import threading
import time

import numpy as np
import ros_helpers as rh
from std_msgs.msg import Header

from threeam_ros import conversions


@dataclasses.dataclass
class FloodResult:
    frames: int
    publish_s: float
    # (publish index, seconds from publish to the first label image with that stamp), in publish order
    latencies: list[tuple[int, float]]
    # publish indices of the label images in arrival order (first arrival of each stamp)
    arrival_order: list[int]
    last_index: int
    # seconds from the last publish to its label image: a node that queued would first work off its backlog
    drain_s: float
    service_times: dict[str, list[float]]
    counts: dict[str, int]  # rh.COUNTERS over the flood, from the node's own diagnostics

    def thirds(self) -> tuple[float, float]:
        """Median latency of the first and of the last third of the processed frames."""
        values = [s for _, s in self.latencies]
        third = max(len(values) // 3, 1)
        return statistics.median(values[:third]), statistics.median(values[-third:])

    def summary(self) -> str:
        values = [s for _, s in self.latencies]
        first, final = self.thirds()
        c = self.counts
        services = ", ".join(
            f"{name} max {max(times):.3f} over {len(times)}" for name, times in self.service_times.items() if times
        )
        return (
            f"{self.frames} frames published in {self.publish_s:.2f} s ({self.frames / self.publish_s:.0f} Hz); "
            f"node received {c['frames_received']}, processed {c['frames_processed']}, dropped {c['frames_dropped']}, "
            f"rejected {c['frames_rejected']}; frames with label images: {len(values)}\n"
            f"latency publish -> labels (s): median first third {first:.3f}, last third {final:.3f}, "
            f"p90 {np.percentile(values, 90):.3f}, max {max(values):.3f}; last frame's labels {self.drain_s:.3f} s "
            f"after it was published\nservice answers during the flood (s): {services}"
        )


def prompt_two_objects(client) -> None:
    client.publish_and_wait(rh.frame(0))
    for obj_id, (x, y) in ((1, (30, 40)), (2, (90, 60))):
        mask = rh.rect_mask(x - 10, y - 8, x + 10, y + 8)
        resp = client.call("add_prompt", object_id=obj_id, mask=rh.mask_image(mask))
        assert resp.success, resp.message
    client.publish_and_wait(rh.frame(1))  # the prompts are committed to memory: both objects now track


def flood(client, frames: int, rate_hz: float, clicking: bool = True, burst: int = 1) -> FloodResult:
    """Publish `frames` frames at `rate_hz` on average, `burst` back to back at a time (and, if `clicking`, call
    list_objects and add_prompt every ~0.1 s). A burst of 3 or more makes the camera faster than the node on any
    machine: frames that arrive within a millisecond cannot all be tracked."""
    from threeam_interfaces.msg import PromptPoint

    # counters from a diagnostics message that already counts every frame tracked so far (one per distinct stamp)
    tracked = {(m.header.stamp.sec, m.header.stamp.nanosec) for m in client.labels.messages()}
    before = rh.settled_counts(client, {}, min_processed=len(tracked))
    client.labels.clear()
    service_times = {"list_objects": [], "add_prompt": []}
    failures: list[str] = []
    stop = threading.Event()

    def user():
        while not stop.is_set():
            t = time.monotonic()
            resp = client.call("list_objects", timeout=10.0)
            service_times["list_objects"].append(time.monotonic() - t)
            if not resp.success:
                failures.append(f"list_objects: {resp}")
            t = time.monotonic()
            resp = client.call("add_prompt", timeout=10.0, object_id=1, points=[PromptPoint(x=30.0, y=40.0)])
            service_times["add_prompt"].append(time.monotonic() - t)
            if not resp.success:
                failures.append(f"add_prompt: {resp.message}")
            stop.wait(0.1)  # a person clicking, not a second flood

    user_thread = threading.Thread(target=user, daemon=True)
    if clicking:
        user_thread.start()
    sent = {}  # (sec, nanosec) -> monotonic publish time
    messages = [conversions.rgb_to_image(rh.frame(i), Header(frame_id="camera")) for i in range(8)]
    start = time.monotonic()
    for i in range(frames):
        msg = messages[i % len(messages)]
        msg.header.stamp = client.stamp()
        sent[(msg.header.stamp.sec, msg.header.stamp.nanosec)] = time.monotonic()
        client.publish_raw(msg)
        if (i + 1) % burst == 0:
            time.sleep(max(0.0, start + (i + 1) / rate_hz - time.monotonic()))
    publish_s = time.monotonic() - start
    last = (msg.header.stamp.sec, msg.header.stamp.nanosec)
    client.labels_for(msg.header.stamp, timeout=30.0)  # the newest frame is always processed
    stop.set()
    if clicking:
        user_thread.join(30.0)
    assert not failures, failures

    # the node publishes a frame again after each add_prompt, with the same header: keep the first arrival of each
    first_arrival = {}
    for arrived, labels in client.labels.items():
        key = (labels.header.stamp.sec, labels.header.stamp.nanosec)
        if key in sent:
            first_arrival.setdefault(key, arrived)
    index = {key: i for i, key in enumerate(sent)}
    latencies = sorted((index[key], arrived - sent[key]) for key, arrived in first_arrival.items())
    totals = rh.settled_counts(client, before, min_processed=len(latencies))
    return FloodResult(
        frames=frames,
        publish_s=publish_s,
        latencies=latencies,
        arrival_order=[index[key] for key in first_arrival],
        last_index=index[last],
        drain_s=first_arrival[last] - sent[last],
        service_times=service_times,
        counts={k: int(totals[k]) - int(before.get(k, 0)) for k in rh.COUNTERS},
    )
