"""Test harness for the tracker node: the node in its own process, and a test client node in this one.

Everything waits on events (service availability, matched publishers, message arrival) with deadlines, never on
fixed sleeps. ROS tests must run inside scripts/isolated.sh (checked by `require_isolation`).
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG = REPO / "config" / "tracker.yaml"
NODE = "/threeam_tracker"
# A tiny random-weight SAM 2 on one CPU thread: what every node test runs.
TINY = {"model.tiny": True, "model.image_size": 64, "model.device": "cpu", "model.cpu_threads": 1}
W, H = 128, 96


def require_isolation() -> None:
    """Fail unless this process sits in a network namespace with only loopback and localhost-only discovery."""
    interfaces = [name for _, name in socket.if_nameindex()]
    if (
        os.environ.get("THREEAM_ISOLATED") != "1"
        or interfaces != ["lo"]
        or os.environ.get("ROS_AUTOMATIC_DISCOVERY_RANGE") != "LOCALHOST"
    ):
        pytest.fail(
            f"ROS tests must run network-isolated (interfaces here: {interfaces}): "
            "bash scripts/isolated.sh python -m pytest ..."
        )


def _ros_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f"'{value}'" if value else "''"
    return str(value)


def node_command(params: dict, config: pathlib.Path = CONFIG, module: str = "threeam_ros.tracker_node") -> list[str]:
    """The node's command line; `module` may be a test wrapper around threeam_ros.tracker_node (test/ is on the
    path of the node's process)."""
    cmd = [sys.executable, "-m", module, "--ros-args", "--params-file", str(config)]
    for name, value in params.items():
        cmd += ["-p", f"{name}:={_ros_value(value)}"]
    return cmd


def node_env(**extra) -> dict:
    path = os.pathsep.join(filter(None, [str(REPO / "test"), os.environ.get("PYTHONPATH")]))
    return dict(
        os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", RCUTILS_COLORIZED_OUTPUT="0", PYTHONPATH=path, **extra
    )


class NodeProcess:
    """`python -m threeam_ros.tracker_node` with config/tracker.yaml and `-p` overrides; output goes to a log file.
    The node configures and activates itself (lifecycle.autostart) unless the params say otherwise."""

    def __init__(
        self,
        log_path: pathlib.Path,
        params: dict,
        config: pathlib.Path = CONFIG,
        module: str = "threeam_ros.tracker_node",
        env: dict | None = None,
    ):
        """env: extra environment variables of the node's process."""
        self.log_path = log_path
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen(
            node_command(params, config, module),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=node_env(**(env or {})),
            cwd=REPO,
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 20.0) -> int:
        if self.alive():
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode


