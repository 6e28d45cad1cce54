"""End-to-end latency of the ROS node under a camera faster than the model, and whether it grows with the stream.

Starts the tracker node (tiny random SAM 2 at 128 px, one CPU thread, two objects) in its own process, publishes
frames at a fixed rate while a "user" calls list_objects and add_prompt every ~0.1 s, and prints: frames received /
processed / dropped (the node's counters), publish -> label latency at the start and at the end of the stream, the
time from the last publish to its labels (a node that queued frames would first work off its backlog), and the
service answer times. The same scenario is a test (test/test_node_latency.py), which asserts only what cannot depend
on the machine's speed.

Run it network-isolated, like every ROS process of this project:
    bash scripts/isolated.sh $VENV/bin/python benchmarks/node_latency.py --frames 900 --rate 30
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "test")]

import node_flood  # noqa: E402  (the scenario, shared with the test)
import ros_helpers as rh  # noqa: E402  (the node tests' harness: node process, client, waits)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=900, help="frames published")
    parser.add_argument("--rate", type=float, default=30.0, help="camera rate in Hz")
    parser.add_argument("--image-size", type=int, default=128, help="model input size (tiny random SAM 2)")
    parser.add_argument("--burst", type=int, default=1, help="frames published back to back (same mean rate)")
    parser.add_argument("--no-clicking", action="store_true", help="no service calls during the stream")
    parser.add_argument("--log", type=pathlib.Path, help="keep the node log at this path")
    args = parser.parse_args()
    if os.environ.get("THREEAM_ISOLATED") != "1":
        print("run this inside scripts/isolated.sh (ROS processes must be network-isolated)", file=sys.stderr)
        return 2
    params = {**rh.TINY, "model.image_size": args.image_size, "publish.overlay": False, "diagnostics.period": 0.25}
    with tempfile.TemporaryDirectory() as tmp:
        log = args.log or pathlib.Path(tmp) / "tracker_node.log"
        with rh.running_node(log, params, subscribe=("labels",)) as (_, client):
            node_flood.prompt_two_objects(client)
            result = node_flood.flood(client, args.frames, args.rate, clicking=not args.no_clicking, burst=args.burst)
    print(result.summary())
    # latency over the stream in tenths: flat when the node keeps only the newest frame
    values = [s for _, s in result.latencies]
    tenth = max(len(values) // 10, 1)
    medians = [sorted(values[i : i + tenth])[len(values[i : i + tenth]) // 2] for i in range(0, len(values), tenth)]
    print("median latency per tenth of the stream (s): " + " ".join(f"{m:.3f}" for m in medians))
    return 0


if __name__ == "__main__":
    sys.exit(main())
