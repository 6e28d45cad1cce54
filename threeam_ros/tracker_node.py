"""The threeam ROS 2 node: camera frames in, prompts by service, instance masks out.

Threads: the camera callback only stores the newest message in a one-slot buffer (an overwritten message is a
dropped frame); one worker thread decodes, tracks and publishes it; services run on a multi-threaded executor, so
they answer while a frame is in the model. Every tracker call holds `_tracker_lock`, so prompts never interleave
with a frame. A frame whose size differs from the stream's resets all objects and memory with a warning (prompts are
pixel positions of the old size, so resizing the new frame to the old size would track garbage).
"""

from __future__ import annotations

import signal
import sys
import threading
import time
import traceback

import numpy as np
import rclpy
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile, qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, RegionOfInterest

from threeam_interfaces.msg import TrackedObject, TrackedObjectArray
from threeam_interfaces.srv import AddPrompt, ListObjects, RemoveObject, Reset
from threeam_model.interface import (
    CameraGeometry,
    FrameError,
    FrameResult,
    ObjectResult,
    PromptError,
    Tracker,
    TrackerInputError,
    check_obj_id,
)
from threeam_model.reid.geometry import GeometryInputError, check_camera
from threeam_ros import conversions
from threeam_ros.conversions import ConversionError
from threeam_ros.frame_slot import LatestFrameSlot
from threeam_ros.geometry_sync import GeometrySync, transform_to_c2w
from threeam_ros.input_check import input_problem
from threeam_ros.node_stats import NodeStats, diagnostics_message
from threeam_ros.params import PARAMS, PARAMS_BY_NAME, check_value

# No QoS event callbacks on the sensor subscriptions (rclpy adds default ones): see threeam_ros/input_check.py.
_NO_QOS_EVENTS = SubscriptionEventCallbacks(use_default_callbacks=False)

NODE_NAME = "threeam_tracker"
INPUT_CHECK_GRACE_S = 3.0  # seconds after start before a silent camera topic is explained (DDS discovery)


class ConfigError(ValueError):
    """A parameter value the node cannot start with."""


def build_tracker(cfg: dict) -> tuple[Tracker, str]:
    """The one place the node makes its model, through threeam_model.factory: (tracker, a description for logs)."""
    import torch

    from threeam_model.factory import TrackerConfig, build_tracker

    if cfg["model.cpu_threads"] > 0:
        torch.set_num_threads(cfg["model.cpu_threads"])
    tiny = cfg["model.random_weights_tiny"]
    method = cfg["model.method"]
    if method == "auto":
        method = "3am" if cfg["model.threeam_checkpoint"] else "sam2"
    checkpoint = lambda name: None if tiny else (cfg[name] or None)  # noqa: E731  ("" = none)
    try:
        config = TrackerConfig(
            method=method,
            variant=cfg["model.variant"],
            image_size=cfg["model.image_size"],
            must3r=cfg["model.must3r"],
            sam2_checkpoint=checkpoint("model.sam2_checkpoint"),
            must3r_checkpoint=checkpoint("model.must3r_checkpoint"),
            threeam_checkpoint=checkpoint("model.threeam_checkpoint"),
            device=cfg["model.device"],
            dtype=cfg["model.dtype"],
            max_objects=cfg["tracker.max_objects"],
            max_conditioning_frames=cfg["tracker.max_conditioning_frames"],
            batch_objects=cfg["tracker.batch_objects"],
            memory_policy=cfg["tracker.memory_policy"],
            compile=cfg["model.compile"],
            must3r_max_keyframes=cfg["tracker.must3r_max_keyframes"],
            tiny=tiny,
            seed=cfg["model.seed"],
            reid=cfg["reid.source"] if cfg["reid.enabled"] else "off",
            reid_reject_out_of_view=cfg["reid.reject_out_of_view"],
        )
        tracker = build_tracker(config)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        raise ConfigError(f"cannot build the model: {exc}") from exc
    random = tiny or config.sam2_checkpoint is None or (method == "3am" and config.must3r_checkpoint is None)
    name = config.describe() + (" RANDOM WEIGHTS" if random else "")
    return tracker, f"{name} @{cfg['model.image_size']} {config.torch_device} {cfg['model.dtype']}"


