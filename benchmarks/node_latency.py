"""End-to-end latency of the ROS node under a camera faster than the model, and whether it grows with the stream.

Starts the tracker node (tiny random SAM 2 at 128 px, one CPU thread, two objects) in its own process, publishes
frames at a fixed rate while a "user" calls list_objects and add_prompt every ~0.1 s, and prints: frames received /
processed / dropped (the node's counters), publish -> label latency at the start and at the end of the stream, the
time from the last publish to its labels (a node that queued frames would first work off its backlog), the service
answer times, and the node's resident memory at the start and at the end. The same scenario is a test
(test/ros/test_node_latency.py), which asserts only what cannot depend on the machine's speed.

Run it network-isolated, like every ROS process of this project:
    bash scripts/isolated.sh $VENV/bin/python benchmarks/node_latency.py --frames 900 --rate 30
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import tempfile
import threading

import psutil
import yaml

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "test")]

import node_flood  # noqa: E402  (the scenario, shared with the test)
import ros_helpers as rh  # noqa: E402  (the node tests' harness: node process, client, waits)


class RssSampler:
    """The node's resident memory (MiB) every 0.5 s, in a thread."""

    def __init__(self, pid: int, period: float = 0.5):
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._process, self._period = psutil.Process(pid), period
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._period):
            self.samples.append(self._process.memory_info().rss / 2**20)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=900, help="frames published")
    parser.add_argument("--rate", type=float, default=30.0, help="camera rate in Hz")
    parser.add_argument("--image-size", type=int, default=128, help="model input size (tiny random SAM 2)")
    parser.add_argument("--burst", type=int, default=1, help="frames published back to back (same mean rate)")
    parser.add_argument("--no-clicking", action="store_true", help="no service calls during the stream")
    parser.add_argument("--log", type=pathlib.Path, help="keep the node log at this path")
    parser.add_argument(
        "--set", action="append", default=[], metavar="NAME=VALUE", help="node parameter override (repeatable)"
    )
    args = parser.parse_args()
    if os.environ.get("THREEAM_ISOLATED") != "1":
        print("run this inside scripts/isolated.sh (ROS processes must be network-isolated)", file=sys.stderr)
        return 2
    params = {**rh.TINY, "model.image_size": args.image_size, "publish.overlay": False, "diagnostics.period": 0.25}
    for item in args.set:
        name, value = item.split("=", 1)
        params[name] = yaml.safe_load(value)  # typed as ROS 2 reads `-p name:=value`
    with tempfile.TemporaryDirectory() as tmp:
        log = args.log or pathlib.Path(tmp) / "tracker_node.log"
        with rh.running_node(log, params, subscribe=("labels",)) as (node, client):
            node_flood.prompt_two_objects(client)
            rss = RssSampler(node.proc.pid)
            result = node_flood.flood(client, args.frames, args.rate, clicking=not args.no_clicking, burst=args.burst)
            rss.stop()
    print(result.summary())
    tenth = max(len(rss.samples) // 10, 1)
    print(
        f"node RSS (MiB), mean of the first / last tenth of the stream: {statistics.mean(rss.samples[:tenth]):.1f} / "
        f"{statistics.mean(rss.samples[-tenth:]):.1f} (max {max(rss.samples):.1f}, {len(rss.samples)} samples)"
    )
    # latency over the stream in tenths: flat when the node keeps only the newest frame
    values = [s for _, s in result.latencies]
    tenth = max(len(values) // 10, 1)
    medians = [statistics.median(values[i : i + tenth]) for i in range(0, len(values), tenth)]
    print("median latency per tenth of the stream (s): " + " ".join(f"{m:.3f}" for m in medians))
    return 0


if __name__ == "__main__":
    sys.exit(main())
