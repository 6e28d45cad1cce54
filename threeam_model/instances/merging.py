"""Per-track 3D evidence, and merging the tracks' fragments into instances (supplement D).

Each track (one propagated proposal) collects, per scene point, how often the point was seen inside the track's
(eroded) mask (`hits`, weighted by the reprojection score) and how often it was seen at all near the track (in the
mask's box, grown by a margin, while the track was visible: `seen`). A track's 3D fragment is the set of points
inside its mask in at least `support_ratio` of those views.

Two tracks are the same object when either
- 2D temporal overlap: along the frames where both are visible their masks agree (mean IoU >= `iou_2d`, or one
  lies inside the other, mean containment >= `containment_2d`), over at least `min_covisible` frames. A
  geometry-consistent tracker re-finds an object it saw before, so this links proposals of one object made on
  different keyframes; or
- 3D overlap: their fragments, each grown to the superpoints it covers (as voting.py assigns them), share points:
  |A & B| / min(|A|, |B|) >= `overlap_3d`. This links tracks that never ran at the same time (an object left the
  view, its track was retired, a later keyframe proposed it again, maybe from the other side: the surfaces seen
  from both directions, such as the top, are shared, and a superpoint seen in part by each is shared whole).
  Objects that merely touch share no superpoint and at most a rim of boundary points, which erosion and the
  reprojection test keep small.
The links are joined transitively (union-find).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import scipy.sparse as sp


@dataclasses.dataclass
class MergeParams:
    support_ratio: float = 0.3  # fragment point: inside the mask in at least this fraction of the views near it
    seen_margin_px: int = 4  # views "near" a track: its mask's box grown by this many pixels
    min_fragment_points: int = 10  # smaller fragments take part in no 3D link
    iou_2d: float = 0.5
    containment_2d: float = 0.85
    min_covisible: int = 2
    overlap_3d: float = 0.25


class SparseCounts:
    """A growing (tracks x points) sum of sparse contributions, compacted in amortised linear time."""

    def __init__(self, num_points: int):
        self.num_points = int(num_points)
        self._matrix = sp.csr_matrix((0, self.num_points), dtype=np.float32)
        self._rows: list[np.ndarray] = []
        self._cols: list[np.ndarray] = []
        self._vals: list[np.ndarray] = []
        self._pending = 0
        self._num_rows = 0

    def add(self, row: int, cols: np.ndarray, values: np.ndarray | float = 1.0) -> None:
        if len(cols) == 0:
            return
        self._rows.append(np.full(len(cols), row, np.int32))
        self._cols.append(np.asarray(cols, np.int32))
        self._vals.append(np.broadcast_to(np.asarray(values, np.float32), (len(cols),)))
        self._pending += len(cols)
        self._num_rows = max(self._num_rows, row + 1)
        if self._pending >= max(self._matrix.nnz, 1 << 20):  # compact when pending entries outgrow the matrix
            self._compact()

    def _compact(self) -> None:
        shape = (self._num_rows, self.num_points)
        matrix = self._matrix.copy()
        matrix.resize(shape)
        if self._pending:
            rows, cols, vals = (np.concatenate(x) for x in (self._rows, self._cols, self._vals))
            matrix = matrix + sp.csr_matrix((vals, (rows, cols)), shape=shape)
        self._matrix = matrix.tocsr()
        self._matrix.sum_duplicates()
        self._rows, self._cols, self._vals, self._pending = [], [], [], 0

    def matrix(self, num_rows: int | None = None) -> sp.csr_matrix:
        self._num_rows = max(self._num_rows, num_rows or 0)
        self._compact()
        return self._matrix

    @property
    def nbytes(self) -> int:
        m = self._matrix
        return m.data.nbytes + m.indices.nbytes + m.indptr.nbytes + 12 * self._pending


class TemporalOverlap:
    """Mask agreement of every pair of tracks along the frames where both are visible (since their masks met)."""

    def __init__(self):
        self.pairs: dict[tuple[int, int], np.ndarray] = {}  # (a, b), a < b -> [frames, sum IoU, sum a-in-b, b-in-a]

    def add_frame(self, masks: dict[int, tuple[tuple[int, int, int, int], np.ndarray, int]]) -> None:
        """masks: track -> (box, the bool mask inside the box, area) for every track visible on this frame."""
        tracks = sorted(masks)
        for i, a in enumerate(tracks):
            (ax0, ay0, ax1, ay1), wa, area_a = masks[a]
            for b in tracks[i + 1 :]:
                (bx0, by0, bx1, by1), wb, area_b = masks[b]
                x0, y0, x1, y1 = max(ax0, bx0), max(ay0, by0), min(ax1, bx1), min(ay1, by1)
                inter = 0
                if x0 <= x1 and y0 <= y1:
                    sa = wa[y0 - ay0 : y1 - ay0 + 1, x0 - ax0 : x1 - ax0 + 1]
                    sb = wb[y0 - by0 : y1 - by0 + 1, x0 - bx0 : x1 - bx0 + 1]
                    inter = int(np.count_nonzero(sa & sb))
                key = (a, b)
                if inter == 0 and key not in self.pairs:
                    continue
                acc = self.pairs.setdefault(key, np.zeros(4))
                acc += (1.0, inter / (area_a + area_b - inter), inter / area_a, inter / area_b)

    def scores(self) -> dict[tuple[int, int], tuple[int, float, float]]:
        """(a, b) -> (co-visible frames, mean IoU, mean containment of the more contained one)."""
        out = {}
        for key, (n, iou, a_in_b, b_in_a) in self.pairs.items():
            out[key] = (int(n), iou / n, max(a_in_b, b_in_a) / n)
        return out


def fragment_support(hits: sp.csr_matrix, seen: sp.csr_matrix, ratio: float) -> sp.csr_matrix:
    """(tracks x points) bool: points inside a track's mask in at least `ratio` of the views near it."""
    hits, seen = hits.tocsr(), seen.tocsr()
    frac = hits.multiply(reciprocal_of_nonzeros(seen)).tocsr()
    frac.data = (frac.data >= ratio).astype(np.float32)
    frac.eliminate_zeros()
    return frac.astype(bool)