class TrackerNode(Node):
    def __init__(self, **node_kwargs):
        super().__init__(NODE_NAME, **node_kwargs)
        for p in PARAMS:
            self.declare_parameter(
                p.name, p.default, ParameterDescriptor(description=p.description, read_only=p.read_only)
            )
        self.cfg = {p.name: self.get_parameter(p.name).value for p in PARAMS}
        problems = [why for p in PARAMS if (why := check_value(p, self.cfg[p.name]))]
        if problems:
            raise ConfigError("; ".join(problems))
        self.add_on_set_parameters_callback(self._on_set_parameters)

        self._tracker, self._model_name = build_tracker(self.cfg)
        if "RANDOM WEIGHTS" in self._model_name:
            self.get_logger().warning(
                f"!!! {self._model_name}: the model has RANDOM WEIGHTS, its masks are meaningless (tests, demos and "
                "timing only). Set model.random_weights_tiny false and model.sam2_checkpoint to a checkpoint path or "
                "auto (run threeam-download-weights) for real tracking. !!!"
            )
        self._tracker_lock = threading.Lock()  # serialises every tracker call
        self._state_lock = threading.Lock()  # guards the small snapshot below; never held during inference
        self._frame_header = None  # header of the tracker's current frame (None: no frame since start/reset)
        self._frame_rgb: np.ndarray | None = None
        self._stream_size: tuple[int, int] | None = None  # (H, W) of the current stream
        self._objects: dict[int, ObjectResult] = {}  # newest state of each tracked object

        self._stats = NodeStats()
        self._slot = LatestFrameSlot()
        self._log_times: dict[str, float] = {}

        out_qos = QoSProfile(depth=self.cfg["publish.queue_depth"])
        self._pub_labels = self.create_publisher(Image, self.cfg["topics.labels"], out_qos)
        self._pub_objects = self.create_publisher(TrackedObjectArray, self.cfg["topics.objects"], out_qos)
        self._pub_overlay = self.create_publisher(Image, self.cfg["topics.overlay"], out_qos)
        self._pub_diag = self.create_publisher(DiagnosticArray, self.cfg["topics.diagnostics"], 10)

        in_qos = qos_profile_sensor_data if self.cfg["input.qos"] == "sensor_data" else QoSProfile(depth=1)
        in_qos = QoSProfile(
            history=in_qos.history,
            depth=self.cfg["input.qos_depth"],
            reliability=in_qos.reliability,
            durability=in_qos.durability,
        )
        in_type = CompressedImage if self.cfg["input.transport"] == "compressed" else Image
        self._sub = self.create_subscription(
            in_type,
            self.cfg["topics.image"],
            self._on_image,
            in_qos,
            callback_group=MutuallyExclusiveCallbackGroup(),
            event_callbacks=_NO_QOS_EVENTS,
        )
        self._received_at_last_diag = -1
        self._geometry_sync: GeometrySync | None = None
        if self.cfg["reid.enabled"] and self.cfg["reid.source"] == "rgbd":
            self._subscribe_geometry()
        services = ReentrantCallbackGroup()
        self.create_service(AddPrompt, "~/add_prompt", self._on_add_prompt, callback_group=services)
        self.create_service(RemoveObject, "~/remove_object", self._on_remove_object, callback_group=services)
        self.create_service(Reset, "~/reset", self._on_reset, callback_group=services)
        self.create_service(ListObjects, "~/list_objects", self._on_list_objects, callback_group=services)
        self._last_diag = self._started = time.monotonic()
        self.create_timer(
            self.cfg["diagnostics.period"], self._publish_diagnostics, callback_group=MutuallyExclusiveCallbackGroup()
        )

        self._running = True
        self._worker = threading.Thread(target=self._work, name="threeam-inference", daemon=True)
        self._worker.start()
        self.get_logger().info(
            f"tracking {self._sub.topic_name} ({in_type.__name__}, {self.cfg['input.qos']} QoS) "
            f"with {self._model_name}; "
            f"labels on {self._pub_labels.topic_name}, services under {self.get_fully_qualified_name()}/"
        )

    # ------------------------------------------------------------------------------------------ frames

    def _subscribe_geometry(self) -> None:
        """reid.source rgbd: depth, camera_info and (unless the camera is static) pose feed a nearest-stamp sync.

        The pose comes from reid.pose_topic, else from TF when reid.world_frame is set, else it is the identity.
        """
        use_tf = not self.cfg["reid.pose_topic"] and bool(self.cfg["reid.world_frame"])
        self._geometry_sync = GeometrySync(
            self.cfg["reid.sync_tolerance"],
            static_pose=not self.cfg["reid.pose_topic"] and not use_tf,
            world_frame=self.cfg["reid.world_frame"],
            pose_lookup=self._tf_pose_lookup() if use_tf else None,
        )
        group = MutuallyExclusiveCallbackGroup()
        topics = [
            (Image, "reid.depth_topic", self._geometry_sync.add_depth),
            (CameraInfo, "reid.camera_info_topic", self._geometry_sync.add_camera_info),
        ]
        if self.cfg["reid.pose_topic"]:
            topics.append((PoseStamped, "reid.pose_topic", self._geometry_sync.add_pose))
        for msg_type, param, add in topics:

            def callback(msg, add=add, param=param):
                try:
                    add(msg)
                except ValueError as exc:  # ConversionError is one
                    self._stats.count("geometry_rejected")
                    self._stats.problem(f"{param}: {exc}")
                    self._warn_throttled(param, f"{param} message refused: {exc}")

            self.create_subscription(
                msg_type,
                self.cfg[param],
                callback,
                qos_profile_sensor_data,
                callback_group=group,
                event_callbacks=_NO_QOS_EVENTS,
            )

    def _tf_pose_lookup(self):
        """(camera frame_id, stamp) -> (camera-to-world from TF or None, why not), waiting up to reid.sync_wait."""
        try:  # a system ROS 2 has tf2_ros; the PyPI stack of scripts/setup_env.sh does not
            from tf2_ros import Buffer, TransformException, TransformListener
        except ImportError as exc:
            raise ConfigError(
                "reid.world_frame is set without reid.pose_topic, so the camera pose is looked up in TF, but tf2_ros "
                f"is not installed ({exc}): install ros-$ROS_DISTRO-tf2-ros, or publish the camera pose as "
                "geometry_msgs/PoseStamped and set reid.pose_topic"
            ) from None
        from rclpy.duration import Duration
        from rclpy.time import Time as RclTime

        buffer = Buffer()
        self._tf_listener = TransformListener(buffer, self, spin_thread=True)
        world, wait = self.cfg["reid.world_frame"], Duration(seconds=self.cfg["reid.sync_wait"])

        def lookup(camera_frame: str, stamp):
            try:
                tf = buffer.lookup_transform(world, camera_frame, RclTime.from_msg(stamp), timeout=wait)
            except TransformException as exc:
                return None, f"no TF {world} <- {camera_frame!r} at the frame's stamp: {exc}"
            return transform_to_c2w(tf.transform), ""

        return lookup

    def _frame_geometry(self, header) -> CameraGeometry | None:
        """This frame's depth, K and pose, waiting up to reid.sync_wait for them, checked as the re-identification
        mode will check them; None (counted, logged) if there are none or they are unusable, so a bad depth or pose
        costs only this frame's geometry, never the frame."""
        try:
            found, why = self._geometry_sync.geometry_for(header.stamp, self.cfg["reid.sync_wait"])
        except ConversionError as exc:
            found, why = None, f"depth refused: {exc}"
            self._stats.count("geometry_rejected")
        geometry = None
        if found is not None:
            try:
                geometry = check_camera(CameraGeometry(*found))
            except GeometryInputError as exc:
                why = f"depth/pose refused: {exc}"
                self._stats.count("geometry_rejected")
        if geometry is None:
            self._stats.count("frames_without_geometry")
            self._warn_throttled("geometry", f"frame {_stamp_str(header.stamp)} tracked without geometry: {why}")
        else:
            self._stats.count("frames_with_geometry")
        return geometry

    def _on_image(self, msg) -> None:
        self._stats.count("frames_received")
        if self._slot.put((msg, time.perf_counter())):
            self._stats.count("frames_dropped")

    def _work(self) -> None:
        while self._running:
            item = self._slot.take(timeout=0.2)
            if item is None:
                continue
            try:
                self._process(*item)
            except Exception as exc:  # the worker must survive anything; say what happened
                if not self.context.ok():
                    return  # shutting down (Ctrl-C): the frame in flight has nowhere to be published
                self._stats.count("internal_errors")
                self._stats.problem(f"internal error: {exc}")
                self._warn_throttled(
                    "internal", f"internal error on a frame: {exc}\n{traceback.format_exc()}", error=True
                )

    def _process(self, msg, t_received: float) -> None:
        t0 = time.perf_counter()
        try:
            rgb = (
                conversions.compressed_to_rgb(msg)
                if isinstance(msg, CompressedImage)
                else conversions.image_to_rgb(msg)
            )
        except ConversionError as exc:
            self._reject(f"frame rejected: {exc}")
            return
        geometry = self._frame_geometry(msg.header) if self._geometry_sync is not None else None
        t1 = time.perf_counter()
        with self._tracker_lock:
            size = rgb.shape[:2]
            if self._stream_size is not None and size != self._stream_size:
                self.get_logger().warning(
                    f"image size changed from {self._stream_size[1]}x{self._stream_size[0]} to {size[1]}x{size[0]} "
                    f"(WxH): all objects and memory were reset; prompt the objects again"
                )
                self._reset_locked()
            try:
                result = self._tracker.track(rgb, geometry=geometry)
            except FrameError as exc:
                self._reject(f"frame rejected by the tracker: {exc}")
                return
            self._stream_size = size
            with self._state_lock:
                self._frame_header, self._frame_rgb = msg.header, rgb
                self._objects = dict(result.objects)
        t2 = time.perf_counter()
        self._publish(msg.header, rgb, result.objects, result.label_image(np.uint16))
        t3 = time.perf_counter()
        self._stats.count("frames_processed")
        self._stats.count("reacquisitions", sum(obj.reacquired for obj in result.objects.values()))
        stages = {"queue": t0 - t_received, "decode": t1 - t0, "track": t2 - t1, "publish": t3 - t2}
        stages["node_total"] = t3 - t_received
        stages.update({f"model.{k}": v for k, v in result.timings.items()})
        stamp_ns = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
        if stamp_ns:
            stages["since_stamp"] = (self.get_clock().now().nanoseconds - stamp_ns) * 1e-9
        self._stats.add_latencies(stages)

    def _reject(self, text: str) -> None:
        self._stats.count("frames_rejected")
        self._stats.problem(text)
        self._warn_throttled("reject", text)

    def _publish(self, header, rgb: np.ndarray, objects: dict[int, ObjectResult], labels: np.ndarray) -> None:
        encoding = self.get_parameter("publish.label_encoding").value
        try:
            self._pub_labels.publish(conversions.labels_to_image(labels, header, encoding))
        except ConversionError as exc:
            self._warn_throttled("labels", f"label image not published: {exc}")
        with_masks = self.get_parameter("publish.object_masks").value
        array = TrackedObjectArray(header=header)
        array.objects = [tracked_object(obj, header, with_masks) for _, obj in sorted(objects.items())]
        self._pub_objects.publish(array)
        if self.get_parameter("publish.overlay").value:
            alpha = self.get_parameter("publish.overlay_alpha").value
            self._pub_overlay.publish(conversions.rgb_to_image(conversions.draw_overlay(rgb, labels, alpha), header))

    # ------------------------------------------------------------------------------------------ services

    def _on_add_prompt(self, req: AddPrompt.Request, resp: AddPrompt.Response) -> AddPrompt.Response:
        def run():
            obj_id = check_obj_id(int(req.object_id))
            if obj_id > 255 and self.get_parameter("publish.label_encoding").value == "mono8":
                raise PromptError(f"object id {obj_id} does not fit the mono8 label image; use ids 1..255 or mono16")
            points = labels = None
            if len(req.points):
                points = [[p.x, p.y] for p in req.points]
                labels = [1 if p.positive else 0 for p in req.points]
            box = list(req.box) if len(req.box) else None
            mask = conversions.image_to_mask(req.mask)
            with self._tracker_lock:
                header = self._frame_header
                if header is None:
                    raise PromptError(
                        "no camera frame tracked yet (or since the last reset); "
                        f"publish images on {self._sub.topic_name}"
                    )
                if (req.stamp.sec or req.stamp.nanosec) and req.stamp != header.stamp:
                    raise PromptError(
                        f"frame stamp {_stamp_str(req.stamp)} is not in memory: the node keeps only its newest frame "
                        f"({_stamp_str(header.stamp)}); send stamp 0 to prompt the newest frame"
                    )
                is_new = obj_id not in self._tracker.object_ids
                if is_new and len(self._tracker.object_ids) >= self.cfg["tracker.max_objects"]:
                    raise PromptError(
                        f"already tracking tracker.max_objects = {self.cfg['tracker.max_objects']} objects; "
                        f"remove one first"
                    )
                result = self._tracker.add_prompt(obj_id, points=points, labels=labels, box=box, mask=mask)
                with self._state_lock:
                    self._objects[obj_id] = result
                    objects, rgb = dict(self._objects), self._frame_rgb
                if self.get_parameter("publish.after_prompt").value:
                    # Under the tracker lock, so it cannot overtake the next frame's outputs.
                    frame = FrameResult(self._tracker.frame_index, rgb.shape[:2], objects)
                    self._publish(header, rgb, objects, frame.label_image(np.uint16))
            resp.object = tracked_object(result, header, self.get_parameter("publish.object_masks").value)
            verb = "started" if is_new else "refined"
            return (
                f"object {obj_id} {verb} on frame {_stamp_str(header.stamp)}: {int(result.mask.sum())} pixels, "
                f"score {result.score:.2f}"
            )

        return self._answer(resp, run, "add_prompt")

    def _on_remove_object(self, req: RemoveObject.Request, resp: RemoveObject.Response) -> RemoveObject.Response:
        def run():
            obj_id = check_obj_id(int(req.object_id))
            with self._tracker_lock:
                if obj_id not in self._tracker.object_ids:
                    raise PromptError(f"unknown object id {obj_id}; tracked ids: {self._tracker.object_ids or 'none'}")
                self._tracker.remove_object(obj_id)
                with self._state_lock:
                    self._objects.pop(obj_id, None)
                left = self._tracker.object_ids
            return f"object {obj_id} removed; still tracking {left or 'no objects'}"

        return self._answer(resp, run, "remove_object")

    def _on_reset(self, req: Reset.Request, resp: Reset.Response) -> Reset.Response:
        def run():
            with self._tracker_lock:
                n = len(self._tracker.object_ids)
                self._reset_locked()
            return f"reset: forgot {n} object(s) and all memory; the next frame starts a new stream"

        return self._answer(resp, run, "reset")

    def _on_list_objects(self, req: ListObjects.Request, resp: ListObjects.Response) -> ListObjects.Response:
        def run():
            # Answers from the snapshot, without waiting for a frame in the model.
            with self._state_lock:
                header, objects = self._frame_header, dict(self._objects)
            header = header if header is not None else Image().header
            resp.objects = [tracked_object(obj, header, False) for _, obj in sorted(objects.items())]
            return f"{len(objects)} object(s): {sorted(objects) or 'none'}"

        return self._answer(resp, run, "list_objects")

    def _answer(self, resp, run, service: str):
        """Fill success/message: input errors become a refusal with the reason; nothing escapes to the executor."""
        t0 = time.perf_counter()
        try:
            resp.message = run()
            resp.success = True
        except (TrackerInputError, ConversionError) as exc:
            resp.success, resp.message = False, str(exc)
        except Exception as exc:
            self._stats.count("internal_errors")
            self.get_logger().error(f"internal error in a service call: {exc}\n{traceback.format_exc()}")
            resp.success, resp.message = False, f"internal error: {type(exc).__name__}: {exc}"
        self._stats.add_latencies({f"service.{service}": time.perf_counter() - t0})
        return resp

    def _reset_locked(self) -> None:
        """Forget all objects and memory (caller holds _tracker_lock)."""
        self._tracker.reset()
        self._stream_size = None
        with self._state_lock:
            self._frame_header, self._frame_rgb, self._objects = None, None, {}

    # ------------------------------------------------------------------------------------------ housekeeping

    def _publish_diagnostics(self) -> None:
        now = time.monotonic()
        snap = self._stats.snapshot(now - self._last_diag)
        self._last_diag = now
        received = snap["totals"]["frames_received"]
        # nothing arrived for a whole period: say why, if the graph can (after discovery has had time to run)
        if received == self._received_at_last_diag and now - self._started > INPUT_CHECK_GRACE_S:
            problem = input_problem(
                self.get_publishers_info_by_topic(self._sub.topic_name),
                self._sub.topic_name,
                f"sensor_msgs/msg/{self._sub.msg_type.__name__}",
                reliable=self.cfg["input.qos"] == "reliable",
            )
            if problem:
                snap["last_problem"] = problem
                self._warn_throttled(f"input: {problem}", problem, period=10.0)  # a new reason is logged at once
        self._received_at_last_diag = received
        with self._state_lock:
            n = len(self._objects)
        name = f"{self.get_fully_qualified_name()}: tracking"
        self._pub_diag.publish(diagnostics_message(snap, name, self.get_clock().now().to_msg(), n, self._model_name))

    def _on_set_parameters(self, params) -> SetParametersResult:
        for param in params:
            spec = PARAMS_BY_NAME.get(param.name)
            why = check_value(spec, param.value) if spec else None
            if why is None and param.name == "publish.label_encoding" and param.value == "mono8":
                with self._state_lock:
                    too_big = [i for i in self._objects if i > 255]
                if too_big:
                    why = f"objects {too_big} have ids above 255, which mono8 cannot hold; remove them first"
            if why:
                return SetParametersResult(successful=False, reason=why)
        return SetParametersResult(successful=True)

    def _warn_throttled(self, key: str, text: str, period: float = 2.0, error: bool = False) -> None:
        now = time.monotonic()
        if now - self._log_times.get(key, -1e9) >= period:
            self._log_times[key] = now
            (self.get_logger().error if error else self.get_logger().warning)(text)

    def close(self) -> None:
        self._running = False
        self._slot.close()
        self._worker.join(timeout=10.0)


