"""The one way to build a tracker: `build_tracker(TrackerConfig(...))`.

The ROS node, the offline CLI (`threeam-track`) and the benchmarks all go through here, so they can switch between
plain streaming SAM 2 (`method="sam2"`) and 3AM (`method="3am"`) by configuration alone.

Checkpoints: a path loads that file (strict keys); "auto" looks the official file up in the weights folder
(`threeam_model.weights.find_weights`, filled by `threeam-download-weights`) and fails if it is missing; None keeps
random weights. `resolve_weights` turns "auto" into a path or None and says which weights are missing, so a front
end can fall back to random weights with a warning instead of failing.
"""

from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING

import torch

from threeam_model.interface import Tracker
from threeam_model.knobs import knob
from threeam_model.streaming.policies import MEMORY_POLICIES

if TYPE_CHECKING:
    from threeam_model.reid import ReIDConfig

METHODS = ("sam2", "3am")
REID_SOURCES = ("off", "rgbd", "must3r")  # geometric re-identification: off, depth + pose, or RGB-only MUSt3R
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
BACKENDS = ("torch", "onnxruntime")
# Accepted spellings of the SAM 2.1 backbone sizes -> sam2_build's variant keys.
VARIANT_ALIASES = {
    "t": "t",
    "tiny": "t",
    "hiera_t": "t",
    "s": "s",
    "small": "s",
    "hiera_s": "s",
    "b+": "b+",
    "base_plus": "b+",
    "base+": "b+",
    "hiera_b+": "b+",
    "l": "l",
    "large": "l",
    "hiera_l": "l",
}
# MUSt3R releases by input size -> registered checkpoint name in threeam_model.weights.
MUST3R_MODELS = {"224": "MUSt3R_224_cvpr", "512": "MUSt3R_512"}
# Tiny MUSt3R input sizes (W/H ratio -> (W, H)): 4x4 or 4x3 tokens of 16 pixels.
TINY_MUST3R_TABLE = {1.0: (64, 64), 4 / 3: (64, 48)}


