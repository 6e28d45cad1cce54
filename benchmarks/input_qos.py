"""Best-effort HD camera frames across processes: how many arrive, with and without the package's Fast DDS profile.

A camera process publishes rgb8 frames (960x540 at 15 Hz by default, sensor-data QoS: best effort, keep last 5) for
a number of seconds; a viewer process (another DDS participant, as the tracker node is) counts what arrives and
the frames its middleware reported lost (the QoS message-lost event). Each configuration runs the pair afresh:
  none     no XML profile (Fast DDS defaults, what a plain `ros2 run` gets)
  profile  config/fastdds_large_frames.xml in both processes (FASTDDS_DEFAULT_PROFILES_FILE)
  viewer   the profile in the viewer only (the camera as a user starts it)
  camera   the profile in the camera only
Run it network-isolated, like every ROS process of this project:
    bash scripts/isolated.sh $VENV/bin/python benchmarks/input_qos.py
    bash scripts/isolated.sh $VENV/bin/python benchmarks/input_qos.py --configs none profile --runs 3 --seconds 10
    bash scripts/isolated.sh $VENV/bin/python benchmarks/input_qos.py --width 1920 --height 1080 --rate 30
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import socket
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "test"))

from camera_process import cpu_s  # noqa: E402  (the camera of the node's input-QoS test, in its own process)

PROFILE = REPO / "config" / "fastdds_large_frames.xml"
TOPIC = "bench_image"
# configuration -> (profile in the viewer, profile in the camera)
CONFIGS = {"none": (False, False), "profile": (True, True), "viewer": (True, False), "camera": (False, True)}


def viewer(args) -> None:
    import threading

    import rclpy
    from rclpy.event_handler import SubscriptionEventCallbacks
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image

    rclpy.init()
    node = rclpy.create_node("bench_viewer")
    counts = {"received": 0, "lost": 0}

    def on_lost(info) -> None:
        counts["lost"] += info.total_count_change

    node.create_subscription(
        Image,
        TOPIC,
        lambda msg: counts.__setitem__("received", counts["received"] + 1),
        qos_profile_sensor_data,
        event_callbacks=SubscriptionEventCallbacks(message_lost=on_lost, use_default_callbacks=False),
    )
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    print("ready", flush=True)
    sys.stdin.readline()  # the orchestrator closes stdin when the camera is done
    time.sleep(0.5)
    print(json.dumps({**counts, "viewer_cpu_s": cpu_s()}), flush=True)
    executor.shutdown()
    spinner.join(10.0)
    node.destroy_node()
    rclpy.try_shutdown()


def run_pair(args, config: str) -> dict:
    in_viewer, in_camera = CONFIGS[config]
    base = {k: v for k, v in os.environ.items() if k not in ("FASTDDS_DEFAULT_PROFILES_FILE",)}
    env = {True: {**base, "FASTDDS_DEFAULT_PROFILES_FILE": str(args.profile)}, False: base}
    common = [f"--{k}={getattr(args, k)}" for k in ("width", "height", "rate", "seconds")]
    me = [sys.executable, str(pathlib.Path(__file__).resolve())]
    camera = [sys.executable, str(REPO / "test" / "camera_process.py"), f"--topic={TOPIC}", "--name=bench_camera"]
    view = subprocess.Popen(
        [*me, "--role", "viewer", *common], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env[in_viewer]
    )
    try:
        assert view.stdout.readline().strip() == "ready"
        cam = subprocess.run([*camera, *common], capture_output=True, text=True, env=env[in_camera], timeout=120)
        if cam.returncode != 0:
            raise RuntimeError(f"camera failed: {cam.stderr[-2000:]}")
        sent = json.loads(cam.stdout.strip().splitlines()[-1])
        sent["camera_cpu_s"] = sent.pop("cpu_s")
        out, _ = view.communicate("done\n", timeout=60)
        counts = json.loads(out.strip().splitlines()[-1])
    finally:
        if view.poll() is None:
            view.kill()
    return {**sent, **counts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--role", choices=("viewer",), help=argparse.SUPPRESS)
    parser.add_argument("--width", type=int, default=960)
    parser.add_argument("--height", type=int, default=540)
    parser.add_argument("--rate", type=float, default=15.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--profile", type=pathlib.Path, default=PROFILE, help="the Fast DDS XML profile to try")
    parser.add_argument("--configs", nargs="+", choices=tuple(CONFIGS), default=["none", "profile", "viewer"])
    args = parser.parse_args()
    if args.role == "viewer":
        return viewer(args)
    if [name for _, name in socket.if_nameindex()] != ["lo"]:
        raise SystemExit("run it network-isolated: bash scripts/isolated.sh python benchmarks/input_qos.py")
    size_mb = args.width * args.height * 3 / 1e6
    print(f"{args.width}x{args.height} rgb8 ({size_mb:.2f} MB) at {args.rate:g} Hz, best effort, {args.seconds:g} s")
    print(
        f"{'config':<8} {'run':>3} {'received/sent':>14} {'%':>6} {'lost (event)':>13} {'unaccounted':>12} "
        f"{'CPU s camera/viewer':>20}"
    )
    for config in args.configs:
        for run in range(args.runs):
            r = run_pair(args, config)
            gone = r["sent"] - r["received"] - r["lost"]
            print(
                f"{config:<8} {run + 1:>3} {r['received']:>7}/{r['sent']:<6} {100 * r['received'] / r['sent']:>6.1f} "
                f"{r['lost']:>13} {gone:>12} {r['camera_cpu_s']:>10.2f}/{r['viewer_cpu_s']:<9.2f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
