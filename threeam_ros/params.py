"""The tracker node's parameters: one table with names, defaults, allowed values and descriptions.

config/tracker.yaml holds the same names (a test checks both ways); the node declares every entry with its
description. Read-only ones need a restart; the publish options may change while the node runs.
"""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class Param:
    name: str
    default: Any
    description: str
    choices: tuple = ()  # allowed values; empty = any value of the default's type
    read_only: bool = True
    min_value: float | None = None  # numeric lower bound, inclusive


PARAMS: tuple[Param, ...] = (
    # ---- topics (relative names resolve in the node's namespace; `~/x` is private to the node)
    Param(
        "topics.image",
        "image",
        "Input camera topic: sensor_msgs/Image, or sensor_msgs/CompressedImage when "
        "input.transport is compressed (then usually <camera>/image_raw/compressed).",
    ),
    Param("topics.labels", "~/labels", "Output label image (mono16 or mono8): pixel = object id, 0 = background."),
    Param(
        "topics.objects",
        "~/objects",
        "Output threeam_interfaces/TrackedObjectArray: id, score, visibility, box "
        "(and mono8 masks when publish.object_masks).",
    ),
    Param("topics.overlay", "~/overlay", "Output rgb8 overlay for RViz: input + coloured masks + ids."),
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
        "sensor_data",
        "Input QoS: sensor_data (best effort, the camera default) or reliable.",
        choices=("sensor_data", "reliable"),
    ),
    Param(
        "input.qos_depth", 5, "Input queue depth. The node keeps only the newest frame whatever this is.", min_value=1
    ),
    # ---- model
    Param(
        "model.method",
        "auto",
        "sam2: plain streaming SAM 2; 3am: SAM 2 + MUSt3R + Feature Merger; auto: 3am when "
        "model.threeam_checkpoint is set, else sam2.",
        choices=("auto", "sam2", "3am"),
    ),
    Param("model.variant", "tiny", "SAM 2.1 backbone size.", choices=("tiny", "small", "base_plus", "large")),
    Param(
        "model.sam2_checkpoint",
        "auto",
        "Official SAM 2.1 checkpoint (.pt) of model.variant: a path, auto (the weights folder, filled by "
        "threeam-download-weights), or empty for random weights (timing only; a warning says so).",
    ),
    Param(
        "model.threeam_checkpoint",
        "",
        "Path to a 3AM checkpoint (Feature Merger + fine-tuned heads). Empty: plain streaming SAM 2 with method "
        "auto, an untrained merger with method 3am.",
    ),
    Param(
        "model.must3r_checkpoint",
        "auto",
        "MUSt3R checkpoint for method 3am: a path, or auto (the weights folder).",
    ),
    Param("model.must3r", "512", "MUSt3R release for method 3am: 512 or 224.", choices=("512", "224")),
    Param("model.device", "auto", "Torch device: auto (cuda if available), cuda, cuda:N or cpu."),
    Param(
        "model.dtype",
        "float32",
        "Compute dtype (bfloat16 runs under autocast).",
        choices=("float32", "bfloat16"),
    ),
    Param(
        "model.image_size",
        1024,
        "SAM 2 input resolution: 1024 (official) or 512 (faster); with random_weights_tiny any multiple of 32 (64).",
        min_value=64,
    ),
    Param(
        "model.random_weights_tiny",
        False,
        "TESTS AND DEMOS ONLY: a tiny SAM 2 with random weights, no checkpoint; its masks are meaningless.",
    ),
    Param(
        "model.compile",
        False,
        "torch.compile the image encoder (and the 3AM merger) with static shapes; CUDA graphs on a GPU. The first "
        "frame then takes seconds to minutes.",
    ),
    Param("model.cpu_threads", 0, "Torch CPU threads (0: torch's default).", min_value=0),
    Param("model.seed", 0, "Seed for random weights (model.random_weights_tiny)."),
    # ---- tracker state caps
    Param(
        "tracker.max_objects",
        16,
        "Most objects tracked at once; add_prompt for a new id beyond it is refused.",
        min_value=1,
    ),
    Param(
        "tracker.must3r_max_keyframes",
        32,
        "MUSt3R memory cap in images (method 3am).",
        min_value=1,
    ),
    Param(
        "tracker.memory_policy",
        "sam2",
        "Per-object memory selection: sam2 (the official rule), dam4sam (distractor-aware memory) or sam2long "
        "(memory tree of 3 pathways; its authors' code is CC BY-NC 4.0), at their published hyperparameters.",
        choices=("sam2", "dam4sam", "sam2long"),
    ),
    Param(
        "tracker.batch_objects",
        True,
        "Track objects whose memories have the same layout in one batch (faster with many objects; equal to the "
        "per-object official step to float32 rounding). false: one object at a time, bit for bit the official step.",
    ),
    Param(
        "tracker.max_conditioning_frames",
        8,
        "Per object, the most prompted frames kept in memory (the oldest leaves first).",
        min_value=1,
    ),
    # ---- publishing
    Param(
        "publish.label_encoding",
        "mono16",
        "Label image encoding: mono16 (ids up to 65535) or mono8 (ids up to 255).",
        choices=("mono16", "mono8"),
        read_only=False,
    ),
    Param("publish.object_masks", False, "Attach each object's mono8 mask to the TrackedObjectArray.", read_only=False),
    Param(
        "publish.after_prompt",
        True,
        "After a successful add_prompt, publish the prompted frame again (same header) with the prompt's result, "
        "so the new mask shows at once.",
        read_only=False,
    ),
    Param("publish.overlay", True, "Publish the overlay image.", read_only=False),
    Param("publish.overlay_alpha", 0.5, "Overlay mask opacity in [0, 1].", read_only=False, min_value=0.0),
    Param("publish.queue_depth", 5, "Output queue depth (reliable QoS).", min_value=1),
    Param("diagnostics.period", 1.0, "Seconds between diagnostics messages.", min_value=0.05),
    # ---- geometric re-identification (issue 10)
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
    Param(
        "reid.reject_out_of_view",
        False,
        "Also reject look-alike jumps while the object's place is out of view.",
    ),
)

PARAMS_BY_NAME = {p.name: p for p in PARAMS}


def check_value(param: Param, value) -> str | None:
    """Why `value` is not allowed for `param`, or None when it is."""
    if param.choices and value not in param.choices:
        return f"{param.name} must be one of {', '.join(map(str, param.choices))}, got {value!r}"
    if param.min_value is not None and isinstance(value, (int, float)) and value < param.min_value:
        return f"{param.name} must be >= {param.min_value:g}, got {value!r}"
    if param.name == "publish.overlay_alpha" and not 0.0 <= value <= 1.0:
        return f"publish.overlay_alpha must be in [0, 1], got {value!r}"
    return None


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
