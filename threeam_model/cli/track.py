"""threeam-track: track prompted objects through a video file or an image folder, offline.

    threeam-track VIDEO_OR_FOLDER --output OUT --frame K --box 1:10,20,200,180 --point 2:320,240 --mask 3:m.png
    threeam-track --demo --output OUT        # a generated clip, prompted from its ground truth

Prompts apply to frame K (default 0). Tracking runs forward from K to the end and backward from K to the start
(`--direction`). Writes OUT/Annotations/<video>/<frame>.png (DAVIS layout: 8-bit palette PNG, pixel = object id)
and OUT/<video>_overlay.mp4. Uses the official weights when they are in the weights folder
(`threeam-download-weights`), otherwise random weights, with a warning.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import re
import sys
import time
import warnings
from collections.abc import Iterator

import numpy as np

from threeam_model.cli.options import add_knob_options, add_tracker_options, knob_values, tracker_values
from threeam_model.data.labels_io import read_annotation, write_annotation
from threeam_model.data.video import write_mp4
from threeam_model.errors import ExportError, PromptError, TrackerInputError, UsageError
from threeam_model.eval.protocols import bidirectional
from threeam_model.factory import TrackerConfig, build_tracker, resolve_weights
from threeam_model.interface import FrameResult
from threeam_model.reid import ReIDConfig

TINY_FIXED = ("variant", "image_size", "must3r", "sam2_checkpoint", "must3r_checkpoint", "threeam_checkpoint", "tiny")
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
PROG = "threeam-track"


# ------------------------------------------------------------------------------------------------ frame sources


def _natural_key(path: pathlib.Path):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


class FrameSource:
    """Frames of a video file or an image folder, read in order; `names` gives each frame's output file stem."""

    def __init__(self, path, max_frames: int | None = None):
        self.path = pathlib.Path(path)
        self.max_frames = max_frames
        if self.path.is_dir():
            files = sorted((p for p in self.path.iterdir() if p.suffix.lower() in IMAGE_EXTS), key=_natural_key)
            if not files:
                raise UsageError(f"{self.path} holds no images ({', '.join(IMAGE_EXTS)})")
            self.files = files[:max_frames]
            self.names = [p.stem for p in self.files]
        elif self.path.is_file():
            import cv2

            cap = cv2.VideoCapture(str(self.path))
            if not cap.isOpened():
                raise UsageError(f"cannot open {self.path} as a video (is it a video file OpenCV can decode?)")
            count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
            self.fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
            if count <= 0:  # some containers do not say: count by decoding
                count = 0
                while (max_frames is None or count < max_frames) and cap.grab():
                    count += 1
            cap.release()
            if count == 0:
                raise UsageError(f"{self.path} holds no decodable video frame")
            self.files = None
            count = count if max_frames is None else min(count, max_frames)
            self.names = [f"{i:05d}" for i in range(count)]
        else:
            raise UsageError(f"input not found: {self.path}")
        self.video_name = self.path.stem if self.path.is_file() else self.path.name

    def __len__(self) -> int:
        return len(self.names)

    def __iter__(self) -> Iterator[np.ndarray]:
        """RGB uint8 frames in order."""
        import cv2

        if self.files is not None:
            for p in self.files:
                img = cv2.imread(str(p), cv2.IMREAD_COLOR)
                if img is None:
                    raise UsageError(f"cannot read image {p}")
                yield img[:, :, ::-1].copy()
            return
        cap = cv2.VideoCapture(str(self.path))
        try:
            for _ in range(len(self)):
                ok, img = cap.read()
                if not ok:  # the container's frame count was optimistic
                    break
                yield img[:, :, ::-1].copy()
        finally:
            cap.release()


# ------------------------------------------------------------------------------------------------------ prompts


@dataclasses.dataclass
class ObjectPrompt:
    points: list = dataclasses.field(default_factory=list)
    labels: list = dataclasses.field(default_factory=list)
    box: list | None = None
    mask: np.ndarray | None = None

    def kwargs(self) -> dict:
        out = {}
        if self.points:
            out["points"], out["labels"] = np.array(self.points, np.float32), np.array(self.labels, np.int32)
        if self.box is not None:
            out["box"] = np.array(self.box, np.float32)
        if self.mask is not None:
            out["mask"] = self.mask
        return out


