"""The tracker node's parameters: one table with names, defaults, allowed values and descriptions.

config/tracker.yaml holds the same names (a test checks both ways); the node declares every entry with its
description, range and choices (`ros2 param describe` shows them). Parameters marked `runtime` (the publish
options but queue_depth) may change while the node runs; the others are read at configure, so they may change
only while the node is unconfigured (cleanup, set them, configure again).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

INT64_MAX = 2**63 - 1


class ConfigError(ValueError):
    """A parameter value (or parameters file) the node cannot be configured with."""


@dataclasses.dataclass(frozen=True)
class Param:
    name: str
    default: Any
    description: str
    choices: tuple = ()  # allowed values; empty = any value of the default's type
    runtime: bool = False  # may change while the node is configured (else only while unconfigured)
    min_value: float | None = None  # numeric lower bound, inclusive
    max_value: float | None = None  # numeric upper bound, inclusive
    constraint: str = ""  # what `ros2 param describe` shows as additional constraints, beyond choices and range


PARAMS: tuple[Param, ...] = (
    # ---- lifecycle
    Param(
        "lifecycle.autostart",
        True,
        "Configure and activate at start. false: the node waits unconfigured for ros2 lifecycle set "
        "(configure, activate).",
    ),
    # ---- topics (relative names resolve in the node's namespace; `~/x` is private to the node)
    Param(
        "topics.image",
        "image",
        "Input camera topic before remapping: sensor_msgs/Image, or sensor_msgs/CompressedImage when "
        "input.transport is compressed. Remappings apply on top (the launch file remaps image to its image "
        "argument); the log and /diagnostics name the topic actually subscribed.",
    ),
    Param("topics.labels", "~/labels", "Output label image (mono16 or mono8): pixel = object id, 0 = background."),
    Param(
        "topics.objects",
        "~/objects",
        "Output threeam_interfaces/TrackedObjectArray: id, score, visibility, box "
        "(and mono8 masks when publish.object_masks).",
    ),
    Param(
        "topics.overlay",
        "~/overlay",
        "Output rgb8 overlay for RViz: input + coloured masks + ids; its camera_info is published on "
        "<topics.overlay>/camera_info (the camera's, from topics.camera_info, else a nominal pinhole).",
    ),
    Param(
        "topics.detections",
        "~/detections",
        "Output vision_msgs/Detection2DArray of the visible objects: id and class_id = object id, bbox, score.",
    ),
    Param(
        "topics.label_info",
        "~/label_info",
        "Output vision_msgs/LabelInfo (transient local): the label image's values (0 background, object ids); "
        "published when the set of objects changes.",
    ),
    Param(
        "topics.labels_color",
        "~/labels_color",
        "Output rgb8 label view (publish.labels_color): each object in its overlay colour, background black.",
    ),
    Param(
        "topics.camera_info",
        "camera_info",
        "Input sensor_msgs/CameraInfo of the camera (optional): copied beside the overlay for RViz's Camera display.",
    ),
    Param("topics.diagnostics", "/diagnostics", "diagnostic_msgs/DiagnosticArray: FPS, dropped frames, latencies."),
    # ---- input
    Param(
        "input.transport",
        "raw",
        "raw: sensor_msgs/Image (rgb8, bgr8, rgba8, bgra8, mono8); compressed: "
        "sensor_msgs/CompressedImage (jpeg or png).",
        choices=("raw", "compressed"),
    ),
    Param(
        "input.qos",
        "auto",
        "Input QoS reliability. auto: the camera's, from the graph: reliable while every publisher on the topic is "
        "reliable, best effort otherwise and while none is known (followed as publishers come and go, checked every "
        "diagnostics period); sensor_data: always best effort; reliable: always reliable (a best-effort camera "
        "then delivers nothing). Frames the middleware loses are counted as frames_lost.",
        choices=("auto", "sensor_data", "reliable"),
    ),
    Param(
        "input.qos_depth", 5, "Input queue depth. The node keeps only the newest frame whatever this is.", min_value=1
    ),
    # ---- model: model.* (but these two) are derived from TrackerConfig's model knobs (MODEL_KNOBS, below)
    Param("model.cpu_threads", 0, "Torch CPU threads (0: torch's default).", min_value=0),
    Param(
        "model.max_consecutive_faults",
        5,
        "Frames in a row on which the model may fail (an exception, out of memory) before the node goes through "
        "its error transition to unconfigured; a single failure costs only its frame.",
        min_value=1,
    ),
    # ---- tracker caps and memory: tracker.* are derived from TrackerConfig's tracker knobs (TRACKER_KNOBS, below)
    # ---- prompts without typing coordinates: clicks and discovery
    Param(
        "prompt.clicks",
        True,
        "Take clicks as prompts: geometry_msgs/PointStamped on <topics.overlay>_mouse_left (what rqt_image_view "
        "publishes when you click the overlay) and ~/prompt_point refine the object under the click or start one; "
        "~/prompt_point_negative marks background for the object clicked last. Read at configure.",
    ),
    Param(
        "prompt.click_starts_object",
        True,
        "A click outside every object starts a new one (the smallest free id); false: such clicks are ignored.",
        runtime=True,
    ),
    Param(
        "discover.every_n_frames",
        0,
        "Run discovery (the ~/discover service's work) on every n-th processed frame, for a robot exploring; 0 = only "
        "on request. It runs in the inference thread, so a frame with discovery takes longer.",
        runtime=True,
        min_value=0,
    ),
    Param("discover.max_new", 8, "Most objects one discovery starts.", runtime=True, min_value=1),
    Param(
        "discover.min_area",
        200,
        "Smallest mask (pixels) discovery starts a track for.",
        runtime=True,
        min_value=1,
    ),
    Param(
        "discover.min_score",
        0.7,
        "Lowest predicted IoU of SAM 2's automatic mask generator that discovery keeps.",
        runtime=True,
        min_value=0.0,
        max_value=1.0,
    ),
    Param(
        "discover.max_overlap",
        0.3,
        "Largest fraction of a proposal's pixels that may already belong to a tracked object (or an earlier "
        "proposal); above it the proposal is skipped.",
        runtime=True,
        min_value=0.0,
        max_value=1.0,
    ),
    Param(
        "discover.min_stability",
        0.95,
        "Lowest stability score (mask IoU under threshold shifts) of SAM 2's automatic mask generator; its default.",
        min_value=0.0,
        max_value=1.0,
    ),
    Param(
        "discover.points_per_side",
        16,
        "Point grid of SAM 2's automatic mask generator (points_per_side^2 prompts; its own default is 32).",
        min_value=1,
    ),
    # ---- per-object 3D (needs geometry: reid.source rgbd topics, or re-identification's anchors)
    Param(
        "objects3d.enabled",
        False,
        "Publish per-object 3D on ~/objects_3d (vision_msgs/Detection3DArray), ~/object_points (PointCloud2 x y z "
        "id) and ~/markers (MarkerArray): from re-identification's anchors when reid.enabled, else from the frame's "
        "masks and depth (reid.source rgbd topics). Read at configure.",
    ),
    Param(
        "objects3d.voxel",
        0.02,
        "Voxel edge (geometry units: metres for RGB-D) of the published points.",
        runtime=True,
        min_value=1e-6,
    ),
    Param("objects3d.max_points", 2000, "Most points published per object.", runtime=True, min_value=1),
    # ---- publishing
    Param(
        "publish.label_encoding",
        "mono16",
        "Label image encoding: mono16 (ids up to 65535) or mono8 (ids up to 255).",
        choices=("mono16", "mono8"),
        runtime=True,
    ),
    Param("publish.object_masks", False, "Attach each object's mono8 mask to the TrackedObjectArray.", runtime=True),
    Param(
        "publish.after_prompt",
        True,
        "After a successful add_prompt, publish the prompted frame again (same header) with the prompt's result, "
        "so the new mask shows at once.",
        runtime=True,
    ),
    Param("publish.overlay", True, "Publish the overlay image.", runtime=True),
    Param("publish.overlay_alpha", 0.5, "Overlay mask opacity in [0, 1].", runtime=True, min_value=0.0, max_value=1.0),
    Param(
        "publish.labels_color",
        False,
        "Publish the colourised label view on topics.labels_color (when someone subscribes).",
        runtime=True,
    ),
    Param(
        "publish.compressed",
        False,
        "Also publish <topics.labels>/compressed (lossless png) and <topics.overlay>/compressed (jpeg), in "
        "image_transport's format, when someone subscribes to them.",
        runtime=True,
    ),
    Param(
        "publish.jpeg_quality",
        90,
        "JPEG quality of the compressed overlay.",
        runtime=True,
        min_value=1,
        max_value=100,
    ),
    Param("publish.queue_depth", 5, "Output queue depth (reliable QoS); read at configure.", min_value=1),
    Param("diagnostics.period", 1.0, "Seconds between diagnostics messages.", min_value=0.05),
    Param(
        "diagnostics.rate_window",
        5.0,
        "Seconds over which processed_fps is measured; it always reaches back over the newest frame interval, so "
        "a frame slower than the window still counts.",
        min_value=0.1,
    ),
    # ---- geometric re-identification
    Param("reid.enabled", False, "Re-acquire lost objects from their 3D anchors (geometric re-identification)."),
    Param(
        "reid.source",
        "must3r",
        "Geometry for re-identification: must3r (RGB only, MUSt3R pointmaps) or rgbd (reid.depth_topic + "
        "reid.camera_info_topic + reid.pose_topic).",
        choices=("must3r", "rgbd"),
    ),
    Param(
        "reid.depth_topic",
        "depth",
        "rgbd: depth image registered to the camera image: 32FC1 metres or 16UC1/mono16 millimetres (REP 118).",
    ),
    Param("reid.camera_info_topic", "depth/camera_info", "rgbd: sensor_msgs/CameraInfo of the depth image (K)."),
    Param(
        "reid.pose_topic",
        "",
        "rgbd: geometry_msgs/PoseStamped, the camera's optical frame (x right, y down, z forward) in the world "
        "frame; empty: the pose comes from TF when reid.world_frame is set, else the camera is static (identity).",
    ),
    Param(
        "reid.world_frame",
        "",
        "rgbd: the world frame. With reid.pose_topic: the frame_id pose messages must carry (others are refused "
        "with a warning; empty: any). Without: the TF frame in which the depth image's optical frame is looked up "
        "at each frame's stamp (needs tf2_ros from a system ROS 2).",
    ),
    Param(
        "reid.sync_tolerance",
        0.05,
        "rgbd: most seconds between a frame's stamp and the depth/pose used with it; a frame without both "
        "passes through without geometry.",
        min_value=0.0,
    ),
    Param(
        "reid.sync_wait",
        0.1,
        "rgbd: longest wait (s) for a frame's depth and pose, which travel on their own topics and may arrive "
        "after it.",
        min_value=0.0,
    ),
)


def _knob_params(config_cls, prefix: str, group: str | None = None) -> tuple[Param, ...]:
    """<prefix>.<field> for the declared knobs of a threeam_model config (of one group, if given): name, default,
    description, choices and range come from the config, so they are kept in one place."""
    from threeam_model.knobs import knobs_of

    return tuple(
        Param(f"{prefix}.{k.name}", k.front_default, k.description, k.choices, False, k.min_value, k.max_value)
        for k in knobs_of(config_cls, group)
    )


def _derived_params() -> tuple[tuple[Param, ...], ...]:
    from threeam_model.factory import TrackerConfig
    from threeam_model.reid import ReIDConfig

    return (
        _knob_params(TrackerConfig, "model", "model"),
        _knob_params(TrackerConfig, "tracker", "tracker"),
        _knob_params(ReIDConfig, "reid"),  # every re-identification threshold
    )


MODEL_KNOBS, TRACKER_KNOBS, REID_THRESHOLDS = _derived_params()
PARAMS += MODEL_KNOBS + TRACKER_KNOBS + REID_THRESHOLDS
PARAMS_BY_NAME = {p.name: p for p in PARAMS}


def check_value(param: Param, value) -> str | None:
    """Why `value` is not allowed for `param`, or None when it is."""
    if type(value) is not type(param.default) and not (isinstance(param.default, float) and type(value) is int):
        return f"{param.name} must be a {type(param.default).__name__}, got {value!r}"
    if param.choices and value not in param.choices:
        return f"{param.name} must be one of {', '.join(map(str, param.choices))}, got {value!r}"
    if param.min_value is not None and value < param.min_value:
        return f"{param.name} must be >= {param.min_value:g}, got {value!r}"
    if param.max_value is not None and value > param.max_value:
        return f"{param.name} must be <= {param.max_value:g}, got {value!r}"
    return None


def descriptor(param: Param) -> ParameterDescriptor:
    """The ROS descriptor of a parameter: description, range, and choices as additional constraints."""
    desc = ParameterDescriptor(description=param.description, dynamic_typing=False)
    constraints = [f"one of: {', '.join(map(str, param.choices))}"] if param.choices else []
    if param.constraint:
        constraints.append(param.constraint)
    if not param.runtime:
        constraints.append("read at configure: change it while the node is unconfigured")
    desc.additional_constraints = "; ".join(constraints)
    has_range = param.min_value is not None or param.max_value is not None
    if has_range and isinstance(param.default, int) and not isinstance(param.default, bool):
        low = int(param.min_value) if param.min_value is not None else -INT64_MAX - 1
        high = int(param.max_value) if param.max_value is not None else INT64_MAX
        desc.integer_range = [IntegerRange(from_value=low, to_value=high, step=0)]
    elif has_range and isinstance(param.default, float):
        low = float(param.min_value) if param.min_value is not None else -math.inf
        high = float(param.max_value) if param.max_value is not None else math.inf
        desc.floating_point_range = [FloatingPointRange(from_value=low, to_value=high, step=0.0)]
    return desc


# Parameters every rclpy node has, and QoS overrides: allowed in a parameters file beside the table's names.
ROS_PARAMETERS = ("use_sim_time", "start_type_description_service")


def unknown_names(names) -> list[str]:
    """Names in a parameters file (or -p overrides) that the node does not have: a typo would otherwise be ignored."""
    known = set(PARAMS_BY_NAME) | set(ROS_PARAMETERS)
    return sorted(n for n in names if n not in known and not n.startswith("qos_overrides."))


def tracker_config(cfg: dict):
    """Parameter values -> the threeam_model TrackerConfig the node builds its tracker from."""
    from threeam_model.factory import TrackerConfig
    from threeam_model.knobs import knobs_of

    # the node passes depth in metres (it converts by encoding), so reid_depth_scale keeps its default; reid is
    # two parameters because reid.source (rgbd topics) also feeds objects3d when re-identification is off
    try:
        values = {
            k.name: k.from_front(cfg[f"{k.group}.{k.name}"]) for k in knobs_of(TrackerConfig) if k.group != "reid"
        }
        if values["tiny"]:  # tiny builds random SAM 2 and MUSt3R models; a tiny-trained 3AM checkpoint still loads
            values.update(sam2_checkpoint=None, must3r_checkpoint=None)
        return TrackerConfig(
            **values,
            reid=cfg["reid.source"] if cfg["reid.enabled"] else "off",
            reid_config=_reid_config({p.name.removeprefix("reid."): cfg[p.name] for p in REID_THRESHOLDS}),
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


def _reid_config(values: dict):
    from threeam_model.reid import ReIDConfig

    return ReIDConfig(**values)


def has_random_weights(config) -> bool:
    """Whether a TrackerConfig builds any part of the model without its trained weights."""
    missing_must3r = config.method == "3am" and config.must3r_checkpoint is None
    return config.tiny or config.sam2_checkpoint is None or missing_must3r


def flatten_yaml(tree: dict, prefix: str = "") -> dict[str, Any]:
    """Nested ros__parameters mapping -> {dotted.name: value}, as ROS 2 reads a parameters file."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_yaml(value, name + "."))
        else:
            flat[name] = value
    return flat
