"""What add_prompt waits for on a busy node: the rest of the frame in the model, then the prompt itself.

Starts the tracker node, streams 640x480 frames at 10 Hz (faster than the model, so a frame is always in it), and
each time a frame's labels come out (the next frame has just gone into the model) times list_objects and add_prompt
from this client; then stops the camera and times add_prompt on the idle node. Next to them: the node's own mean
track time per frame (its diagnostics). A prompt on a busy node should take about one track time plus an idle one.

Run it network-isolated, like every ROS process of this project:
    bash scripts/isolated.sh $VENV/bin/python benchmarks/prompt_wait.py
    bash scripts/isolated.sh $VENV/bin/python benchmarks/prompt_wait.py --configs tiny@64 sam2.1t@512 --prompts 6
"""

from __future__ import annotations

import argparse
import os
import pathlib
import socket
import statistics
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "test"))

import ros_helpers as rh  # noqa: E402  (the node tests' harness: node process, client, waits)

# random weights of the real architecture: the timing of SAM 2.1-tiny without its checkpoint
SAM2_T = {"model.sam2_checkpoint": "", "model.variant": "tiny", "model.device": "cpu", "model.cpu_threads": 2}
CONFIGS = {
    "tiny@64": rh.TINY,
    "sam2.1t@512": {**SAM2_T, "model.image_size": 512},
    "sam2.1t@1024": {**SAM2_T, "model.image_size": 1024},
}
W, H = 640, 480


def timed(call) -> float:
    t = time.monotonic()
    resp = call()
    assert resp.success, resp.message
    return time.monotonic() - t


def run(name: str, prompts: int, log_dir: pathlib.Path) -> dict:
    from threeam_interfaces.msg import PromptPoint

    params = {**CONFIGS[name], "diagnostics.period": 0.5, "publish.overlay": False}
    node = rh.NodeProcess(log_dir / f"{name}.log", params)
    client = rh.Client(name="prompt_wait_bench", subscribe=("labels",))
    prompt = lambda i: client.call(  # noqa: E731
        "add_prompt", timeout=300.0, object_id=1 + i % 2, points=[PromptPoint(x=200.0 + 200 * (i % 2), y=240.0)]
    )
    busy, listing, idle = [], [], []
    try:
        client.wait_ready(node, timeout=300.0)
        client.publish_and_wait(rh.frame(0, W, H), timeout=300.0)
        camera = rh.Camera(client, rate_hz=10.0, width=W, height=H)
        try:
            for i in range(prompts):
                rh.next_frame_out(client, 300.0)  # the next frame has just gone into the model
                listing.append(timed(lambda: client.call("list_objects", timeout=300.0)))
                busy.append(timed(lambda i=i: prompt(i)))
            track_ms = float(client.diagnostics_totals().get("latency_ms.track.mean", "nan"))
        finally:
            camera.stop()
        time.sleep(max(1.0, 3e-3 * track_ms))  # the frame in the model and the last one are out: the node is idle
        for i in range(prompts):
            idle.append(timed(lambda i=i: prompt(i)))
    finally:
        client.close()
        node.stop()
    return {"track_ms": track_ms, "busy": busy, "list": listing, "idle": idle}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", choices=tuple(CONFIGS), default=["tiny@64", "sam2.1t@512"])
    parser.add_argument("--prompts", type=int, default=5)
    args = parser.parse_args()
    if [name for _, name in socket.if_nameindex()] != ["lo"]:
        raise SystemExit("run it network-isolated: bash scripts/isolated.sh python benchmarks/prompt_wait.py")
    # this process is the camera: with the package's profile, as the README advises (and the node gets it too)
    os.environ["FASTDDS_DEFAULT_PROFILES_FILE"] = str(REPO / "config" / "fastdds_large_frames.xml")
    print(f"{W}x{H} camera at 10 Hz; seconds, median (max) over {args.prompts} calls")
    print(f"{'model':<14} {'track/frame':>12} {'add_prompt busy':>16} {'add_prompt idle':>16} {'list_objects':>13}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.configs:
            r = run(name, args.prompts, pathlib.Path(tmp))
            cell = lambda v: f"{statistics.median(v):.3f} ({max(v):.3f})"  # noqa: E731
            print(
                f"{name:<14} {r['track_ms'] / 1e3:>12.3f} {cell(r['busy']):>16} {cell(r['idle']):>16} "
                f"{cell(r['list']):>13}",
                flush=True,
            )


if __name__ == "__main__":
    main()