@dataclasses.dataclass
class TrackerConfig:
    """Everything needed to build a tracker. Every field is a knob (threeam_model/knobs.py): the node's model.*,
    tracker.* and reid.* parameters, threeam-track's options and the training config's model section are derived
    from these declarations, with these names and defaults. The paper's 3AM is method 3am, variant large,
    MUSt3R 512 with a trained 3AM checkpoint."""

    # ---- model: what is built, from which weights, where
    method: str = knob(
        "auto",
        "sam2: plain streaming SAM 2; 3am: SAM 2 + MUSt3R + Feature Merger; auto: 3am when threeam_checkpoint is "
        "set, else sam2 (an untrained merger tracks exactly like SAM 2, only slower).",
        choices=("auto", *METHODS),
        group="model",
    )
    variant: str = knob(
        "tiny",
        "SAM 2.1 backbone size (the paper: large).",
        choices=("tiny", "small", "base_plus", "large"),
        group="model",
    )
    image_size: int | None = knob(
        None,
        "SAM 2 input side: 1024 (official) or 512 (faster); 0: the model's own (1024, or 64 for tiny); with tiny "
        "any multiple of 32.",
        min_value=0,
        group="model",
        none_as=0,
    )
    must3r: str = knob("512", "MUSt3R release for method 3am: 512 or 224.", choices=tuple(MUST3R_MODELS), group="model")
    sam2_checkpoint: str | None = knob(
        "auto",
        "Official SAM 2.1 checkpoint (.pt) of variant: a path, auto (the weights folder, filled by "
        "threeam-download-weights), or empty for random weights (timing only; a warning says so).",
        group="model",
        none_as="",
    )
    must3r_checkpoint: str | None = knob(
        "auto",
        "MUSt3R checkpoint for method 3am: a path, auto (the weights folder), or empty for random weights.",
        group="model",
        none_as="",
    )
    threeam_checkpoint: str | None = knob(
        None,
        "3AM checkpoint (Feature Merger + fine-tuned heads), from threeam-train. Empty: none (method auto then "
        "runs plain SAM 2, method 3am an untrained merger).",
        group="model",
        none_as="",
    )
    device: str = knob(
        "auto",
        "Torch device: auto (cuda if available), cuda, cuda:N or cpu. A device this torch cannot use is refused.",
        group="model",
    )
    dtype: str = knob("float32", "Compute dtype (bfloat16 runs under autocast).", choices=tuple(DTYPES), group="model")
    compile: bool = knob(
        False,
        "torch.compile the image encoder (and the 3AM merger) with static shapes; CUDA graphs on a GPU. The first "
        "frame then takes seconds to minutes.",
        group="model",
    )
    backend: str = knob(
        "torch",
        "Runtime of the per-frame modules: torch, or onnxruntime (the files threeam-export wrote, in onnx_dir); "
        "prompts always run in PyTorch.",
        choices=BACKENDS,
        group="model",
    )
    onnx_dir: str | None = knob(
        None, "Folder written by threeam-export (backend onnxruntime).", group="model", none_as=""
    )
    onnx_providers: tuple[str, ...] = knob(
        ("cpu",),
        "ONNX Runtime execution providers in order of preference, comma-separated: cpu, cuda, tensorrt.",
        group="model",
    )
    tiny: bool = knob(
        False,
        "TESTS AND DEMOS ONLY: tiny SAM 2 (and MUSt3R and merger) with random weights, no checkpoints; masks are "
        "meaningless.",
        group="model",
    )
    seed: int = knob(0, "Seed of random weights.", min_value=0, group="model")
    # ---- tracker: caps and memory
    max_objects: int = knob(
        16, "Most objects tracked at once; add_prompt for a new id beyond it is refused.", min_value=1, group="tracker"
    )
    max_conditioning_frames: int = knob(
        8,
        "Per object, the most prompted frames kept in memory (the oldest leaves first).",
        min_value=1,
        group="tracker",
    )
    must3r_max_keyframes: int = knob(
        32,
        "MUSt3R memory cap in images (method 3am). Fewer is faster: the decoder attends to every memory image "
        "(official MUSt3R online at 512 px: 25.0 / 17.4 / 12.1 FPS with 10 / 20 / all images; 224 px: "
        "86.3 / 59.5 / 40.4). More is more accurate on long or looping sequences: an evicted view no longer "
        "anchors new frames, and its region counts as unseen again.",
        min_value=1,
        group="tracker",
    )
    batch_objects: bool = knob(
        True,
        "Track objects whose memories have the same layout in one batch (faster with many objects; equal to the "
        "per-object official step to float32 rounding). false: one object at a time, bit for bit the official step.",
        group="tracker",
    )
    memory_policy: str = knob(
        "sam2",
        "Per-object memory selection: sam2 (the official rule), dam4sam (distractor-aware memory) or sam2long "
        "(memory tree of 3 pathways; its authors' code is CC BY-NC 4.0), at their published hyperparameters.",
        choices=MEMORY_POLICIES,
        group="tracker",
    )
    memory_policy_args: dict = knob(
        description="Hyperparameters of memory_policy that differ from the published ones, as a JSON object "
        '(e.g. {"ram_stride": 3} for dam4sam); {}: the published ones.',
        group="tracker",
        default_factory=dict,
    )
    # ---- geometric re-identification (threeam_model.reid)
    reid: str = knob(
        "off",
        "Geometric re-identification: off, rgbd (the caller passes each frame's depth, K and pose: "
        "track(frame, geometry=CameraGeometry(...))) or must3r (RGB only; with method 3am the tracker's own MUSt3R "
        "output, FrameResult.scene, is reused).",
        choices=REID_SOURCES,
        group="reid",
    )
    reid_depth_scale: float = knob(
        1.0,
        "rgbd: metres per depth unit (0.001 for uint16 millimetre depth images).",
        min_value=1e-12,
        group="reid",
    )
    reid_config: ReIDConfig = dataclasses.field(default_factory=lambda: _reid_config())  # its thresholds: knobs too

    def __post_init__(self):
        if self.method == "auto":
            self.method = "3am" if self.threeam_checkpoint else "sam2"
        if self.method not in METHODS:
            raise ValueError(f"method must be one of auto, {', '.join(METHODS)}, got {self.method!r}")
        if str(self.variant) not in VARIANT_ALIASES:
            raise ValueError(f"unknown SAM 2.1 variant {self.variant!r}; use tiny, small, base_plus or large")
        self.variant = VARIANT_ALIASES[str(self.variant)]
        self.must3r = str(self.must3r)
        if self.must3r not in MUST3R_MODELS:
            raise ValueError(f"must3r must be one of {sorted(MUST3R_MODELS)}, got {self.must3r!r}")
        if self.reid not in REID_SOURCES:
            raise ValueError(f"reid must be one of {REID_SOURCES}, got {self.reid!r}")
        if not self.reid_depth_scale > 0:
            raise ValueError(f"reid_depth_scale must be > 0 metres per unit, got {self.reid_depth_scale}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.backend == "onnxruntime" and not self.onnx_dir:
            raise ValueError("backend onnxruntime needs onnx_dir: the folder threeam-export wrote")
        self.onnx_providers = tuple(self.onnx_providers)
        if self.image_size == 0:  # the front ends' spelling of "the model's own"
            self.image_size = None
        if not isinstance(self.memory_policy_args, dict):
            raise ValueError(f"memory_policy_args must be a mapping, got {self.memory_policy_args!r}")

        if self.memory_policy not in MEMORY_POLICIES:
            raise ValueError(f"memory_policy must be one of {MEMORY_POLICIES}, got {self.memory_policy!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be float32 or bfloat16 (float16 is not supported), got {self.dtype!r}")
        for name in ("max_objects", "max_conditioning_frames", "must3r_max_keyframes"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.tiny and any(c not in (None, "auto") for c in (self.sam2_checkpoint, self.must3r_checkpoint)):
            raise ValueError(
                "tiny=True builds random tiny SAM 2 and MUSt3R models; it cannot load their checkpoints "
                "(only a 3AM checkpoint trained on tiny models)"
            )

    @property
    def torch_device(self) -> torch.device:
        """The device to build on; ValueError (not torch's AssertionError deep in a build) when it is unusable."""
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return usable_device(self.device)

    def describe(self) -> str:
        reid = "" if self.reid == "off" else f" + geometric re-id ({self.reid})"
        if self.tiny:
            return f"{self.method} (tiny random weights, seed {self.seed}){reid}"
        what = f"SAM 2.1-{self.variant}@{self.image_size or 1024}"
        if self.method == "3am":
            what = f"3AM: {what} + MUSt3R-{self.must3r}"
            what += f" + merger {'from ' + str(self.threeam_checkpoint) if self.threeam_checkpoint else '(untrained)'}"
        return what + reid


def usable_device(name: str) -> torch.device:
    """torch.device(name) if this torch and machine can run on it, else ValueError saying why and what to use."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device {name!r} is not a torch device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise ValueError(f"device {name!r} is not supported; use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        why = "this torch build has no CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
        raise ValueError(f"device {name!r} is not usable: {why} (torch {torch.__version__}); use cpu or auto")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device {name!r} is not usable: only {torch.cuda.device_count()} CUDA device(s) visible")
    return device


def resolve_weights(cfg: TrackerConfig) -> tuple[TrackerConfig, list[str]]:
    """Replace each "auto" checkpoint by its local path, or by None (random weights) when it is missing.

    Returns the resolved config and one message per missing file (empty when everything is present).
    """
    from threeam_model.weights import find_weights

    if cfg.tiny:
        return dataclasses.replace(cfg, sam2_checkpoint=None, must3r_checkpoint=None), []
    missing = []
    changes = {}
    wanted = [("sam2_checkpoint", _sam2_weights_name(cfg.variant))]
    if cfg.method == "3am" or cfg.reid == "must3r":
        wanted.append(("must3r_checkpoint", MUST3R_MODELS[cfg.must3r]))
    for field, name in wanted:
        if getattr(cfg, field) == "auto":
            try:
                changes[field] = str(find_weights(name))
            except FileNotFoundError as exc:
                changes[field] = None
                missing.append(str(exc))
    if cfg.method == "sam2" and cfg.reid != "must3r":
        changes["must3r_checkpoint"] = None
    return dataclasses.replace(cfg, **changes), missing


def _checkpoint_path(value: str | None, registered: str) -> str | None:
    if value == "auto":
        from threeam_model.weights import find_weights

        return str(find_weights(registered))
    if value is not None and not os.path.isfile(value):
        raise FileNotFoundError(f"checkpoint not found: {value}")
    return value


def build_sam2_model(cfg: TrackerConfig):
    """The stateless SAM 2.1 model (SAM2Base) of a config, on its device."""
    from threeam_model.sam2_build import build_sam2

    if cfg.tiny:
        return build_sam2(tiny=True, image_size=cfg.image_size, device=cfg.torch_device, seed=cfg.seed)
    path = _checkpoint_path(cfg.sam2_checkpoint, _sam2_weights_name(cfg.variant))
    return build_sam2(cfg.variant, checkpoint=path, image_size=cfg.image_size, device=cfg.torch_device, seed=cfg.seed)


def _sam2_weights_name(variant: str) -> str:
    from threeam_model.sam2_build import VARIANTS

    return VARIANTS[variant][1]


def build_must3r_model(cfg: TrackerConfig):
    """The stateless MUSt3R model of a config (official checkpoint, or random weights of the release's sizes)."""
    from threeam_model.must3r import build_must3r, load_must3r, tiny_must3r

    if cfg.tiny:
        return tiny_must3r(cfg.seed).to(cfg.torch_device)
    path = _checkpoint_path(cfg.must3r_checkpoint, MUST3R_MODELS[cfg.must3r])
    if path is not None:
        return load_must3r(path, device=cfg.torch_device)
    size = int(cfg.must3r)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = build_must3r(  # the released sizes: ViT-L encoder, ViT-B decoder with feedback, kv memory
            dict(img_size=(size, size)),
            dict(img_size=(size, size), feedback_type="single_mlp", memory_mode="kv"),
        )
    return model.to(cfg.torch_device)


def merger_config_for(sam2_model, must3r_model):
    """The paper's merger sized to the given models (tiny models get a tiny merger)."""
    from threeam_model.merger import MergerConfig

    enc, dec = must3r_model.encoder.embed_dim, must3r_model.decoder.embed_dim
    small = dec < 256
    return MergerConfig(
        enc_dim=enc,
        dec_dim=dec,
        sam_dim=sam2_model.hidden_dim,
        num_heads=2 if small else 12,
        mlp_ratio=2.0 if small else 4.0,
        patch_size=must3r_model.patch_size,
    )


def build_threeam_parts(cfg: TrackerConfig, payload: dict | None = None):
    """(sam2_model, must3r_model, merger) of a 3AM config: the one assembly, used by `build_threeam` and the trainer.

    The merger is sized to the models (or as `payload`, a read 3AM checkpoint, records it) and seeded with
    cfg.seed; a payload's weights are loaded into the merger and SAM 2's fine-tuned heads. Nothing is wrapped
    in a stream or moved: the merger stays on the CPU.
    """
    from threeam_model import threeam_checkpoint
    from threeam_model.merger import FeatureMerger

    sam2 = build_sam2_model(cfg)
    must3r = build_must3r_model(cfg)
    merger_cfg = threeam_checkpoint.merger_config(payload) if payload else merger_config_for(sam2, must3r)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        merger = FeatureMerger(merger_cfg)
    if payload is not None:
        threeam_checkpoint.load_into(payload, merger, sam2, source=str(cfg.threeam_checkpoint))
    return sam2, must3r, merger


def build_threeam(cfg: TrackerConfig):
    """SAM 2 + MUSt3R + Feature Merger (+ the 3AM checkpoint's fine-tuned heads): the streaming engine with the
    merged-feature provider."""
    from threeam_model import threeam_checkpoint
    from threeam_model.streaming import MergedFeatures, StreamingSAM2

    device = cfg.torch_device
    payload = None
    if cfg.threeam_checkpoint is not None:  # checked first: a mismatch is refused before minutes of model loading
        payload = threeam_checkpoint.read_checkpoint(cfg.threeam_checkpoint)
        recorded = dict(payload["config"])
        if "sam2_variant" in recorded:  # trainers may spell it "large", "base_plus"...
            recorded["sam2_variant"] = VARIANT_ALIASES.get(str(recorded["sam2_variant"]), recorded["sam2_variant"])
        expected = {"tiny": True} if cfg.tiny else {"sam2_variant": cfg.variant, "must3r": cfg.must3r, "tiny": False}
        threeam_checkpoint.check_compatible({"config": recorded}, expected, source=str(cfg.threeam_checkpoint))
    sam2, must3r, merger = build_threeam_parts(cfg, payload)
    stream = must3r_stream(must3r, cfg, feat_layers=(0, *merger.cfg.merge_layers))
    merge = None
    if cfg.backend == "onnxruntime" and os.path.isfile(os.path.join(cfg.onnx_dir, "merger.json")):
        from threeam_model.export.runtime import OnnxMerger

        merge = OnnxMerger(cfg.onnx_dir, merger, cfg.onnx_providers)
    features = MergedFeatures(stream, merger.to(device), merge=merge)
    return StreamingSAM2(sam2, features=features, **_stream_options(cfg, sam2))


def must3r_stream(must3r_model, cfg: TrackerConfig, **kwargs):
    """The streaming MUSt3R of a config (its input size, memory cap, device and dtype)."""
    from threeam_model.must3r.stream import Must3rStream

    return Must3rStream(
        must3r_model,
        image_size=TINY_MUST3R_TABLE if cfg.tiny else int(cfg.must3r),
        max_memory_images=cfg.must3r_max_keyframes,
        device=cfg.torch_device,
        dtype=DTYPES[cfg.dtype],
        **kwargs,
    )


def build_tracker(cfg: TrackerConfig) -> Tracker:
    """Build the tracker a config describes (see TrackerConfig)."""
    if cfg.method == "sam2":
        from threeam_model.streaming import StreamingSAM2

        sam2 = build_sam2_model(cfg)
        tracker = StreamingSAM2(sam2, **_stream_options(cfg, sam2))
    else:
        tracker = build_threeam(cfg)
    return tracker if cfg.reid == "off" else with_reid(tracker, cfg)


def with_reid(tracker: Tracker, cfg: TrackerConfig) -> Tracker:
    """Wrap a tracker in geometric re-identification; its geometry source is `wrapped.geometry`."""
    from threeam_model.reid import GeometricReID, Must3rGeometry, RGBDGeometry

    if cfg.reid == "rgbd":
        geometry = RGBDGeometry(depth_scale=cfg.reid_depth_scale)
    elif cfg.method == "3am":  # the 3AM tracker runs MUSt3R on every frame: read it from its FrameResult.scene
        geometry = Must3rGeometry.from_tracker_scene()
    else:
        geometry = Must3rGeometry(must3r_stream(build_must3r_model(cfg), cfg))
    return GeometricReID(tracker, geometry, cfg.reid_config)


def _reid_config(**values):
    from threeam_model.reid import ReIDConfig

    return ReIDConfig(**values)


def _stream_options(cfg: TrackerConfig, sam2_model) -> dict:
    """Keyword arguments of StreamingSAM2 shared by both methods (the memory policy with its input pipeline)."""
    from threeam_model.streaming.policies import policy_options

    steps = None
    if cfg.backend == "onnxruntime":
        from threeam_model.export.runtime import OnnxSteps

        steps = OnnxSteps(cfg.onnx_dir, sam2_model, cfg.onnx_providers)
    return dict(
        steps=steps,
        max_objects=cfg.max_objects,
        max_cond_frames=cfg.max_conditioning_frames,
        dtype=DTYPES[cfg.dtype],
        batch_objects=cfg.batch_objects,
        compile=cfg.compile,
        **policy_options(cfg.memory_policy, sam2_model, cfg.max_conditioning_frames, cfg.memory_policy_args),
    )


__all__ = [
    "METHODS",
    "TrackerConfig",
    "build_must3r_model",
    "build_sam2_model",
    "build_threeam",
    "build_tracker",
    "merger_config_for",
    "must3r_stream",
    "resolve_weights",
    "usable_device",
    "with_reid",
]
