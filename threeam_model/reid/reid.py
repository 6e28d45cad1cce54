"""Geometric re-identification: a `Tracker` mode that keeps each object's 3D anchor and re-finds it by geometry.

`GeometricReID` wraps any base `Tracker` (streaming SAM 2 or the 3AM tracker) and a `GeometrySource`. Each frame,
after the base tracker has run:

1. `locate` projects the object's anchor into the current camera and compares each anchor point's depth with the
   scene's depth at its pixel: in front within the object's own size (its near side hides its far side) is
   support, clearly nearer is an occluder, farther means the place is now empty (the object moved). Pixels around
   supported points whose depth fits form the geometric prior.
2. The facts of each object (`Evidence`: the anchor's state, the mask against its prior and centre) go to the pure
   `decide` (decision.py), which says whether to re-acquire, veto or reject (prompt the base on this frame, as a
   conditioning input, from the prior) or to keep, learn or relearn the base's mask.
3. The decision is applied: a prompt's result replaces the base's; the anchor learns the mask it was told to.

Prompted objects come back with `ObjectResult.reacquired = True`; every prompt is also logged in `events`.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import time

import numpy as np
from scipy import ndimage

from threeam_model.interface import CameraGeometry, FrameResult, ObjectResult, Tracker, check_frame
from threeam_model.knobs import check_knobs, knob
from threeam_model.reid.anchor import ObjectAnchor
from threeam_model.reid.decision import (
    PROMPTS,
    AnchorState,
    Decision,
    Evidence,
    decide,
    decide_learning,
    reads_distances,
    reads_jump,
)
from threeam_model.reid.geometry import FrameGeometry, GeometrySource, downsample_mask, grid_stride

# the names callers import
OUT_OF_VIEW, OCCLUDED, VACATED = AnchorState.OUT_OF_VIEW, AnchorState.OCCLUDED, AnchorState.VACATED
TOO_SMALL, VISIBLE = AnchorState.TOO_SMALL, AnchorState.VISIBLE
_TRACE_POINTS = 256  # world points kept of the previous frame's mask, to tell a continuous track from a jump


@dataclasses.dataclass
class ReIDConfig:
    """Thresholds of the mode. Pixel counts are in frame pixels; tolerances are relative to depth."""

    work_long_side: int = knob(
        160, "Geometry grid: the frame's long side is sampled down to at most this many pixels.", min_value=1
    )
    depth_tol: float = knob(
        0.05, "A point is at a surface when their depths differ by at most this fraction.", min_value=1e-9
    )
    voxel_rel: float = knob(
        0.01, "Anchor voxel edge, as a fraction of the object's depth when first seen.", min_value=1e-9
    )
    max_voxels: int = knob(4096, "Anchor cap per object (voxels; the least recently seen leave).", min_value=1)
    max_points_per_update: int = knob(
        2048, "Mask points added to the anchor per frame (evenly subsampled).", min_value=1
    )
    min_anchor_voxels: int = knob(10, "An anchor smaller than this neither re-acquires nor vetoes.", min_value=1)
    min_prior_pixels: int = knob(64, "The prior must cover this many frame pixels to be acted on.", min_value=0)
    hull_margin: float = knob(
        0.25, "Widening of the bounding sphere that may hold unseen sides, times the object's extent.", min_value=0.0
    )
    min_support_frac: float = knob(
        0.3,
        "Share of the anchor's points not hidden by a nearer occluder that must be supported for it to be in view.",
        min_value=0.0,
        max_value=1.0,
    )
    veto_max_near_frac: float = knob(
        0.2, "A mask with less than this share on the prior is a veto candidate.", min_value=0.0, max_value=1.0
    )
    update_min_near_frac: float = knob(
        0.3,
        "A mature anchor learns only masks with at least this share on the prior.",
        min_value=0.0,
        max_value=1.0,
    )
    cooldown_frames: int = knob(1, "After prompting an object, skip it for this many frames.", min_value=0)
    prompt: str = knob("box+point", "What a re-acquisition prompt holds.", choices=("box+point", "box", "point"))
    max_events: int = knob(256, "Cap of the event log.", min_value=1)
    prompt_as_conditioning: bool = knob(
        True, "The tracker keeps a re-identification prompt as a conditioning frame (where it can)."
    )
    # right for static scenes, wrong for objects carried away unseen
    reject_out_of_view: bool = knob(
        False,
        "Also reject (with a negative point) a mask that jumps far from the anchor while the anchor's place is out "
        "of view.",
    )

    def __post_init__(self):
        check_knobs(self)


@dataclasses.dataclass
class AnchorView:
    """Where an anchor stands in the current frame."""

    state: AnchorState
    in_view: int  # anchor points projecting into the image in front of the camera
    supported: int
    occluded: int
    vacated: int
    prior: np.ndarray | None  # (h, w) bool grid mask, None when out of view

    @property
    def prior_count(self) -> int:
        return 0 if self.prior is None else int(self.prior.sum())


@dataclasses.dataclass
class ReIDEvent:
    frame_index: int
    obj_id: int
    kind: Decision  # REACQUIRE, VETO or REJECT (only a negative point: the base's mask is not the object)
    points: np.ndarray  # (N, 2) frame pixels (x, y) sent to the base tracker
    labels: np.ndarray  # (N,) 1 = object, 0 = not the object
    box: np.ndarray | None  # (4,) x0, y0, x1, y1 frame pixels
    prior_pixels: int  # frame pixels of the prior
    visible_after: bool  # the base's mask after the prompt is non-empty


def locate(anchor: ObjectAnchor, geo: FrameGeometry, cfg: ReIDConfig) -> AnchorView:
    """Project `anchor` into `geo`'s camera; classify its points against the scene depth; build the prior."""
    h, w = geo.grid_size
    uv, z = geo.project(anchor.points.astype(np.float64))
    with np.errstate(invalid="ignore"):
        j, i = np.round(uv[:, 0]), np.round(uv[:, 1])
        in_view = (z > 0) & (j >= 0) & (j < w) & (i >= 0) & (i < h)
    if not in_view.any():
        return AnchorView(OUT_OF_VIEW, 0, 0, 0, 0, None)
    j, i, z = j[in_view].astype(np.int64), i[in_view].astype(np.int64), z[in_view]
    d = geo.depth[i, j].astype(np.float64)
    known = np.isfinite(d)
    tol = cfg.depth_tol * z
    front = anchor.extent + tol  # the object's own near side may stand this far in front of a remembered point
    with np.errstate(invalid="ignore"):
        at = np.abs(d - z) <= tol
        # a surface in front of a remembered point is the object's own near side only if it lies inside the object
        hiding = known & ~at & (d >= z - front) & (d < z) & _inside(anchor, geo.points[i, j], tol, cfg)
        support = known & at | hiding
        occluded = known & ~support & (d < z)
        vacated = known & (d > z + tol)
    n_sup, n_occ, n_vac = int(support.sum()), int(occluded.sum()), int(vacated.sum())
    prior = np.zeros((h, w), bool)
    if n_sup:
        prior = _splat_prior(geo, anchor, i[support], j[support], z[support], cfg)
    view = AnchorView(TOO_SMALL, int(in_view.sum()), n_sup, n_occ, n_vac, prior)
    # a nearer occluder hiding part of the anchor is normal; seeing through where it was is evidence against it
    if n_sup and n_sup >= cfg.min_support_frac * (n_sup + n_vac):
        if view.prior_count * geo.stride**2 >= cfg.min_prior_pixels:
            view.state = VISIBLE
        elif n_occ > n_sup:
            view.state = OCCLUDED
    elif n_occ or n_vac:
        view.state = OCCLUDED if n_occ >= n_vac else VACATED
    return view


