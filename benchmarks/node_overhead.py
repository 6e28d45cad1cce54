"""Per-frame cost of the ROS node around the model: decode + publish (node overhead) against model time.

Starts the tracker node in its own process, publishes frames one at a time (each waits for its label image, so no
frame is dropped and the node is never idle-waiting on the camera), and reads the node's own stage timings from its
diagnostics (weighted by frames per period). Also reports the client's publish -> label round trip.

Run it network-isolated, like every ROS process of this project:
    bash scripts/isolated.sh $VENV/bin/python benchmarks/node_overhead.py
    bash scripts/isolated.sh $VENV/bin/python benchmarks/node_overhead.py --frames 50 --configs vga-rgb8
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "test"))

import ros_helpers as rh  # noqa: E402  (the node tests' harness: node process, client, waits)

# name -> (frame width, height, encoding, node parameters on top of config/tracker.yaml)
TINY = {**rh.TINY}
SAM2_T_512 = {
    "model.tiny": False,
    "model.sam2_checkpoint": "",  # random full-size weights: the timing of SAM 2.1-tiny without its checkpoint
    "model.variant": "tiny",
    "model.image_size": 512,
    "model.device": "cpu",
    "model.cpu_threads": 1,
}
CONFIGS = {
    "small-rgb8": (128, 96, "rgb8", TINY),
    "vga-rgb8": (640, 480, "rgb8", TINY),
    "vga-bgr8": (640, 480, "bgr8", TINY),
    "vga-jpeg": (640, 480, "jpeg", {**TINY, "input.transport": "compressed", "topics.image": "image/compressed"}),
    "vga-rgb8-masks": (640, 480, "rgb8", {**TINY, "publish.object_masks": True}),
    "vga-rgb8-sam2.1t@512": (640, 480, "rgb8", SAM2_T_512),
}
STAGES = ("queue", "decode", "track", "publish", "node_total")


def run(name: str, frames: int, objects: int, log_dir: pathlib.Path) -> dict:
    width, height, encoding, params = CONFIGS[name]
    # reliable input: large best-effort frames lose fragments on loopback UDP, and the benchmark wants every frame
    node = rh.NodeProcess(log_dir / f"{name}.log", {**params, "diagnostics.period": 0.5, "input.qos": "reliable"})
    compressed = encoding == "jpeg"
    client = rh.Client(
        name="node_overhead_bench",
        transport="compressed" if compressed else "raw",
        image_topic="image/compressed" if compressed else "image",
        reliable=True,
    )
    try:
        client.wait_ready(node, timeout=300.0)
        client.publish_and_wait(rh.frame(0, width, height), encoding, timeout=300.0)
        for k in range(objects):
            x0, y0 = (k + 1) * width // (objects + 2), height // 3
            mask = rh.rect_mask(x0, y0, x0 + width // 8, y0 + height // 4, width, height)
            resp = client.call("add_prompt", object_id=k + 1, mask=rh.mask_image(mask), timeout=120.0)
            assert resp.success, resp.message
        client.publish_and_wait(rh.frame(1, width, height), encoding, timeout=300.0)
        start = rh.settled_counts(client, {}, min_processed=1, timeout=30.0)
        client.diagnostics.clear()
        round_trips = []
        for i in range(frames):
            t = time.monotonic()
            client.publish_and_wait(rh.frame(i + 2, width, height), encoding, timeout=300.0)
            round_trips.append(time.monotonic() - t)
        end = rh.settled_counts(client, {}, min_processed=int(start["frames_processed"]) + frames, timeout=30.0)
        stats = _weighted_stage_means(client, start)
        stats["round_trip"] = statistics.mean(round_trips) * 1e3
        stats["frames"] = int(end["frames_processed"]) - int(start["frames_processed"])
        stats["dropped"] = int(end["frames_dropped"]) - int(start["frames_dropped"])
        stats["model"] = end["model"]
        return stats
    finally:
        client.close()
        node.stop()


def _weighted_stage_means(client, start: dict) -> dict:
    """Mean ms per stage over the measured frames: each diagnostics period's mean weighted by its frame count."""
    sums, counts = {}, {}
    previous = int(start["frames_processed"])
    for msg in client.diagnostics.messages():
        values = {kv.key: kv.value for kv in msg.status[0].values}
        n = int(values["frames_processed"]) - previous
        previous = int(values["frames_processed"])
        if n <= 0:
            continue
        for key, value in values.items():
            if key.startswith("latency_ms.") and key.endswith(".mean"):
                stage = key[len("latency_ms.") : -len(".mean")]
                sums[stage] = sums.get(stage, 0.0) + float(value) * n
                counts[stage] = counts.get(stage, 0) + n
    return {stage: sums[stage] / counts[stage] for stage in sums}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=30, help="measured frames per configuration")
    parser.add_argument("--objects", type=int, default=2, help="objects tracked")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--logs", type=pathlib.Path, help="keep the node logs in this folder")
    args = parser.parse_args()
    rh.require_isolation = lambda: None  # noqa: E731  (checked below instead of failing a test)
    import os

    if os.environ.get("THREEAM_ISOLATED") != "1":
        print("run this inside scripts/isolated.sh (ROS processes must be network-isolated)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        tmp = args.logs or tmp
        pathlib.Path(tmp).mkdir(parents=True, exist_ok=True)
        print(f"{args.frames} frames, {args.objects} objects, one CPU thread for the model; times in ms per frame")
        header = f"{'config':22s} {'decode':>7s} {'model':>8s} {'publish':>8s} {'node':>8s} {'overhead':>9s} "
        print(header + f"{'queue':>7s} {'round trip':>10s}  model")
        for name in args.configs:
            s = run(name, args.frames, args.objects, pathlib.Path(tmp))
            overhead = s["decode"] + s["publish"]
            print(
                f"{name:22s} {s['decode']:7.2f} {s['track']:8.2f} {s['publish']:8.2f} {s['node_total']:8.2f} "
                f"{100 * overhead / (overhead + s['track']):8.1f}% {s['queue']:7.2f} {s['round_trip']:10.2f}  "
                f"{s['model']} ({s['frames']} frames, {s['dropped']} dropped)",
                flush=True,
            )
    print("decode: message -> RGB array; model: Tracker.track; publish: label image + objects (+ masks) + overlay;")
    print("node: callback -> last publish; overhead = (decode + publish) / (decode + model + publish)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
