"""Counters and per-stage latencies of the tracker node, summarised once per diagnostics period.

The processed-frame rate is measured from frame completion times over a window (`rate_window` seconds) that always
reaches back over the newest frame interval, so a frame slower than the diagnostics period (or the window) lowers
the rate instead of making it read 0 for the periods in which that frame was in the model.

Thread-safe: the camera callback, the inference thread and the diagnostics timer all touch it.
"""

from __future__ import annotations

import collections
import threading
import time
from collections import defaultdict

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue


class NodeStats:
    COUNTERS = (
        "frames_received",
        "frames_processed",
        "frames_dropped",
        "frames_lost",  # lost in the middleware before the node saw them (the subscription's message-lost event)
        "size_changes",  # frames of another size than the stream's: each reset objects and memory
        "frames_rejected",
        "internal_errors",
        "model_faults",  # frames on which the model raised (each costs that frame only)
        "reacquisitions",  # objects re-prompted by geometric re-identification
        "frames_with_geometry",  # reid rgbd: frames tracked with depth + pose
        "frames_without_geometry",
        "geometry_rejected",  # reid rgbd: depth / camera_info / pose messages refused
        "discovered",  # objects started by discovery (service or periodic)
        "frames_without_3d",  # objects3d.enabled but no geometry for the frame
    )

    def __init__(self, rate_window: float = 5.0, clock=time.monotonic):
        self._lock = threading.Lock()
        self._clock = clock
        self.rate_window = rate_window
        self.totals = dict.fromkeys(self.COUNTERS, 0)
        self._completed: collections.deque[float] = collections.deque(maxlen=10_000)  # frames_processed times
        self._stage_sums: dict[str, float] = defaultdict(float)
        self._stage_counts: dict[str, int] = defaultdict(int)
        self._stage_max: dict[str, float] = defaultdict(float)
        self.last_problem = ""

    def count(self, counter: str, n: int = 1) -> None:
        with self._lock:
            self.totals[counter] += n
            if counter == "frames_processed":
                self._completed.extend([self._clock()] * n)

    def problem(self, text: str) -> None:
        with self._lock:
            self.last_problem = text

    def add_latencies(self, seconds_by_stage: dict[str, float]) -> None:
        with self._lock:
            for stage, sec in seconds_by_stage.items():
                self._stage_sums[stage] += sec
                self._stage_counts[stage] += 1
                self._stage_max[stage] = max(self._stage_max[stage], sec)

    def processed_fps(self, now: float) -> float:
        """Frames per second over the window, or over the newest frame interval when that is longer; a frame
        still in the model counts as an interval that has lasted until now (so a stalled node decays to 0)."""
        times = self._completed
        if len(times) < 2:
            return 0.0
        start = now - self.rate_window
        k = max(2, sum(1 for t in reversed(times) if t >= start))  # at least the newest interval
        k = min(k, len(times))
        span = max(times[-1] - times[-k], now - times[-1])
        return (k - 1) / span if span > 0 else 0.0

    def snapshot(self) -> dict:
        """Totals, FPS and mean/max latency (ms) per stage since the previous snapshot; resets the latencies."""
        with self._lock:
            now = self._clock()
            snap = {
                "totals": dict(self.totals),
                "processed_fps": self.processed_fps(now),
                "idle_s": now - self._completed[-1] if self._completed else None,  # since the newest frame
                "window_s": self.rate_window,
                "latency_ms": {
                    stage: (1e3 * self._stage_sums[stage] / n, 1e3 * self._stage_max[stage])
                    for stage, n in self._stage_counts.items()
                    if n
                },
                "last_problem": self.last_problem,
            }
            self._stage_sums.clear()
            self._stage_counts.clear()
            self._stage_max.clear()
            self.last_problem = ""
            return snap


def diagnostics_message(
    snap: dict, name: str, stamp, num_objects: int, model: str, state: str = "active", error: str = ""
) -> DiagnosticArray:
    """One DiagnosticStatus: ERROR when `error` is given, WARN when frames were rejected or a problem happened this
    period, else OK. `state`: the node's lifecycle state."""
    totals = snap["totals"]
    values = [KeyValue(key="state", value=state), KeyValue(key="processed_fps", value=f"{snap['processed_fps']:.2f}")]
    values += [KeyValue(key=key, value=str(totals[key])) for key in NodeStats.COUNTERS]
    values.append(KeyValue(key="objects", value=str(num_objects)))
    values.append(KeyValue(key="model", value=model))
    for stage, (mean_ms, max_ms) in sorted(snap["latency_ms"].items()):
        values.append(KeyValue(key=f"latency_ms.{stage}.mean", value=f"{mean_ms:.2f}"))
        values.append(KeyValue(key=f"latency_ms.{stage}.max", value=f"{max_ms:.2f}"))
    level, message = DiagnosticStatus.OK, "tracking" if state == "active" else state
    if error:
        level, message = DiagnosticStatus.ERROR, error
    elif snap["last_problem"]:
        level, message = DiagnosticStatus.WARN, snap["last_problem"]
    elif state == "active" and snap["idle_s"] is None:
        message = "no frame processed yet"
    elif state == "active" and snap["idle_s"] > snap["window_s"]:
        message = f"no frame processed in the last {snap['idle_s']:.1f} s"
    status = DiagnosticStatus(level=level, name=name, message=message, hardware_id=model, values=values)
    msg = DiagnosticArray(status=[status])
    msg.header.stamp = stamp
    return msg