def reciprocal_of_nonzeros(m: sp.csr_matrix) -> sp.csr_matrix:
    """1 / x on the stored entries of a sparse matrix (the others stay 0)."""
    r = m.copy().astype(np.float64)
    r.data = 1.0 / np.maximum(r.data, 1e-12)
    return r


def superpoint_fragments(
    support: sp.csr_matrix, seen: sp.csr_matrix, superpoints: np.ndarray, min_coverage: float
) -> sp.csr_matrix:
    """(tracks x points) bool: each fragment grown to the whole superpoints it covers, i.e. where its points are
    at least `min_coverage` of the superpoint's points the track saw (the rule voting.py assigns superpoints by)."""
    n = support.shape[1]
    superpoints = np.unique(np.asarray(superpoints).reshape(-1), return_inverse=True)[1]
    member = sp.csr_matrix((np.ones(n, np.float32), (np.arange(n), superpoints)), shape=(n, superpoints.max() + 1))
    observed = seen.copy().tocsr()
    observed.data = np.ones_like(observed.data)
    covered = (support.astype(np.float32) @ member).toarray()
    looked = (observed @ member).toarray()
    whole = sp.csr_matrix(((covered > 0) & (covered >= min_coverage * looked)).astype(np.float32))
    return (whole @ member.T).astype(bool).tocsr()


def overlap_3d(support: sp.csr_matrix) -> np.ndarray:
    """(tracks x tracks) |A & B| / min(|A|, |B|) of the fragments (0 on the diagonal and for empty fragments)."""
    s = support.astype(np.float32)
    inter = (s @ s.T).toarray()
    sizes = np.asarray(s.sum(1)).reshape(-1)
    smaller = np.minimum(sizes[:, None], sizes[None, :])
    out = np.where(smaller > 0, inter / np.maximum(smaller, 1), 0.0)
    np.fill_diagonal(out, 0.0)
    return out


@dataclasses.dataclass
class MergeResult:
    groups: list[list[int]]  # tracks of each instance candidate (rows of the evidence matrices), sorted
    links: list[tuple[int, int, str, float]]  # (a, b, "2d" | "3d", score) of every link that joined two tracks


def merge_tracks(
    num_tracks: int,
    support: sp.csr_matrix,
    temporal: dict[tuple[int, int], tuple[int, float, float]],
    params: MergeParams,
) -> MergeResult:
    """Join tracks into instance candidates by 2D temporal overlap or 3D overlap (module docstring).

    support: (tracks x points) bool fragments for the 3D overlap (`superpoint_fragments`, or `fragment_support`
    without superpoints); temporal: `TemporalOverlap.scores()`."""
    parent = list(range(num_tracks))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    links = []
    for (a, b), (n, iou, contained) in sorted(temporal.items()):
        if n >= params.min_covisible and (iou >= params.iou_2d or contained >= params.containment_2d):
            links.append((a, b, "2d", iou if iou >= params.iou_2d else contained))
    sizes = np.asarray(support.sum(1)).reshape(-1) if num_tracks else np.zeros(0)
    if num_tracks > 1:
        big = np.flatnonzero(sizes >= params.min_fragment_points)
        ov = overlap_3d(support[big]) if len(big) > 1 else np.zeros((len(big), len(big)))
        for i, j in zip(*np.nonzero(np.triu(ov) >= params.overlap_3d)):
            links.append((int(big[i]), int(big[j]), "3d", float(ov[i, j])))
    for a, b, _, _ in links:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    groups: dict[int, list[int]] = {}
    for t in range(num_tracks):
        groups.setdefault(find(t), []).append(t)
    return MergeResult(sorted(groups.values()), links)


__all__ = [
    "MergeParams",
    "MergeResult",
    "SparseCounts",
    "TemporalOverlap",
    "fragment_support",
    "merge_tracks",
    "overlap_3d",
    "reciprocal_of_nonzeros",
    "superpoint_fragments",
]
