"""Counters and per-stage latencies of the tracker node, summarised once per diagnostics period.

Thread-safe: the camera callback, the inference thread and the diagnostics timer all touch it.
"""

from __future__ import annotations

import threading
from collections import defaultdict

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue


class NodeStats:
    COUNTERS = (
        "frames_received",
        "frames_processed",
        "frames_dropped",
        "frames_rejected",
        "internal_errors",
        "reacquisitions",  # objects re-prompted by geometric re-identification
        "frames_with_geometry",  # reid rgbd: frames tracked with depth + pose
        "frames_without_geometry",
        "geometry_rejected",  # reid rgbd: depth / camera_info / pose messages refused
    )

    def __init__(self):
        self._lock = threading.Lock()
        self.totals = dict.fromkeys(self.COUNTERS, 0)
        self._period_processed = 0
        self._stage_sums: dict[str, float] = defaultdict(float)
        self._stage_counts: dict[str, int] = defaultdict(int)
        self._stage_max: dict[str, float] = defaultdict(float)
        self.last_problem = ""

    def count(self, counter: str, n: int = 1) -> None:
        with self._lock:
            self.totals[counter] += n
            if counter == "frames_processed":
                self._period_processed += n

    def problem(self, text: str) -> None:
        with self._lock:
            self.last_problem = text

    def add_latencies(self, seconds_by_stage: dict[str, float]) -> None:
        with self._lock:
            for stage, sec in seconds_by_stage.items():
                self._stage_sums[stage] += sec
                self._stage_counts[stage] += 1
                self._stage_max[stage] = max(self._stage_max[stage], sec)

    def snapshot(self, period_s: float) -> dict:
        """Totals, FPS and mean/max latency (ms) per stage since the previous snapshot; resets the period."""
        with self._lock:
            snap = {
                "totals": dict(self.totals),
                "processed_fps": self._period_processed / period_s if period_s > 0 else 0.0,
                "latency_ms": {
                    stage: (1e3 * self._stage_sums[stage] / n, 1e3 * self._stage_max[stage])
                    for stage, n in self._stage_counts.items()
                    if n
                },
                "last_problem": self.last_problem,
            }
            self._period_processed = 0
            self._stage_sums.clear()
            self._stage_counts.clear()
            self._stage_max.clear()
            self.last_problem = ""
            return snap


def diagnostics_message(snap: dict, name: str, stamp, num_objects: int, model: str) -> DiagnosticArray:
    """One DiagnosticStatus: WARN when frames were rejected or errors happened this period, else OK."""
    totals = snap["totals"]
    values = [KeyValue(key="processed_fps", value=f"{snap['processed_fps']:.2f}")]
    values += [KeyValue(key=key, value=str(totals[key])) for key in NodeStats.COUNTERS]
    values.append(KeyValue(key="objects", value=str(num_objects)))
    values.append(KeyValue(key="model", value=model))
    for stage, (mean_ms, max_ms) in sorted(snap["latency_ms"].items()):
        values.append(KeyValue(key=f"latency_ms.{stage}.mean", value=f"{mean_ms:.2f}"))
        values.append(KeyValue(key=f"latency_ms.{stage}.max", value=f"{max_ms:.2f}"))
    level, message = DiagnosticStatus.OK, "tracking"
    if snap["last_problem"]:
        level, message = DiagnosticStatus.WARN, snap["last_problem"][:200]
    elif snap["processed_fps"] == 0.0:
        message = "no frames processed in the last period"
    status = DiagnosticStatus(level=level, name=name, message=message, hardware_id=model, values=values)
    msg = DiagnosticArray(status=[status])
    msg.header.stamp = stamp
    return msg
