"""The one interface between a tracking model and its users (ROS node, CLI, benchmarks).

Both the plain streaming SAM 2 predictor and the 3AM tracker implement `Tracker`, so a user of it never knows
which one it drives. Input checks live here too, so every implementation refuses bad input the same way.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Sequence

import numpy as np

from threeam_model.errors import FrameError, PromptError, TrackerInputError


@dataclasses.dataclass(frozen=True)
class CameraGeometry:
    """What a robot knows about where a frame was taken: depth, intrinsics, camera pose (all optional per frame).

    depth: (H, W) float32 metres (or uint16 / other units scaled by the consumer's depth scale); K: (3, 3) pinhole
    intrinsics in pixels; c2w: (4, 4) camera-to-world pose (OpenCV optical frame: x right, y down, z forward).
    Passed to `Tracker.track(frame, geometry=...)`; trackers that do not use it ignore it.
    """

    depth: np.ndarray
    K: np.ndarray
    c2w: np.ndarray


class ObjectResult:
    """One object on one frame, at the frame's own resolution.

    The mask is held as its bounding window (the rest of the frame is background), and the full-resolution logits
    are made only when `mask_logits` is read: a frame with many objects holds masks, boxes and scores, not
    full-size float maps. The window too may be made on first access (of `window`, `mask`, `area` or `covers`)
    when the result was composed without it; the box is always exact. `mask` and `mask_logits` are (H, W) arrays
    built on access.
    """

    __slots__ = ("obj_id", "score", "box", "reacquired", "image_size", "_win", "_win_fn", "_logits", "_logits_fn")

    def __init__(
        self,
        obj_id: int,
        score: float,
        box: tuple[int, int, int, int] | None,
        image_size: tuple[int, int],
        window,
        logits=None,
        reacquired: bool = False,
    ):
        """box: (x_min, y_min, x_max, y_max) inclusive pixel bounds, None if not visible; window: the bool mask
        inside the box, or a callable that makes it (None if not visible); logits: an (H, W) float32 array, or a
        callable that makes it."""
        self.obj_id = int(obj_id)
        self.score = float(score)  # object presence probability in [0, 1]
        self.box = box
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.reacquired = bool(reacquired)  # geometric re-identification re-prompted this object on this frame
        self._win = None if callable(window) else window
        self._win_fn = window if callable(window) else None
        self._logits = None if callable(logits) else logits
        self._logits_fn = logits if callable(logits) else None

    @classmethod
    def from_logits(cls, obj_id: int, logits: np.ndarray, score: float, reacquired: bool = False) -> ObjectResult:
        logits = np.asarray(logits, dtype=np.float32)
        mask = logits > 0
        box = mask_box(mask)
        window = None if box is None else mask[box[1] : box[3] + 1, box[0] : box[2] + 1]
        return cls(obj_id, score, box, logits.shape, window, logits, reacquired)

    @property
    def visible(self) -> bool:
        """The mask is non-empty."""
        return self.box is not None

    @property
    def mask(self) -> np.ndarray:
        """(H, W) bool."""
        mask = np.zeros(self.image_size, dtype=bool)
        if self.box is not None:
            x0, y0, x1, y1 = self.box
            mask[y0 : y1 + 1, x0 : x1 + 1] = self.window
        return mask

    def covers(self, x: int, y: int) -> bool:
        """Whether frame pixel (x, y) is in the mask (read from the box window, without the full-frame mask)."""
        if self.box is None:
            return False
        x0, y0, x1, y1 = self.box
        return x0 <= x <= x1 and y0 <= y <= y1 and bool(self.window[y - y0, x - x0])

    @property
    def window(self) -> np.ndarray | None:
        """The mask inside its box (box rows x box columns, bool); None when the mask is empty. Made on first
        access where the result was composed without it."""
        if self._win_fn is not None:
            self._win = np.asarray(self._win_fn(), dtype=bool)
            self._win_fn = None
        return self._win

    _window = window  # the name `FrameResult.label_image` reads

    @property
    def mask_logits(self) -> np.ndarray:
        """(H, W) float32: the model's logits upsampled to the frame (mask = logits > 0); made on first access."""
        if self._logits is None:
            self._logits = np.asarray(self._logits_fn(), dtype=np.float32)
            self._logits_fn = None
        return self._logits

    @property
    def area(self) -> int:
        """Mask pixels."""
        window = self.window
        return 0 if window is None else int(window.sum())

    def with_reacquired(self) -> ObjectResult:
        """The same result marked as re-acquired by re-identification."""
        window = self._win if self._win_fn is None else self._win_fn
        logits = self._logits if self._logits is not None else self._logits_fn
        return ObjectResult(self.obj_id, self.score, self.box, self.image_size, window, logits, True)

    def nbytes(self) -> int:
        """Bytes this result holds in arrays: the window once it is made (at composition, or on first access where
        it was composed without it), and the full logits once they were asked for."""
        return sum(a.nbytes for a in (self._win, self._logits) if a is not None)

    def __repr__(self) -> str:
        return f"ObjectResult(obj_id={self.obj_id}, score={self.score:.3f}, box={self.box})"


@dataclasses.dataclass
class FrameResult:
    """Everything a tracker says about one frame.

    labels: the label image the tracker composed where it ran (None: composed here from the objects on request);
    it is used only while `objects` still holds the results it was composed from.
    scene: the feature provider's per-frame scene output when it has one (for 3AM: MUSt3R's `Must3rFrame` with
    the pointmap, confidence and crop box), else None.
    """

    frame_index: int
    image_size: tuple[int, int]  # (H, W)
    objects: dict[int, ObjectResult]
    timings: dict[str, float] = dataclasses.field(default_factory=dict)  # stage name -> seconds
    labels: np.ndarray | None = dataclasses.field(default=None, repr=False)
    scene: object | None = dataclasses.field(default=None, repr=False)
    _labels_of: tuple = dataclasses.field(default=(), repr=False, compare=False)

    def __post_init__(self):
        if self.labels is not None:
            self._labels_of = self._key()

    def _key(self) -> tuple:
        return tuple((k, id(v)) for k, v in sorted(self.objects.items()))

    def label_image(self, dtype=np.uint16) -> np.ndarray:
        """(H, W) image with each pixel set to the id of the object covering it (0 = background).

        Where masks overlap, the object with the higher logit at that pixel wins (the lower id on a tie).
        """
        if self.labels is not None and self._labels_of == self._key():
            return self.labels.astype(dtype, copy=False)
        h, w = self.image_size
        labels = np.zeros((h, w), dtype=dtype)
        if not self.objects:
            return labels
        best = np.full((h, w), -np.inf, dtype=np.float32)
        for obj_id in sorted(self.objects):
            obj = self.objects[obj_id]
            if obj.box is None:
                continue
            x0, y0, x1, y1 = obj.box
            win = (slice(y0, y1 + 1), slice(x0, x1 + 1))
            values = obj.mask_logits[win]
            # strictly greater: on a tie the lower id (visited first) keeps the pixel, as argmax would
            wins = obj._window & (values > best[win])
            best[win][wins] = values[wins]
            labels[win][wins] = obj_id
        return labels

    def nbytes(self) -> int:
        """Bytes held in this result's arrays (label image and object results)."""
        total = 0 if self.labels is None else self.labels.nbytes
        return total + sum(obj.nbytes() for obj in self.objects.values())


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


class Tracker(abc.ABC):
    """Frame-by-frame, many-object tracker. Prompts apply to the current (last tracked) frame."""

    @abc.abstractmethod
    def track(self, frame: np.ndarray, geometry: CameraGeometry | None = None) -> FrameResult:
        """Track every object on a new (H, W, 3) uint8 RGB frame.

        geometry: the frame's depth, intrinsics and pose when the robot has them (used by re-identification from
        RGB-D; ignored by trackers that need none)."""

    @abc.abstractmethod
    def add_prompt(
        self,
        obj_id: int,
        points: np.ndarray | Sequence[Sequence[float]] | None = None,
        labels: np.ndarray | Sequence[int] | None = None,
        box: np.ndarray | Sequence[float] | None = None,
        mask: np.ndarray | None = None,
        conditioning: bool | None = None,
    ) -> ObjectResult:
        """Prompt `obj_id` on the current frame: a new id starts a track, an existing one is refined.

        points: (N, 2) pixel (x, y); labels: (N,) 1 positive / 0 negative; box: (x0, y0, x1, y1) pixels;
        mask: (H, W) bool-like at frame size. Raises PromptError on anything it cannot use.
        conditioning: None follows the tracker's own rule (SAM 2: a first prompt conditions the memory, a correction
        on a frame already tracked does not); True keeps this prompt as a conditioning frame, as for a new appearance
        of the object (re-identification). Trackers without conditioning frames accept and ignore it.
        """

    @abc.abstractmethod
    def remove_object(self, obj_id: int) -> None:
        """Forget one object; the others are untouched. Raises PromptError for an unknown id."""

    @abc.abstractmethod
    def reset(self) -> None:
        """Forget every object and all memory; the next frame starts a new stream (any size)."""

    @property
    @abc.abstractmethod
    def object_ids(self) -> list[int]:
        """Ids of the tracked objects, sorted."""

    @property
    @abc.abstractmethod
    def frame_index(self) -> int:
        """Index of the current frame in this stream (-1 before the first frame)."""


# ----------------------------------------------------------------------------------------------- input checks


def check_frame(frame: np.ndarray, expected_size: tuple[int, int] | None = None) -> np.ndarray:
    """Validate an RGB frame; returns it as a C-contiguous (H, W, 3) uint8 array."""
    if not isinstance(frame, np.ndarray):
        raise FrameError(f"frame must be a numpy array, got {type(frame).__name__}")
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise FrameError(f"frame must be (H, W, 3) RGB, got shape {tuple(frame.shape)}")
    if frame.shape[0] == 0 or frame.shape[1] == 0:
        raise FrameError(f"frame is empty: shape {tuple(frame.shape)}")
    if frame.dtype != np.uint8:
        raise FrameError(f"frame must be uint8, got {frame.dtype}")
    if expected_size is not None and tuple(frame.shape[:2]) != tuple(expected_size):
        raise FrameError(
            f"frame size changed mid-stream from {expected_size[1]}x{expected_size[0]} to "
            f"{frame.shape[1]}x{frame.shape[0]} (WxH); call reset() to start a new stream"
        )
    return np.ascontiguousarray(frame)


def check_prompt(
    image_size: tuple[int, int],
    points=None,
    labels=None,
    box=None,
    mask=None,
) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """Validate a prompt against an (H, W) frame.

    Returns (points (N,2) float32, labels (N,) int32, box (4,) float32, mask (H,W) bool), each None if absent.
    """
    h, w = image_size
    if points is None and box is None and mask is None:
        raise PromptError("a prompt needs at least one of: points, box, mask")
    if mask is not None and (points is not None or box is not None):
        raise PromptError("a mask prompt cannot be combined with points or a box; send them separately")

    pts = lab = bx = m = None
    if points is not None:
        flat = _finite_array(points, "points").reshape(-1)
        if flat.size % 2:
            raise PromptError(f"points must be (x, y) pairs, got {flat.size} numbers")
        pts = flat.reshape(-1, 2)
        if labels is None:
            lab = np.ones(len(pts), np.int32)
        else:
            lab = np.asarray(labels).reshape(-1)
            if lab.shape[0] != pts.shape[0]:
                raise PromptError(f"{pts.shape[0]} points but {lab.shape[0]} labels")
            if not np.isin(lab, (0, 1)).all():
                raise PromptError(f"point labels must be 1 (object) or 0 (background), got {lab.tolist()}")
            lab = lab.astype(np.int32)
        for x, y in pts:
            if not (0 <= x < w and 0 <= y < h):
                raise PromptError(f"point ({x:g}, {y:g}) lies outside the {w}x{h} image")
        if pts.shape[0] == 0:
            pts = lab = None
            if box is None:
                raise PromptError("points is empty and no box was given")
    if box is not None:
        bx = _finite_array(box, "box").reshape(-1)
        if bx.shape[0] != 4:
            raise PromptError(f"box must be [x_min, y_min, x_max, y_max], got {bx.shape[0]} numbers")
        x0, y0, x1, y1 = bx.tolist()
        if not (x1 > x0 and y1 > y0):
            raise PromptError(
                f"box [{x0:g}, {y0:g}, {x1:g}, {y1:g}] is empty or inverted (need x_max > x_min, y_max > y_min)"
            )
        if x1 <= 0 or y1 <= 0 or x0 >= w or y0 >= h:
            raise PromptError(f"box [{x0:g}, {y0:g}, {x1:g}, {y1:g}] lies outside the {w}x{h} image")
        bx = np.array([max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)], np.float32)
    if mask is not None:
        m = np.asarray(mask)
        if m.ndim == 3 and m.shape[2] == 1:
            m = m[..., 0]
        if m.ndim != 2 or tuple(m.shape) != (h, w):
            raise PromptError(f"mask must be (H, W) = ({h}, {w}) like the frame, got shape {tuple(m.shape)}")
        if m.dtype.kind == "f" and not np.isfinite(m).all():
            raise PromptError("mask holds NaN or infinite values")
        m = m > 0
        if not m.any():
            raise PromptError("mask is empty (no non-zero pixel); use remove_object to drop an object")
    return pts, lab, bx, m


MAX_OBJ_ID = 65535  # ids are label image values: mono16 holds 1..65535, 0 is background


def check_obj_id(obj_id) -> int:
    if isinstance(obj_id, bool) or not isinstance(obj_id, (int, np.integer)):
        raise PromptError(f"object id must be an integer, got {obj_id!r}")
    if not 1 <= int(obj_id) <= MAX_OBJ_ID:
        raise PromptError(f"object id must be in 1..{MAX_OBJ_ID} (0 is background), got {obj_id}")
    return int(obj_id)


def _finite_array(values, name: str) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise PromptError(f"{name} must be numbers: {exc}") from None
    if not np.isfinite(arr).all():
        raise PromptError(f"{name} hold NaN or infinite values: {arr.reshape(-1).tolist()}")
    return arr.astype(np.float32)


__all__ = [
    "CameraGeometry",
    "FrameError",
    "FrameResult",
    "ObjectResult",
    "PromptError",
    "Tracker",
    "TrackerInputError",
    "check_frame",
    "check_obj_id",
    "check_prompt",
    "mask_box",
]
