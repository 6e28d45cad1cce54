"""The threeam ROS 2 node: camera frames in, prompts by service, instance masks out. A managed (lifecycle) node.

Lifecycle: configure reads the parameters (refusing unknown names and bad values) and loads the model into a
`TrackingSession` (threeam_ros/session.py), with the output publishers and services; activate subscribes to the
camera and starts the inference thread; deactivate unsubscribes and stops the thread, keeping objects and memory;
cleanup drops the session and frees the model (and cached GPU memory). A failure the node cannot carry on from (too
many model faults in a row, an unexpected error in a transition) goes through the error transition, which frees
everything as cleanup does, publishes an ERROR on /diagnostics and leaves the node unconfigured: configure brings it
back. `lifecycle.autostart` (default true) configures and activates at start.

Threads: the camera callback only stores the newest message in a one-slot buffer (an overwritten message is a
dropped frame); one worker thread decodes, tracks and publishes it; services run on a multi-threaded executor, so
they answer while a frame is in the model (list_objects at once; prompts wait for the frame in the model, since they
act on the tracker's state, and then go before the next frame: TrackingSession's tracker lock).
"""

from __future__ import annotations

import dataclasses
import gc
import os
import signal
import sys
import threading
import time
import traceback
import weakref

import numpy as np
import rclpy
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray, KeyValue
from geometry_msgs.msg import PointStamped, PoseStamped
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.event_handler import SubscriptionEventCallbacks, UnsupportedEventTypeError
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import QoSProfile, qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from threeam_interfaces.srv import AddPrompt, Discover, ListObjects, RemoveObject, Reset
from threeam_model.interface import (
    CameraGeometry,
    FrameError,
    ObjectResult,
    PromptError,
    TrackerInputError,
    check_obj_id,
)
from threeam_model.reid.geometry import GeometryInputError, check_camera
from threeam_ros import conversions
from threeam_ros.conversions import ConversionError
from threeam_ros.frame_slot import LatestFrameSlot
from threeam_ros.geometry_sync import GeometrySync, transform_to_c2w
from threeam_ros.input_check import (
    CameraCallbackGroup,
    camera_reliability,
    input_problem,
    lost_frames_problem,
    same_name_problem,
)
from threeam_ros.node_stats import NodeStats, diagnostics_message
from threeam_ros.outputs import FrameOutputs, Object3DOutputs, OutputTopics, PublishOptions, tracked_object
from threeam_ros.params import (
    PARAMS,
    PARAMS_BY_NAME,
    ConfigError,
    check_value,
    descriptor,
    has_random_weights,
    tracker_config,
    unknown_names,
)
from threeam_ros.session import ModelFault, NoFrameError, StaleFrameError, TrackingSession

# No QoS event callbacks on the sensor subscriptions (rclpy adds default ones): see threeam_ros/input_check.py.
_NO_QOS_EVENTS = SubscriptionEventCallbacks(use_default_callbacks=False)

NODE_NAME = "threeam_tracker"
INPUT_CHECK_GRACE_S = 3.0  # seconds after activation before a silent camera topic is explained (DDS discovery)
SUCCESS, FAILURE, ERROR = (
    TransitionCallbackReturn.SUCCESS,
    TransitionCallbackReturn.FAILURE,
    TransitionCallbackReturn.ERROR,
)


def load_session(cfg: dict, on_size_change) -> tuple[TrackingSession, str, bool]:
    """The model of a configuration in a TrackingSession: (session, a description for logs, random weights?)."""
    import torch

    from threeam_model.factory import build_tracker

    config = tracker_config(cfg)
    if cfg["model.cpu_threads"] > 0:
        torch.set_num_threads(cfg["model.cpu_threads"])
    try:
        tracker = build_tracker(config)
        device = config.torch_device
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        raise ConfigError(f"cannot build the model: {exc}") from exc
    random = has_random_weights(config)
    size = config.image_size or (64 if config.tiny else 1024)  # image_size None: the model's own
    name = f"{config.describe()}{' RANDOM WEIGHTS' if random else ''} @{size} {device} "
    session = TrackingSession(tracker, frame_key=lambda header: _stamp_str(header.stamp), on_size_change=on_size_change)
    return session, name + cfg["model.dtype"], random