def frame(index: int, width: int = W, height: int = H) -> np.ndarray:
    """A smooth synthetic RGB frame with a bright square drifting right."""
    ys, xs = np.mgrid[0:height, 0:width]
    rgb = np.stack([xs * 255 // max(width - 1, 1), ys * 255 // max(height - 1, 1), np.full_like(xs, 90)], axis=2)
    x0 = (10 + 2 * index) % max(width - 30, 1)
    rgb[30:60, x0 : x0 + 25] = (250, 240, 40)
    return rgb.astype(np.uint8)


class Received:
    """Messages of one topic with their arrival times (thread-safe)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._items: list[tuple[float, object]] = []

    def add(self, msg) -> None:
        with self._lock:
            self._items.append((time.monotonic(), msg))

    def items(self) -> list[tuple[float, object]]:
        with self._lock:
            return list(self._items)

    def messages(self) -> list:
        return [m for _, m in self.items()]

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


@contextlib.contextmanager
def running_node(
    log_path: pathlib.Path,
    params: dict,
    match_image: bool = True,
    module: str = "threeam_ros.tracker_node",
    env: dict | None = None,
    **client_kwargs,
):
    """(node process, ready test client) with the node active; afterwards both stop, and the node must have exited
    cleanly. match_image=False: do not wait for the node's image subscription to match the client's publisher.
    With lifecycle.autostart false, the client waits only for the lifecycle services (the node is unconfigured).
    env: extra environment variables of the node's process."""
    require_isolation()
    node = NodeProcess(log_path, params, module=module, env=env)
    client = Client(**client_kwargs)
    try:
        if params.get("lifecycle.autostart", True):
            client.wait_ready(node, match_image=match_image)
        else:
            client.wait_lifecycle(node)
        yield node, client
    finally:
        client.close()
        code = node.stop()
        print(node.log()[-4000:])
        assert code == 0, f"the node exited with {code}"


def _answered(future, timeout: float) -> bool:
    """Whether a service call's future completes within `timeout` seconds (the client's executor spins it)."""
    done = threading.Event()
    future.add_done_callback(lambda _: done.set())
    return done.wait(timeout)


class Client:
    """The test-side node: publishes camera frames, calls the tracker's services, records its outputs."""

    def __init__(
        self,
        name: str = "threeam_test_client",
        transport: str = "raw",
        node: str = NODE,
        reliable: bool = False,
        image_topic: str = "image",
        subscribe: tuple[str, ...] = ("labels", "objects", "overlay"),
    ):
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from lifecycle_msgs.srv import ChangeState, GetState
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, qos_profile_sensor_data
        from sensor_msgs.msg import CompressedImage, Image

        from threeam_interfaces.msg import TrackedObjectArray
        from threeam_interfaces.srv import AddPrompt, Discover, ListObjects, RemoveObject, Reset

        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(name, context=self.context)
        self.image_pub = self.node.create_publisher(
            CompressedImage if transport == "compressed" else Image,
            image_topic,
            QoSProfile(depth=10) if reliable else qos_profile_sensor_data,
        )
        self.labels, self.objects, self.overlay, self.diagnostics = Received(), Received(), Received(), Received()
        outputs = {
            "labels": (Image, f"{node}/labels", self.labels),
            "objects": (TrackedObjectArray, f"{node}/objects", self.objects),
            "overlay": (Image, f"{node}/overlay", self.overlay),
        }
        for name in subscribe:
            msg_type, topic, store = outputs[name]
            self.node.create_subscription(msg_type, topic, store.add, 50)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self.diagnostics.add, 50)
        self.clients = {
            "add_prompt": self.node.create_client(AddPrompt, f"{node}/add_prompt"),
            "remove_object": self.node.create_client(RemoveObject, f"{node}/remove_object"),
            "reset": self.node.create_client(Reset, f"{node}/reset"),
            "list_objects": self.node.create_client(ListObjects, f"{node}/list_objects"),
            "discover": self.node.create_client(Discover, f"{node}/discover"),
        }
        self.types = {
            "add_prompt": AddPrompt,
            "remove_object": RemoveObject,
            "reset": Reset,
            "list_objects": ListObjects,
            "discover": Discover,
        }
        # rclpy's lifecycle client side: the services every managed node offers (what `ros2 lifecycle` calls)
        self.lifecycle = {
            "change_state": self.node.create_client(ChangeState, f"{node}/change_state"),
            "get_state": self.node.create_client(GetState, f"{node}/get_state"),
        }
        self.types.update(change_state=ChangeState, get_state=GetState)
        self.clients.update(self.lifecycle)
        self._node_name = node
        self._executor = SingleThreadedExecutor(context=self.context)
        self._executor.add_node(self.node)
        self._spinner = threading.Thread(target=self._executor.spin, daemon=True)
        self._spinner.start()
        self.published = 0
        self.camera: Camera | None = None

    def wait_ready(self, node_proc: NodeProcess | None = None, timeout: float = 60.0, match_image: bool = True) -> None:
        """Until every service answers discovery and the node's subscription and publishers are matched."""
        deadline = time.monotonic() + timeout
        for name, client in self.clients.items():
            while not client.wait_for_service(timeout_sec=1.0):
                if node_proc is not None and not node_proc.alive():
                    pytest.fail(f"the tracker node died while starting:\n{node_proc.log()[-4000:]}")
                if time.monotonic() > deadline:
                    pytest.fail(f"service {name} never appeared")
        self.probe_lifecycle(deadline)
        if match_image:
            wait_until(lambda: self.image_pub.get_subscription_count() >= 1, deadline - time.monotonic(), "image sub")
        for topic in ("labels",):
            wait_until(
                lambda t=topic: self.node.count_publishers(f"{NODE}/{t}") >= 1, deadline - time.monotonic(), topic
            )

    def wait_lifecycle(self, node_proc: NodeProcess | None = None, timeout: float = 60.0) -> None:
        """Until the node's lifecycle services answer discovery."""
        deadline = time.monotonic() + timeout
        for name, client in self.lifecycle.items():
            while not client.wait_for_service(timeout_sec=1.0):
                if node_proc is not None and not node_proc.alive():
                    pytest.fail(f"the tracker node died while starting:\n{node_proc.log()[-4000:]}")
                if time.monotonic() > deadline:
                    pytest.fail(f"lifecycle service {name} never appeared")
        self.probe_lifecycle(deadline)

    def probe_lifecycle(self, deadline: float) -> None:
        """Until both lifecycle services have answered a request that changes nothing.

        wait_for_service sees the client's side of discovery only: a server that has not yet matched the client's
        response reader drops its answer ("client will not receive response"), so a first transition sent right
        after discovery can go unanswered although it ran. An unknown transition label is refused without a change.
        """
        from lifecycle_msgs.msg import Transition

        probes = {"get_state": {}, "change_state": {"transition": Transition(label="probe_no_such_transition")}}
        for service, fields in probes.items():
            while not _answered(self.clients[service].call_async(self.types[service].Request(**fields)), 2.0):
                if time.monotonic() > deadline:
                    pytest.fail(f"lifecycle service {service} never answered")

    def lifecycle_state(self) -> str:
        """The node's lifecycle state label: unconfigured, inactive, active, finalized."""
        return self.call("get_state").current_state.label

    def transition(self, label: str, timeout: float = 120.0) -> bool:
        """Ask for a lifecycle transition by label (configure, activate, deactivate, cleanup, shutdown)."""
        from lifecycle_msgs.msg import Transition

        return self.call("change_state", timeout=timeout, transition=Transition(label=label)).success

    def call(self, service: str, timeout: float = 30.0, **fields):
        """Call a service with the request fields given; returns the response (fails the test on timeout)."""
        request = self.types[service].Request(**fields)
        return self.call_request(service, request, timeout)

    def call_request(self, service: str, request, timeout: float = 30.0):
        future = self.clients[service].call_async(request)
        if not _answered(future, timeout):
            pytest.fail(f"service {service} did not answer within {timeout} s")
        return future.result()

    def stamp(self):
        return self.node.get_clock().now().to_msg()

    def publish(self, rgb: np.ndarray, encoding: str = "rgb8", frame_id: str = "camera"):
        """Publish a frame stamped now; returns its header."""
        from std_msgs.msg import Header

        from threeam_ros import conversions

        header = Header(stamp=self.stamp(), frame_id=frame_id)
        if encoding in ("jpeg", "png"):
            msg = conversions.rgb_to_compressed(rgb, header, encoding)
        else:
            msg = conversions.rgb_to_image(rgb, header, encoding)
        self.image_pub.publish(msg)
        self.published += 1
        return header

    def publish_raw(self, msg) -> None:
        self.image_pub.publish(msg)
        self.published += 1

    def labels_for(self, stamp, timeout: float = 20.0, after: int = 0):
        """The first label image (from index `after` on) whose header stamp equals `stamp`."""

        def find():
            for msg in self.labels.messages()[after:]:
                if msg.header.stamp == stamp:
                    return msg
            return None

        return wait_until(find, timeout, f"label image for stamp {stamp.sec}.{stamp.nanosec:09d}")

    def objects_for(self, stamp, timeout: float = 20.0):
        return wait_until(
            lambda: next((m for m in self.objects.messages() if m.header.stamp == stamp), None),
            timeout,
            "objects message",
        )

    def publish_and_wait(self, rgb: np.ndarray, encoding: str = "rgb8", timeout: float = 20.0):
        """Publish one frame and wait for its label image (re-publishing it if the best-effort sample was lost)."""
        deadline = time.monotonic() + timeout
        while True:
            header = self.publish(rgb, encoding)
            try:
                return header, self.labels_for(header.stamp, timeout=min(5.0, deadline - time.monotonic()))
            except pytest.fail.Exception:
                if time.monotonic() >= deadline:
                    raise

    def camera_headers(self) -> list:
        """Headers of the frames published by a `Camera` on this client."""
        return list(self.camera.headers) if self.camera is not None else []

    def diagnostics_totals(self) -> dict[str, str]:
        """Key/values of the newest diagnostics message of the tracker."""
        msgs = [m for m in self.diagnostics.messages() if m.status and m.status[0].name.startswith(NODE)]
        if not msgs:
            return {}
        return {kv.key: kv.value for kv in msgs[-1].status[0].values}

    def close(self) -> None:
        # The spin thread must be gone before the node is destroyed: otherwise rclpy hands the destruction to the spin
        # thread's wait, which then tears down the DDS participant holding the GIL and can livelock against a
        # discovery callback when the tracker node exits at the same moment (seen: a test run hung there).
        self._executor.shutdown()
        self._spinner.join(timeout=30.0)
        if self._spinner.is_alive():
            raise RuntimeError("the test client's executor did not stop")
        self.node.destroy_node()
        self.context.try_shutdown()


COUNTERS = ("frames_received", "frames_processed", "frames_dropped", "frames_rejected")


def settled_counts(client: Client, before: dict, min_processed: int, timeout: float = 20.0) -> dict:
    """Diagnostics of an idle node: at least `min_processed` frames processed since `before` (earlier diagnostics
    values, or {}) and every frame it got accounted for (processed, dropped or rejected)."""

    def settled():
        t = client.diagnostics_totals()
        if not t:
            return None
        delta = {k: int(t[k]) - int(before.get(k, 0)) for k in COUNTERS}
        if delta["frames_processed"] < min_processed:
            return None
        counted = delta["frames_processed"] + delta["frames_dropped"] + delta["frames_rejected"]
        return t if counted == delta["frames_received"] else None

    return wait_until(settled, timeout, "diagnostics that account for every frame")


def next_frame_out(client: Client, timeout: float = 30.0) -> None:
    """Until the label image of a frame not seen before arrives: the node has just finished a frame (and, under a
    camera faster than the model, just put the next one into the model)."""
    stamps = lambda: {(m.header.stamp.sec, m.header.stamp.nanosec) for m in client.labels.messages()}  # noqa: E731
    seen = stamps()
    wait_until(lambda: stamps() - seen, timeout, "the labels of a new frame")


def wait_until(predicate, timeout: float, what: str, poll: float = 0.01):
    """Poll `predicate` until it returns something truthy (returned) or `timeout` s pass (test fails)."""
    deadline = time.monotonic() + max(timeout, 0.0)
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout:.1f} s waiting for {what}")
        time.sleep(poll)


