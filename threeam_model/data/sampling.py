"""Which frames of a scene make one training sample (paper sec. 3.3, sec. 4, supplement C.1).

Two ways to pick the N (= 8) frames of a sample:

- continuous: N consecutive frames from a random start (dense, little viewpoint change; the only choice without
  geometry, e.g. MOSE);
- field-of-view aware: a random reference frame first, then frames whose object pixels, lifted to 3D with their
  depth and pose and projected into the reference camera, land inside the reference image for more than a
  fraction tau (= 0.25) of them. The ratio's denominator counts the candidate's masked pixels that have a valid
  depth; a candidate where the objects are not visible has no such points and is never kept (absence is still
  seen in continuous samples and where an object is occluded in some views).

Per dataset, a sample is field-of-view aware with probability `fov_prob[dataset]` (ScanNet++ 0.8, ASE 0.8,
MOSE 0.0 in the paper; the synthetic scenes use 0.8 too) and continuous otherwise. A FoV sample that finds fewer
than `min_frames` frames falls back to continuous sampling (recorded in `Sample.mode`).

Objects: up to `max_objects` objects visible in the sample's first frame (the frame SAM 2 is prompted on);
the FoV test uses the union of their masks.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from threeam_model.data.frames import Frame, VideoSource

PAPER_FOV_PROB = {"scannetpp": 0.8, "ase": 0.8, "mose": 0.0, "synthetic": 0.8}


def fov_overlap_ratio(candidate: Frame, reference: Frame, mask: np.ndarray) -> float:
    """Fraction of the candidate's masked, depth-valid pixels whose 3D points project inside the reference image.

    A point counts as inside when it lies in front of the reference camera (z > 0) and projects into the image
    rectangle [-0.5, W - 0.5) x [-0.5, H - 0.5) (pixel centres at integer coordinates). Returns 0.0 when the
    mask has no pixel with valid depth.
    """
    if not (candidate.has_geometry and reference.has_geometry):
        raise ValueError("field-of-view sampling needs depth, intrinsics and pose on both frames")
    vs, us = np.nonzero(mask & (candidate.depth > 0))
    if us.size == 0:
        return 0.0
    z = candidate.depth[vs, us].astype(np.float64)
    pix = np.stack([us, vs, np.ones_like(us)], axis=1).astype(np.float64)
    cam = (pix @ np.linalg.inv(candidate.K).T) * z[:, None]
    ref_from_cand = np.linalg.inv(reference.pose) @ candidate.pose
    pts = cam @ ref_from_cand[:3, :3].T + ref_from_cand[:3, 3]
    in_front = pts[:, 2] > 1e-9
    proj = pts[in_front] @ reference.K.T
    u, v = proj[:, 0] / proj[:, 2], proj[:, 1] / proj[:, 2]
    h, w = reference.depth.shape
    inside = (u >= -0.5) & (u < w - 0.5) & (v >= -0.5) & (v < h - 0.5)
    return float(inside.sum()) / us.size


@dataclasses.dataclass
class Sample:
    source: VideoSource
    frame_indices: list[int]  # in the order the model sees them; the first is the prompted frame
    obj_ids: list[int]
    mode: str  # "continuous" | "fov" | "fov->continuous" (FoV found too few frames)
    fov_ratios: list[float] | None = None  # per frame after the first, for FoV samples


class FrameSampler:
    def __init__(
        self,
        num_frames: int = 8,
        tau: float = 0.25,
        fov_prob: dict[str, float] | None = None,
        max_objects: int = 3,
        min_frames: int = 2,
        max_candidates: int | None = None,
    ):
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        if not 0.0 <= tau < 1.0:
            raise ValueError(f"tau must be in [0, 1), got {tau}")
        self.num_frames = num_frames
        self.tau = tau
        self.fov_prob = dict(PAPER_FOV_PROB if fov_prob is None else fov_prob)
        self.max_objects = max_objects
        self.min_frames = min(min_frames, num_frames)
        self.max_candidates = max_candidates  # cap on frames tested per FoV sample (bounded cost on long scenes)

    # ------------------------------------------------------------------------------------------ helpers
    @staticmethod
    def visibility(source: VideoSource) -> tuple[np.ndarray, list[int]]:
        """(T, num_objects) bool table of which object is visible where, computed once per source."""
        cached = getattr(source, "_visibility", None)
        if cached is None:
            ids = source.object_ids
            table = np.zeros((len(source), len(ids)), dtype=bool)
            for t in range(len(source)):
                present = set(np.unique(source.frame(t, with_rgb=False).instance).tolist())
                table[t] = [i in present for i in ids]
            cached = (table, ids)
            source._visibility = cached
        return cached

    def _pick_objects(self, source: VideoSource, frame: int, rng: np.random.Generator) -> list[int]:
        table, ids = self.visibility(source)
        visible = [ids[j] for j in np.flatnonzero(table[frame])]
        if not visible:
            return []
        k = min(self.max_objects, len(visible))
        return sorted(int(x) for x in rng.choice(visible, size=k, replace=False))

    # ------------------------------------------------------------------------------------------ modes
    def continuous(self, source: VideoSource, rng: np.random.Generator) -> Sample:
        table, _ = self.visibility(source)
        n = min(self.num_frames, len(source))
        starts = [s for s in range(len(source) - n + 1) if table[s].any()]
        if not starts:
            raise ValueError(f"{source.name}: no object is visible at any usable start frame")
        start = int(rng.choice(starts))
        indices = list(range(start, start + n))
        return Sample(source, indices, self._pick_objects(source, start, rng), "continuous")

    def fov(self, source: VideoSource, rng: np.random.Generator) -> Sample:
        table, _ = self.visibility(source)
        refs = np.flatnonzero(table.any(axis=1))
        if refs.size == 0:
            raise ValueError(f"{source.name}: no object is visible in any frame")
        ref_index = int(rng.choice(refs))
        obj_ids = self._pick_objects(source, ref_index, rng)
        reference = source.frame(ref_index, with_rgb=False)
        _, ids = self.visibility(source)
        cols = [ids.index(o) for o in obj_ids]
        candidates = [t for t in rng.permutation(len(source)) if t != ref_index and table[t, cols].any()]
        if self.max_candidates is not None:
            candidates = candidates[: self.max_candidates]
        kept: list[tuple[int, float]] = []
        for t in candidates:
            cand = source.frame(int(t), with_rgb=False)
            ratio = fov_overlap_ratio(cand, reference, np.isin(cand.instance, obj_ids))
            if ratio > self.tau:
                kept.append((int(t), ratio))
                if len(kept) == self.num_frames - 1:
                    break
        if len(kept) + 1 < self.min_frames:
            sample = self.continuous(source, rng)
            sample.mode = "fov->continuous"
            return sample
        kept.sort()
        return Sample(source, [ref_index] + [t for t, _ in kept], obj_ids, "fov", [r for _, r in kept])

    def sample(self, source: VideoSource, rng: np.random.Generator) -> Sample:
        """One sample: FoV aware with the dataset's probability when the source has geometry, else continuous."""
        if source.dataset not in self.fov_prob:
            raise KeyError(
                f"no FoV sampling probability for dataset {source.dataset!r}; known: {sorted(self.fov_prob)}"
            )
        p = self.fov_prob[source.dataset] if source.has_geometry else 0.0
        return self.fov(source, rng) if rng.random() < p else self.continuous(source, rng)