class TrackerNode(LifecycleNode):
    def __init__(self, **node_kwargs):
        super().__init__(NODE_NAME, **node_kwargs)
        # rclpy keeps this node's parameter overrides (parameters files and -p) here; names it has no parameter for
        # would otherwise be ignored silently
        overrides = dict(self._parameter_overrides)
        self._declare_problems: dict[str, str] = {}  # name -> why its given value was refused at declaration
        for p in PARAMS:
            try:
                self.declare_parameter(p.name, p.default, descriptor(p))
            except ParameterException as exc:  # a wrong type or out of range: refused at configure, with the reason
                given = overrides[p.name].value if p.name in overrides else p.default
                self._declare_problems[p.name] = check_value(p, given) or f"{p.name}: {exc}"
                self.declare_parameter(p.name, p.default, descriptor(p), ignore_override=True)
        self._unknown_parameters = unknown_names(overrides)
        self.add_on_set_parameters_callback(self._on_set_parameters)

        self.cfg: dict = {}
        self.state = "unconfigured"
        self.configure_error = ""  # why the last configure failed
        self._error = ""  # why the node went through its error transition
        self._session: TrackingSession | None = None
        self._model_name = ""
        self._stats = NodeStats()
        self._log_times: dict[str, float] = {}
        self._entities: list = []  # (destroy function, entity) made at configure
        self._active_entities: list = []  # made at activate
        self._worker: threading.Thread | None = None
        self._slot: LatestFrameSlot | None = None
        self._running = False
        self._fault_transition = threading.Event()  # set while too many faults take the node to its error path
        self._geometry_sync: GeometrySync | None = None
        self._tf_listener = None
        self._pub_diag = None
        self._image_topic = ""
        self._image_sub = None
        self._input_lock = threading.RLock()  # the camera subscription: re-subscribed by the diagnostics timer
        self._input_reliable = False  # the camera subscription's reliability (input.qos auto: the camera's)
        self._lost_counted = False  # whether the rmw reports lost messages (Fast DDS does)

    # ------------------------------------------------------------------------------------------ lifecycle

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.configure_error = self._error = ""
        try:
            self.cfg = self._read_config()
            self._stats = NodeStats(rate_window=self.cfg["diagnostics.rate_window"])
            self._session, self._model_name, random = load_session(self.cfg, self._on_size_change)
            if random:
                self.get_logger().warning(
                    f"!!! {self._model_name}: the model has RANDOM WEIGHTS, its masks are meaningless (tests, demos "
                    "and timing only). Set model.tiny false and model.sam2_checkpoint to a checkpoint "
                    "path or auto (run threeam-download-weights) for real tracking. !!!"
                )
            if (self.cfg["reid.enabled"] or self.cfg["objects3d.enabled"]) and self.cfg["reid.source"] == "rgbd":
                self._geometry_sync = self._make_geometry_sync()
            self._make_outputs_and_services()
        except ConfigError as exc:
            self.configure_error = str(exc)
            self.get_logger().error(f"cannot configure: {exc}")
            self._release()
            return FAILURE
        except Exception as exc:
            self.configure_error = f"internal error: {type(exc).__name__}: {exc}"
            self._error = f"configure failed: {self.configure_error}"
            self.get_logger().error(f"configure failed: {exc}\n{traceback.format_exc()}")
            return ERROR
        self.state = "inactive"
        self.get_logger().info(f"configured with {self._model_name}; services under {self.get_fully_qualified_name()}/")
        return super().on_configure(state)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        result = super().on_activate(state)  # output publishers first, so nothing tracked goes unpublished
        try:
            self._subscribe()
            self._subscribe_camera_info()
            if self.cfg["prompt.clicks"]:
                self._subscribe_clicks()
            session = self._session
            self._outputs.announce(session.snapshot().objects if session else (), Image().header)
        except Exception as exc:
            self._error = f"activate failed: {type(exc).__name__}: {exc}"
            self.get_logger().error(f"{self._error}\n{traceback.format_exc()}")
            return ERROR
        self._activated_at = time.monotonic()
        self._received_at_last_diag = -1
        self._running = True
        self._slot = LatestFrameSlot()
        self._worker = threading.Thread(target=self._work, args=(self._slot,), name="threeam-inference", daemon=True)
        self._worker.start()
        self.state = "active"
        self.get_logger().info(
            f"tracking {self._image_topic} ({self._input_type.__name__}, {self._input_qos_text()}) with "
            f"{self._model_name}; labels on {self._outputs.labels.topic_name}"
        )
        return result

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_taking_frames()
        self.state = "inactive"
        result = super().on_deactivate(state)
        if self._fault_transition.is_set():
            return ERROR  # the way into the error transition (on_error) after too many model faults
        self.get_logger().info("deactivated: no longer taking frames; objects and memory are kept")
        return result

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        self.get_logger().info(f"cleaned up: {self._release_report}")
        return super().on_cleanup(state)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_taking_frames()
        self._release()
        return super().on_shutdown(state)

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_taking_frames()
        error = self._error or "an unexpected error in a lifecycle transition"
        self.get_logger().error(f"error transition: {error}; the node is unconfigured, configure brings it back")
        self._publish_diagnostics(error=f"{error}; the node is unconfigured, configure it again")
        self._release()
        self._fault_transition.clear()
        super().on_error(state)
        return SUCCESS  # -> unconfigured

    def _read_config(self) -> dict:
        cfg = {p.name: self.get_parameter(p.name).value for p in PARAMS}
        problems = list(self._declare_problems.values())
        problems += [
            why for p in PARAMS if p.name not in self._declare_problems and (why := check_value(p, cfg[p.name]))
        ]
        if self._unknown_parameters:
            problems.append(
                f"unknown parameter(s) {', '.join(self._unknown_parameters)} (a typo? the node's parameters are "
                "listed in config/tracker.yaml and the README)"
            )
        if problems:
            raise ConfigError("; ".join(problems))
        return cfg

    def _make_outputs_and_services(self) -> None:
        topics = OutputTopics(**{f.name: self.cfg[f"topics.{f.name}"] for f in dataclasses.fields(OutputTopics)})
        self._outputs = FrameOutputs(self, topics, self.cfg["publish.queue_depth"])
        self._entities.append((FrameOutputs.destroy, self._outputs))
        self._outputs_3d = None
        self._newest_geometry: CameraGeometry | None = None
        if self.cfg["objects3d.enabled"]:
            self._outputs_3d = Object3DOutputs(self, self.cfg["publish.queue_depth"])
            self._entities.append((Object3DOutputs.destroy, self._outputs_3d))
        self._mask_generator = None  # SAM 2's automatic mask generator, made at the first discovery
        self._last_clicked: int | None = None  # the object a negative click applies to
        # a plain publisher: the error transition reports on it after the lifecycle publishers are deactivated
        self._pub_diag = self.create_publisher(DiagnosticArray, self.cfg["topics.diagnostics"], 10)
        self._entities.append((self.destroy_publisher, self._pub_diag))
        services = ReentrantCallbackGroup()
        for srv_type, name, callback in (
            (AddPrompt, "~/add_prompt", self._on_add_prompt),
            (RemoveObject, "~/remove_object", self._on_remove_object),
            (Reset, "~/reset", self._on_reset),
            (ListObjects, "~/list_objects", self._on_list_objects),
            (Discover, "~/discover", self._on_discover),
        ):
            self._entities.append(
                (self.destroy_service, self.create_service(srv_type, name, callback, callback_group=services))
            )
        timer = self.create_timer(
            self.cfg["diagnostics.period"], self._publish_diagnostics, callback_group=MutuallyExclusiveCallbackGroup()
        )
        self._entities.append((self.destroy_timer, timer))

    def _subscribe(self) -> None:
        self._input_type = CompressedImage if self.cfg["input.transport"] == "compressed" else Image
        reliable = {"reliable": True, "sensor_data": False}.get(self.cfg["input.qos"])
        if reliable is None:  # auto: what the camera publishes, if it is already there (else best effort for now)
            topic = self.resolve_topic_name(self.cfg["topics.image"])
            reliable = bool(camera_reliability(self.get_publishers_info_by_topic(topic)))
        self._subscribe_image(reliable)
        if self._geometry_sync is not None:
            self._subscribe_geometry()

    def _subscribe_image(self, reliable: bool) -> None:
        """(Re)subscribe to the camera, best effort or reliable, counting the frames the middleware reports lost.

        The message-lost event is the one QoS event on this subscription, in a CameraCallbackGroup with it; see
        threeam_ros/input_check.py for why the others stay off and why that group."""
        base = QoSProfile(depth=1) if reliable else qos_profile_sensor_data
        qos = QoSProfile(
            history=base.history,
            depth=self.cfg["input.qos_depth"],
            reliability=base.reliability,
            durability=base.durability,
        )
        args = (self._input_type, self.cfg["topics.image"], self._on_image, qos)
        lost = SubscriptionEventCallbacks(message_lost=self._on_frames_lost, use_default_callbacks=False)
        with self._input_lock:
            old, self._image_sub = self._image_sub, None
            if old is not None:
                self._active_entities.remove((self.destroy_subscription, old))
                self.destroy_subscription(old)
            try:
                sub = self.create_subscription(*args, callback_group=CameraCallbackGroup(), event_callbacks=lost)
                self._lost_counted = True
            except UnsupportedEventTypeError:  # an rmw without the event: frames it loses cannot be counted
                group = MutuallyExclusiveCallbackGroup()
                sub = self.create_subscription(*args, callback_group=group, event_callbacks=_NO_QOS_EVENTS)
                self._lost_counted = False
            self._image_sub, self._input_reliable = sub, reliable
            self._image_topic = sub.topic_name
            self._active_entities.append((self.destroy_subscription, sub))

    def _follow_camera_qos(self) -> None:
        """input.qos auto: re-subscribe when the camera's reliability differs from the subscription's (a camera that
        appeared after activation, or one that came back with other QoS); nothing while no publisher is known."""
        if self.cfg["input.qos"] != "auto":
            return
        with self._input_lock:  # not while deactivate unsubscribes
            if self._image_sub is None:
                return
            reliable = camera_reliability(self.get_publishers_info_by_topic(self._image_topic))
            if reliable is None or reliable == self._input_reliable:
                return
            self._subscribe_image(reliable)
        self.get_logger().info(f"input.qos auto: {self._image_topic} now subscribed {self._input_qos_text()}")

    def _input_qos_text(self) -> str:
        text = f"{'reliable' if self._input_reliable else 'best effort'} (input.qos {self.cfg['input.qos']})"
        return text if self._lost_counted else text + ", lost frames not counted: this rmw has no message-lost event"

    def _on_frames_lost(self, info) -> None:
        """The middleware lost frames of the camera before the node saw them (best-effort samples it dropped)."""
        n = int(info.total_count_change)
        if n <= 0:
            return
        self._stats.count("frames_lost", n)
        profile = os.environ.get("FASTDDS_DEFAULT_PROFILES_FILE", "")
        text = lost_frames_problem(n, self._stats.totals["frames_lost"], self._image_topic, profile)
        self._stats.problem(text)
        self._warn_throttled("frames lost", text, period=10.0)

    def _subscribe_camera_info(self) -> None:
        """The camera's calibration, republished beside the overlay (with a nominal one until it arrives)."""
        sub = self.create_subscription(
            CameraInfo,
            self.cfg["topics.camera_info"],
            self._outputs.set_camera_info,
            qos_profile_sensor_data,
            callback_group=MutuallyExclusiveCallbackGroup(),
            event_callbacks=_NO_QOS_EVENTS,
        )
        self._active_entities.append((self.destroy_subscription, sub))

    def _subscribe_clicks(self) -> None:
        """Clicks as prompts: rqt_image_view's clicks on the overlay, and ~/prompt_point(_negative)."""
        group = MutuallyExclusiveCallbackGroup()  # one click at a time, in order
        overlay = self._outputs.overlay.topic_name
        topics = ((f"{overlay}_mouse_left", True), ("~/prompt_point", True), ("~/prompt_point_negative", False))
        for topic, positive in topics:
            sub = self.create_subscription(
                PointStamped,
                topic,
                lambda msg, positive=positive: self._on_click(msg, positive),
                10,
                callback_group=group,
                event_callbacks=_NO_QOS_EVENTS,
            )
            self._active_entities.append((self.destroy_subscription, sub))

    def _stop_taking_frames(self) -> None:
        """Unsubscribe and stop the inference thread (after the frame in flight); objects and memory stay."""
        with self._input_lock:
            for destroy, entity in reversed(self._active_entities):
                destroy(entity)
            self._active_entities.clear()
            self._image_sub = None
        self._running = False
        if self._slot is not None:
            self._slot.close()
        if self._worker is not None and self._worker is not threading.current_thread():
            self._worker.join(timeout=60.0)
        self._worker = None

    def _release(self) -> None:
        """Destroy what configure made and drop the model; `_release_report` says whether the tracker was freed."""
        for destroy, entity in reversed(self._entities):
            destroy(entity)
        self._entities.clear()
        self._pub_diag = None
        if self._tf_listener is not None:
            self._tf_listener.unregister()
            self._tf_listener = None
        self._geometry_sync = None
        self._mask_generator = None
        self.state = "unconfigured"
        session, self._session = self._session, None
        if session is None:
            self._release_report = "no model was loaded"
            return
        tracker = weakref.ref(session._live_tracker())
        session.release()
        del session
        gc.collect()
        import torch

        gpu = ""
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
            gpu = f", CUDA memory allocated {torch.cuda.memory_allocated() / 2**20:.0f} MiB"
        freed = "tracker freed" if tracker() is None else "TRACKER STILL REFERENCED"
        self._release_report = f"model released ({freed}{gpu})"

    # ------------------------------------------------------------------------------------------ frames

    def _make_geometry_sync(self) -> GeometrySync:
        """reid.source rgbd: depth, camera_info and (unless the camera is static) pose feed a nearest-stamp sync.

        The pose comes from reid.pose_topic, else from TF when reid.world_frame is set, else it is the identity.
        """
        use_tf = not self.cfg["reid.pose_topic"] and bool(self.cfg["reid.world_frame"])
        return GeometrySync(
            self.cfg["reid.sync_tolerance"],
            static_pose=not self.cfg["reid.pose_topic"] and not use_tf,
            world_frame=self.cfg["reid.world_frame"],
            pose_lookup=self._tf_pose_lookup() if use_tf else None,
        )

    def _subscribe_geometry(self) -> None:
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

            sub = self.create_subscription(
                msg_type,
                self.cfg[param],
                callback,
                qos_profile_sensor_data,
                callback_group=group,
                event_callbacks=_NO_QOS_EVENTS,
            )
            self._active_entities.append((self.destroy_subscription, sub))

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
        slot = self._slot
        if slot is not None and slot.put((msg, time.perf_counter())):
            self._stats.count("frames_dropped")

    def _work(self, slot: LatestFrameSlot) -> None:
        while self._running:
            item = slot.take(timeout=0.2)
            if item is None:
                continue
            try:
                self._process(*item)
            except ModelFault as fault:
                if self._on_model_fault(fault):
                    return
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
        try:
            result, labels = self._session.track(rgb, geometry, frame=msg.header)
        except FrameError as exc:
            self._reject(f"frame rejected by the tracker: {exc}")
            return
        t2 = time.perf_counter()
        self._newest_geometry = geometry  # for the 3D outputs of this frame, also when a prompt republishes it
        self._publish(msg.header, rgb, result.objects, labels)
        every = self.get_parameter("discover.every_n_frames").value
        # the count, not snapshot(): a snapshot resets the latencies /diagnostics reports
        if every and (self._stats.totals["frames_processed"] + 1) % every == 0:
            self._discover_now(0, "periodic discovery")
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

    def _on_model_fault(self, fault: ModelFault) -> bool:
        """Count a frame the model failed on; True when it was one too many in a row (the error transition starts)."""
        self._stats.count("model_faults")
        what = "out of memory" if fault.out_of_memory else "the model failed"
        text = f"frame dropped: {what} ({fault}); {fault.consecutive} in a row"
        self._stats.problem(text)
        self._warn_throttled(
            f"fault: {what}", f"{text}\n{''.join(traceback.format_exception(fault.cause))}", error=True
        )
        limit = self.cfg["model.max_consecutive_faults"]
        if fault.consecutive < limit:
            return False
        self._error = (
            f"the model failed on {fault.consecutive} frames in a row (model.max_consecutive_faults = {limit}): {fault}"
        )
        self._fault_transition.set()
        self._running = False
        # deactivate (which joins this thread) from another thread; its ERROR result leads into on_error
        threading.Thread(target=self.trigger_deactivate, name="threeam-fault-transition", daemon=True).start()
        return True

    def _reject(self, text: str) -> None:
        self._stats.count("frames_rejected")
        self._stats.problem(text)
        self._warn_throttled("reject", text)

    def _on_size_change(self, old: tuple[int, int], new: tuple[int, int]) -> None:
        text = (
            f"image size changed from {old[1]}x{old[0]} to {new[1]}x{new[0]} (WxH): all objects and memory were "
            "reset; prompt the objects again"
        )
        publishers = self.get_publishers_info_by_topic(self._image_topic)
        names = ", ".join(sorted({f"{i.node_namespace.rstrip('/')}/{i.node_name}" for i in publishers}))
        if len(publishers) > 1:
            text += (
                f". {len(publishers)} publishers on {self._image_topic} ({names}): cameras of different sizes on one "
                "topic reset the tracker at every switch; give each camera its own topic (one node per camera)"
            )
        elif publishers:
            text += f" (publisher: {names})"
        self._stats.count("size_changes")
        self._stats.problem(text)
        # two cameras on one topic change the size on every frame: one line per size pair every 10 s, not a flood
        self._warn_throttled(f"size {old}->{new}", text, period=10.0)

    def _publish(self, header, rgb: np.ndarray, objects: dict[int, ObjectResult], labels: np.ndarray) -> None:
        for problem in self._outputs.publish(header, rgb, objects, labels, self._publish_options()):
            self._warn_throttled("publish", problem)
        if self._outputs_3d is not None:
            self._publish_3d(header, objects, self._newest_geometry)

    def _publish_options(self) -> PublishOptions:
        return PublishOptions(
            **{f.name: self.get_parameter(f"publish.{f.name}").value for f in dataclasses.fields(PublishOptions)}
        )

    def _publish_3d(self, header, objects: dict[int, ObjectResult], geometry: CameraGeometry | None) -> None:
        """Per-object 3D: re-identification's anchors (world) when it runs, else this frame's masks and depth."""
        from threeam_model.objects3d import Object3DSettings, objects_from_anchors, objects_from_frame

        settings = Object3DSettings(
            voxel=self.get_parameter("objects3d.voxel").value,
            max_points=self.get_parameter("objects3d.max_points").value,
        )
        world = self.cfg["reid.world_frame"]
        anchors = self._session.anchor_points() if self.cfg["reid.enabled"] else None
        if anchors is not None:
            found = objects_from_anchors(anchors, {i: o.score for i, o in objects.items()}, settings)
        elif geometry is not None:
            found = objects_from_frame(objects, geometry, settings, in_world=bool(world))
        else:
            self._stats.count("frames_without_3d")
            self._warn_throttled("3d", "objects3d: no geometry for this frame (reid.source rgbd topics), no 3D", 10.0)
            return
        frame_header = type(header)(stamp=header.stamp, frame_id=world or header.frame_id)
        self._outputs_3d.publish(frame_header, found)

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
            if req.mask_file:
                if mask is not None:
                    raise PromptError("send the mask either as an image or as mask_file, not both")
                mask = conversions.mask_from_file(req.mask_file, obj_id)
            stamp = _stamp_str(req.stamp) if (req.stamp.sec or req.stamp.nanosec) else None
            republish = (
                self._publish if self.state == "active" and self.get_parameter("publish.after_prompt").value else None
            )
            try:
                outcome = self._session.prompt(
                    obj_id, points=points, labels=labels, box=box, mask=mask, frame_key=stamp, publish=republish
                )
            except NoFrameError:
                raise PromptError(
                    f"no camera frame tracked yet (or since the last reset); publish images on {self._image_topic}"
                ) from None
            except StaleFrameError as exc:
                raise PromptError(
                    f"frame stamp {exc.requested} is not in memory: the node keeps only its newest frame "
                    f"({exc.newest}); send stamp 0 to prompt the newest frame"
                ) from None
            result, header = outcome.result, outcome.frame
            resp.object = tracked_object(result, header, self.get_parameter("publish.object_masks").value)
            verb = "started" if outcome.is_new else "refined"
            return (
                f"object {obj_id} {verb} on frame {_stamp_str(header.stamp)}: {result.area} pixels, "
                f"score {result.score:.2f}"
            )

        return self._answer(resp, run, "add_prompt")

    def _on_discover(self, req: Discover.Request, resp: Discover.Response) -> Discover.Response:
        def run():
            if req.max_new < 0:
                raise PromptError(f"max_new must be >= 0 (0 = the discover.max_new parameter), got {req.max_new}")
            found, header = self._discover_now(int(req.max_new), "discover")
            resp.object_ids = [d.obj_id for d in found]
            resp.boxes = [tracked_object(d.result, header, False).bbox for d in found]
            ids = ", ".join(str(d.obj_id) for d in found) or "none"
            return f"{len(found)} new object(s) on frame {_stamp_str(header.stamp)}: {ids}"

        return self._answer(resp, run, "discover")

    def _discover_now(self, max_new: int, why: str):
        """Run discovery on the newest frame (new tracks published at once); returns ([Discovered], frame header)."""
        from threeam_model.discovery import DiscoverySettings
        from threeam_model.instances.proposals import SamProposalParams, SamProposals

        if self._mask_generator is None:
            model = self._session.sam2_model()
            # its IoU and area filters off: discovery applies discover.min_score and min_area to what comes out
            params = SamProposalParams(
                points_per_side=self.cfg["discover.points_per_side"],
                pred_iou_thresh=0.0,
                stability_score_thresh=self.cfg["discover.min_stability"],
                min_area=1,
            )
            self._mask_generator = SamProposals(model, params)
        value = lambda name: self.get_parameter(f"discover.{name}").value  # noqa: E731
        settings = DiscoverySettings(
            min_area=value("min_area"),
            min_score=value("min_score"),
            max_overlap=value("max_overlap"),
            max_new=max_new or value("max_new"),
        )
        republish = self._publish if self.state == "active" else None
        try:
            found, header = self._session.discover(
                self._mask_generator, settings, self.cfg["tracker.max_objects"], publish=republish
            )
        except NoFrameError:
            raise PromptError(f"no camera frame tracked yet; publish images on {self._image_topic}") from None
        self._stats.count("discovered", len(found))
        if found:
            self.get_logger().info(f"{why}: started objects {[d.obj_id for d in found]}")
        return found, header

    def _on_click(self, msg: PointStamped, positive: bool) -> None:
        """A click refines the object under it (a positive point), or starts one elsewhere; a negative click marks
        background for the object clicked last. Errors are logged: a topic has nobody to answer."""
        t0 = time.perf_counter()
        try:
            snap = self._session.snapshot() if self._session is not None else None
            if snap is None or snap.rgb is None:
                raise PromptError("no camera frame tracked yet")
            x, y = float(msg.point.x), float(msg.point.y)
            h, w = snap.rgb.shape[:2]
            if not (np.isfinite(x) and np.isfinite(y) and 0 <= x < w and 0 <= y < h):
                raise PromptError(f"click ({x}, {y}) is outside the {w}x{h} image")
            under = [i for i, o in sorted(snap.objects.items()) if o.covers(int(x), int(y))]
            if not positive:
                if self._last_clicked is None or self._last_clicked not in snap.objects:
                    raise PromptError("a negative click needs an object clicked before it")
                obj_id = self._last_clicked
            elif under:
                obj_id = under[0]
            elif self.get_parameter("prompt.click_starts_object").value:
                from threeam_model.discovery import free_ids

                obj_id = free_ids(snap.objects, 1)[0]
            else:
                return
            republish = self._publish if self.get_parameter("publish.after_prompt").value else None
            outcome = self._session.prompt(obj_id, points=[[x, y]], labels=[int(positive)], publish=republish)
            self._last_clicked = obj_id
            verb = "started" if outcome.is_new else "refined"
            self.get_logger().info(f"click ({x:.0f}, {y:.0f}) {verb} object {obj_id}: {outcome.result.area} pixels")
        except (TrackerInputError, ValueError) as exc:
            self._stats.problem(f"click ignored: {exc}")
            self._warn_throttled("click", f"click ignored: {exc}")
        self._stats.add_latencies({"service.click": time.perf_counter() - t0})

    def _on_remove_object(self, req: RemoveObject.Request, resp: RemoveObject.Response) -> RemoveObject.Response:
        def run():
            obj_id = int(req.object_id)
            left = self._session.remove(obj_id)
            return f"object {obj_id} removed; still tracking {left or 'no objects'}"

        return self._answer(resp, run, "remove_object")

    def _on_reset(self, req: Reset.Request, resp: Reset.Response) -> Reset.Response:
        def run():
            n = self._session.reset()
            return f"reset: forgot {n} object(s) and all memory; the next frame starts a new stream"

        return self._answer(resp, run, "reset")

    def _on_list_objects(self, req: ListObjects.Request, resp: ListObjects.Response) -> ListObjects.Response:
        def run():
            snap = self._session.snapshot()  # without waiting for a frame in the model
            header = snap.frame if snap.frame is not None else Image().header
            resp.objects = [tracked_object(obj, header, False) for _, obj in sorted(snap.objects.items())]
            return f"{len(snap.objects)} object(s): {sorted(snap.objects) or 'none'}"

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

    # ------------------------------------------------------------------------------------------ housekeeping

    def _publish_diagnostics(self, error: str = "") -> None:
        if self._pub_diag is None:
            return
        if self.state == "active" and not error:
            self._follow_camera_qos()
        same_name = same_name_problem(self.get_node_names_and_namespaces(), self.get_name(), self.get_namespace())
        snap = self._stats.snapshot()
        received = snap["totals"]["frames_received"]
        # nothing arrived for a whole period: say why, if the graph can (after discovery has had time to run)
        idle = received == getattr(self, "_received_at_last_diag", -1)
        if self.state == "active" and idle and time.monotonic() - self._activated_at > INPUT_CHECK_GRACE_S:
            problem = input_problem(
                self.get_publishers_info_by_topic(self._image_topic),
                self._image_topic,
                f"sensor_msgs/msg/{self._input_type.__name__}",
                reliable=self._input_reliable,
            )
            if problem:
                snap["last_problem"] = problem
                self._warn_throttled(f"input: {problem}", problem, period=10.0)  # a new reason is logged at once
        self._received_at_last_diag = received
        if same_name:  # for as long as it lasts: both nodes answer every call
            snap["last_problem"] = "; ".join(filter(None, (same_name, snap["last_problem"])))
            self._warn_throttled("same name", same_name, period=30.0)
        session = self._session
        n = len(session.snapshot().objects) if session is not None else 0
        name = f"{self.get_fully_qualified_name()}: tracking"
        stamp = self.get_clock().now().to_msg()
        msg = diagnostics_message(snap, name, stamp, n, self._model_name, self.state, error)
        if self._image_sub is not None:
            msg.status[0].values.append(KeyValue(key="input_qos", value=self._input_qos_text()))
        self._pub_diag.publish(msg)

    def _on_set_parameters(self, params) -> SetParametersResult:
        for param in params:
            spec = PARAMS_BY_NAME.get(param.name)
            if spec is None:
                continue
            why = check_value(spec, param.value)
            if why is None and not spec.runtime and self.state != "unconfigured":
                why = (
                    f"{param.name} is read at configure: deactivate and clean up the node (ros2 lifecycle set "
                    f"{self.get_fully_qualified_name()} cleanup), set it, then configure again"
                )
            if why is None and param.name == "publish.label_encoding" and param.value == "mono8":
                session = self._session
                too_big = [i for i in (session.snapshot().objects if session else {}) if i > 255]
                if too_big:
                    why = f"objects {too_big} have ids above 255, which mono8 cannot hold; remove them first"
            if why:
                return SetParametersResult(successful=False, reason=why)
        for param in params:
            self._declare_problems.pop(param.name, None)
        return SetParametersResult(successful=True)

    def _warn_throttled(self, key: str, text: str, period: float = 2.0, error: bool = False) -> None:
        now = time.monotonic()
        if now - self._log_times.get(key, -1e9) >= period:
            self._log_times[key] = now
            (self.get_logger().error if error else self.get_logger().warning)(text)

    def close(self) -> None:
        """Stop the inference thread (at exit, whatever the lifecycle state)."""
        self._stop_taking_frames()


def _stamp_str(stamp: Time) -> str:
    return f"{stamp.sec}.{stamp.nanosec:09d}"


def missing_params_files(args: list[str]) -> list[str]:
    """Files named by --params-file that do not exist (rcl would refuse them with a bare parse error)."""
    import os

    return [args[i + 1] for i, a in enumerate(args[:-1]) if a == "--params-file" and not os.path.isfile(args[i + 1])]


def main(args=None) -> int:
    argv = sys.argv if args is None else args
    missing = missing_params_files(list(argv))
    if missing:
        print(f"tracker_node: cannot start: parameters file {', '.join(missing)} does not exist", file=sys.stderr)
        return 2
    rclpy.init(args=args)
    node = TrackerNode()
    if node.get_parameter("lifecycle.autostart").value:
        if node.trigger_configure() != SUCCESS:
            print(f"tracker_node: cannot start: {node.configure_error or node._error}", file=sys.stderr)
            node.destroy_node()
            rclpy.try_shutdown()
            return 2
        node.trigger_activate()
    else:
        node.get_logger().info(
            f"unconfigured (lifecycle.autostart false): ros2 lifecycle set {node.get_fully_qualified_name()} configure"
        )
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