def tracked_object(obj: ObjectResult, header, with_mask: bool) -> TrackedObject:
    msg = TrackedObject(object_id=obj.obj_id, score=float(obj.score), visible=bool(obj.visible))
    msg.reacquired = bool(getattr(obj, "reacquired", False))
    if obj.box is not None:
        x0, y0, x1, y1 = obj.box
        msg.bbox = RegionOfInterest(x_offset=x0, y_offset=y0, width=x1 - x0 + 1, height=y1 - y0 + 1)
    if with_mask:
        msg.mask = conversions.mask_to_image(obj.mask, header)
    return msg


def _stamp_str(stamp: Time) -> str:
    return f"{stamp.sec}.{stamp.nanosec:09d}"


def main(args=None) -> int:
    rclpy.init(args=args)
    try:
        node = TrackerNode()
    except (ConfigError, ParameterException) as exc:
        print(f"tracker_node: cannot start: {exc}", file=sys.stderr)
        rclpy.try_shutdown()
        return 2
    executor = MultiThreadedExecutor(num_threads=4)
    executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        # Ctrl-C under `ros2 launch` sends SIGINT twice (the terminal's and the one launch forwards): a second
        # KeyboardInterrupt here would cut the cleanup short (tracebacks, or an abort on the joined thread).
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        node.close()
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