def _splat_prior(geo: FrameGeometry, anchor: ObjectAnchor, i, j, z, cfg: ReIDConfig) -> np.ndarray:
    """Grid pixels near supported anchor points whose depth lies within the object's depth range there."""
    h, w = geo.grid_size
    focal = np.sqrt(abs(np.linalg.det(geo.projection[:, :3])))  # fx * fy of the grid camera, K[2, 2] = 1
    spacing = anchor.voxel_size * focal / float(np.median(z))  # grid pixels between neighbouring voxels
    r = int(min(max(1, np.ceil(0.75 * spacing)), 16))
    i0, i1 = max(int(i.min()) - r, 0), min(int(i.max()) + r + 1, h)
    j0, j1 = max(int(j.min()) - r, 0), min(int(j.max()) + r + 1, w)
    far = np.full((i1 - i0, j1 - j0), -np.inf)
    near = np.full((i1 - i0, j1 - j0), np.inf)
    np.maximum.at(far, (i - i0, j - j0), z)
    np.minimum.at(near, (i - i0, j - j0), z)
    size = 2 * r + 1
    far = ndimage.maximum_filter(far, size=size, mode="constant", cval=-np.inf)
    near = ndimage.minimum_filter(near, size=size, mode="constant", cval=np.inf)
    d = geo.depth[i0:i1, j0:j1]
    with np.errstate(invalid="ignore"):
        tol = cfg.depth_tol * far
        roi = (d <= far + tol) & (d >= near - anchor.extent - tol)  # NaN depth compares False
        roi &= _inside(anchor, geo.points[i0:i1, j0:j1], cfg.depth_tol * d, cfg)
    prior = np.zeros((h, w), bool)
    prior[i0:i1, j0:j1] = roi
    return prior


