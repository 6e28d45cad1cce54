"""A camera in a process of its own, as a camera driver is: publishes rgb8 frames at a fixed rate for a number of
seconds once a subscriber has matched, then prints {"sent": N, "cpu_s": ...} as one JSON line. Used by the node's
input-QoS test (test_node_input_qos.py) and by benchmarks/input_qos.py; its Fast DDS profile, if any, comes from its
environment (FASTDDS_DEFAULT_PROFILES_FILE), as a camera driver's would.

    python test/camera_process.py --topic image --width 960 --height 540 --rate 15 --seconds 10 [--reliable]
"""

from __future__ import annotations

import argparse
import json
import resource
import time


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return round(usage.ru_utime + usage.ru_stime, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--topic", default="image")
    parser.add_argument("--name", default="camera_process")
    parser.add_argument("--width", type=int, default=960)
    parser.add_argument("--height", type=int, default=540)
    parser.add_argument("--rate", type=float, default=15.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--reliable", action="store_true", help="reliable QoS (default: sensor data, best effort)")
    parser.add_argument("--match-timeout", type=float, default=60.0)
    args = parser.parse_args()

    import numpy as np
    import rclpy
    from rclpy.qos import QoSProfile, qos_profile_sensor_data
    from sensor_msgs.msg import Image

    rclpy.init()
    node = rclpy.create_node(args.name)
    qos = QoSProfile(depth=5) if args.reliable else qos_profile_sensor_data
    pub = node.create_publisher(Image, args.topic, qos)
    deadline = time.monotonic() + args.match_timeout
    while pub.get_subscription_count() < 1:  # discovery
        if time.monotonic() > deadline:
            raise SystemExit(f"camera_process: no subscriber matched {args.topic} in {args.match_timeout:g} s")
        time.sleep(0.05)
    time.sleep(0.5)  # the match settles on the subscriber's side too
    msg = Image(width=args.width, height=args.height, encoding="rgb8", step=args.width * 3)
    msg.header.frame_id = "camera"
    msg.data = np.random.default_rng(0).integers(0, 255, (args.height, args.width, 3), dtype=np.uint8).tobytes()
    period, sent = 1.0 / args.rate, 0
    start = next_t = time.monotonic()
    while time.monotonic() - start < args.seconds:
        msg.header.stamp = node.get_clock().now().to_msg()
        pub.publish(msg)
        sent += 1
        next_t += period
        time.sleep(max(0.0, next_t - time.monotonic()))
    time.sleep(1.0)  # the last frames are still in flight: the process must not go before they are delivered
    print(json.dumps({"sent": sent, "cpu_s": cpu_s()}), flush=True)
    node.destroy_node()
    rclpy.try_shutdown()


if __name__ == "__main__":
    main()