def labels_array(msg) -> np.ndarray:
    from threeam_ros import conversions

    return conversions.image_to_labels(msg)


def mask_image(mask: np.ndarray):
    from std_msgs.msg import Header

    from threeam_ros import conversions

    return conversions.mask_to_image(mask, Header())


def rect_mask(x0: int, y0: int, x1: int, y1: int, width: int = W, height: int = H) -> np.ndarray:
    mask = np.zeros((height, width), bool)
    mask[y0:y1, x0:x1] = True
    return mask


class Camera:
    """A background camera: publishes `frame(i)` at `rate_hz` until stopped; size and pause can change live."""

    def __init__(self, client: Client, rate_hz: float = 10.0, width: int = W, height: int = H):
        self.client, self.period = client, 1.0 / rate_hz
        self.size = (width, height)
        self.headers: list = []
        self._run = threading.Event()
        self._stop = threading.Event()
        self._publishing = threading.Lock()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._run.set()
        client.camera = self
        self._thread.start()

    def _loop(self) -> None:
        i = 0
        next_t = time.monotonic()
        while not self._stop.is_set():
            if not self._run.wait(0.1):
                continue
            with self._publishing:
                if not self._run.is_set():
                    continue
                width, height = self.size
                self.headers.append(self.client.publish(frame(i, width, height)))
            i += 1
            next_t += self.period
            self._stop.wait(max(0.0, next_t - time.monotonic()))
            next_t = max(next_t, time.monotonic() - self.period)

    def pause(self) -> None:
        """Stop publishing; returns once no frame is being published."""
        self._run.clear()
        with self._publishing:
            pass

    def resume(self) -> None:
        self._run.set()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5.0)