def _inside(anchor: ObjectAnchor, points: np.ndarray, tol, cfg: ReIDConfig) -> np.ndarray:
    """Which world points may belong to the object: within its bounding sphere, widened by `tol` and, since the
    anchor holds only the sides seen so far, by `hull_margin` times its extent."""
    dist = np.linalg.norm(points.astype(np.float64) - anchor.centre, axis=-1)
    return dist <= (0.5 + cfg.hull_margin) * anchor.extent + tol


def prompt_from_prior(prior: np.ndarray, stride: int, image_size: tuple[int, int]):
    """(point (x, y), box (x0, y0, x1, y1)) in frame pixels: the deepest pixel of the prior's largest blob, and the
    blob's bounding box."""
    labels, n = ndimage.label(prior)
    if n == 0:
        return None, None
    blob = labels == (np.argmax(np.bincount(labels.ravel())[1:]) + 1)
    ys, xs = np.nonzero(blob)
    y0, y1, x0, x1 = ys.min(), ys.max(), xs.min(), xs.max()
    inner = ndimage.distance_transform_edt(np.pad(blob[y0 : y1 + 1, x0 : x1 + 1], 1))[1:-1, 1:-1]
    py, px = np.unravel_index(np.argmax(inner), inner.shape)
    h, w = image_size
    point = np.array([min((x0 + px) * stride, w - 1), min((y0 + py) * stride, h - 1)], np.float32)
    box = np.array(
        [x0 * stride, y0 * stride, min((x1 + 1) * stride, w), min((y1 + 1) * stride, h)],
        np.float32,
    )
    return point, box


def _deepest_pixel(mask: np.ndarray) -> tuple[int, int]:
    inner = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(np.argmax(inner), inner.shape)
    return int(y), int(x)


@dataclasses.dataclass
class _ObjectState:
    anchor: ObjectAnchor
    view: AnchorView | None = None
    last_prompt_frame: int = -(10**9)
    prev_points: np.ndarray | None = None  # (<= _TRACE_POINTS, 3) world points of last frame's mask; None if absent