def _obj_and_rest(text: str, what: str, example: str) -> tuple[int, str]:
    obj, sep, rest = text.partition(":")
    if not sep or not obj.strip().isdigit():
        raise UsageError(f"--{what} {text!r}: expected OBJ:{example} with an integer object id, e.g. 1:{example}")
    obj_id = int(obj)
    if not 1 <= obj_id <= 255:
        raise UsageError(f"--{what} {text!r}: object ids must be in 1..255 (DAVIS palette PNGs hold 8 bits)")
    return obj_id, rest


def _numbers(text: str, n: int, flag: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != n:
        raise UsageError(f"--{flag}: expected {n} comma-separated numbers, got {text!r}")
    return values


def parse_prompts(points, boxes, masks) -> dict[int, ObjectPrompt]:
    """--point OBJ:X,Y[:LABEL], --box OBJ:X0,Y0,X1,Y1, --mask OBJ:FILE (binary) or --mask FILE (label image)."""

    prompts: dict[int, ObjectPrompt] = {}
    for text in points or []:
        obj, rest = _obj_and_rest(text, "point", "X,Y[:LABEL]")
        xy, _, label = rest.partition(":")
        label = label or "1"
        if label not in ("0", "1"):
            raise UsageError(f"--point {text!r}: label must be 1 (object) or 0 (background)")
        p = prompts.setdefault(obj, ObjectPrompt())
        p.points.append(_numbers(xy, 2, "point"))
        p.labels.append(int(label))
    for text in boxes or []:
        obj, rest = _obj_and_rest(text, "box", "X0,Y0,X1,Y1")
        p = prompts.setdefault(obj, ObjectPrompt())
        if p.box is not None:
            raise UsageError(f"--box: object {obj} has two boxes; give one box per object")
        p.box = _numbers(rest, 4, "box")
    for text in masks or []:
        head, sep, rest = text.partition(":")
        if sep and head.isdigit():
            path = pathlib.Path(rest)
            if not path.is_file():
                raise UsageError(f"--mask {text!r}: file not found: {path}")
            labels = {int(head): read_annotation(path) > 0}
        else:
            path = pathlib.Path(text)
            if not path.is_file():
                raise UsageError(f"--mask {text!r}: file not found: {path}")
            ann = read_annotation(path)
            ids = [int(i) for i in np.unique(ann) if i != 0]
            if not ids:
                raise UsageError(f"--mask {path}: the label image holds no object (all pixels are 0)")
            labels = {i: ann == i for i in ids}
        for obj, m in labels.items():
            if obj > 255:
                raise UsageError(f"--mask {path}: object id {obj} > 255 does not fit a DAVIS palette PNG")
            p = prompts.setdefault(obj, ObjectPrompt())
            if p.mask is not None:
                raise UsageError(f"--mask: object {obj} gets two masks")
            p.mask = m
    for obj, p in prompts.items():
        if p.mask is not None and (p.points or p.box is not None):
            raise UsageError(f"object {obj}: a mask prompt cannot be combined with points or a box")
    return prompts


# ------------------------------------------------------------------------------------------------------ writers


def write_overlay_video(path: pathlib.Path, source: FrameSource, mask_dir: pathlib.Path, fps: float) -> int:
    """MP4 of the frames with each object tinted in its DAVIS palette colour (its mask PNG's) and outlined."""
    from threeam_model.viz import DAVIS_COLORS, draw_overlay

    frames = (
        draw_overlay(
            rgb,
            read_annotation(mask_dir / f"{name}.png").astype(np.uint8),
            0.5,
            colors=DAVIS_COLORS,
            captions=False,
            outlines=True,
        )
        for name, rgb in zip(source.names, source)
    )
    return write_mp4(path, frames, fps)


# --------------------------------------------------------------------------------------------------- tracking


def _prompt_all(tracker, prompts: dict[int, ObjectPrompt], frame_index: int) -> FrameResult:
    objects = {}
    for obj, p in sorted(prompts.items()):
        try:
            objects[obj] = tracker.add_prompt(obj, **p.kwargs())
        except PromptError as exc:
            raise PromptError(f"object {obj} on frame {frame_index}: {exc}") from None
    h, w = next(iter(objects.values())).mask.shape
    return FrameResult(frame_index, (h, w), objects)


class _OnePass:
    """A source's frames read in one pass, served to `bidirectional` in the order it asks: frames(t).

    The forward pass reads on from the source; frames 0..K (the prompt frame) are kept only when a backward pass
    follows, and each is dropped once that pass has used it. Past the real end of a video whose container promised
    more frames, frames(t) is None for t > K (the forward pass ends there) and a UsageError for t <= K.
    """

    def __init__(self, source: FrameSource, prompt_frame: int, keep: bool):
        self._frames = iter(source)
        self._next = 0  # the position of the next frame the source yields
        self._k = prompt_frame
        self._keep = keep
        self._kept: dict[int, np.ndarray] = {}
        self.size: tuple[int, int] | None = None  # of the frames read so far

    def __call__(self, t: int) -> np.ndarray | None:
        if t < self._next:  # the backward pass, or its restart at K: a kept frame, used for the last time
            return self._kept.pop(t)
        rgb = None
        while self._next <= t:
            rgb = next(self._frames, None)
            if rgb is None:
                if t <= self._k:
                    raise UsageError(f"the video ended before the prompt frame {self._k}")
                return None
            self.size = rgb.shape[:2]
            if self._keep and self._next <= self._k:
                self._kept[self._next] = rgb
            self._next += 1
        return rgb


def track_video(
    tracker,
    source: FrameSource,
    prompts: dict[int, ObjectPrompt],
    prompt_frame: int,
    mask_dir: pathlib.Path,
    direction: str = "both",
    progress: bool = True,
    geometry=None,
) -> dict:
    """Run the forward and/or backward pass and write one label PNG per frame. Returns timing statistics.
    geometry: frame index -> CameraGeometry (depth, K, pose) for trackers that use it (re-identification rgbd)."""
    from tqdm import tqdm

    n = len(source)
    if not 0 <= prompt_frame < n:
        raise UsageError(f"--frame {prompt_frame} is outside the video's {n} frames (0..{n - 1})")
    forward = direction in ("both", "forward")
    backward = direction in ("both", "backward") and prompt_frame > 0
    todo = (n - prompt_frame if forward else 1) + (prompt_frame if backward else 0)
    frames = _OnePass(source, prompt_frame, keep=backward)
    elapsed = [0.0]  # of the last start or step: the restart before the backward pass is in no frame's time

    def timed(run, index: int):
        t0 = time.perf_counter()
        result = run(index)
        elapsed[0] = time.perf_counter() - t0
        return result

    def track(index: int) -> FrameResult | None:
        rgb = frames(index)
        if rgb is None:
            return None
        return tracker.track(rgb) if geometry is None else tracker.track(rgb, geometry=geometry(index))

    def start(index: int) -> FrameResult:
        tracker.reset()
        track(index)
        return _prompt_all(tracker, prompts, index)

    written: set[int] = set()
    times: list[float] = []
    bar = tqdm(total=todo, desc=f"{PROG} {source.video_name}", unit="frame", disable=not progress, file=sys.stderr)
    # backward from frame 0 covers the prompted frame alone: bidirectional yields just its result
    schedule = bidirectional(n, prompt_frame, lambda k: timed(start, k), lambda t: timed(track, t), direction)
    for index, result in schedule:
        times.append(elapsed[0])
        write_annotation(mask_dir / f"{source.names[index]}.png", result.label_image())
        written.add(index)
        bar.update()
    bar.close()
    size = frames.size
    blank = np.zeros(size, np.uint8) if size else None
    for i in range(len(source)):  # frames outside the tracked range: background only
        if i not in written and blank is not None:
            write_annotation(mask_dir / f"{source.names[i]}.png", blank)
    steady = times[1:] if len(times) > 1 else times
    return {"frames": len(times), "mean_s": float(np.mean(steady)) if steady else float("nan")}


# ---------------------------------------------------------------------------------------------------------- demo


def make_demo(out: pathlib.Path, seed: int, num_frames: int) -> tuple[pathlib.Path, int, dict[int, ObjectPrompt]]:
    """Generate a synthetic clip; prompt each object visible on the busiest frame with its ground-truth mask."""
    from threeam_model.data.readers.synthetic import SyntheticScene
    from threeam_model.data.synthetic import generate_scene

    scene_dir = generate_scene(out / "demo_scene", seed=seed, num_frames=num_frames, num_objects=3)
    scene = SyntheticScene(scene_dir)
    min_area = 0.005  # of the image: smaller objects make poor demo prompts
    best, best_ids = 0, []
    for i in range(len(scene)):
        inst = scene.frame(i, with_rgb=False).instance
        ids = [o for o in scene.object_ids if (inst == o).mean() >= min_area]
        if len(ids) > len(best_ids):
            best, best_ids = i, ids
    if not best_ids:
        raise RuntimeError(f"the generated demo scene (seed {seed}) shows no object large enough to prompt")
    inst = scene.frame(best, with_rgb=False).instance
    return scene_dir, best, {o: ObjectPrompt(mask=inst == o) for o in best_ids}


def demo_geometry(scene_dir: pathlib.Path):
    """frame index -> the generated clip's exact CameraGeometry (depth in metres, K, camera-to-world pose)."""
    from threeam_model.data.readers.synthetic import SyntheticScene
    from threeam_model.interface import CameraGeometry

    scene = SyntheticScene(scene_dir)

    def geometry(index: int) -> CameraGeometry:
        frame = scene.frame(index, with_rgb=False)
        return CameraGeometry(frame.depth, frame.K, frame.pose)

    return geometry


def demo_scores(scene_dir: pathlib.Path, mask_dir: pathlib.Path, obj_ids) -> dict:
    from threeam_model.data.readers.synthetic import SyntheticScene
    from threeam_model.eval.metrics import average_objects, object_scores_from_masks

    scene = SyntheticScene(scene_dir)
    gts = [scene.frame(i, with_rgb=False).instance for i in range(len(scene))]
    preds = [read_annotation(mask_dir / f"{i:05d}.png") for i in range(len(scene))]
    scores = [object_scores_from_masks([g == o for g in gts], [p == o for p in preds]) for o in obj_ids]
    return average_objects(scores)


# ---------------------------------------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("input", nargs="?", help="video file or folder of images (sorted by name)")
    p.add_argument("-o", "--output", default="threeam_output", help="output folder (default: %(default)s)")
    p.add_argument("--demo", action="store_true", help="track a generated synthetic clip, prompted from its truth")
    p.add_argument("--demo-frames", type=int, default=16, help="length of the demo clip (default: %(default)s)")
    g = p.add_argument_group("prompts (on --frame)")
    g.add_argument("--frame", type=int, default=0, help="index of the prompted frame (default: 0)")
    g.add_argument("--point", action="append", metavar="OBJ:X,Y[:LABEL]", help="a click; label 1 (default) or 0")
    g.add_argument("--box", action="append", metavar="OBJ:X0,Y0,X1,Y1", help="a box in pixels")
    g.add_argument(
        "--mask",
        action="append",
        metavar="[OBJ:]FILE",
        help="OBJ:FILE a binary mask of one object, or FILE a label image (pixel = object id)",
    )
    g.add_argument("--direction", choices=("both", "forward", "backward"), default="both")
    m = p.add_argument_group("model")
    # TrackerConfig's knobs: --method, --variant, --image-size, --device, --dtype, --max-objects, --reid ... with
    # its defaults; its must3r knob is --must3r here, since the demo defaults to 224
    m.add_argument("--must3r", choices=("224", "512"), default=None, help="MUSt3R release (default 512; demo 224)")
    add_tracker_options(m, skip=("must3r",))
    add_knob_options(m, TrackerConfig, groups=("reid",))  # --reid, --reid-depth-scale
    m.add_argument("--random-weights", action="store_true", help="do not look for weights: random ones")
    m.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    add_knob_options(p.add_argument_group("geometric re-identification thresholds (with --reid)"), ReIDConfig, "reid")
    o = p.add_argument_group("output")
    o.add_argument("--max-frames", type=int, default=None, help="track only the first N frames")
    o.add_argument("--no-video", action="store_true", help="do not write the overlay MP4")
    o.add_argument("--fps", type=float, default=None, help="overlay video frame rate (default: the input's, or 10)")
    o.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _warn(msg: str) -> None:
    bar = "!" * 100
    print(f"\n{bar}\n{msg}\n{bar}\n", file=sys.stderr)


def reid_config_from_args(args) -> ReIDConfig:
    """The re-identification thresholds given as --reid-<name> (ReIDConfig's defaults where not given)."""
    return ReIDConfig(**knob_values(args, ReIDConfig, prefix="reid"))


def config_from_args(args) -> tuple[TrackerConfig, list[str]]:
    """The tracker config the arguments ask for, and warnings to show (missing weights...)."""
    notes = []
    values = tracker_values(args, skip=("must3r",)) | knob_values(args, TrackerConfig, groups=("reid",))
    values["reid_config"] = reid_config_from_args(args)
    if values["image_size"] is None and args.demo:
        values["image_size"] = 512
    values["must3r"] = args.must3r or ("224" if args.demo else "512")
    # the tiny random models have their own sizes and no checkpoints: built without these
    common = {k: v for k, v in values.items() if k not in TINY_FIXED}
    if args.tiny:
        return TrackerConfig(tiny=True, **common), ["--tiny: tiny RANDOM models; the masks mean nothing"]
    if args.random_weights:
        values.update(sam2_checkpoint=None, must3r_checkpoint=None)
    cfg = TrackerConfig(**values)
    cfg, missing = resolve_weights(cfg)
    if missing or args.random_weights:
        how = (
            "Get them with `threeam-download-weights` (or copy the files into $THREEAM_WEIGHTS, default "
            "~/.cache/threeam/weights), or pass --sam2-checkpoint / --must3r-checkpoint."
        )
        why = (
            "--random-weights given" if args.random_weights else "official weights missing:\n  " + "\n  ".join(missing)
        )
        if args.demo:
            # A full-size random model is as slow as a real one and no more meaningful: keep the demo quick.
            cfg = TrackerConfig(tiny=True, **common)
            notes.append(f"RANDOM WEIGHTS: {why}\nThe demo runs tiny random models; its masks mean nothing. {how}")
        else:
            notes.append(f"RANDOM WEIGHTS: {why}\nMasks from random weights mean nothing. {how}")
    if cfg.method == "3am" and not cfg.tiny and cfg.threeam_checkpoint is None:
        notes.append("no --checkpoint: the Feature Merger is untrained, so 3AM tracks exactly like SAM 2")
    return cfg, notes


def main(argv: list[str] | None = None) -> int:
    import torch

    args = build_parser().parse_args(argv)
    try:
        with torch.no_grad():  # scoped: main() may run inside another program (tests) that needs autograd
            return _run(args)
    except (TrackerInputError, FileNotFoundError, ValueError, ExportError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2


def _run(args) -> int:
    import torch

    out = pathlib.Path(args.output)
    if args.demo:
        if args.input or args.point or args.box or args.mask:
            raise UsageError("--demo makes its own clip and prompts; do not give an input or prompts with it")
        if args.demo_frames < 2:
            raise UsageError("--demo-frames must be at least 2")
        scene_dir, prompt_frame, prompts = make_demo(out, args.seed, args.demo_frames)
        source = FrameSource(scene_dir / "rgb", args.max_frames)
        source.video_name = "demo"
        geometry = demo_geometry(scene_dir) if args.reid == "rgbd" else None
    else:
        if args.reid == "rgbd":
            raise UsageError("--reid rgbd needs each frame's depth and pose: only the --demo clip has them here")
        geometry = None
        if not args.input:
            raise UsageError("give a video file or an image folder (or --demo for a generated clip)")
        source = FrameSource(args.input, args.max_frames)
        prompt_frame = args.frame
        prompts = parse_prompts(args.point, args.box, args.mask)
        if not prompts:
            raise UsageError("give at least one prompt: --point, --box or --mask (see --help)")

    cfg, notes = config_from_args(args)
    for note in notes:
        _warn(note) if note.startswith("RANDOM") or note.startswith("--tiny") else print(
            f"note: {note}", file=sys.stderr
        )
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"{PROG}: {cfg.describe()} on {cfg.torch_device}; {len(source)} frames, objects "
        f"{sorted(prompts)} prompted on frame {prompt_frame}",
        file=sys.stderr,
    )
    tracker = build_tracker(cfg)

    mask_dir = out / "Annotations" / source.video_name
    mask_dir.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # sam2 warns per frame about its optional CUDA extension
        stats = track_video(
            tracker, source, prompts, prompt_frame, mask_dir, args.direction, not args.quiet, geometry=geometry
        )
    print(
        f"{PROG}: {stats['frames']} frames tracked, {stats['mean_s'] * 1000:.0f} ms per frame; masks in {mask_dir}",
        file=sys.stderr,
    )
    if not args.no_video:
        video = out / f"{source.video_name}_overlay.mp4"
        fps = args.fps or getattr(source, "fps", 0.0) or 10.0
        write_overlay_video(video, source, mask_dir, fps)
        print(f"{PROG}: overlay video {video}", file=sys.stderr)
    if args.demo:
        s = demo_scores(scene_dir, mask_dir, sorted(prompts))
        print(
            f"{PROG}: demo scores against the ground truth ({s['n_objects']} objects): IoU {s['iou']:.3f}, "
            f"positive IoU {s['positive_iou']:.3f}, successful IoU {s['successful_iou']:.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
