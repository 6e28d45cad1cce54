"""The official online keyframe policy of MUSt3R (which frames are written to memory), by view coverage.

A frame is a keyframe when it shows enough content that the memory frames do not cover: its confident 3D points
(subsampled) are compared with the points of the memory frames, binned by viewing direction from the camera centre
(2*q^2 direction bins); each distance to the nearest memory point of its bin is divided by the point's depth, and
the score is a percentile of those distances. Keyframe <=> first frame, or score > threshold and median
confidence > min_conf. Unlike the official code, the points are kept per memory image, so an image evicted from a
capped memory also leaves the coverage index (the region it covered counts as unseen again).

The nearest-point queries go through a `CoverageIndex`. Three implement it, with the same scores:
- `morton_index.MortonIndex`: sorted cells in compiled loops on the host, exact where the score's percentile
  depends on it (the CPU default; needs numba).
- `KDTreeIndex`: the official searcher (scipy KD-trees per bin, numpy bins); see below.
- `coverage.GridIndex`: torch on the stream's device, never reading from it (for CUDA).
Everything else here is torch on the stream's device: the frame's points keep a fixed size (low-confidence ones
are marked invalid rather than removed) and the score and the decision stay tensors until the stream reads them.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

import numpy as np
import torch
from scipy.spatial import cKDTree

from . import morton_index
from .coverage import GridIndex, WindowBudget, direction_bin, direction_bins


@dataclasses.dataclass
class KeyframeParams:
    """Defaults: the values of the official README, evaluations and demo (slam.py --subsamp 2
    --keyframe_overlap_thr 0.05 --min_conf_keyframe 1.5 --overlap_percentile 85, num_init_frames 2,
    searcher kdtree-scipy-quadrant_x2, overlap_mode nn-norm, fixed focal)."""

    subsample: int = 2  # keep every n-th pixel in both axes for the coverage test
    overlap_thr: float = 0.05  # keyframe if the coverage score is above this
    min_conf: float = 1.5  # points with conf <= this are ignored; median conf must exceed it
    percentile: float = 85.0  # percentile of the depth-normalised nearest-neighbour distances
    quadrant_divider: int = 2  # 2*q^2 viewing-direction bins
    num_init_frames: int = 2  # the first n frames start the memory jointly
    fixed_focal: bool = True  # one focal for the sequence (conf-weighted running mean)
    require_median_conf: bool = True  # the SLAM driver tests the median confidence; the gradio demo does not

    def __post_init__(self):
        if self.subsample < 1 or self.quadrant_divider < 1 or self.num_init_frames < 1:
            raise ValueError("subsample, quadrant_divider and num_init_frames must be >= 1")
        if not 0.0 <= self.percentile <= 100.0:
            raise ValueError(f"percentile must be in [0, 100], got {self.percentile}")


@dataclasses.dataclass(frozen=True)
class Ranked:
    """What the caller reads of the distances: the `percentile` of distance / scale over the valid queries (the
    order statistics either side of its rank, linearly interpolated, as np.percentile)."""

    scale: torch.Tensor  # (Q,) the divisor of each query's distance (score_scale)
    percentile: float


class CoverageIndex(Protocol):
    """The 3D points of the memory images, per direction bin, with nearest-point queries. Immutable."""

    on_host: bool  # whether queries read the points to the host (then the score may be computed there too)

    def __len__(self) -> int:
        """Number of indexed images."""

    def updated(self, add=(), drop=()) -> CoverageIndex:
        """A new index without the images `drop` (ids) and with `add`: (image id, points (M, 3) world,
        valid (M,) bool, camera centre (3,)) each."""

    def nearest(self, pts: torch.Tensor, valid: torch.Tensor, cam_center: torch.Tensor, ranked=None):
        """Distance (Q,) to the nearest indexed point of the same direction bin (inf if that bin is empty; any
        value where not valid), a (Q,) bool mask of queries not answered exactly yet (or None), and a small
        tensor of what the query needed (or None), to be passed to `learn` once it has been read.

        ranked (`Ranked`, optional): the caller reads only that percentile of distance / scale; an
        index may then give, where that percentile does not depend on the exact value, an upper bound that ranks
        below it."""

    def nearest_exact(self, pts, valid, cam_center, distances, unresolved) -> torch.Tensor:
        """`distances` with the `unresolved` queries answered exactly (may read from the device)."""

    def learn(self, needed: list[float]) -> None:
        """Size later queries from what this one needed (the values of `nearest`'s third output)."""


# ------------------------------------------------------------------------------------------- official searcher
# Morton code of a 1024^3 grid (30 bits): _SPREAD_10[v] spreads the 10 bits of v three apart
_SPREAD_10 = np.array([sum(((v >> b) & 1) << (3 * b) for b in range(10)) for v in range(1024)], dtype=np.uint32)


class _SpatialKey:
    """Sorting key that puts nearby points next to each other: the Morton code of their cell in a 1024^3 grid over
    twice the box of the first points (points outside share the border cells: only the order suffers).

    scipy builds a KD-tree faster from points in this order, and answers queries in this order about twice as fast
    (measured on 600k points): memory locality only, the trees and answers are the same."""

    def __init__(self, pts: np.ndarray):
        lo, hi = pts.min(0), pts.max(0)
        margin = 0.5 * (hi - lo).max() + 1e-6  # room for the scene to grow
        self.lo = lo - margin
        self.scale = 1023.0 / np.maximum(hi - lo + 2 * margin, 1e-30)

    def __call__(self, pts: np.ndarray) -> np.ndarray:
        c = np.clip((pts - self.lo) * self.scale, 0, 1023).astype(np.intp)
        return _SPREAD_10[c[:, 0]] | (_SPREAD_10[c[:, 1]] << 1) | (_SPREAD_10[c[:, 2]] << 2)


@dataclasses.dataclass(frozen=True)
class _Bin:
    """The points of one direction bin in key order (float64, as scipy wants them), their keys and images."""

    pts: np.ndarray
    keys: np.ndarray
    owners: np.ndarray

    @staticmethod
    def empty() -> _Bin:
        return _Bin(np.zeros((0, 3)), np.zeros(0, np.uint32), np.zeros(0, np.int64))

    def without(self, images) -> _Bin:
        keep = None
        for image in images:  # a comparison per image: np.isin scans the owners for their range first
            keep = self.owners != image if keep is None else keep & (self.owners != image)
        if keep is None or keep.all():
            return self
        return _Bin(self.pts[keep], self.keys[keep], self.owners[keep])

    def with_points(self, image: int, pts: np.ndarray, keys: np.ndarray) -> _Bin:
        order = np.argsort(keys, kind="stable")
        pts, keys = pts[order], keys[order]
        at = np.searchsorted(self.keys, keys)
        return _Bin(
            np.insert(self.pts, at, pts, axis=0),
            np.insert(self.keys, at, keys),
            np.insert(self.owners, at, np.full(len(keys), image)),
        )


class KDTreeIndex:
    """The official searcher: one scipy KD-tree per direction bin over the memory images' points.

    The official code rebuilds every tree from every point on every keyframe. Here each bin keeps its points in
    spatial order (an image is merged in or compacted out, no sorting of the whole bin), and a bin's tree is built
    only when a query needs it after its points changed; queries run in spatial order too. Distances are scipy's
    (float64), exactly the official ones. A changed bin still gets a new tree (scipy's trees are immutable): with a
    keyframe on every frame this is 1.3-2.3x faster than the official searcher, not more
    (benchmarks/must3r_stream.py).
    """

    on_host = True

    def __init__(self, quadrant_divider: int = 2, _state=None):
        self.q = quadrant_divider
        self.num_bins = 2 * quadrant_divider**2
        if _state is None:
            _state = ({}, [_Bin.empty() for _ in range(self.num_bins)], None, {})
        # image id -> points; points per bin; the spatial key; bin -> (its _Bin, tree), shared between versions
        self._images, self._bins, self._key, self._trees = _state

    def __len__(self) -> int:
        return len(self._images)

    @property
    def num_points(self) -> int:
        return sum(len(b.keys) for b in self._bins)

    def updated(self, add=(), drop=()) -> KDTreeIndex:
        drop = [i for i in drop if i in self._images]
        images = {k: v for k, v in self._images.items() if k not in drop}
        bins = [b.without(drop) if drop else b for b in self._bins]
        key = self._key
        for image, pts, valid, cam_center in add:
            pts_np = pts.detach().float().cpu().numpy().reshape(-1, 3)[valid.detach().cpu().numpy().reshape(-1)]
            which = direction_bin(pts_np - cam_center.detach().float().cpu().numpy()[None], self.q)
            pts_np = pts_np.astype(np.float64)
            if key is None and len(pts_np):
                key = _SpatialKey(pts_np)
            images[image] = len(pts_np)
            for b in np.unique(which):
                sel = which == b
                bins[b] = bins[b].with_points(image, pts_np[sel], key(pts_np[sel]))
        return KDTreeIndex(self.q, (images, bins, key, self._trees))

    def _tree(self, b: int) -> cKDTree | None:
        points = self._bins[b]
        if not len(points.keys):
            return None
        cached = self._trees.get(b)
        if cached is None or cached[0] is not points:
            # unbalanced, 32-point leaves: builds and answers faster here (600k points), the same exact answers
            tree = cKDTree(points.pts, leafsize=32, balanced_tree=False, compact_nodes=False, copy_data=False)
            self._trees[b] = cached = (points, tree)
        return cached[1]

    def nearest(self, pts: torch.Tensor, valid: torch.Tensor, cam_center: torch.Tensor, ranked=None):
        pts_np = pts.detach().float().cpu().numpy().reshape(-1, 3)
        sel = np.flatnonzero(valid.detach().cpu().numpy().reshape(-1))
        dists = np.full(len(pts_np), np.inf)
        if len(sel) and self._key is not None:
            q = pts_np[sel]
            which = direction_bin(q - cam_center.detach().float().cpu().numpy()[None], self.q)
            order = np.argsort(self._key(q), kind="stable")
            q, which, rows = q[order], which[order], sel[order]
            for b in np.unique(which):
                tree = self._tree(int(b))
                if tree is not None:
                    in_bin = which == b
                    dists[rows[in_bin]] = tree.query(q[in_bin], k=1)[0]
        return torch.from_numpy(dists).to(pts.device), None, None

    def nearest_exact(self, pts, valid, cam_center, distances, unresolved) -> torch.Tensor:
        return distances

    def learn(self, needed: list[float]) -> None:
        pass


class GridCoverage:
    """`coverage.GridIndex` behind the `CoverageIndex` interface: torch bins, the windowed strategy, and one
    `WindowBudget` shared by the versions of a stream's index."""

    on_host = False

    def __init__(self, quadrant_divider: int = 2, device=None, _grid: GridIndex | None = None, _budget=None):
        self.q = quadrant_divider
        self.grid = _grid if _grid is not None else GridIndex(2 * quadrant_divider**2, device)
        self.budget = _budget if _budget is not None else WindowBudget()

    def __len__(self) -> int:
        return len(self.grid)

    @property
    def num_points(self) -> int:
        return self.grid.num_valid()

    def _bins(self, pts, valid, cam_center) -> torch.Tensor:
        bins = direction_bins(pts.float().reshape(-1, 3) - cam_center.float()[None], self.q)
        return torch.where(valid.reshape(-1), bins, self.grid.num_bins)

    def updated(self, add=(), drop=()) -> GridCoverage:
        add = [(image, pts, self._bins(pts, valid, cam)) for image, pts, valid, cam in add]
        return GridCoverage(self.q, _grid=self.grid.updated(add, drop), _budget=self.budget)

    def nearest(self, pts, valid, cam_center, ranked=None):
        return self.grid.nearest(pts, self._bins(pts, valid, cam_center), "windowed", self.budget)

    def nearest_exact(self, pts, valid, cam_center, distances, unresolved) -> torch.Tensor:
        return self.grid.nearest_exact(pts, self._bins(pts, valid, cam_center), distances, unresolved)

    def learn(self, needed: list[float]) -> None:
        self.budget.learn(needed)


COVERAGE_INDEXES = ("auto", "morton", "kdtree", "grid")


def coverage_index(kind: str, quadrant_divider: int, device: torch.device) -> CoverageIndex:
    """An empty index: 'morton' (host, compiled: the fastest on a CPU), 'kdtree' (host, scipy), 'grid' (device, no
    host reads); 'auto': grid on CUDA, else morton (kdtree without numba)."""
    if kind not in COVERAGE_INDEXES:
        raise ValueError(f"coverage index must be one of {COVERAGE_INDEXES}, got {kind!r}")
    if kind == "auto":
        kind = "grid" if device.type == "cuda" else ("morton" if morton_index.available() else "kdtree")
    if kind == "morton":
        return morton_index.MortonIndex(quadrant_divider)
    return KDTreeIndex(quadrant_divider) if kind == "kdtree" else GridCoverage(quadrant_divider, device)


# ------------------------------------------------------------------------------------------------ the test
def coverage_points(pts3d: torch.Tensor, conf: torch.Tensor, params: KeyframeParams):
    """The subsampled points (M, 3) of a frame and whether each is confident (M,), for the index and the score."""
    s = params.subsample
    return pts3d[::s, ::s].reshape(-1, 3), (conf[::s, ::s] > params.min_conf).reshape(-1)


def score_scale(depth: torch.Tensor, params: KeyframeParams, eps: float = 1e-9) -> torch.Tensor:
    """What each coverage point's distance is divided by: its depth (subsampled as the points) + eps, in float32
    as numpy adds eps to a float32 depth."""
    s = params.subsample
    return depth[::s, ::s].reshape(-1).float() + eps


def overlap_score(
    distances: torch.Tensor,
    depth: torch.Tensor,
    valid: torch.Tensor,
    params: KeyframeParams,
    eps: float = 1e-9,
    on_host: bool = False,
) -> torch.Tensor:
    """Percentile of the depth-normalised distances of the confident points to the memory points ('nn-norm'), as
    a 0-dim float64 tensor on the points' device.

    distances, valid (M,) as from `coverage_points` and an index; depth (H, W) camera z. A point in an unseen bin
    counts as float64 max (the official code puts np.finfo max there); no confident point gives 0. Linear
    interpolation between order statistics, as np.percentile. on_host: select the two order
    statistics on the host instead of sorting on the device (the same values; reads the count)."""
    norm = distances.double() / score_scale(depth, params, eps)
    norm = torch.where(norm == torch.inf, torch.finfo(torch.float64).max, norm)
    masked = torch.where(valid, norm, torch.inf)  # the confident ones first once ordered
    count = valid.sum()
    rank = (count - 1).clamp(min=0).double() * (params.percentile / 100.0)
    below = rank.floor().long().view(1)
    above = torch.minimum(below + 1, (count - 1).clamp(min=0).view(1))
    if on_host:  # the index read the points to the host anyway: select the two order statistics, no sort
        picked = np.partition(masked.cpu().numpy(), [int(below), int(above)])
        a, b = (torch.tensor(picked[int(k)], dtype=torch.float64) for k in (below, above))
    else:
        ordered = masked.sort().values
        a, b = ordered.index_select(0, below)[0], ordered.index_select(0, above)[0]
    frac = rank - rank.floor()
    score = torch.where(frac >= 0.5, b - (b - a) * (1 - frac), a + (b - a) * frac)  # numpy's lerp, both halves
    return torch.where(count > 0, score, torch.zeros_like(score))


def median_confident(conf: torch.Tensor, params: KeyframeParams) -> torch.Tensor:
    """The median-confidence part of the keyframe test, a 0-dim bool tensor (True when not required)."""
    if not params.require_median_conf:
        return torch.ones((), dtype=torch.bool, device=conf.device)
    return conf.median() > params.min_conf


def is_keyframe(score: float, median_ok: bool, first: bool, params: KeyframeParams) -> bool:
    """The official decision from the score and the median test (host values)."""
    return bool(first or (score > params.overlap_thr and median_ok))