class GeometricReID(Tracker):
    """A base `Tracker` plus geometric re-identification. Same interface; see the module docstring.

    With an `RGBDGeometry` source, give each frame its depth, K and pose: `track(frame, geometry=CameraGeometry(
    depth, K, c2w))`; a frame without geometry passes the base result through unchanged. A `Must3rGeometry` source
    needs none (it runs its own MUSt3R stream, or reads the base tracker's `FrameResult.scene`).
    """

    def __init__(self, base: Tracker, geometry: GeometrySource, config: ReIDConfig | None = None):
        self.base = base
        self.geometry = geometry
        self.config = config or ReIDConfig()
        self._objects: dict[int, _ObjectState] = {}
        self._geo: FrameGeometry | None = None
        self._image_size: tuple[int, int] | None = None
        self.events: collections.deque[ReIDEvent] = collections.deque(maxlen=self.config.max_events)
        self._prompt_s = 0.0

    # ---------------------------------------------------------------------------------------------- interface

    @property
    def object_ids(self) -> list[int]:
        return self.base.object_ids

    @property
    def frame_index(self) -> int:
        return self.base.frame_index

    def reset(self) -> None:
        self.base.reset()
        self.geometry.reset()
        self._objects.clear()
        self._geo = None
        self._image_size = None
        self.events.clear()

    def remove_object(self, obj_id: int) -> None:
        self.base.remove_object(obj_id)
        self._objects.pop(int(obj_id), None)

    def add_prompt(self, obj_id, points=None, labels=None, box=None, mask=None, conditioning=None) -> ObjectResult:
        result = self.base.add_prompt(
            obj_id, points=points, labels=labels, box=box, mask=mask, conditioning=conditioning
        )
        state = self._objects.setdefault(result.obj_id, self._new_state())
        if self._geo is not None and result.visible:
            mask_g = downsample_mask(result.mask, self._geo.stride)
            if len(state.anchor) and self._near_frac(state, mask_g) < self.config.update_min_near_frac:
                state.anchor.clear()  # the user points at something else than the anchor: trust the user
            self._learn(state, mask_g)
            state.view = locate(state.anchor, self._geo, self.config) if len(state.anchor) else None
        return result

    def track(self, frame: np.ndarray, geometry: CameraGeometry | None = None) -> FrameResult:
        """Track a frame with the base tracker, then re-identify. geometry: the frame's depth, K and pose (for an
        `RGBDGeometry` source); unusable geometry raises GeometryInputError before the base tracker sees the frame."""
        frame = check_frame(frame)
        geometry = self.geometry.check(geometry)
        result = self.base.track(frame, geometry=geometry)
        t0 = time.perf_counter()
        size = tuple(frame.shape[:2])
        self._image_size = size
        self._geo = None  # no geometry of an earlier frame for prompts on this one, should the source fail
        stride = grid_stride(size, self.config.work_long_side)
        self._geo = geo = self.geometry.geometry(frame, stride, geometry, result)
        self._prompt_s = 0.0
        if geo is not None:
            for obj_id, obj in list(result.objects.items()):
                state = self._objects.setdefault(obj_id, self._new_state())
                corrected = self._step_object(obj_id, obj, state, geo, result.frame_index)
                if corrected is not None:
                    result.objects[obj_id] = corrected
        # the mode's own cost, and apart from it the base tracker's time spent on its prompts
        result.timings["reid"] = time.perf_counter() - t0 - self._prompt_s
        result.timings["reid_prompt"] = self._prompt_s
        return result

    # ------------------------------------------------------------------------------------------------ helpers

    def anchor(self, obj_id: int) -> ObjectAnchor | None:
        state = self._objects.get(int(obj_id))
        return None if state is None else state.anchor

    def view(self, obj_id: int) -> AnchorView | None:
        """Where `obj_id`'s anchor stood on the current frame (None before it has an anchor)."""
        state = self._objects.get(int(obj_id))
        return None if state is None else state.view

    def _new_state(self) -> _ObjectState:
        return _ObjectState(ObjectAnchor(self.config.max_voxels, self.config.voxel_rel))

    def _near_frac(self, state: _ObjectState, mask_g: np.ndarray) -> float:
        """Share of the mask's pixels with geometry that lie on the anchor's prior."""
        mask_valid = mask_g & self._geo.valid
        n = int(mask_valid.sum())
        if n == 0 or state.view is None or state.view.prior is None:
            return 0.0
        return float((mask_valid & state.view.prior).sum()) / n

    def _learn(self, state: _ObjectState, mask_g: np.ndarray) -> None:
        geo = self._geo
        eroded = ndimage.binary_erosion(mask_g)
        sel = (eroded if eroded.sum() >= 16 else mask_g) & geo.valid  # mask edges mix object and background depth
        idx = np.flatnonzero(sel)
        if idx.size == 0:
            return
        cap = self.config.max_points_per_update
        if idx.size > cap:
            idx = idx[np.linspace(0, idx.size - 1, cap).round().astype(np.int64)]
        state.anchor.add(geo.points.reshape(-1, 3)[idx], geo.depth.reshape(-1)[idx], max(self.frame_index, 0))

    def _step_object(self, obj_id, obj: ObjectResult, state, geo: FrameGeometry, frame_index: int):
        """Gather the object's evidence, decide, apply; returns the prompted result, or None if the base's stands."""
        state.view = locate(state.anchor, geo, self.config) if len(state.anchor) else None
        mask_g = downsample_mask(obj.mask, geo.stride) if obj.visible else None
        if mask_g is not None and not mask_g.any():
            mask_g = None
        trace = self._trace(mask_g) if mask_g is not None else None
        evidence = self._evidence(state, mask_g, trace, obj.score, frame_index)
        decision = decide(evidence, self.config)
        corrected = None
        if decision in PROMPTS:
            corrected = self._reprompt(obj_id, state, decision, None if decision is Decision.REACQUIRE else mask_g)
            if corrected is None:  # the prior had no pixel to point at
                decision = decide_learning(evidence, self.config)
        if decision is Decision.RELEARN:
            state.anchor.clear()
        if decision in (Decision.LEARN, Decision.RELEARN):
            self._learn(state, mask_g)
        if corrected is not None:
            state.prev_points = self._trace(downsample_mask(corrected.mask, geo.stride)) if corrected.visible else None
        else:
            state.prev_points = trace
        return corrected

    def _evidence(self, state: _ObjectState, mask_g, trace, score: float, frame_index: int) -> Evidence:
        """The facts `decide` reads. mask_g: the base's mask on the grid, None when empty; trace: its world points."""
        anchor, view, geo, cfg = state.anchor, state.view, self._geo, self.config
        evidence = Evidence(
            anchor=None if view is None else view.state,
            anchor_voxels=len(anchor),
            frames_since_prompt=frame_index - state.last_prompt_frame,
            mask_present=mask_g is not None,
        )
        if mask_g is None:
            return evidence
        prior_count = 0 if view is None else view.prior_count
        evidence = dataclasses.replace(
            evidence,
            score=float(score),
            on_prior=self._near_frac(state, mask_g),
            prior_held=float((mask_g & view.prior).sum()) / prior_count if prior_count else 0.0,
        )
        if trace is None or not reads_distances(evidence, cfg):  # trace None: no pixel of the mask has geometry
            return evidence
        centre = np.median(geo.points[mask_g & geo.valid], axis=0)
        evidence = dataclasses.replace(
            evidence,
            offset=float(np.linalg.norm(centre - anchor.centre)),
            reach=anchor.extent + cfg.depth_tol * float(np.nanmedian(geo.depth[mask_g])),
        )
        if reads_jump(evidence, cfg):
            evidence = dataclasses.replace(evidence, jump=self._jump(state.prev_points, trace))
        return evidence

    @staticmethod
    def _jump(prev: np.ndarray | None, now: np.ndarray) -> float:
        """Median distance of the mask's points from the nearest of last frame's (inf when there was no mask)."""
        if prev is None:
            return math.inf
        return float(np.median(np.sqrt(((now[:, None, :] - prev[None]) ** 2).sum(-1).min(axis=1))))

    def _trace(self, mask_g: np.ndarray) -> np.ndarray | None:
        pts = self._geo.points[mask_g & self._geo.valid]
        if len(pts) == 0:
            return None
        if len(pts) > _TRACE_POINTS:
            pts = pts[np.linspace(0, len(pts) - 1, _TRACE_POINTS).round().astype(np.int64)]
        return pts.astype(np.float64)

    def _reprompt(self, obj_id: int, state: _ObjectState, kind: Decision, wrong_mask: np.ndarray | None):
        """Prompt the base for `obj_id` on this frame: positive point / box from the prior (reacquire, veto), plus
        a negative point on the wrong mask (veto, reject)."""
        t0 = time.perf_counter()
        geo, cfg = self._geo, self.config
        h, w = self._image_size
        points, labels, box = [], [], None
        if kind is not Decision.REJECT:
            point, box = prompt_from_prior(state.view.prior, geo.stride, self._image_size)
            if point is None:
                return None
            points.append(point)
            labels.append(1)
        if wrong_mask is not None:
            prior = state.view.prior if state.view.prior is not None else np.zeros_like(wrong_mask)
            wy, wx = _deepest_pixel(wrong_mask & ~prior)
            points.append(np.array([min(wx * geo.stride, w - 1), min(wy * geo.stride, h - 1)], np.float32))
            labels.append(0)
        if cfg.prompt == "point" or kind is Decision.REJECT:
            box = None
        if cfg.prompt == "box" and wrong_mask is None:
            points, labels = [], []
        pts = np.stack(points) if points else None
        lab = np.array(labels, np.int32) if points else None
        # A re-identification prompt marks a new appearance of the object: it conditions the memory like a first
        # prompt, where official SAM 2 would keep a correction on a tracked frame out of the conditioning frames.
        conditioning = True if cfg.prompt_as_conditioning else None
        result = self.base.add_prompt(obj_id, points=pts, labels=lab, box=box, conditioning=conditioning)
        state.last_prompt_frame = self.frame_index
        self.events.append(
            ReIDEvent(
                self.frame_index,
                obj_id,
                kind,
                pts if pts is not None else np.zeros((0, 2), np.float32),
                lab if lab is not None else np.zeros(0, np.int32),
                box,
                state.view.prior_count * geo.stride**2,
                bool(result.visible),
            )
        )
        if result.visible and kind is not Decision.REJECT:
            mask_g = downsample_mask(result.mask, geo.stride)
            if self._near_frac(state, mask_g) >= cfg.update_min_near_frac:
                self._learn(state, mask_g)
        self._prompt_s += time.perf_counter() - t0
        return result.with_reacquired()


__all__ = [
    "AnchorView",
    "GeometricReID",
    "ReIDConfig",
    "ReIDEvent",
    "locate",
    "prompt_from_prior",
]
